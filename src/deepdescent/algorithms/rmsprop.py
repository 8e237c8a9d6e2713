"""Algorithm 8.5 (RMSProp), RMSProp with momentum (§8.5.4) and Algorithm 8.6 (RMSProp with
Nesterov momentum); Hinton (2012).

Algorithm 8.5::

    r ← ρr + (1 − ρ) g ⊙ g
    Δθ = −ε / √(δ + r) ⊙ g            (δ inside the root, about 1e-6)
    θ ← θ + Δθ

RMSProp with momentum: the momentum rule of Algorithm 8.2 applied to the rescaled gradient
d = g / √(δ + r):  v ← αv − εd;  θ ← θ + v.

Algorithm 8.6::

    θ̃ ← θ + αv;  g ← gradient at θ̃
    r ← ρr + (1 − ρ) g ⊙ g
    v ← αv − ε / √r ⊙ g
    θ ← θ + v

The box of 8.6 has no δ. Safeguard (a documented deviation): the root is clamped from below at
the smallest normal number of the dtype. √r > 0 is always far above that bound (√ of the smallest
subnormal is ~1e-23 in float32), so the clamp changes nothing unless r = 0 exactly — which happens
only where every gradient so far was 0, and where the box would compute 0/0. There the update
is 0.

torch convention (``convention="torch"``, as ``torch.optim.RMSprop``): δ is added *outside* the
root, Δθ = −ε g / (√r + δ), and the momentum buffer does not carry ε (see :mod:`.momentum`).

Symbols: ``lr`` = ε, ``rho`` = ρ, ``eps`` = δ, ``momentum`` = α.
"""

from __future__ import annotations

import torch
from torch import Tensor

from deepdescent.algorithms import momentum as _momentum
from deepdescent.algorithms import validation as check
from deepdescent.algorithms.common import Rate, addcdiv_scaled_, scaled, sqrt, sqrt_, with_weight_decay
from deepdescent.algorithms.spec import Algorithm, Hyper, Hyperparameter, Variant



def _denominator(square_avg: list[Tensor], *, eps: float, nesterov: bool, convention: str) -> list[Tensor]:
    if convention == "torch":
        denom = sqrt(square_avg)
        torch._foreach_add_(denom, eps)  # √r + δ
    elif nesterov:
        denom = sqrt(square_avg)  # √r (Algorithm 8.6) ...
        torch._foreach_clamp_min_(denom, torch.finfo(denom[0].dtype).tiny)  # ... safeguard at r = 0
    else:
        denom = torch._foreach_add(square_avg, eps)
        sqrt_(denom)  # √(δ + r)
    return denom


def update(
    params: list[Tensor],
    grads: list[Tensor],
    square_avg: list[Tensor],
    velocity: list[Tensor],
    *,
    lr: Rate,
    rho: float,
    eps: float,
    momentum: float,
    nesterov: bool,
    lookahead: bool,
    convention: _momentum.Convention,
    weight_decay: float,
) -> None:
    """One step of Algorithm 8.5, RMSProp with momentum, or 8.6 (``nesterov``).

    ``lookahead``: the parameters hold the interim point θ̃ (see :mod:`.momentum`).
    """
    grads = with_weight_decay(grads, params, weight_decay)
    torch._foreach_mul_(square_avg, rho)
    torch._foreach_addcmul_(square_avg, grads, grads, value=1.0 - rho)  # r ← ρr + (1 − ρ) g⊙g
    denom = _denominator(square_avg, eps=eps, nesterov=nesterov, convention=convention)
    if momentum == 0.0:
        addcdiv_scaled_(params, grads, denom, scaled(lr, -1.0))  # θ ← θ − ε g/√(δ + r)
        return
    direction = torch._foreach_div(grads, denom)
    _momentum.update(
        params, velocity, direction, lr=lr, momentum=momentum, lookahead=lookahead, convention=convention
    )


def _step(h: Hyper, params: list[Tensor], grads: list[Tensor], bufs: dict[str, list[Tensor]], steps: list[int],
          lookahead: bool) -> None:
    update(params, grads, bufs["square_avg"], bufs.get("velocity", []), lr=h["lr"], rho=h["rho"], eps=h["eps"],
           momentum=h["momentum"], nesterov=h["nesterov"], lookahead=lookahead, convention=h["convention"],
           weight_decay=h["weight_decay"])


def _consistent(h: Hyper) -> None:
    if h["nesterov"] and h["momentum"] == 0:
        raise ValueError("nesterov=True requires momentum > 0 (got momentum=0)")
    if h["nesterov"] and h["convention"] == "torch":
        raise ValueError("nesterov=True is Algorithm 8.6 and needs convention='book' "
                         "(torch.optim.RMSprop has no Nesterov variant)")


def _torch_options(h: Hyper) -> dict | None:
    if h["convention"] != "torch":  # the book puts δ inside the root
        return None
    return dict(lr=h["lr"], alpha=h["rho"], eps=h["eps"], momentum=h["momentum"], weight_decay=h["weight_decay"])


SPEC = Algorithm(
    name="RMSProp",
    reference="Algorithm 8.5, §8.5.4 (with momentum), Algorithm 8.6 (Nesterov); Hinton (2012)",
    hyperparameters=(
        Hyperparameter("lr", 0.001, check.non_negative, "ε", "global learning rate"),
        Hyperparameter("rho", 0.9, check.unit_interval, "ρ", "decay rate of the squared-gradient average"),
        Hyperparameter("eps", 1e-6, check.positive, "δ", "inside the root: √(δ + r) (unused by Alg. 8.6)"),
        Hyperparameter("momentum", 0.0, check.unit_interval, "α", "momentum in [0, 1)"),
        Hyperparameter("nesterov", False, check.flag, "", "gradient at the interim point (Alg. 8.6)"),
        Hyperparameter("weight_decay", 0.0, check.non_negative, "λ", "adds λθ to g (L2 penalty)"),
        Hyperparameter("convention", "book", check.convention, "", "book (δ inside the root) or torch.optim's"),
    ),
    buffers=lambda h: ("square_avg", "velocity") if h["momentum"] != 0 else ("square_avg",),
    update=_step,
    interim=lambda h: bool(h["nesterov"]),
    displacement=lambda h, bufs: _momentum.interim_displacement(
        bufs["velocity"], lr=h["lr"], momentum=h["momentum"], convention=h["convention"]),
    consistent=_consistent,
    structures=(*(dict(convention=c, **o) for c in ("book", "torch") for o in ({}, {"momentum": 0.9})),
                {"momentum": 0.9, "nesterov": True}),
    variants=(
        Variant("RMSProp", "Alg. 8.5"),
        Variant("RMSProp+Momentum", "§8.5.4", {"momentum": 0.9}),
        Variant("RMSProp+Nesterov", "Alg. 8.6", {"momentum": 0.9, "nesterov": True},
                note="√r clamped at the smallest normal float where the box (which has no δ) divides 0 by 0"),
    ),
    torch_class="RMSprop",
    torch_options=_torch_options,
)
