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

from deepdescent.algorithms import validation as check
from deepdescent.algorithms.common import with_weight_decay
from deepdescent.algorithms.spec import Algorithm, Hyper, Hyperparameter, Variant, zero_buffer



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


def _initial_lr(h: Hyper) -> float:
    """The rates start at the group's ``initial_lr`` (its lr at construction, the key torch's LR
    schedulers use); a later lr scales every step by lr/initial_lr."""
    return h.get("initial_lr", h["lr"])


def _init(name: str, p: Tensor, h: Hyper) -> Tensor:
    if name == "rates":  # per-parameter rates ε = lr; the gradient average δ̄ = 0
        return torch.full_like(p, float(_initial_lr(h)))
    return zero_buffer(name, p, h)


def _step(h: Hyper, params: list[Tensor], grads: list[Tensor], bufs: dict[str, list[Tensor]], steps: list[int],
          lookahead: bool) -> None:
    lr, base = h["lr"], _initial_lr(h)
    if isinstance(lr, list):  # per-tensor rates (the lab's members): factors per tensor
        scale = [a / b for a, b in zip(lr, base)] if isinstance(base, list) else [a / base for a in lr]
    else:
        scale = float(lr) / float(base)
    update(params, grads, bufs["rates"], bufs["bar_delta"], kappa=h["kappa"], phi=h["phi"], theta=h["theta"],
           weight_decay=h["weight_decay"], scale=scale)


def _consistent(h: Hyper) -> None:
    check.positive("initial_lr", _initial_lr(h))


SPEC = Algorithm(
    name="DeltaBarDelta",
    reference="§8.5; Jacobs (1988)",
    hyperparameters=(
        Hyperparameter("lr", 0.01, check.non_negative, "ε₀", "initial per-parameter rate"),
        Hyperparameter("kappa", 1e-3, check.non_negative, "κ", "additive growth while signs agree"),
        Hyperparameter("phi", 0.1, check.unit_interval, "φ", "multiplicative shrink when a sign flips"),
        Hyperparameter("theta", 0.7, check.unit_interval, "θ", "averaging factor of δ̄"),
        Hyperparameter("weight_decay", 0.0, check.non_negative, "λ", "adds λθ to g (L2 penalty)"),
    ),
    buffers=lambda h: ("rates", "bar_delta"),
    update=_step,
    init=_init,
    consistent=_consistent,
    fused=False,  # per-element branches: no fused kernel
    variants=(Variant("DeltaBarDelta", "§8.5", kind="full_batch", note="full batch, as Jacobs (1988) requires"),),
)
