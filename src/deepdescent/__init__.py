"""deepdescent: the optimization of deep models, after chapter 8 of *Deep Learning*
(Goodfellow, Bengio, Courville).

Subpackages: :mod:`deepdescent.algorithms` (the functional core: one module per algorithm box),
:mod:`deepdescent.optim` (``torch.optim`` optimizers), :mod:`deepdescent.schedules`,
:mod:`deepdescent.init` (§8.4), :mod:`deepdescent.training` (samplers, clipping, averaging, early
stopping, curriculum).

The subpackages are imported on first use (``deepdescent.optim`` or ``from deepdescent import
optim``): ``import deepdescent.cli`` does not import torch, so that the lab's worker processes can
arrange to die with their parent before their heavy imports.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "algorithms", "init", "optim", "schedules", "training"]


def __getattr__(name: str) -> Any:
    if name in __all__[1:]:
        return importlib.import_module(f"deepdescent.{name}")
    raise AttributeError(f"module 'deepdescent' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
