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
from deepdescent.lab import paths


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
    foreign: bool = False  # a class from elsewhere (import path, entry point): raced member by member
    algorithm: Algorithm | None = field(default=None, compare=False)
    options: dict[str, Any] | None = field(default=None, compare=False)
    #: ``make`` takes the model rather than its parameters (K-FAC watches its layers), and the
    #: method races only on models that have such layers (:func:`applies`)
    takes_model: bool = False
    curvature: bool = False  # a first-order interface to a curvature approximation (K-FAC, Shampoo)

    @property
    def family(self) -> str:
        """momentum (SGD and its momentum variants), adaptive (per-parameter rates, §8.5), or
        second (curvature or line searches, §8.6): one line style per family in the figures."""
        if self.kind == "second" or self.curvature:
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
    # §8.6 at scale: curvature per layer behind a minibatch step (one gradient-equivalent a step:
    # the factors come from the same forward and backward pass; their cost shows on the clock)
    OptimizerSpec("K-FAC", "§8.6 (Martens & Grosse 2015)", lambda m, lr: optim.KFAC(m, lr=0.01 if lr is None else lr),
                  0.01, in_book=False, takes_model=True, curvature=True,
                  note="Kronecker-factored empirical Fisher of each Linear/Conv2d layer, factored Tikhonov damping "
                       "1e-3, inverses every 10 steps, KL-clipped, momentum 0.9; other parameters momentum SGD"),
    OptimizerSpec("Shampoo", "§8.6 (Gupta et al. 2018)",
                  lambda p, lr: optim.Shampoo(p, lr=1e-3 if lr is None else lr), 1e-3, in_book=False, curvature=True,
                  note="L^(-1/4) G R^(-1/4) per block of ≤ 256, roots every 10 steps, Adam grafting, momentum 0.9 "
                       "(Anil et al. 2020)"),
]}


def applies(spec: OptimizerSpec, model: torch.nn.Module) -> bool:
    """Whether ``spec`` has something to work on in ``model``: K-FAC needs a Linear or Conv2d layer."""
    if not spec.takes_model:
        return True
    from deepdescent.optim.kfac import watchable

    return any(watchable(m) for m in model.modules())


def optimizer(name: str) -> OptimizerSpec:
    """A lab optimizer by name, or a foreign one (:func:`foreign`: an import path such as
    ``torch.optim.AdamW`` or ``package.module:Class``, or an entry point, with ``(NAME=VALUE, ...)``)."""
    if name in OPTIMIZERS:
        return OPTIMIZERS[name]
    if "." in name or ":" in name or "(" in name or name in entry_points():
        return foreign(name)
    raise ValueError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}, an entry point of "
                     f"{ENTRY_POINTS!r}, or an import path such as torch.optim.AdamW or package.module:Class")


def lr_grid(center: float, points: int, decades: float = 4.0, extend: tuple[int, int] = (0, 0)) -> list[float]:
    """``points`` learning rates log-spaced over ``decades`` decades around ``center``, and
    ``extend`` = (below, above) more at the same spacing beyond the edges. A point's value depends
    only on its position, so an extended grid repeats the original points exactly."""
    if points == 1:
        return [center]
    lo = center * 10 ** (-decades / 2)
    below, above = extend
    return [lo * 10 ** (decades * i / (points - 1)) for i in range(-below, points + above)]


# ---------------------------------------------------------------------- optimizers from elsewhere
#: Third-party packages register optimizer classes under this entry-point group
#: (``[project.entry-points."deepdescent.optimizers"] MyOpt = "pkg.module:MyOpt"``).
ENTRY_POINTS = "deepdescent.optimizers"


def entry_points() -> dict[str, str]:
    """The optimizers registered by installed packages: name → "module:attribute"."""
    return paths.entry_points(ENTRY_POINTS)


def parse(key: str) -> tuple[str, dict[str, Any]]:
    """``"torch.optim.AdamW(lr=3e-4, weight_decay=0.1)"`` → ("torch.optim.AdamW", {...}); values are
    Python literals (numbers, tuples, True/False, quoted strings)."""
    import ast

    path, _, rest = key.partition("(")
    path = path.strip()
    if not rest:
        return path, {}
    if not rest.endswith(")"):
        raise ValueError(f"invalid optimizer {key!r}: expected PATH or PATH(NAME=VALUE, ...)")
    try:
        call = ast.parse(f"f({rest}", mode="eval").body
        assert isinstance(call, ast.Call) and not call.args and all(k.arg for k in call.keywords)
        return path, {k.arg: ast.literal_eval(k.value) for k in call.keywords}  # type: ignore[misc]
    except (SyntaxError, ValueError, AssertionError):
        raise ValueError(f"invalid optimizer {key!r}: hyperparameters must be NAME=VALUE with Python literal "
                         "values, e.g. torch.optim.AdamW(weight_decay=0.1)") from None


