"""The optimizers that race in the lab: every algorithm of chapter 8, with its defaults."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from deepdescent import optim


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

    @property
    def family(self) -> str:
        """momentum (SGD and its momentum variants), adaptive (per-parameter rates, §8.5), or
        second (curvature or line searches, §8.6): one line style per family in the figures."""
        if self.kind == "second":
            return "second"
        return "momentum" if self.book in ("Alg. 8.1", "Alg. 8.2", "Alg. 8.3") else "adaptive"


def _lr(lr: float | None, default: float) -> float:
    return default if lr is None else lr


OPTIMIZERS: dict[str, OptimizerSpec] = {s.name: s for s in [
    OptimizerSpec("SGD", "Alg. 8.1", lambda p, lr: optim.SGD(p, lr=_lr(lr, 0.01)), 0.01),
    OptimizerSpec("Momentum", "Alg. 8.2", lambda p, lr: optim.SGD(p, lr=_lr(lr, 0.01), momentum=0.9), 0.01),
    OptimizerSpec("Nesterov", "Alg. 8.3",
                  lambda p, lr: optim.SGD(p, lr=_lr(lr, 0.01), momentum=0.9, nesterov=True), 0.01),
    OptimizerSpec("AdaGrad", "Alg. 8.4", lambda p, lr: optim.AdaGrad(p, lr=_lr(lr, 0.01)), 0.01),
    OptimizerSpec("RMSProp", "Alg. 8.5", lambda p, lr: optim.RMSProp(p, lr=_lr(lr, 1e-3)), 1e-3),
    OptimizerSpec("RMSProp+Momentum", "§8.5.4",
                  lambda p, lr: optim.RMSProp(p, lr=_lr(lr, 1e-3), momentum=0.9), 1e-3),
    OptimizerSpec("RMSProp+Nesterov", "Alg. 8.6",
                  lambda p, lr: optim.RMSProp(p, lr=_lr(lr, 1e-3), momentum=0.9, nesterov=True), 1e-3,
                  note="√r clamped at the smallest normal float where the box (which has no δ) divides 0 by 0"),
    OptimizerSpec("Adam", "Alg. 8.7", lambda p, lr: optim.Adam(p, lr=_lr(lr, 1e-3)), 1e-3),
    OptimizerSpec("AdaDelta", "§8.5.4", lambda p, lr: optim.AdaDelta(p, lr=_lr(lr, 1.0)), 1.0),
    OptimizerSpec("DeltaBarDelta", "§8.5", lambda p, lr: optim.DeltaBarDelta(p, lr=_lr(lr, 0.01)), 0.01,
                  kind="full_batch", note="full batch, as Jacobs (1988) requires"),
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
