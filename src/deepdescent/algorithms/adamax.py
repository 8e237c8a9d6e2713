"""Adamax: Adam with the infinity norm (Kingma & Ba 2014, §7.1).

::

    t ← t + 1
    s ← ρ₁s + (1 − ρ₁) g             (first moment, as Algorithm 8.7)
    u ← max(ρ₂u, |g| + δ)            (exponentially weighted infinity norm)
    θ ← θ − (ε / (1 − ρ₁ᵗ)) s / u

Symbols: ``lr`` = ε (0.002), ``betas`` = (ρ₁, ρ₂) = (0.9, 0.999), ``eps`` = δ (1e-8). The paper's
u ← max(ρ₂u, |g|) has no δ; torch.optim.Adamax adds it to |g| (so u > 0 from the first step),
and so does this module. u needs no bias correction (§7.1).
"""

from __future__ import annotations

import torch
from torch import Tensor

from deepdescent.algorithms import validation as check
from deepdescent.algorithms.common import Rate, addcdiv_scaled_, with_weight_decay
from deepdescent.algorithms.spec import Algorithm, Hyper, Hyperparameter, Variant


def update(params: list[Tensor], grads: list[Tensor], exp_avg: list[Tensor], exp_inf: list[Tensor], steps: list[int],
           *, lr: Rate, beta1: float, beta2: float, eps: float, weight_decay: float) -> None:
    """One Adamax step; ``steps`` holds t per tensor, already incremented."""
    grads = with_weight_decay(grads, params, weight_decay)
    torch._foreach_lerp_(exp_avg, grads, 1.0 - beta1)  # s ← ρ₁s + (1 − ρ₁)g
    norm = torch._foreach_abs(grads)
    torch._foreach_add_(norm, eps)
    torch._foreach_mul_(exp_inf, beta2)
    torch._foreach_maximum_(exp_inf, norm)  # u ← max(ρ₂u, |g| + δ)
    rates = lr if isinstance(lr, list) else [lr] * len(steps)
    addcdiv_scaled_(params, exp_avg, exp_inf, [-r / (1.0 - beta1**t) for r, t in zip(rates, steps)])


def _step(h: Hyper, params: list[Tensor], grads: list[Tensor], bufs: dict[str, list[Tensor]], steps: list[int],
          lookahead: bool) -> None:
    beta1, beta2 = h["betas"]
    update(params, grads, bufs["exp_avg"], bufs["exp_inf"], steps, lr=h["lr"], beta1=beta1, beta2=beta2,
           eps=h["eps"], weight_decay=h["weight_decay"])


SPEC = Algorithm(
    name="Adamax",
    reference="Kingma & Ba (2014), §7.1 (Adam's infinity-norm variant)",
    hyperparameters=(
        Hyperparameter("lr", 0.002, check.non_negative, "ε", "step size"),
        Hyperparameter("betas", (0.9, 0.999), check.betas, "ρ₁, ρ₂", "decay rates of s and of the norm u"),
        Hyperparameter("eps", 1e-8, check.positive, "δ", "added to |g| (torch.optim.Adamax's convention)"),
        Hyperparameter("weight_decay", 0.0, check.non_negative, "λ", "adds λθ to g (L2 penalty)"),
    ),
    buffers=lambda h: ("exp_avg", "exp_inf"),
    update=_step,
    variants=(Variant("Adamax", "Kingma & Ba 2014 §7.1", in_book=False),),
    torch_class="Adamax",
    torch_options=lambda h: dict(h),
)
