"""AdamW: Adam with decoupled weight decay (Loshchilov & Hutter 2019, "Decoupled weight decay
regularization", Algorithm 2).

::

    θ ← θ − ελθ                      (decay, decoupled from the gradient's moments)
    then Algorithm 8.7 on g (without λθ in g)

Symbols as Adam (:mod:`.adam`); ``weight_decay`` = λ (0.01), applied as torch.optim.AdamW does:
scaled by the learning rate ε, so a schedule of ε schedules the decay too. Algorithm 8.7's L2
penalty (``Adam(weight_decay=λ)``) instead adds λθ to g, where the adaptive denominator rescales it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from deepdescent.algorithms import adam
from deepdescent.algorithms import validation as check
from deepdescent.algorithms.common import Rate
from deepdescent.algorithms.spec import Algorithm, Hyper, Hyperparameter, Variant


def decay(params: list[Tensor], *, lr: Rate, weight_decay: float) -> None:
    """θ ← (1 − ελ)θ."""
    if weight_decay == 0.0:
        return
    factor = [1.0 - r * weight_decay for r in lr] if isinstance(lr, list) else 1.0 - lr * weight_decay
    torch._foreach_mul_(params, factor)


def _step(h: Hyper, params: list[Tensor], grads: list[Tensor], bufs: dict[str, list[Tensor]], steps: list[int],
          lookahead: bool) -> None:
    decay(params, lr=h["lr"], weight_decay=h["weight_decay"])
    adam.SPEC.update({**h, "weight_decay": 0.0}, params, grads, bufs, steps, lookahead)


SPEC = Algorithm(
    name="AdamW",
    reference="Loshchilov & Hutter (2019), Algorithm 2 (Adam of Algorithm 8.7 with decoupled weight decay)",
    hyperparameters=(
        Hyperparameter("lr", 0.001, check.non_negative, "ε", "step size"),
        Hyperparameter("betas", (0.9, 0.999), check.betas, "ρ₁, ρ₂", "decay rates of the moment estimates"),
        Hyperparameter("eps", 1e-8, check.positive, "δ", "added to √r̂ for numerical stabilization"),
        Hyperparameter("weight_decay", 0.01, check.non_negative, "λ", "decoupled decay: θ ← θ − ελθ"),
        Hyperparameter("amsgrad", False, check.flag, "", "AMSGrad: divide by the running maximum of r"),
    ),
    buffers=adam.buffers,
    update=_step,
    structures=({}, {"amsgrad": True}),
    variants=(Variant("AdamW", "Loshchilov & Hutter 2019", in_book=False),),
    torch_class="AdamW",
    torch_options=lambda h: dict(h),
)
