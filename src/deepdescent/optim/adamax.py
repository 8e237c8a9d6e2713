"""``Adamax``: Adam with the infinity norm (Kingma & Ba 2014, §7.1)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from deepdescent.algorithms import adamax
from deepdescent.optim.base import BookOptimizer, NonFinite


class Adamax(BookOptimizer):
    r"""Adamax (Kingma & Ba 2014, §7.1): s ← ρ₁s + (1 − ρ₁)g;  u ← max(ρ₂u, |g| + δ);
    θ ← θ − (ε/(1 − ρ₁ᵗ)) s/u.

    Symbols: ``lr`` = ε, ``betas`` = (ρ₁, ρ₂), ``eps`` = δ (added to |g|, as ``torch.optim.Adamax``,
    which this matches). ``weight_decay`` = λ adds λθ to g. ``nonfinite``, ``impl``: see
    :class:`~deepdescent.optim.SGD`.
    """

    algorithm = adamax.SPEC

    def __init__(self, params: Any, lr: float | Tensor = 0.002, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, *, nonfinite: NonFinite = "skip",
                 impl: str = "auto") -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay),
                         nonfinite=nonfinite, impl=impl)
