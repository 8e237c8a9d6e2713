"""``RMSProp``: Algorithm 8.5, RMSProp with momentum (§8.5.4) and Algorithm 8.6."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from deepdescent.algorithms import rmsprop
from deepdescent.algorithms.momentum import Convention
from deepdescent.optim.base import BookOptimizer, NonFinite


class RMSProp(BookOptimizer):
    r"""RMSProp (Hinton 2012), with momentum or Nesterov momentum.

    Algorithm 8.5: r ← ρr + (1 − ρ)g⊙g;  Δθ = −ε/√(δ + r) ⊙ g;  θ ← θ + Δθ.

    ``momentum=α > 0`` (RMSProp with momentum, §8.5.4): v ← αv − ε g/√(δ + r);  θ ← θ + v.

    ``nesterov=True`` (Algorithm 8.6): θ̃ ← θ + αv; g at θ̃; r ← ρr + (1 − ρ)g⊙g;
    v ← αv − ε/√r ⊙ g;  θ ← θ + v. The box has no δ, so ``eps`` is not used; the safeguard is a
    clamp of √r at the dtype's smallest normal number, which changes nothing unless r = 0 (a
    component whose gradients were all 0, where the box divides 0 by 0; its update is then 0).
    The interim point is handled as in :class:`~deepdescent.optim.SGD`.

    Symbols: ``lr`` = ε, ``rho`` = ρ, ``eps`` = δ, ``momentum`` = α; ``weight_decay`` = λ adds λθ.

    ``convention="torch"`` reproduces ``torch.optim.RMSprop`` (``alpha`` = ρ there, δ outside the
    root: g/(√r + δ), momentum buffer without ε); torch has no Nesterov variant, so it cannot be
    combined with ``nesterov=True``. ``nonfinite``: see :class:`~deepdescent.optim.SGD`.
    """

    algorithm = rmsprop.SPEC

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 0.001,
        rho: float = 0.9,
        eps: float = 1e-6,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        *,
        convention: Convention = "book",
        nonfinite: NonFinite = "skip",
        impl: str = "auto",
    ) -> None:
        defaults = dict(lr=lr, rho=rho, eps=eps, momentum=momentum, nesterov=nesterov,
                        weight_decay=weight_decay, convention=convention)
        super().__init__(params, defaults, nonfinite=nonfinite, impl=impl)
