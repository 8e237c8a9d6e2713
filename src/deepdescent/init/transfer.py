"""Initialization from another model (§8.4: from unsupervised pretraining or another task)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class TransferReport:
    """Which entries were copied, and why the others were not."""

    copied: list[str] = field(default_factory=list)
    shape_mismatch: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    missing_in_source: list[str] = field(default_factory=list)
    unused_in_source: list[str] = field(default_factory=list)


def from_model(target: nn.Module, source: nn.Module | dict[str, torch.Tensor], *, buffers: bool = True) -> TransferReport:
    """Copy every parameter (and buffer) of ``source`` whose name and shape match one of
    ``target``; report what did not match. ``source`` may be a module or a ``state_dict``."""
    src = source.state_dict() if isinstance(source, nn.Module) else dict(source)
    dst = dict(target.named_parameters())
    if buffers:
        dst.update(dict(target.named_buffers()))
    report = TransferReport()
    with torch.no_grad():
        for name, tensor in dst.items():
            if name not in src:
                report.missing_in_source.append(name)
            elif tuple(src[name].shape) != tuple(tensor.shape):
                report.shape_mismatch.append((name, tuple(src[name].shape), tuple(tensor.shape)))
            else:
                tensor.copy_(src[name])
                report.copied.append(name)
    report.unused_in_source = [n for n in src if n not in dst]
    return report
