"""Algorithm 8.7: Adam (Kingma & Ba 2014).

::

    t ← t + 1
    s ← ρ₁s + (1 − ρ₁) g            (biased first moment)
    r ← ρ₂r + (1 − ρ₂) g ⊙ g        (biased second moment)
    ŝ ← s / (1 − ρ₁ᵗ);  r̂ ← r / (1 − ρ₂ᵗ)
    Δθ = −ε ŝ / (√r̂ + δ)
    θ ← θ + Δθ

Symbols: ``lr`` = ε (0.001), ``betas`` = (ρ₁, ρ₂) = (0.9, 0.999), ``eps`` = δ (1e-8).

Execution: the first moment is updated as s ← s + (1 − ρ₁)(g − s) (one ``lerp``, the same
value up to rounding), and ε ŝ/(√r̂ + δ) is evaluated as (ε/(1 − ρ₁ᵗ)) s / (√r/√(1 − ρ₂ᵗ) + δ),
which is the box's expression with the bias corrections folded into scalars.
"""

from __future__ import annotations

import torch
from torch import Tensor

from deepdescent.algorithms._common import Rate, addcdiv_scaled_, with_weight_decay, zeros_like


def init(params: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
    """The moments s = 0 and r = 0."""
    return zeros_like(params), zeros_like(params)


def update(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avg: list[Tensor],
    exp_avg_sq: list[Tensor],
    steps: list[int],
    *,
    lr: Rate,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
) -> None:
    """One step of Algorithm 8.7. ``steps`` holds t per tensor, already incremented."""
    grads = with_weight_decay(grads, params, weight_decay)
    torch._foreach_lerp_(exp_avg, grads, 1.0 - beta1)  # s ← ρ₁s + (1 − ρ₁)g
    torch._foreach_mul_(exp_avg_sq, beta2)
    torch._foreach_addcmul_(exp_avg_sq, grads, grads, value=1.0 - beta2)  # r ← ρ₂r + (1 − ρ₂)g⊙g
    rates = lr if isinstance(lr, list) else [lr] * len(steps)
    step_size = [-r / (1.0 - beta1**t) for r, t in zip(rates, steps)]  # −ε/(1 − ρ₁ᵗ)
    root_bc2 = [(1.0 - beta2**t) ** 0.5 for t in steps]  # √(1 − ρ₂ᵗ)
    denom = torch._foreach_sqrt(exp_avg_sq)
    torch._foreach_div_(denom, root_bc2)
    torch._foreach_add_(denom, eps)  # √r̂ + δ
    addcdiv_scaled_(params, exp_avg, denom, step_size)  # θ ← θ − ε ŝ/(√r̂ + δ)
