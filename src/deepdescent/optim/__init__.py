"""``torch.optim.Optimizer`` subclasses for the algorithms of chapter 8 (book semantics)."""

from deepdescent.optim.adadelta import AdaDelta
from deepdescent.optim.adagrad import AdaGrad
from deepdescent.optim.adam import Adam
from deepdescent.optim.delta_bar_delta import DeltaBarDelta
from deepdescent.optim.base import BookOptimizer, NonFiniteGradientError
from deepdescent.optim.rmsprop import RMSProp
from deepdescent.optim.sgd import SGD

__all__ = ["SGD", "AdaDelta", "DeltaBarDelta", "AdaGrad", "Adam", "BookOptimizer", "NonFiniteGradientError", "RMSProp"]
