"""Gradient clipping (§8.2.4, §10.11.1): keep a step on a cliff from throwing the parameters far.

By norm: if ‖g‖ > v then g ← g·v/‖g‖ (direction kept, length at most v). By value: each
component clipped to [−v, v]. None of these functions synchronizes with the device: the norm is
returned as a tensor and the scaling factor is computed on the device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer


def _grads(params: Iterable[Tensor] | Tensor) -> list[Tensor]:
    params = [params] if isinstance(params, Tensor) else list(params)
    return [p.grad for p in params if p.grad is not None]


def _check_threshold(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"invalid {name}={value!r}: must be a finite number > 0")


def _coefficient(norm: Tensor, max_norm: float) -> Tensor:
    # min(1, v/‖g‖); a non-finite norm leaves the gradient as it is (the optimizer's non-finite
    # check then skips the step) rather than zeroing or poisoning it here
    coef = (max_norm / norm).clamp(max=1.0)
    return torch.where(torch.isfinite(norm), coef, torch.ones_like(coef))


def _global_norm(grads: list[Tensor]) -> Tensor:
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


def clip_grad_norm_(params: Iterable[Tensor] | Tensor, max_norm: float) -> Tensor:
    """Clip the *global* gradient norm to ``max_norm``; returns the norm before clipping."""
    _check_threshold("max_norm", max_norm)
    grads = _grads(params)
    if not grads:
        return torch.zeros(())
    norm = _global_norm(grads)
    torch._foreach_mul_(grads, _coefficient(norm, max_norm))
    return norm


def clip_grad_norm_per_tensor_(params: Iterable[Tensor] | Tensor, max_norm: float) -> Tensor:
    """Clip each parameter's gradient to norm ``max_norm`` on its own; returns the norms before
    clipping (one per gradient, stacked)."""
    _check_threshold("max_norm", max_norm)
    grads = _grads(params)
    if not grads:
        return torch.zeros(0)
    norms = torch.stack(torch._foreach_norm(grads))
    coefs = _coefficient(norms, max_norm)
    torch._foreach_mul_(grads, list(coefs.unbind()))
    return norms


def clip_grad_value_(params: Iterable[Tensor] | Tensor, max_value: float) -> Tensor:
    """Clip each gradient component to [−v, v]; returns the global norm before clipping."""
    _check_threshold("max_value", max_value)
    grads = _grads(params)
    if not grads:
        return torch.zeros(())
    norm = _global_norm(grads)
    torch._foreach_clamp_min_(grads, -max_value)
    torch._foreach_clamp_max_(grads, max_value)
    return norm


class Clipped(Optimizer):
    """Wrap any optimizer so that every step clips the gradients first.

    ``mode``: ``"norm"`` (global norm), ``"per_tensor"`` or ``"value"``; ``threshold`` = v. With a
    closure, the gradients the closure computes are clipped before the wrapped optimizer uses them.
    The wrapper shares the wrapped optimizer's param groups and state, so LR schedulers,
    ``state_dict`` and ``zero_grad`` act on it. ``last_norm`` holds the pre-clip norm(s) of the
    latest step, as a tensor (no synchronization); ``clipped`` counts the steps whose norm
    exceeded v (read it when convenient: it synchronizes).
    """

    _MODES: dict[str, Callable[[Any, float], Tensor]] = {
        "norm": clip_grad_norm_, "per_tensor": clip_grad_norm_per_tensor_, "value": clip_grad_value_,
    }

    def __init__(self, optimizer: Optimizer, threshold: float, mode: str = "norm") -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"Clipped wraps a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if mode not in self._MODES:
            raise ValueError(f"invalid mode={mode!r}: must be one of {', '.join(map(repr, self._MODES))}")
        _check_threshold("threshold", threshold)
        self.optimizer, self.threshold, self.mode = optimizer, threshold, mode
        super().__init__(optimizer.param_groups, optimizer.defaults)  # the same group dicts
        self.state = optimizer.state
        self.last_norm: Tensor | None = None
        self._exceeded = torch.zeros((), dtype=torch.int64)

    def _clip(self) -> None:
        params = [p for g in self.param_groups for p in g["params"]]
        norm = self._MODES[self.mode](params, self.threshold)
        self.last_norm = norm
        limit = self.threshold if self.mode != "value" else math.inf
        self._exceeded += (norm > limit).any().to(self._exceeded.device, torch.int64)

    @property
    def clipped(self) -> int:
        return int(self._exceeded)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        if closure is None:
            self._clip()
            return self.optimizer.step()

        def clipped_closure() -> Any:
            loss = closure()
            self._clip()
            return loss

        return self.optimizer.step(clipped_closure)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state_dict)

    def __getattr__(self, name: str) -> Any:  # e.g. at_theta() of a Nesterov optimizer
        if name == "optimizer":
            raise AttributeError(name)
        return getattr(self.optimizer, name)
