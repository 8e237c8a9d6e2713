"""Pieces shared by the algorithm boxes."""

from __future__ import annotations

import torch
from torch import Tensor


def with_weight_decay(grads: list[Tensor], params: list[Tensor], weight_decay: float) -> list[Tensor]:
    """Return g + λθ, the gradient of J(θ) + (λ/2)‖θ‖² (L2 penalty, as torch.optim applies it).

    The result is a new list when λ ≠ 0, so the caller's ``.grad`` tensors are never modified.
    """
    if weight_decay == 0.0:
        return grads
    return torch._foreach_add(grads, params, alpha=weight_decay)


def zeros_like(params: list[Tensor]) -> list[Tensor]:
    """Zero state buffers shaped like ``params`` (same dtype, device and memory format)."""
    return [torch.zeros_like(p, memory_format=torch.preserve_format) for p in params]
