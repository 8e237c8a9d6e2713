"""``DeltaBarDelta``: Jacobs (1988), §8.5."""

from __future__ import annotations

from typing import Any

from deepdescent.algorithms import delta_bar_delta
from deepdescent.optim.base import BookOptimizer, NonFinite


class DeltaBarDelta(BookOptimizer):
    r"""Delta-bar-delta (Jacobs 1988): each parameter has its own learning rate, which grows by κ
    while the gradient keeps the sign of its exponential average δ̄ and shrinks by the factor
    (1 − φ) when the sign flips. Meant for full-batch optimization (§8.5).

    δ̄ ← (1 − θ)g + θδ̄;  ε ← ε + κ if δ̄_prev·g > 0;  ε ← (1 − φ)ε if δ̄_prev·g < 0;  w ← w − ε⊙g.

    Defaults: ``lr`` (initial ε) 0.01, ``kappa`` 1e-3, ``phi`` 0.1, ``theta`` 0.7 (Jacobs' θ). κ
    should be small next to ε: the rates grow linearly while the signs agree, but shrink
    geometrically, which is what keeps the method stable. ``weight_decay`` adds λw to g.

    The rates start at the group's ``initial_lr`` (its lr at construction, the key torch's LR
    schedulers use); a later lr scales every step by lr/initial_lr, so that schedulers (and lr = 0
    for a frozen group) act on it as on any optimizer. At a constant lr this is the box.
    """

    algorithm = delta_bar_delta.SPEC

    def __init__(self, params: Any, lr: float = 0.01, kappa: float = 1e-3, phi: float = 0.1, theta: float = 0.7,
                 weight_decay: float = 0.0, *, nonfinite: NonFinite = "skip", impl: str = "auto") -> None:
        # per-element branches: no fused kernel ("auto" runs the eager path, "fused" raises)
        super().__init__(params, dict(lr=lr, kappa=kappa, phi=phi, theta=theta, weight_decay=weight_decay),
                         nonfinite=nonfinite, impl=impl)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        group.setdefault("initial_lr", group["lr"])
