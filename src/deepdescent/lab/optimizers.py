"""The optimizers that race in the lab: every variant of every registered first-order algorithm
(``deepdescent.algorithms.REGISTRY``, with the options its spec names) and the second-order
methods of §8.6, with their defaults."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from deepdescent import optim
from deepdescent.algorithms import REGISTRY
from deepdescent.algorithms.spec import Algorithm, Variant


@dataclass(frozen=True)
class OptimizerSpec:
    """``make(params, lr)`` builds the optimizer (``lr`` None: its default). ``kind``:
    "first" (minibatch, learning rate tuned, vectorizable), "full_batch" (a minibatch method that
    needs the full batch, learning rate tuned), "second" (closure, full batch, no learning rate)."""

    name: str
    book: str
    make: Callable[[Any, float | None], torch.optim.Optimizer]
    default_lr: float | None
    kind: str = "first"
    max_params: int | None = None  # the method refuses larger models (dense n×n matrices)
    closure_output: bool = False  # the closure returns (loss, output) (Gauss–Newton)
    #: How the raced variant differs from the book's box (shown in the report), if it does.
    note: str = ""
    #: The first-order algorithm and the options of this variant (None for second-order methods):
    #: what the vectorized engine runs through the executor.
    in_book: bool = True  # a method of chapter 8: raced by default (the others on request)
    algorithm: Algorithm | None = field(default=None, compare=False)
    options: dict[str, Any] | None = field(default=None, compare=False)

    @property
    def family(self) -> str:
        """momentum (SGD and its momentum variants), adaptive (per-parameter rates, §8.5), or
        second (curvature or line searches, §8.6): one line style per family in the figures."""
        if self.kind == "second":
            return "second"
        return self.algorithm.family if self.algorithm is not None else "adaptive"

    def hyperparameters(self, lr: float | None) -> dict[str, Any]:
        """The first-order variant's full hyperparameters at learning rate ``lr`` (None: its default)."""
        assert self.algorithm is not None and self.options is not None
        h = self.algorithm.defaults(**self.options)
        h["lr"] = self.default_lr if lr is None else lr
        return h


def _first_order(spec: Algorithm, variant: Variant) -> OptimizerSpec:
    cls = optim.optimizer_class(spec)
    options = dict(variant.options)
    default_lr = options.pop("lr", spec.defaults()["lr"])

    def make(params: Any, lr: float | None) -> torch.optim.Optimizer:
        return cls(params, lr=default_lr if lr is None else lr, **options)
    return OptimizerSpec(variant.name, variant.book, make, default_lr, kind=variant.kind, note=variant.note,
                         in_book=variant.in_book, algorithm=spec, options=options)


OPTIMIZERS: dict[str, OptimizerSpec] = {s.name: s for s in [
    *(_first_order(spec, v) for spec in REGISTRY.values() for v in spec.variants),
    OptimizerSpec("Newton", "Alg. 8.8", lambda p, lr: optim.Newton(p, indefinite="solve"), None,
                  kind="second", max_params=2000,
                  note="the box as written: full steps Δθ = −H⁻¹g through any H, so it is drawn to saddle points "
                       "(§8.2.3)"),
    OptimizerSpec("DampedNewton", "eq. 8.28", lambda p, lr: optim.Newton(p, damping=1e-3, line_search="armijo"), None,
                  kind="second", max_params=2000,
                  note="regularized Newton: H + αI made positive definite (α raised as needed) and an Armijo line "
                       "search, so unlike Alg. 8.8 it descends away from saddle points"),
    OptimizerSpec("HessianFree", "§8.6.1", lambda p, lr: optim.HessianFree(p, cg_max_iter=50), None, kind="second",
                  closure_output=True,
                  note="Martens (2010): Gauss–Newton products, CG truncated at 50 iterations, Levenberg–Marquardt "
                       "damping, full batch"),
    OptimizerSpec("CG", "Alg. 8.9", lambda p, lr: optim.ConjugateGradient(p, max_iter=1, restart_every=20), None,
                  kind="second",
                  note="a strong-Wolfe line search instead of the exact one, restart every 20 iterations"),
    OptimizerSpec("BFGS", "§8.6.3", lambda p, lr: optim.BFGS(p, max_iter=1), None, kind="second", max_params=5000,
                  note="strong-Wolfe line search"),
    OptimizerSpec("L-BFGS", "§8.6.3", lambda p, lr: optim.LBFGS(p, max_iter=1), None, kind="second",
                  note="strong-Wolfe line search, 10 stored pairs"),
]}


def optimizer(name: str) -> OptimizerSpec:
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name]


def lr_grid(center: float, points: int, decades: float = 4.0, extend: tuple[int, int] = (0, 0)) -> list[float]:
    """``points`` learning rates log-spaced over ``decades`` decades around ``center``, and
    ``extend`` = (below, above) more at the same spacing beyond the edges. A point's value depends
    only on its position, so an extended grid repeats the original points exactly."""
    if points == 1:
        return [center]
    lo = center * 10 ** (-decades / 2)
    below, above = extend
    return [lo * 10 ** (decades * i / (points - 1)) for i in range(-below, points + above)]
