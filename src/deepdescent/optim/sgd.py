"""``SGD``: Algorithms 8.1 (SGD), 8.2 (momentum) and 8.3 (Nesterov momentum)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from deepdescent.algorithms import sgd
from deepdescent.algorithms.momentum import Convention
from deepdescent.optim import _validation as check
from deepdescent.optim.base import BookOptimizer, NonFinite, _lr


class SGD(BookOptimizer):
    r"""Stochastic gradient descent with optional (Nesterov) momentum, as the book writes it.

    Algorithm 8.1 (``momentum=0``): θ ← θ − εg.

    Algorithm 8.2 (``momentum=α > 0``): v ← αv − εg;  θ ← θ + v.

    Algorithm 8.3 (``nesterov=True``): θ̃ ← θ + αv;  g ← ∇J(θ̃);  v ← αv − εg;  θ ← θ + v.

    Symbols: ``lr`` = ε, ``momentum`` = α. ``weight_decay`` = λ adds λθ to g (L2 penalty).

    Args:
        params: parameters or param groups (hyperparameters may differ per group).
        lr: learning rate ε (float or 0-dim tensor); required, here or in every param group.
        momentum: α in [0, 1); 0.5, 0.9 and 0.99 are the book's examples.
        nesterov: evaluate the gradient at the interim point (Algorithm 8.3).
        weight_decay: λ ≥ 0.
        convention: ``"book"`` keeps the velocity v of the box, which carries ε: a change of lr
            (e.g. by :class:`~deepdescent.schedules.LinearDecay`) affects only new contributions.
            ``"torch"`` keeps torch.optim's buffer b ← αb + g, θ ← θ − εb, which rescales the
            whole velocity by the current ε. Both agree while ε is constant.
        nonfinite: ``"skip"`` (default) leaves parameters and state unchanged on a step whose
            gradients hold NaN/Inf and counts it in :attr:`skipped_steps`; ``"raise"`` raises
            :class:`~deepdescent.optim.NonFiniteGradientError` naming the parameter;
            ``"propagate"`` does not look (NaN/Inf reach parameters and state, as in torch.optim):
            one read of the gradients less per step, for when something else (e.g. a GradScaler)
            already guards the step.
        impl: ``"auto"`` (default: the fused kernel generated from this algorithm's formula where
            it applies — contiguous tensors: C++ on the CPU, Triton on CUDA — else the eager
            multi-tensor path), ``"fused"`` (require it) or ``"eager"``. All run the same formula.

    Nesterov's interim point. ``step(closure)`` moves the parameters to θ̃ = θ + αv, calls the
    closure there, restores θ and applies the update: the parameters hold θ, exactly as in the box.
    ``step()`` without a closure uses the look-ahead reparameterisation: the parameters hold θ̃
    (the gradient of the last backward pass is the gradient at θ̃) and the update is
    θ̃ ← θ̃ + αv − εg. Both give the same iterates. In look-ahead mode, evaluate or checkpoint θ
    inside ``with optimizer.at_theta():``. An optimizer keeps the mode of its first step.
    """

    def __init__(
        self,
        params: Any,
        lr: float | Tensor | None = None,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        *,
        convention: Convention = "book",
        nonfinite: NonFinite = "skip",
        impl: str = "auto",
    ) -> None:
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                        convention=convention)
        super().__init__(params, defaults, nonfinite=nonfinite, impl=impl)

    def _validate_group(self, group: dict[str, Any]) -> None:
        if group["lr"] is None:
            if "params" in group:  # a real group, not the defaults
                raise ValueError("SGD needs lr (no default): pass lr=... or give every param group an 'lr'")
        else:
            check.non_negative("lr", group["lr"])
        check.unit_interval("momentum", group["momentum"])
        check.flag("nesterov", group["nesterov"])
        check.non_negative("weight_decay", group["weight_decay"])
        check.choice("convention", group["convention"], ("book", "torch"))
        if group["nesterov"] and group["momentum"] == 0:
            raise ValueError("nesterov=True requires momentum > 0 (got momentum=0)")

    def _state_names(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("velocity",) if group["momentum"] != 0 else ()

    def _uses_interim_point(self, group: dict[str, Any]) -> bool:
        return bool(group["nesterov"])

    def _update(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                bufs: dict[str, list[Tensor]], steps: list[int], lookahead: bool) -> None:
        sgd.update(
            params, grads, bufs.get("velocity", []),
            lr=_lr(group), momentum=group["momentum"], lookahead=lookahead,
            convention=group["convention"], weight_decay=group["weight_decay"],
        )
