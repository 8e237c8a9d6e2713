"""Delta-bar-delta (Jacobs 1988), §8.5: a learning rate per parameter, adapted by the sign of
the gradient. For full-batch optimization (minibatch noise flips signs at random).

::

    δ̄ ← (1 − θ) g + θ δ̄                      (exponential average of past gradients)
    ε ← ε + κ          where δ̄_prev · g > 0   (same sign: grow additively)
    ε ← (1 − φ) ε      where δ̄_prev · g < 0   (sign flipped: shrink multiplicatively)
    θ_w ← θ_w − ε ⊙ g

Symbols: ``lr`` = initial ε, ``kappa`` = κ, ``phi`` = φ, ``theta`` = θ (the averaging factor;
the parameters are written θ_w here to keep the paper's letter).
"""

from __future__ import annotations

import torch
from torch import Tensor

from deepdescent.algorithms._common import with_weight_decay


def init(params: list[Tensor], *, lr: float) -> tuple[list[Tensor], list[Tensor]]:
    """Per-parameter rates ε = lr and the gradient average δ̄ = 0."""
    return [torch.full_like(p, lr) for p in params], [torch.zeros_like(p) for p in params]


def update(params: list[Tensor], grads: list[Tensor], rates: list[Tensor], bar_delta: list[Tensor], *,
           kappa: float, phi: float, theta: float, weight_decay: float, scale: float | list[Tensor] = 1.0) -> None:
    """One step; updates ``params``, ``rates`` (ε) and ``bar_delta`` (δ̄) in place. The step is
    ``scale``·ε⊙g (1: the box; a learning-rate schedule's factor, per tensor or one for all)."""
    grads = with_weight_decay(grads, params, weight_decay)
    scales = scale if isinstance(scale, list) else [scale] * len(params)
    for p, g, eps, avg, c in zip(params, grads, rates, bar_delta, scales):
        agreement = avg * g
        eps.copy_(torch.where(agreement > 0, eps + kappa, torch.where(agreement < 0, eps * (1 - phi), eps)))
        avg.lerp_(g, 1 - theta)  # δ̄ ← θδ̄ + (1 − θ)g
        if isinstance(c, Tensor):
            p.sub_(eps * g * c)
        else:
            p.addcmul_(eps, g, value=-c)
