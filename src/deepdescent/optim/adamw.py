"""``AdamW``: Adam with decoupled weight decay (Loshchilov & Hutter 2019)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from deepdescent.algorithms import adamw
from deepdescent.optim.base import BookOptimizer, NonFinite


class AdamW(BookOptimizer):
    r"""AdamW (Loshchilov & Hutter 2019): θ ← θ − ελθ, then Adam's step (Algorithm 8.7) on g.

    Symbols: ``lr`` = ε, ``betas`` = (ρ₁, ρ₂), ``eps`` = δ, ``weight_decay`` = λ (decoupled,
    scaled by ε as in ``torch.optim.AdamW``, which this matches). ``amsgrad``: see
    :class:`~deepdescent.optim.Adam`. ``nonfinite``, ``impl``: see :class:`~deepdescent.optim.SGD`.
    """

    algorithm = adamw.SPEC

    def __init__(self, params: Any, lr: float | Tensor = 0.001, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.01, amsgrad: bool = False, *,
                 nonfinite: NonFinite = "skip", impl: str = "auto") -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad),
                         nonfinite=nonfinite, impl=impl)
