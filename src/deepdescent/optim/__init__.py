"""``torch.optim.Optimizer`` subclasses for the algorithms of chapter 8 (book semantics)."""

from deepdescent.optim.adadelta import AdaDelta
from deepdescent.optim.adagrad import AdaGrad
from deepdescent.optim.adam import Adam
from deepdescent.optim.base import BookOptimizer, NonFiniteGradientError, state_dtype
from deepdescent.optim.delta_bar_delta import DeltaBarDelta
from deepdescent.optim.rmsprop import RMSProp
from deepdescent.optim.sgd import SGD
from deepdescent.second_order import BFGS, LBFGS, ConjugateGradient, HessianFree, Newton  # noqa: E402  (after optim)

__all__ = [
    "BFGS", "LBFGS", "SGD", "AdaDelta", "AdaGrad", "Adam", "BookOptimizer", "ConjugateGradient", "DeltaBarDelta",
    "HessianFree", "Newton", "NonFiniteGradientError", "RMSProp", "state_dtype",
]
