"""Lists of tensors as one flat vector (the parameter space of the second-order methods).

A complex tensor enters as its real view (real and imaginary parts interleaved), as torch.optim
treats complex parameters: the flat vector is real, and PyTorch's gradient of a real loss with
respect to a complex tensor is exactly the gradient with respect to its real view."""

from __future__ import annotations

import torch
from torch import Tensor


def flat(tensors: list[Tensor]) -> Tensor:
    """Concatenate flattened tensors into one vector."""
    if not tensors:
        return torch.zeros(0)
    return torch.cat([_real(t).reshape(-1) for t in tensors])


def real_dot(a: Tensor, b: Tensor) -> Tensor:
    """⟨a, b⟩ of two tensors as real vectors (complex ones as their real views)."""
    return (_real(a) * _real(b)).sum()


def _real(t: Tensor) -> Tensor:
    return torch.view_as_real(t) if t.is_complex() else t


def unflat_like(vector: Tensor, like: list[Tensor]) -> list[Tensor]:
    """Split a flat vector into views shaped like ``like`` (complex views for complex tensors)."""
    out, offset = [], 0
    for t in like:
        r = _real(t)
        n = r.numel()
        piece = vector[offset:offset + n].view_as(r)
        out.append(torch.view_as_complex(piece) if t.is_complex() else piece)
        offset += n
    if offset != vector.numel():
        raise ValueError(f"vector has {vector.numel()} elements, the tensors {offset}")
    return out
