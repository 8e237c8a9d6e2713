"""``AdaDelta``: Zeiler (2012), named in §8.5.4."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from deepdescent.algorithms import adadelta
from deepdescent.optim.base import BookOptimizer, NonFinite


class AdaDelta(BookOptimizer):
    r"""AdaDelta (Zeiler 2012).

    E[g²] ← ρE[g²] + (1 − ρ)g²;  Δθ = −(√(E[Δθ²] + ε)/√(E[g²] + ε)) g;
    E[Δθ²] ← ρE[Δθ²] + (1 − ρ)Δθ²;  θ ← θ + lr·Δθ.

    Symbols: ``rho`` = ρ, ``eps`` = ε of the paper; ``lr`` scales the step (1.0 is the paper's
    method). ``weight_decay`` = λ adds λθ to g. Matches ``torch.optim.Adadelta``.
    ``nonfinite``: see :class:`~deepdescent.optim.SGD`.
    """

    algorithm = adadelta.SPEC

    def __init__(self, params: Any, lr: float | Tensor = 1.0, rho: float = 0.95, eps: float = 1e-6,
                 weight_decay: float = 0.0, *, nonfinite: NonFinite = "skip", impl: str = "auto") -> None:
        super().__init__(params, dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay), nonfinite=nonfinite, impl=impl)
