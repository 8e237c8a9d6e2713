"""Algorithm 8.7: Adam (Kingma & Ba 2014).

::

    t ← t + 1
    s ← ρ₁s + (1 − ρ₁) g            (biased first moment)
    r ← ρ₂r + (1 − ρ₂) g ⊙ g        (biased second moment)
    ŝ ← s / (1 − ρ₁ᵗ);  r̂ ← r / (1 − ρ₂ᵗ)
    Δθ = −ε ŝ / (√r̂ + δ)
    θ ← θ + Δθ

Symbols: ``lr`` = ε (0.001), ``betas`` = (ρ₁, ρ₂) = (0.9, 0.999), ``eps`` = δ (1e-8).

``amsgrad`` (Reddi et al. 2018, "On the convergence of Adam and beyond"): the denominator uses
the largest r seen so far, r_max ← max(r_max, r), so the effective step never grows back; the
bias correction still divides it by (1 − ρ₂ᵗ), as torch.optim.Adam does.

Execution: the first moment is updated as s ← s + (1 − ρ₁)(g − s) (one ``lerp``, the same
value up to rounding), and ε ŝ/(√r̂ + δ) is evaluated as (ε/(1 − ρ₁ᵗ)) s / (√r/√(1 − ρ₂ᵗ) + δ),
which is the box's expression with the bias corrections folded into scalars.
"""

from __future__ import annotations

import torch
from torch import Tensor

from deepdescent.algorithms import validation as check
from deepdescent.algorithms.common import Rate, addcdiv_scaled_, sqrt, with_weight_decay
from deepdescent.algorithms.spec import Algorithm, Hyper, Hyperparameter, Variant



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
    max_exp_avg_sq: list[Tensor] | None = None,
) -> None:
    """One step of Algorithm 8.7. ``steps`` holds t per tensor, already incremented.
    ``max_exp_avg_sq`` (AMSGrad): r_max, and the denominator uses it instead of r."""
    grads = with_weight_decay(grads, params, weight_decay)
    torch._foreach_lerp_(exp_avg, grads, 1.0 - beta1)  # s ← ρ₁s + (1 − ρ₁)g
    torch._foreach_mul_(exp_avg_sq, beta2)
    torch._foreach_addcmul_(exp_avg_sq, grads, grads, value=1.0 - beta2)  # r ← ρ₂r + (1 − ρ₂)g⊙g
    rates = lr if isinstance(lr, list) else [lr] * len(steps)
    step_size = [-r / (1.0 - beta1**t) for r, t in zip(rates, steps)]  # −ε/(1 − ρ₁ᵗ)
    root_bc2 = [(1.0 - beta2**t) ** 0.5 for t in steps]  # √(1 − ρ₂ᵗ)
    if max_exp_avg_sq is not None:
        torch._foreach_maximum_(max_exp_avg_sq, exp_avg_sq)  # r_max ← max(r_max, r)
    denom = sqrt(exp_avg_sq if max_exp_avg_sq is None else max_exp_avg_sq)
    torch._foreach_div_(denom, root_bc2)
    torch._foreach_add_(denom, eps)  # √r̂ + δ
    addcdiv_scaled_(params, exp_avg, denom, step_size)  # θ ← θ − ε ŝ/(√r̂ + δ)


def _step(h: Hyper, params: list[Tensor], grads: list[Tensor], bufs: dict[str, list[Tensor]], steps: list[int],
          lookahead: bool) -> None:
    beta1, beta2 = h["betas"]
    update(params, grads, bufs["exp_avg"], bufs["exp_avg_sq"], steps, lr=h["lr"], beta1=beta1, beta2=beta2,
           eps=h["eps"], weight_decay=h["weight_decay"], max_exp_avg_sq=bufs.get("max_exp_avg_sq"))


def buffers(h: Hyper) -> tuple[str, ...]:
    """s and r; and r_max with AMSGrad."""
    return ("exp_avg", "exp_avg_sq", "max_exp_avg_sq") if h.get("amsgrad") else ("exp_avg", "exp_avg_sq")


SPEC = Algorithm(
    name="Adam",
    reference="Algorithm 8.7; Kingma & Ba (2014)",
    hyperparameters=(
        Hyperparameter("lr", 0.001, check.non_negative, "ε", "step size"),
        Hyperparameter("betas", (0.9, 0.999), check.betas, "ρ₁, ρ₂", "decay rates of the moment estimates"),
        Hyperparameter("eps", 1e-8, check.positive, "δ", "added to √r̂ for numerical stabilization"),
        Hyperparameter("weight_decay", 0.0, check.non_negative, "λ", "adds λθ to g (L2 penalty)"),
        Hyperparameter("amsgrad", False, check.flag, "", "AMSGrad: divide by the running maximum of r"),
    ),
    buffers=buffers,
    update=_step,
    structures=({}, {"amsgrad": True}),
    variants=(Variant("Adam", "Alg. 8.7"), Variant("AMSGrad", "Reddi et al. 2018", {"amsgrad": True}, in_book=False)),
    torch_class="Adam",
    torch_options=lambda h: dict(h),
)
