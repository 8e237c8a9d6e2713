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
    """

    def __init__(self, params: Any, lr: float = 0.01, kappa: float = 1e-3, phi: float = 0.1, theta: float = 0.7,
                 weight_decay: float = 0.0, *, nonfinite: NonFinite = "skip") -> None:
        super().__init__(params, dict(lr=lr, kappa=kappa, phi=phi, theta=theta, weight_decay=weight_decay),
                         nonfinite=nonfinite, impl="eager")  # per-element branches: no fused kernel

    def _validate_group(self, group: dict[str, Any]) -> None:
        check.positive("lr", group["lr"])
        check.non_negative("kappa", group["kappa"])
        check.unit_interval("phi", group["phi"])
        check.unit_interval("theta", group["theta"])
        check.non_negative("weight_decay", group["weight_decay"])

    def _state_names(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("rates", "bar_delta")

    def _init_buffer(self, name: str, p: Tensor, group: dict[str, Any]) -> Tensor:
        if name == "rates":
            return delta_bar_delta.init([p], lr=float(group["lr"]))[0][0]
        return super()._init_buffer(name, p, group)

    def _update(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                bufs: dict[str, list[Tensor]], steps: list[int], lookahead: bool) -> None:
        delta_bar_delta.update(params, grads, bufs["rates"], bufs["bar_delta"], kappa=group["kappa"],
                               phi=group["phi"], theta=group["theta"], weight_decay=group["weight_decay"])
