"""``torch.optim.Optimizer`` subclasses for the algorithms of chapter 8 (book semantics)."""

from deepdescent.algorithms.spec import Algorithm
from deepdescent.executor import state_dtype
from deepdescent.optim.adadelta import AdaDelta
from deepdescent.optim.adagrad import AdaGrad
from deepdescent.optim.adam import Adam
from deepdescent.optim.adamax import Adamax
from deepdescent.optim.adamw import AdamW
from deepdescent.optim.base import BookOptimizer, NonFiniteGradientError
from deepdescent.optim.delta_bar_delta import DeltaBarDelta
from deepdescent.optim.kfac import KFAC
from deepdescent.optim.nadam import NAdam
from deepdescent.optim.radam import RAdam
from deepdescent.optim.rmsprop import RMSProp
from deepdescent.optim.shampoo import Shampoo
from deepdescent.optim.sgd import SGD
from deepdescent.second_order import BFGS, LBFGS, ConjugateGradient, HessianFree, Newton  # noqa: E402  (after optim)


def optimizer_class(spec: Algorithm) -> type[BookOptimizer]:
    """The ``torch.optim.Optimizer`` class of an algorithm spec (every registered algorithm has one)."""
    for cls in BookOptimizer.__subclasses__():
        if getattr(cls, "algorithm", None) is spec:
            return cls
    raise LookupError(f"no optimizer class implements the algorithm {spec.name!r}")


__all__ = [
    "BFGS", "LBFGS", "SGD", "AdaDelta", "AdaGrad", "Adam", "AdamW", "Adamax", "BookOptimizer", "ConjugateGradient",
    "DeltaBarDelta", "HessianFree", "KFAC", "NAdam", "Newton", "NonFiniteGradientError", "RAdam", "RMSProp", "Shampoo",
    "optimizer_class", "state_dtype",
]
