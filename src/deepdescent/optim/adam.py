"""``Adam``: Algorithm 8.7."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from deepdescent.algorithms import adam
from deepdescent.optim import _validation as check
from deepdescent.optim.base import BookOptimizer, NonFinite, _lr


class Adam(BookOptimizer):
    r"""Adam (Kingma & Ba 2014), Algorithm 8.7 of the book.

    t ← t + 1;  s ← ρ₁s + (1 − ρ₁)g;  r ← ρ₂r + (1 − ρ₂)g⊙g;  ŝ ← s/(1 − ρ₁ᵗ);  r̂ ← r/(1 − ρ₂ᵗ);
    Δθ = −ε ŝ/(√r̂ + δ);  θ ← θ + Δθ.

    Symbols: ``lr`` = ε, ``betas`` = (ρ₁, ρ₂), ``eps`` = δ. ``weight_decay`` = λ adds λθ to g
    (L2 penalty, as ``torch.optim.Adam``; not the decoupled AdamW). Matches ``torch.optim.Adam``
    with ``amsgrad=False``. ``nonfinite``: see :class:`~deepdescent.optim.SGD`; a skipped step does
    not advance t.
    """

    def __init__(self, params: Any, lr: float | Tensor = 0.001, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, *, nonfinite: NonFinite = "skip", impl: str = "auto") -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay), nonfinite=nonfinite, impl=impl)

    def _validate_group(self, group: dict[str, Any]) -> None:
        check.non_negative("lr", group["lr"])
        betas = group["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"invalid betas={betas!r}: must be a pair (rho1, rho2), each in [0, 1)")
        check.unit_interval("betas[0]", betas[0])
        check.unit_interval("betas[1]", betas[1])
        check.positive("eps", group["eps"])
        check.non_negative("weight_decay", group["weight_decay"])

    def _state_names(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq")

    def _update(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                bufs: dict[str, list[Tensor]], steps: list[int], lookahead: bool) -> None:
        beta1, beta2 = group["betas"]
        adam.update(params, grads, bufs["exp_avg"], bufs["exp_avg_sq"], steps, lr=_lr(group),
                    beta1=beta1, beta2=beta2, eps=group["eps"], weight_decay=group["weight_decay"])
