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
from deepdescent.algorithms._common import Rate, add_scaled_, scaled, with_weight_decay


def init(params: list[Tensor], *, momentum: float) -> list[Tensor]:
    """The velocity v = 0 (empty when α = 0: plain SGD keeps no state)."""
    return _momentum.init(params) if momentum != 0.0 else []


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
