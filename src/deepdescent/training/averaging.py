"""Polyak averaging (§8.7.3): evaluate the average of the iterates rather than the last one."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn


class PolyakAverage:
    """Running average of a model's parameters (and optionally floating-point buffers).

    ``mode="arithmetic"``: θ̂⁽ᵗ⁾ = (1/t) Σᵢ θ⁽ⁱ⁾ (Polyak & Juditsky 1992).
    ``mode="exponential"``: θ̂⁽ᵗ⁾ = α θ̂⁽ᵗ⁻¹⁾ + (1 − α) θ⁽ᵗ⁾ (eq. 8.39), for non-convex problems.
    Both start at θ̂⁽¹⁾ = θ⁽¹⁾, the first iterate given to :meth:`update`. Call :meth:`update` after
    each ``optimizer.step()``; evaluate with ``with avg.swapped(): ...``. Works with any optimizer.
    """

    def __init__(self, model: nn.Module, mode: str = "arithmetic", alpha: float = 0.999, *, buffers: bool = False) -> None:
        if mode not in ("arithmetic", "exponential"):
            raise ValueError(f"invalid mode={mode!r}: must be 'arithmetic' or 'exponential'")
        if not (isinstance(alpha, (int, float)) and 0.0 <= alpha < 1.0):
            raise ValueError(f"invalid alpha={alpha!r}: must be in [0, 1)")
        self.mode, self.alpha = mode, float(alpha)
        self.tensors: list[Tensor] = [p for p in model.parameters()]
        if buffers:
            self.tensors += [b for b in model.buffers() if b.is_floating_point()]
        self.average: list[Tensor] = [t.detach().clone() for t in self.tensors]
        self.count = 0

    @torch.no_grad()
    def update(self) -> None:
        """Fold the current parameters into the average."""
        self.count += 1
        weight = 1.0 / self.count if self.mode == "arithmetic" else (1.0 if self.count == 1 else 1.0 - self.alpha)
        torch._foreach_lerp_(self.average, [t.detach() for t in self.tensors], weight)

    @contextlib.contextmanager
    def swapped(self) -> Iterator[None]:
        """Hold the average in the model inside the block; the parameters are restored exactly after."""
        if self.count == 0:
            raise RuntimeError("no iterate has been averaged yet: call update() after optimizer.step()")
        with torch.no_grad():
            saved = [t.detach().clone() for t in self.tensors]
            torch._foreach_copy_(self.tensors, self.average)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(self.tensors, saved)

    def state_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "alpha": self.alpha, "count": self.count, "average": [a.clone() for a in self.average]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        avg = state["average"]
        if len(avg) != len(self.average) or any(a.shape != b.shape for a, b in zip(avg, self.average)):
            raise ValueError("the saved average does not match this model's parameters (count or shapes differ)")
        self.mode, self.alpha, self.count = state["mode"], state["alpha"], state["count"]
        with torch.no_grad():
            torch._foreach_copy_(self.average, list(avg))
