"""``RMSProp``: Algorithm 8.5, RMSProp with momentum (§8.5.4) and Algorithm 8.6."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from deepdescent.algorithms import rmsprop
from deepdescent.algorithms.momentum import Convention
from deepdescent.optim import _validation as check
from deepdescent.optim.base import BookOptimizer, NonFinite, _lr


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

    def _validate_group(self, group: dict[str, Any]) -> None:
        check.non_negative("lr", group["lr"])
        check.unit_interval("rho", group["rho"])
        check.positive("eps", group["eps"])
        check.unit_interval("momentum", group["momentum"])
        check.flag("nesterov", group["nesterov"])
        check.non_negative("weight_decay", group["weight_decay"])
        check.choice("convention", group["convention"], ("book", "torch"))
        if group["nesterov"] and group["momentum"] == 0:
            raise ValueError("nesterov=True requires momentum > 0 (got momentum=0)")
        if group["nesterov"] and group["convention"] == "torch":
            raise ValueError("nesterov=True is Algorithm 8.6 and needs convention='book' "
                             "(torch.optim.RMSprop has no Nesterov variant)")

    def _state_names(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("square_avg", "velocity") if group["momentum"] != 0 else ("square_avg",)

    def _uses_interim_point(self, group: dict[str, Any]) -> bool:
        return bool(group["nesterov"])

    def _update(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                bufs: dict[str, list[Tensor]], steps: list[int], lookahead: bool) -> None:
        rmsprop.update(
            params, grads, bufs["square_avg"], bufs.get("velocity", []),
            lr=_lr(group), rho=group["rho"], eps=group["eps"], momentum=group["momentum"],
            nesterov=group["nesterov"], lookahead=lookahead, convention=group["convention"],
            weight_decay=group["weight_decay"],
        )
