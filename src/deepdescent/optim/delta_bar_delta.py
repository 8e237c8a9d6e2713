"""``DeltaBarDelta``: Jacobs (1988), §8.5."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from deepdescent.algorithms import delta_bar_delta
from deepdescent.optim import _validation as check
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

    def __init__(self, params: Any, lr: float = 0.01, kappa: float = 1e-3, phi: float = 0.1, theta: float = 0.7,
                 weight_decay: float = 0.0, *, nonfinite: NonFinite = "skip") -> None:
        super().__init__(params, dict(lr=lr, kappa=kappa, phi=phi, theta=theta, weight_decay=weight_decay),
                         nonfinite=nonfinite, impl="eager")  # per-element branches: no fused kernel

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        group.setdefault("initial_lr", group["lr"])

    def _validate_group(self, group: dict[str, Any]) -> None:
        check.non_negative("lr", group["lr"])  # a scheduler may reach 0; the rates start at initial_lr
        check.positive("initial_lr", group.get("initial_lr", group["lr"]))
        check.non_negative("kappa", group["kappa"])
        check.unit_interval("phi", group["phi"])
        check.unit_interval("theta", group["theta"])
        check.non_negative("weight_decay", group["weight_decay"])

    def _state_names(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("rates", "bar_delta")

    def _init_buffer(self, name: str, p: Tensor, group: dict[str, Any]) -> Tensor:
        if name == "rates":
            return delta_bar_delta.init([p], lr=float(group.get("initial_lr", group["lr"])))[0][0]
        return super()._init_buffer(name, p, group)

    def _update(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                bufs: dict[str, list[Tensor]], steps: list[int], lookahead: bool) -> None:
        lr, base = group["lr"], group.get("initial_lr", group["lr"])
        if isinstance(lr, list):  # per-tensor rates (the lab's members): factors per tensor
            scale = [a / b for a, b in zip(lr, base)] if isinstance(base, list) else [a / base for a in lr]
        else:
            scale = (lr.item() if isinstance(lr, Tensor) else float(lr)) / float(base)
        delta_bar_delta.update(params, grads, bufs["rates"], bufs["bar_delta"], kappa=group["kappa"],
                               phi=group["phi"], theta=group["theta"], weight_decay=group["weight_decay"],
                               scale=scale)
