"""RAdam: Adam with a rectified adaptive learning rate (Liu et al. 2020, "On the variance of the
adaptive learning rate and beyond", Algorithm 2).

::

    t ← t + 1;  s ← ρ₁s + (1 − ρ₁)g;  r ← ρ₂r + (1 − ρ₂)g⊙g;  ŝ ← s/(1 − ρ₁ᵗ)
    ρ∞ = 2/(1 − ρ₂) − 1;   ρₜ = ρ∞ − 2tρ₂ᵗ/(1 − ρ₂ᵗ)          (length of the approximated SMA)
    if ρₜ > 5:  ℓ = √(1 − ρ₂ᵗ)/(√r + δ);  ρ = √((ρₜ−4)(ρₜ−2)ρ∞ / ((ρ∞−4)(ρ∞−2)ρₜ))
                θ ← θ − ε ρ ŝ ⊙ ℓ                                (rectified Adam step)
    else:       θ ← θ − ε ŝ                                      (momentum SGD while r̂ is unreliable)

Symbols as Adam (Algorithm 8.7): ``lr`` = ε, ``betas`` = (ρ₁, ρ₂), ``eps`` = δ (added to √r, as
torch.optim.RAdam does). The branch depends on t only: the fused kernel takes it per tensor.

Execution: both branches as one expression, θ ← θ + ŝ ⊙ (a/(√r + δ) + b) with per-tensor
a = −ερ√(1 − ρ₂ᵗ) and b = 0 when ρₜ > 5, a = 0 and b = −ε otherwise.
"""

from __future__ import annotations

import torch
from torch import Tensor

from deepdescent.algorithms import validation as check
from deepdescent.algorithms.common import Rate, sqrt, where_positive, with_weight_decay
from deepdescent.algorithms.spec import Algorithm, Hyper, Hyperparameter, Variant


def update(params: list[Tensor], grads: list[Tensor], exp_avg: list[Tensor], exp_avg_sq: list[Tensor],
           steps: list[int], *, lr: Rate, beta1: float, beta2: float, eps: float, weight_decay: float) -> None:
    """One RAdam step; ``steps`` holds t per tensor, already incremented."""
    grads = with_weight_decay(grads, params, weight_decay)
    torch._foreach_lerp_(exp_avg, grads, 1.0 - beta1)  # s ← ρ₁s + (1 − ρ₁)g
    torch._foreach_mul_(exp_avg_sq, beta2)
    torch._foreach_addcmul_(exp_avg_sq, grads, grads, value=1.0 - beta2)  # r ← ρ₂r + (1 − ρ₂)g⊙g
    rho_inf = 2.0 / (1.0 - beta2) - 1.0
    rates = lr if isinstance(lr, list) else [lr] * len(steps)
    a, b = [], []
    for rate, t in zip(rates, steps):
        bc1, bc2 = 1.0 - beta1**t, 1.0 - beta2**t
        rho_t = rho_inf - 2.0 * t * beta2**t / bc2
        rect = where_positive(rho_t - 5.0, lambda: ((rho_t - 4.0) * (rho_t - 2.0) * rho_inf
                                                    / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t)) ** 0.5, lambda: 0.0)
        a.append(-rate * rect * bc2**0.5 / bc1)  # −ερ√(1 − ρ₂ᵗ)/(1 − ρ₁ᵗ)
        b.append(where_positive(rho_t - 5.0, lambda: 0.0, lambda: 1.0) * (-rate / bc1))  # −ε/(1 − ρ₁ᵗ)
    denom = sqrt(exp_avg_sq)
    torch._foreach_add_(denom, eps)  # √r + δ
    adaptive = torch._foreach_div(exp_avg, denom)
    torch._foreach_mul_(adaptive, a)
    torch._foreach_add_(params, adaptive)  # θ ← θ − ερ ŝ √(1 − ρ₂ᵗ)/(√r + δ)   (ρₜ > 5)
    torch._foreach_add_(params, torch._foreach_mul(exp_avg, b))  # θ ← θ − ε ŝ   (otherwise)


def _step(h: Hyper, params: list[Tensor], grads: list[Tensor], bufs: dict[str, list[Tensor]], steps: list[int],
          lookahead: bool) -> None:
    beta1, beta2 = h["betas"]
    update(params, grads, bufs["exp_avg"], bufs["exp_avg_sq"], steps, lr=h["lr"], beta1=beta1, beta2=beta2,
           eps=h["eps"], weight_decay=h["weight_decay"])


SPEC = Algorithm(
    name="RAdam",
    reference="Liu et al. (2020), Algorithm 2 (rectified Adam of Algorithm 8.7)",
    hyperparameters=(
        Hyperparameter("lr", 0.001, check.non_negative, "ε", "step size"),
        Hyperparameter("betas", (0.9, 0.999), check.betas, "ρ₁, ρ₂", "decay rates of the moment estimates"),
        Hyperparameter("eps", 1e-8, check.positive, "δ", "added to √r"),
        Hyperparameter("weight_decay", 0.0, check.non_negative, "λ", "adds λθ to g (L2 penalty)"),
    ),
    buffers=lambda h: ("exp_avg", "exp_avg_sq"),
    update=_step,
    variants=(Variant("RAdam", "Liu et al. 2020", in_book=False),),
    torch_class="RAdam",
    torch_options=lambda h: dict(h),
)
