"""``RAdam``: rectified Adam (Liu et al. 2020)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from deepdescent.algorithms import radam
from deepdescent.optim.base import BookOptimizer, NonFinite


class RAdam(BookOptimizer):
    r"""RAdam (Liu et al. 2020): Adam's step (Algorithm 8.7) scaled by the rectification
    ρ = √((ρₜ−4)(ρₜ−2)ρ∞ / ((ρ∞−4)(ρ∞−2)ρₜ)) once the variance of r̂ is tractable (ρₜ > 5), and
    the bias-corrected momentum step θ ← θ − εŝ before.

    Symbols: ``lr`` = ε, ``betas`` = (ρ₁, ρ₂), ``eps`` = δ. ``weight_decay`` = λ adds λθ to g.
    Matches ``torch.optim.RAdam`` (``decoupled_weight_decay=False``). ``nonfinite``, ``impl``: see
    :class:`~deepdescent.optim.SGD`.
    """

    algorithm = radam.SPEC

    def __init__(self, params: Any, lr: float | Tensor = 0.001, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, *, nonfinite: NonFinite = "skip",
                 impl: str = "auto") -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay),
                         nonfinite=nonfinite, impl=impl)
