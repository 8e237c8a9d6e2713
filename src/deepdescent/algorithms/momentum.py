"""The velocity rule shared by SGD with momentum (Algorithm 8.2), Nesterov momentum (8.3),
RMSProp with momentum (§8.5.4) and RMSProp with Nesterov momentum (Algorithm 8.6).

Given a *direction* d (the gradient g for SGD, the rescaled gradient g/√(δ+r) for RMSProp):

Book convention (``convention="book"``), Algorithm 8.2::

    v ← αv − εd
    θ ← θ + v

The velocity carries the learning rate ε: a new ε only scales new contributions.

torch convention (``convention="torch"``), as ``torch.optim.SGD``/``RMSprop`` (dampening 0)::

    b ← αb + d
    θ ← θ − εb

At constant ε the two coincide with v = −εb; after a change of ε they differ, because torch
rescales the whole accumulated velocity by the new ε.

Nesterov (Algorithm 8.3/8.6) evaluates g at the interim point θ̃ = θ + αv. With
``lookahead=True`` the parameters hold θ̃ instead of θ (the standard reparameterisation, Sutskever
et al. 2013): substituting θ = θ̃ − αv into θ ← θ + v gives::

    v ← αv − εd
    θ̃ ← θ̃ + αv − εd          (book)
    θ̃ ← θ̃ − ε(d + αb)        (torch, after b ← αb + d)

When a closure evaluates the gradient at θ̃ itself (``lookahead=False``), the update of θ is the
plain momentum update above; only the point where g was taken differs.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from deepdescent.algorithms.common import Rate, add_scaled_, scaled

Convention = Literal["book", "torch"]



def update(
    params: list[Tensor],
    velocity: list[Tensor],
    direction: list[Tensor],
    *,
    lr: Rate,
    momentum: float,
    lookahead: bool,
    convention: Convention,
) -> None:
    """Apply one momentum step along ``direction``; updates ``params`` and ``velocity`` in place."""
    torch._foreach_mul_(velocity, momentum)
    if convention == "book":
        add_scaled_(velocity, direction, scaled(lr, -1.0))  # v ← αv − εd
        if lookahead:
            torch._foreach_add_(params, velocity, alpha=momentum)  # θ̃ ← θ̃ + αv
            add_scaled_(params, direction, scaled(lr, -1.0))  #      − εd
        else:
            torch._foreach_add_(params, velocity)  # θ ← θ + v
    else:
        torch._foreach_add_(velocity, direction)  # b ← αb + d
        if lookahead:
            step = torch._foreach_add(direction, velocity, alpha=momentum)
            add_scaled_(params, step, scaled(lr, -1.0))  # θ̃ ← θ̃ − ε(d + αb)
        else:
            add_scaled_(params, velocity, scaled(lr, -1.0))  # θ ← θ − εb


def interim_displacement(
    velocity: list[Tensor], *, lr: Rate, momentum: float, convention: Convention
) -> list[Tensor]:
    """The displacement αv that takes θ to the interim point θ̃ = θ + αv (Algorithms 8.3, 8.6).

    In the torch convention v = −εb, so the displacement is −εαb.
    """
    if convention == "book":
        return torch._foreach_mul(velocity, momentum)
    return torch._foreach_mul(velocity, scaled(lr, -momentum))
