"""``AdaGrad``: Algorithm 8.4."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from deepdescent.algorithms import adagrad
from deepdescent.optim.base import BookOptimizer, NonFinite


class AdaGrad(BookOptimizer):
    r"""AdaGrad (Duchi et al. 2011), Algorithm 8.4 of the book.

    r ← r + g⊙g;  Δθ ← −ε/(δ + √r) ⊙ g;  θ ← θ + Δθ.

    Symbols: ``lr`` = ε, ``eps`` = δ (outside the root, as in the box and torch.optim.Adagrad).
    ``weight_decay`` = λ adds λθ to g. Matches ``torch.optim.Adagrad`` with ``lr_decay=0`` and
    ``initial_accumulator_value=0``. ``nonfinite``: see :class:`~deepdescent.optim.SGD`.
    """

    algorithm = adagrad.SPEC

    def __init__(self, params: Any, lr: float | Tensor = 0.01, eps: float = 1e-7, weight_decay: float = 0.0,
                 *, nonfinite: NonFinite = "skip", impl: str = "auto") -> None:
        super().__init__(params, dict(lr=lr, eps=eps, weight_decay=weight_decay), nonfinite=nonfinite, impl=impl)
