"""Setting the initial scale of each layer from data (§8.4; Mishkin & Matas 2015, "All you need
is a good init", LSUV)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

_DEFAULT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass(frozen=True)
class LayerScaling:
    """What :func:`scale_by_data` did to one layer."""

    name: str
    initial_std: float
    final_std: float
    scale: float  # the factor the weight was multiplied by, in total
    iterations: int
    converged: bool


def scale_by_data(
    model: nn.Module,
    batch: Tensor,
    *,
    target_std: float = 1.0,
    tol: float = 0.05,
    max_iter: int = 10,
    layer_types: tuple[type[nn.Module], ...] = _DEFAULT_LAYERS,
) -> list[LayerScaling]:
    """The book's procedure, automated: on one minibatch, in forward order, scale each layer's
    weight until the standard deviation of its output activations is ``target_std`` (within a
    relative ``tol``), repeating the forward pass after each change.

    The model is run in its current train/eval mode under ``no_grad``. Returns one
    :class:`LayerScaling` per layer treated.
    """
    if not target_std > 0:
        raise ValueError(f"invalid target_std={target_std!r}: must be > 0")
    if not 0 < tol < 1:
        raise ValueError(f"invalid tol={tol!r}: must be in (0, 1)")
    if max_iter < 1:
        raise ValueError(f"invalid max_iter={max_iter!r}: must be >= 1")
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, layer_types) and getattr(m, "weight", None) is not None]
    if not layers:
        raise ValueError(f"the model has no layer of types {[t.__name__ for t in layer_types]} to scale")
    report = []
    with torch.no_grad():
        for name, layer in layers:
            captured: list[Tensor] = []
            handle = layer.register_forward_hook(lambda _m, _i, out: captured.append(out))

            def measure() -> float:
                captured.clear()
                model(batch)
                return captured[0].float().std().item()

            try:
                initial = std = measure()
                total, iterations = 1.0, 0
                # a dead (std 0) or non-finite layer has nothing to divide by: leave it and say so
                while iterations < max_iter and math.isfinite(std) and std > 0 and abs(std / target_std - 1) > tol:
                    factor = target_std / std
                    layer.weight.mul_(factor)
                    total *= factor
                    iterations += 1
                    std = measure()
            finally:
                handle.remove()
            converged = math.isfinite(std) and abs(std / target_std - 1) <= tol
            report.append(LayerScaling(name, initial, std, total, iterations, converged))
    return report
