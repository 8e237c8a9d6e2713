"""Lists of tensors as one flat vector (the parameter space of the second-order methods)."""

from __future__ import annotations

import torch
from torch import Tensor


def flat(tensors: list[Tensor]) -> Tensor:
    """Concatenate flattened tensors into one vector."""
    if not tensors:
        return torch.zeros(0)
    return torch.cat([t.reshape(-1) for t in tensors])


def unflat_like(vector: Tensor, like: list[Tensor]) -> list[Tensor]:
    """Split a flat vector into views shaped like ``like``."""
    out, offset = [], 0
    for t in like:
        n = t.numel()
        out.append(vector[offset:offset + n].view_as(t))
        offset += n
    if offset != vector.numel():
        raise ValueError(f"vector has {vector.numel()} elements, the tensors {offset}")
    return out
