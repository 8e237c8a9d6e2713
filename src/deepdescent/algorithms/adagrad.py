"""Algorithm 8.4: AdaGrad (Duchi et al. 2011).

::

    r ← r + g ⊙ g
    Δθ ← −ε / (δ + √r) ⊙ g
    θ ← θ + Δθ

Symbols: ``lr`` = ε (global learning rate), ``eps`` = δ (about 1e-7; added *outside* the root,
as in the box and in ``torch.optim.Adagrad``). The accumulator r starts at 0.
"""

from __future__ import annotations

import torch
from torch import Tensor

from deepdescent.algorithms import validation as check
from deepdescent.algorithms.common import Rate, addcdiv_scaled_, scaled, sqrt, with_weight_decay
from deepdescent.algorithms.spec import Algorithm, Hyper, Hyperparameter, Variant



def update(
    params: list[Tensor],
    grads: list[Tensor],
    sum_sq: list[Tensor],
    *,
    lr: Rate,
    eps: float,
    weight_decay: float,
) -> None:
    """One step of Algorithm 8.4; updates ``params`` and ``sum_sq`` (r) in place."""
    grads = with_weight_decay(grads, params, weight_decay)
    torch._foreach_addcmul_(sum_sq, grads, grads)  # r ← r + g⊙g
    denom = sqrt(sum_sq)
    torch._foreach_add_(denom, eps)  # δ + √r
    addcdiv_scaled_(params, grads, denom, scaled(lr, -1.0))  # θ ← θ − ε g/(δ + √r)


def _step(h: Hyper, params: list[Tensor], grads: list[Tensor], bufs: dict[str, list[Tensor]], steps: list[int],
          lookahead: bool) -> None:
    update(params, grads, bufs["sum_sq"], lr=h["lr"], eps=h["eps"], weight_decay=h["weight_decay"])


SPEC = Algorithm(
    name="AdaGrad",
    reference="Algorithm 8.4; Duchi et al. (2011)",
    hyperparameters=(
        Hyperparameter("lr", 0.01, check.non_negative, "ε", "global learning rate"),
        Hyperparameter("eps", 1e-7, check.positive, "δ", "outside the root: δ + √r"),
        Hyperparameter("weight_decay", 0.0, check.non_negative, "λ", "adds λθ to g (L2 penalty)"),
    ),
    buffers=lambda h: ("sum_sq",),
    update=_step,
    variants=(Variant("AdaGrad", "Alg. 8.4"),),
    torch_class="Adagrad",
    torch_options=lambda h: dict(h),
)
