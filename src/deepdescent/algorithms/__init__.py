"""The functional core: one module per algorithm box of chapter 8 (and its descendants).

Each module writes its box once, as a pure function over *lists* of tensors with multi-tensor
(``torch._foreach_*``) operations and no data-dependent control flow, and describes itself in a
module-level ``SPEC`` (:class:`~deepdescent.algorithms.spec.Algorithm`): its hyperparameters with
their defaults and checks, its state buffers and how they start (``init``, zero unless it says
otherwise), and the update every layer calls::

    spec.update(h, params, grads, bufs, steps, lookahead)

which changes ``params`` and the ``bufs`` lists **in place** (an optimizer step is memory-bound;
copying the state would double its cost) and never ``grads``. These functions are the one
place where each formula is written; the optimizer classes take their defaults from the spec.
:data:`REGISTRY` lists every module's spec, found by name: a new algorithm module is registered
by being here.
"""

from __future__ import annotations

import importlib
import pkgutil

from deepdescent.algorithms.spec import Algorithm, Hyperparameter, Variant


def _discover() -> dict[str, Algorithm]:
    specs = []
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_") and info.name not in ("spec", "validation", "common"):
            module = importlib.import_module(f"{__name__}.{info.name}")
            if isinstance(getattr(module, "SPEC", None), Algorithm):
                specs.append(module.SPEC)
    return {s.name: s for s in specs}


#: Every first-order algorithm, by name, in the order of the book (then its descendants).
REGISTRY: dict[str, Algorithm] = _discover()

_ORDER = ("SGD", "AdaGrad", "RMSProp", "Adam", "AdaDelta", "DeltaBarDelta")
REGISTRY = dict(sorted(REGISTRY.items(), key=lambda kv: (_ORDER.index(kv[0]) if kv[0] in _ORDER else len(_ORDER),
                                                          kv[0])))


def algorithm(name: str) -> Algorithm:
    """The spec named ``name`` (ValueError listing the valid names otherwise)."""
    if name not in REGISTRY:
        raise ValueError(f"unknown algorithm {name!r}; valid: {', '.join(REGISTRY)}")
    return REGISTRY[name]


__all__ = ["REGISTRY", "Algorithm", "Hyperparameter", "Variant", "algorithm"]
