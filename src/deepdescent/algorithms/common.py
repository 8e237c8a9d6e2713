"""Pieces shared by the algorithm boxes."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

_IEEE = (torch.float32, torch.float64)


def _on_cpu(xs: list[Tensor]) -> bool:
    return all(type(x) is Tensor and x.device.type == "cpu" and x.dtype in _IEEE for x in xs)


def sqrt(xs: list[Tensor]) -> list[Tensor]:
    """√x of each tensor, correctly rounded (IEEE 754) wherever it runs, so that the eager path
    gives the fused kernels' bits (they take the processor's root). On CPU tensors ``torch.sqrt`` is
    MKL's VML routine, which is not correctly rounded (it differs in the last bit for about one
    element in 170): there numpy's root is taken, which is the processor's."""
    if not xs or not _on_cpu(xs):
        return torch._foreach_sqrt(xs)  # CUDA's √ and the kernel tracer's
    out = [torch.empty_like(x) for x in xs]
    for x, o in zip(xs, out):
        np.sqrt(x.detach().numpy(), out=o.numpy())
    return out


def sqrt_(xs: list[Tensor]) -> None:
    """:func:`sqrt` in place."""
    if not xs or not _on_cpu(xs):
        torch._foreach_sqrt_(xs)
        return
    for x in xs:
        a = x.detach().numpy()
        np.sqrt(a, out=a)


def with_weight_decay(grads: list[Tensor], params: list[Tensor], weight_decay: float) -> list[Tensor]:
    """Return g + λθ, the gradient of J(θ) + (λ/2)‖θ‖² (L2 penalty, as torch.optim applies it).

    The result is a new list when λ ≠ 0, so the caller's ``.grad`` tensors are never modified.
    """
    if weight_decay == 0.0:
        return grads
    return torch._foreach_add(grads, params, alpha=weight_decay)


#: A learning rate: a number, or — for vectorized members (the lab) — one tensor per list entry
#: that broadcasts against it (e.g. shape (members, 1, …, 1): one rate per member).
Rate = Any


def scaled(a: Rate, factor: Any) -> Rate:
    """a·factor for a number or a per-entry list of tensors."""
    return [t * factor for t in a] if isinstance(a, list) else a * factor


def add_scaled_(ys: list[Tensor], xs: list[Tensor], a: Rate) -> None:
    """ys ← ys + a·xs."""
    if isinstance(a, list):
        torch._foreach_addcmul_(ys, xs, a)
    else:
        torch._foreach_add_(ys, xs, alpha=a)


def addcdiv_scaled_(ys: list[Tensor], num: list[Tensor], den: list[Tensor], a: Rate) -> None:
    """ys ← ys + a·num/den (``a`` may also be a list of per-tensor numbers)."""
    if isinstance(a, list) and a and isinstance(a[0], Tensor):
        torch._foreach_addcmul_(ys, torch._foreach_div(num, den), a)
    elif isinstance(a, list):
        torch._foreach_addcdiv_(ys, num, den, a)
    else:
        torch._foreach_addcdiv_(ys, num, den, value=a)


def where_positive(x: Any, a: Any, b: Any) -> Any:
    """``a()`` where the per-tensor value ``x`` is > 0, else ``b()`` (a branch on the step count,
    such as RAdam's ρₜ > 5). While a kernel is traced ``x`` is symbolic: both are recorded and the
    kernel selects per tensor."""
    if hasattr(x, "where_positive"):
        return x.where_positive(a(), b())
    return a() if x > 0 else b()