def key(path: str, hparams: dict[str, Any]) -> str:
    """The canonical name of a foreign optimizer with ``hparams`` (sorted; ``lr`` is the grid's centre)."""
    if not hparams:
        return path
    return f"{path}({', '.join(f'{k}={v!r}' for k, v in sorted(hparams.items()))})"


def _load(path: str) -> type:
    obj = paths.load(path, ENTRY_POINTS, "optimizer", f"a lab optimizer ({', '.join(OPTIMIZERS)})")
    if not (isinstance(obj, type) and issubclass(obj, torch.optim.Optimizer)):
        raise ValueError(f"{path!r} is {obj!r}, not a torch.optim.Optimizer subclass")
    return obj


def _needs_closure(cls: type) -> bool:
    """Whether ``step`` requires a closure (torch.optim.LBFGS and the like): then it runs like L-BFGS."""
    import inspect

    try:
        closure = inspect.signature(cls.step).parameters.get("closure")
    except (TypeError, ValueError):
        return False
    return closure is not None and closure.default is inspect.Parameter.empty


def foreign(name: str) -> OptimizerSpec:
    """An optimizer class from an import path or an entry point, with fixed hyperparameters and the
    learning rate as the grid's centre (``lr=`` in the name, else the class's default). It races
    under the same protocol member by member (there is no functional core to vectorize); one whose
    ``step`` requires a closure runs on the full batch like L-BFGS, at its own learning rate."""
    import inspect

    path, hparams = parse(name)
    cls = _load(path)
    params = inspect.signature(cls).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = sorted(k for k in hparams if k not in params and not takes_any)
    if unknown:
        valid = [p for p in params if p not in ("self", "params")]
        raise ValueError(f"{path} has no hyperparameter {', '.join(unknown)}; its hyperparameters: {', '.join(valid)}")
    fixed = {k: v for k, v in hparams.items() if k != "lr"}
    default = params["lr"].default if "lr" in params else None
    center = hparams.get("lr", default if isinstance(default, (int, float)) and not isinstance(default, bool) else None)
    closure = _needs_closure(cls)
    if not closure and center is None:
        raise ValueError(f"{path} has no default learning rate: give the grid's centre with --lr-center "
                         f"(or {path}(lr=...))")
    canonical = key(path, hparams)

    def make(p: Any, lr: float | None) -> torch.optim.Optimizer:
        rate = {} if center is None and lr is None else {"lr": center if lr is None or closure else lr}
        return cls(p, **fixed, **rate)
    target = entry_points().get(path, path)
    source = target.split(":")[0] if ":" in target else target.rsplit(".", 1)[0]
    return OptimizerSpec(canonical, source, make,
                         None if closure else center, kind="second" if closure else "first", in_book=False,
                         foreign=True,
                         note=f"{cls.__module__}.{cls.__qualname__}, member by member"
                              + (" on the full batch (its step needs a closure)" if closure else ""))


#: What a run directory records of each raced optimizer (meta.json's "described"), so that its
#: report never imports anything the directory names.
DESCRIBED = ("book", "default_lr", "kind", "note", "in_book", "foreign")


def description(spec: OptimizerSpec) -> dict[str, Any]:
    """The fields of ``spec`` a report needs, as JSON."""
    return {"family": spec.family, **{k: getattr(spec, k) for k in DESCRIBED}}


def _not_loaded(params: Any, lr: float | None) -> torch.optim.Optimizer:
    raise RuntimeError("a described optimizer only reads stored results; it never trains")


def describe(name: str, described: dict[str, Any] | None = None) -> OptimizerSpec | None:
    """A raced optimizer as a report sees it, without importing anything: a lab optimizer's own
    spec, else the description the run directory recorded (``described``: :func:`description`'s
    fields), else — for a name of the form of an import path, entry point or call — a foreign
    method described from its name alone. None for anything else. A run directory is often
    someone else's: nothing it names is ever imported (see :func:`optimizer` for racing)."""
    if name in OPTIMIZERS:
        return OPTIMIZERS[name]
    info = dict(described or {})
    if not info:
        try:
            path, hparams = parse(name)
        except ValueError:
            return None
        if not path:
            return None
        lr = hparams.get("lr")
        info = {"book": path, "default_lr": lr if isinstance(lr, (int, float)) else None, "kind": "first",
                "note": f"{path}, member by member", "in_book": False, "foreign": True}
    try:
        spec = OptimizerSpec(name, str(info["book"]), _not_loaded, info["default_lr"], kind=str(info["kind"]),
                             note=str(info["note"]), in_book=bool(info["in_book"]), foreign=bool(info["foreign"]))
    except (KeyError, TypeError):
        return None
    return spec if spec.kind in ("first", "full_batch", "second") else None


def lookup(name: str) -> OptimizerSpec | None:
    """A lab optimizer or a foreign one by its name (None when it is neither, or no longer imports)."""
    try:
        return optimizer(name)
    except ValueError:
        return None
