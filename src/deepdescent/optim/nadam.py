"""``NAdam``: Nesterov momentum in Adam (Dozat 2016)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from deepdescent.algorithms import nadam
from deepdescent.optim.base import BookOptimizer, NonFinite


class NAdam(BookOptimizer):
    r"""NAdam (Dozat 2016): Adam (Algorithm 8.7) with Nesterov's look-ahead (Algorithm 8.3) moved
    into the update, and the momentum schedule μₜ = ρ₁(1 − ½·0.96^(tψ)).

    θ ← θ − ε [(1 − μₜ)/(1 − Πμ) g + μₜ₊₁/(1 − Πμ·μₜ₊₁) s] / (√(r/(1 − ρ₂ᵗ)) + δ).

    Symbols: ``lr`` = ε, ``betas`` = (ρ₁, ρ₂), ``eps`` = δ, ``momentum_decay`` = ψ.
    ``weight_decay`` = λ adds λθ to g. Matches ``torch.optim.NAdam`` (``decoupled_weight_decay=False``);
    the running product Πμ is kept per element (state ``mu_product``; torch keeps one number per
    tensor). ``nonfinite``, ``impl``: see :class:`~deepdescent.optim.SGD`.
    """

    algorithm = nadam.SPEC

    def __init__(self, params: Any, lr: float | Tensor = 0.002, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, momentum_decay: float = 4e-3, *,
                 nonfinite: NonFinite = "skip", impl: str = "auto") -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      momentum_decay=momentum_decay), nonfinite=nonfinite, impl=impl)
