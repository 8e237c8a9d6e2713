"""What every layer knows about an algorithm: one frozen :class:`Algorithm` per box.

An algorithm module (``adam.py``, ``sgd.py``, …) writes its box once, as a pure function over
lists of tensors, and describes itself in a module-level ``SPEC``: its name and book reference,
its hyperparameters (name, default, check, the book's symbol), the state buffers it keeps, how
they start, whether its gradient is taken at an interim point (Nesterov), and the structures
that span its standard fused kernels. The optimizer classes (``deepdescent.optim``), the
executor (``deepdescent.executor``), the kernel generator (``deepdescent.kernels``), the lab,
the benchmarks and the tests all read the spec; none of them reads an optimizer's internals.

The update's calling convention, for every algorithm::

    spec.update(h, params, grads, bufs, steps, lookahead)

``h`` maps hyperparameter names to values (``lr`` a float, a symbolic scalar while a kernel is
traced, or a list of per-entry tensors for the lab's vectorized members); ``bufs`` maps buffer
names to lists parallel to ``params``; ``steps`` holds t per tensor, already advanced;
``lookahead`` says the parameters hold Nesterov's interim point θ̃.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch
from torch import Tensor

#: The default of a hyperparameter that has none (SGD's learning rate): it must be given.
REQUIRED: Any = None

Hyper = Mapping[str, Any]


@dataclass(frozen=True, eq=False)
class Hyperparameter:
    """One hyperparameter: ``check(name, value)`` raises ValueError naming it and what is valid."""

    name: str
    default: Any
    check: Callable[[str, Any], None]
    symbol: str
    meaning: str = ""


@dataclass(frozen=True, eq=False)
class Variant:
    """A named configuration that races in the lab (``"Nesterov"`` is SGD with these options)."""

    name: str
    book: str
    options: Mapping[str, Any] = field(default_factory=dict)
    kind: str = "first"  # "first": minibatch; "full_batch": needs the full batch (delta-bar-delta)
    note: str = ""
    in_book: bool = True  # a method of chapter 8 (raced by default), or a later descendant (raced on request)


def zero_buffer(name: str, p: Tensor, h: Hyper) -> Tensor:
    """Every box of §8.5 starts its accumulations at 0."""
    return torch.zeros_like(p, memory_format=torch.preserve_format)


def _never(h: Hyper) -> bool:
    return False


def _consistent(h: Hyper) -> None:
    return None


@dataclass(frozen=True, eq=False)
class Algorithm:
    """One algorithm box, as every layer consumes it."""

    name: str
    reference: str  # where the book (or the paper) writes it: "Algorithm 8.7; Kingma & Ba (2014)"
    hyperparameters: tuple[Hyperparameter, ...]
    buffers: Callable[[Hyper], tuple[str, ...]]  # the state this configuration keeps
    update: Callable[..., None]  # update(h, params, grads, bufs, steps, lookahead): the box, in place
    init: Callable[[str, Tensor, Hyper], Tensor] = zero_buffer
    interim: Callable[[Hyper], bool] = _never  # the gradient is taken at θ̃ = θ + αv (Nesterov)
    #: the displacement θ̃ − θ of interim methods, from the state: displacement(h, bufs) -> tensors
    displacement: Callable[[Hyper, dict[str, list[Tensor]]], list[Tensor]] | None = None
    consistent: Callable[[Hyper], None] = _consistent  # checks between hyperparameters
    #: option sets spanning this algorithm's distinct kernels (each also with weight decay, and
    #: with and without look-ahead where the configuration is interim): the standard set
    structures: tuple[Mapping[str, Any], ...] = ({},)
    fused: bool = True  # False: per-element branches the kernel generator does not follow
    variants: tuple[Variant, ...] = ()
    #: the torch.optim class that computes the same math, and the options that make it so
    torch_class: str | None = None
    torch_options: Callable[[Hyper], dict[str, Any] | None] | None = None
    family: str = "adaptive"  # "momentum" (SGD and its momentum variants) or "adaptive" (§8.5)

    @cached_property
    def names(self) -> tuple[str, ...]:  # read by every step: computed once
        return tuple(hp.name for hp in self.hyperparameters)

    def defaults(self, **options: Any) -> dict[str, Any]:
        """The hyperparameters with their defaults, ``options`` applied (unknown names refused)."""
        unknown = sorted(set(options) - set(self.names))
        if unknown:
            raise TypeError(f"{self.name} has no hyperparameter {', '.join(unknown)}; "
                            f"its hyperparameters: {', '.join(self.names)}")
        return {**{hp.name: hp.default for hp in self.hyperparameters}, **options}

    def validate(self, h: Hyper, *, complete: bool = True) -> None:
        """Raise ValueError for any invalid hyperparameter of ``h``. A required one (no default)
        may be missing from the defaults (``complete=False``), not from a param group."""
        for hp in self.hyperparameters:
            value = h[hp.name]
            if value is None and hp.default is REQUIRED:
                if complete:
                    raise ValueError(f"{self.name} needs {hp.name} (no default): pass {hp.name}=... or give "
                                     f"every param group a {hp.name!r}")
                continue
            hp.check(hp.name, value)
        self.consistent(h)

    def kernel_structures(self) -> list[tuple[dict[str, Any], bool]]:
        """(hyperparameters, lookahead) of every standard kernel of this algorithm."""
        if not self.fused:
            return []
        out = []
        decays = (0.0, 0.1) if "weight_decay" in self.names else (None,)
        for options in self.structures:
            for wd in decays:
                h = self.defaults(**options, **({} if wd is None else {"weight_decay": wd}))
                if h.get("lr") is None:
                    h["lr"] = 0.1
                looks = (False, True) if self.interim(h) else (False,)
                out += [(h, look) for look in looks]
        return out
