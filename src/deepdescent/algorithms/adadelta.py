"""AdaDelta (Zeiler 2012), named in §8.5.4 of the book.

::

    E[g²] ← ρE[g²] + (1 − ρ) g²
    Δθ = −(√(E[Δθ²] + ε) / √(E[g²] + ε)) g
    E[Δθ²] ← ρE[Δθ²] + (1 − ρ) Δθ²
    θ ← θ + ε_lr Δθ

Symbols: ``rho`` = ρ (0.95), ``eps`` = the paper's ε (1e-6), ``lr`` scales the step (1.0 is
Zeiler's method; ``torch.optim.Adadelta`` has the same factor). E[Δθ²] accumulates the unscaled
Δθ, as in the paper and in torch.
"""

from __future__ import annotations

import torch
from torch import Tensor

from deepdescent.algorithms import validation as check
from deepdescent.algorithms.common import Rate, add_scaled_, scaled, sqrt_, with_weight_decay
from deepdescent.algorithms.spec import Algorithm, Hyper, Hyperparameter, Variant



def update(
    params: list[Tensor],
    grads: list[Tensor],
    square_avg: list[Tensor],
    acc_delta: list[Tensor],
    *,
    lr: Rate,
    rho: float,
    eps: float,
    weight_decay: float,
) -> None:
    """One AdaDelta step; updates ``params``, ``square_avg`` (E[g²]), ``acc_delta`` (E[Δθ²])."""
    grads = with_weight_decay(grads, params, weight_decay)
    torch._foreach_mul_(square_avg, rho)
    torch._foreach_addcmul_(square_avg, grads, grads, value=1.0 - rho)  # E[g²]
    rms_g = torch._foreach_add(square_avg, eps)
    sqrt_(rms_g)  # √(E[g²] + ε)
    delta = torch._foreach_add(acc_delta, eps)
    sqrt_(delta)  # √(E[Δθ²] + ε)
    torch._foreach_div_(delta, rms_g)
    torch._foreach_mul_(delta, grads)  # −Δθ
    torch._foreach_mul_(acc_delta, rho)
    torch._foreach_addcmul_(acc_delta, delta, delta, value=1.0 - rho)  # E[Δθ²]
    add_scaled_(params, delta, scaled(lr, -1.0))  # θ ← θ + ε_lr Δθ


def _step(h: Hyper, params: list[Tensor], grads: list[Tensor], bufs: dict[str, list[Tensor]], steps: list[int],
          lookahead: bool) -> None:
    update(params, grads, bufs["square_avg"], bufs["acc_delta"], lr=h["lr"], rho=h["rho"], eps=h["eps"],
           weight_decay=h["weight_decay"])


SPEC = Algorithm(
    name="AdaDelta",
    reference="§8.5.4; Zeiler (2012)",
    hyperparameters=(
        Hyperparameter("lr", 1.0, check.non_negative, "", "scales the step (1.0 is Zeiler's method)"),
        Hyperparameter("rho", 0.95, check.unit_interval, "ρ", "decay rate of both accumulations"),
        Hyperparameter("eps", 1e-6, check.positive, "ε", "the paper's ε, inside both roots"),
        Hyperparameter("weight_decay", 0.0, check.non_negative, "λ", "adds λθ to g (L2 penalty)"),
    ),
    buffers=lambda h: ("square_avg", "acc_delta"),
    update=_step,
    variants=(Variant("AdaDelta", "§8.5.4"),),
    torch_class="Adadelta",
    torch_options=lambda h: dict(h),
)
