"""Algorithms 8.1–8.3: stochastic gradient descent, with momentum, with Nesterov momentum.

Algorithm 8.1 (SGD)::

    g ← (1/m) ∇θ Σᵢ L(f(x⁽ⁱ⁾; θ), y⁽ⁱ⁾)
    θ ← θ − ε g

Algorithm 8.2 (momentum, α ∈ [0, 1))::

    v ← αv − εg
    θ ← θ + v

Algorithm 8.3 (Nesterov momentum): as 8.2 with g taken at θ̃ = θ + αv.

Symbols: ``lr`` = ε, ``momentum`` = α. The velocity rule lives in :mod:`.momentum`.
"""

from __future__ import annotations

from torch import Tensor

from deepdescent.algorithms import momentum as _momentum
from deepdescent.algorithms import validation as check
from deepdescent.algorithms.common import Rate, add_scaled_, scaled, with_weight_decay
from deepdescent.algorithms.spec import REQUIRED, Algorithm, Hyper, Hyperparameter, Variant



def update(
    params: list[Tensor],
    grads: list[Tensor],
    velocity: list[Tensor],
    *,
    lr: Rate,
    momentum: float,
    lookahead: bool,
    convention: _momentum.Convention,
    weight_decay: float,
) -> None:
    """One step of Algorithm 8.1 (α = 0), 8.2, or 8.3 (``lookahead``: parameters hold θ̃)."""
    grads = with_weight_decay(grads, params, weight_decay)
    if momentum == 0.0:
        add_scaled_(params, grads, scaled(lr, -1.0))  # θ ← θ − εg
        return
    _momentum.update(
        params, velocity, grads, lr=lr, momentum=momentum, lookahead=lookahead, convention=convention
    )


def _step(h: Hyper, params: list[Tensor], grads: list[Tensor], bufs: dict[str, list[Tensor]], steps: list[int],
          lookahead: bool) -> None:
    update(params, grads, bufs.get("velocity", []), lr=h["lr"], momentum=h["momentum"], lookahead=lookahead,
           convention=h["convention"], weight_decay=h["weight_decay"])


def _consistent(h: Hyper) -> None:
    if h["nesterov"] and h["momentum"] == 0:
        raise ValueError("nesterov=True requires momentum > 0 (got momentum=0)")


def _torch_options(h: Hyper) -> dict:
    # the two conventions coincide while ε is constant (v = −εb)
    return dict(lr=h["lr"], momentum=h["momentum"], nesterov=h["nesterov"], weight_decay=h["weight_decay"])


SPEC = Algorithm(
    name="SGD",
    reference="Algorithms 8.1 (SGD), 8.2 (momentum), 8.3 (Nesterov momentum)",
    hyperparameters=(
        Hyperparameter("lr", REQUIRED, check.non_negative, "ε", "learning rate (no default)"),
        Hyperparameter("momentum", 0.0, check.unit_interval, "α", "momentum in [0, 1)"),
        Hyperparameter("nesterov", False, check.flag, "", "gradient at the interim point θ + αv (Alg. 8.3)"),
        Hyperparameter("weight_decay", 0.0, check.non_negative, "λ", "adds λθ to g (L2 penalty)"),
        Hyperparameter("convention", "book", check.convention, "", "velocity v ← αv − εg (book) or torch's buffer"),
    ),
    buffers=lambda h: ("velocity",) if h["momentum"] != 0 else (),
    update=_step,
    interim=lambda h: bool(h["nesterov"]),
    displacement=lambda h, bufs: _momentum.interim_displacement(
        bufs["velocity"], lr=h["lr"], momentum=h["momentum"], convention=h["convention"]),
    consistent=_consistent,
    structures=tuple(dict(convention=c, **o) for c in ("book", "torch")
                     for o in ({}, {"momentum": 0.9}, {"momentum": 0.9, "nesterov": True})),
    variants=(
        Variant("SGD", "Alg. 8.1", {"lr": 0.01}),
        Variant("Momentum", "Alg. 8.2", {"lr": 0.01, "momentum": 0.9}),
        Variant("Nesterov", "Alg. 8.3", {"lr": 0.01, "momentum": 0.9, "nesterov": True}),
    ),
    torch_class="SGD",
    torch_options=_torch_options,
    family="momentum",
)
