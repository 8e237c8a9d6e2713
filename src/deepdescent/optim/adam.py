"""``Adam``: Algorithm 8.7."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from deepdescent.algorithms import adam
from deepdescent.optim.base import BookOptimizer, NonFinite


class Adam(BookOptimizer):
    r"""Adam (Kingma & Ba 2014), Algorithm 8.7 of the book.

    t ← t + 1;  s ← ρ₁s + (1 − ρ₁)g;  r ← ρ₂r + (1 − ρ₂)g⊙g;  ŝ ← s/(1 − ρ₁ᵗ);  r̂ ← r/(1 − ρ₂ᵗ);
    Δθ = −ε ŝ/(√r̂ + δ);  θ ← θ + Δθ.

    Symbols: ``lr`` = ε, ``betas`` = (ρ₁, ρ₂), ``eps`` = δ. ``weight_decay`` = λ adds λθ to g
    (L2 penalty, as ``torch.optim.Adam``; for decoupled decay see :class:`~deepdescent.optim.AdamW`).
    ``amsgrad=True`` (Reddi et al. 2018) divides by √(r_max/(1 − ρ₂ᵗ)) + δ with r_max ← max(r_max, r)
    (state ``max_exp_avg_sq``). Matches ``torch.optim.Adam``. ``nonfinite``: see
    :class:`~deepdescent.optim.SGD`; a skipped step does not advance t.
    """

    algorithm = adam.SPEC

    def __init__(self, params: Any, lr: float | Tensor = 0.001, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, amsgrad: bool = False, *, nonfinite: NonFinite = "skip",
                 impl: str = "auto") -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad),
                         nonfinite=nonfinite, impl=impl)
