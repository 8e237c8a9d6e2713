"""What every deepdescent first-order optimizer shares: the ``torch.optim`` protocol over an
algorithm spec.

:class:`BookOptimizer` turns an algorithm (``deepdescent.algorithms``: its spec and box) into a
``torch.optim.Optimizer``: it validates hyperparameters as the spec says, creates per-parameter
state lazily, applies the non-finite policy, evaluates the interim point of Nesterov methods and
checks what ``load_state_dict`` is given. How the update runs (fused or eager, CPU chunks,
mixed precision, the device step) is the executor's (``deepdescent.executor``).
"""

from __future__ import annotations

import contextlib
import itertools
import operator
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor
from torch.optim import Optimizer

from deepdescent import executor as ex
from deepdescent.algorithms.common import with_weight_decay
from deepdescent.algorithms.spec import Algorithm
from deepdescent.algorithms import validation as check
from deepdescent.executor import LOW_PRECISION, device, state_dtype
from deepdescent import kernels
from deepdescent.checkpoints import (
    check_group_keys,
    check_layout,
    check_step,
    load_checked,
    param_name,
    state_dict_with,
    step_count,
)

NonFinite = Literal["skip", "raise", "propagate"]


class NonFiniteGradientError(FloatingPointError):
    """Raised by ``step()`` with ``nonfinite="raise"`` when a gradient holds NaN or Inf."""


class _Batch:
    """The tensors of one param group that take part in a step, bucketed by (device, dtype).

    ``params`` are the parameters themselves (the keys of the state); ``grads`` are what the update
    reads: the local shard of a DTensor gradient (FSDP2), the real view of a complex one."""

    def __init__(self) -> None:
        self.params: list[Tensor] = []
        self.grads: list[Tensor] = []
        self.states: list[dict[str, Any]] = []
        self.sharded = False
        self.plain = True  # no DTensor, no complex tensor: parameters, gradients and state as they are


class BookOptimizer(Optimizer):
    """Base class of the first-order optimizers: a subclass names its algorithm
    (``algorithm = <module>.SPEC``) and documents its ``__init__``; everything else comes from
    the spec — validation, state names and initial values, the update, Nesterov's interim point.

    Mixed precision: the state of bfloat16/float16 parameters is float32 (:func:`state_dtype`), the
    update is computed in float32 and the parameters are rounded (to nearest even) once per step,
    on every path (eager, fused C++, Triton); other parameters keep state in their own dtype.
    """

    algorithm: ClassVar[Algorithm]

    def __init__(self, params: Any, defaults: dict[str, Any], *, nonfinite: NonFinite = "skip",
                 impl: str = "auto") -> None:
        check.choice("nonfinite", nonfinite, ("skip", "raise", "propagate"))
        check.choice("impl", impl, ex.IMPLS)
        #: how steps run (fused or eager path, device plans): :class:`deepdescent.executor.Executor`
        self.executor = ex.Executor(impl)
        self.algorithm.validate(dict(defaults), complete=False)
        super().__init__(params, defaults)
        self.nonfinite: NonFinite = nonfinite
        self._skipped = 0  # skipped steps counted on the host; on CUDA, on the device (skipped_steps)
        # How Nesterov's interim point θ̃ is handled, fixed at the first step: "closure" (the
        # parameters hold θ; step(closure) evaluates the gradient at θ̃) or "lookahead" (the
        # parameters hold θ̃; step() without closure).
        self._interim_mode: str | None = None
        self._interim_grads: dict[Tensor, Tensor] = {}

    @property
    def impl(self) -> str:
        """Execution path: "fused" (the kernel generated from this algorithm's box: C++ on the
        CPU, Triton on CUDA), "eager" (multi-tensor ops), "auto" (fused where it applies, eager
        elsewhere; a fused path that cannot be built says why once and falls back)."""
        return self.executor.impl

    @impl.setter
    def impl(self, value: str) -> None:
        check.choice("impl", value, ex.IMPLS)
        self.executor.impl = value

    @property
    def path(self) -> str | None:
        """The path this optimizer's CPU steps take, fixed at its first step for its whole life:
        "fused", "eager", or None before the first step (``impl="auto"``). Recorded in
        :meth:`state_dict`; a resumed optimizer takes it again (see :meth:`load_state_dict`)."""
        return self.executor.path

    # ------------------------------------------------------------------ hyperparameters
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """As torch.optim: keys the optimizer does not know (timm's ``lr_scale``, a scheduler's
        ``max_lr``, user tags) are kept in the group and ignored by the update."""
        super().add_param_group(param_group)
        if hasattr(self, "executor"):
            self.executor.plans.clear()
        group = self.param_groups[-1]
        self._validate_group(group)
        for p in group["params"]:
            if not p.is_leaf and p.requires_grad:
                raise ValueError("can't optimize a non-leaf tensor")
            if p.dtype == torch.complex32:  # no real view of it has a fused or eager float path
                raise ValueError(f"{type(self).__name__} supports complex64 and complex128 parameters, got "
                                 f"{p.dtype} (shape {tuple(p.shape)}); use p.to(torch.complex64)")

    def _validate_group(self, group: dict[str, Any]) -> None:
        """Raise ValueError for any invalid hyperparameter of ``group`` (as the spec checks it)."""
        self.algorithm.validate(group)

    # ------------------------------------------------------------------ the step
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """Perform one optimization step.

        Args:
            closure: re-evaluates the model and returns the loss (after ``backward()``). For
                Nesterov methods (Algorithms 8.3, 8.6) it is called at the interim point θ̃.
        """
        loss = None
        interim = any(self.algorithm.interim(g) for g in self.param_groups)
        if interim:
            self._fix_interim_mode("closure" if closure is not None else "lookahead")
        if closure is not None:
            loss = self._call_closure_at_interim(closure) if interim else _call(closure)
        lookahead = self._interim_mode == "lookahead"
        if self._device_step(lookahead):  # fused on the GPU: no synchronization
            return loss
        self.executor.plans.clear()  # the general path may replace state tensors
        batches = [self._gather(group) for group in self.param_groups]
        if not self._gradients_finite(batches):
            self._skipped += 1
            return loss
        for group, buckets in zip(self.param_groups, batches):
            for batch in buckets.values():
                self._apply(group, batch, lookahead)
        return loss

    @property
    def skipped_steps(self) -> int:
        """Steps left out because a gradient was not finite (reading it synchronizes on CUDA)."""
        counted = self.executor.device_skipped
        return self._skipped + (int(counted.item()) if counted is not None else 0)

    def _device_step(self, lookahead: bool) -> bool:
        if self.nonfinite == "raise" or self._interim_grads:
            return False
        work = []
        for group in self.param_groups:
            if group["params"] and group["params"][0].device.type not in kernels.TRITON_DEVICES:
                return False  # before any per-parameter work: the CPU path pays nothing for this check
            h, group_lookahead = self._hyperparameters(group, lookahead)
            work.append(device.Work(id(group), h, group_lookahead, [p for p in group["params"] if p.grad is not None]))
        return device.step(self.executor, self.algorithm, work, self.state, self.nonfinite == "skip")

    def _gather(self, group: dict[str, Any]) -> dict[tuple[torch.device, torch.dtype], _Batch]:
        buckets: dict[tuple[torch.device, torch.dtype], _Batch] = defaultdict(_Batch)
        params = list(group["params"])
        grads = list(map(_GRAD, params))
        if any(map(operator.is_, grads, itertools.repeat(None))):  # a parameter without a gradient takes no step
            params = [p for p, g in zip(params, grads) if g is not None]
            grads = [g for g in grads if g is not None]
        if any(map(_SPARSE, grads)):
            p = next(p for p, g in zip(params, grads) if g.is_sparse)
            raise RuntimeError(
                f"{type(self).__name__} does not support sparse gradients "
                f"(parameter {self._param_name(p)}); use torch.optim.SparseAdam or dense gradients"
            )
        if self._interim_grads:
            grads = [self._interim_grads.pop(p, g) for p, g in zip(params, grads)]
        dtypes = set(map(_DTYPE, params))
        if len(dtypes) == 1 and _one_device(params):  # the common case: one bucket, no Python step per tensor
            batch = buckets[(params[0].device, dtypes.pop())]
            batch.params, batch.grads = params, grads
        else:
            for p, g in zip(params, grads):
                batch = buckets[(p.device, p.dtype)]
                batch.params.append(p)
                batch.grads.append(g)
        for batch in buckets.values():  # what the update reads: local shards, real views
            batch.plain = ex.is_plain(batch.grads)  # a parameter, its gradient and its state are of one kind
            if not batch.plain:
                batch.grads, batch.sharded = ex.plain_all(batch.grads)
        return buckets

    def _gradients_finite(self, batches: list[dict[Any, _Batch]]) -> bool:
        if self.nonfinite == "propagate":
            return True
        lists = [b.grads for buckets in batches for b in buckets.values()]
        sharded = any(b.sharded for buckets in batches for b in buckets.values())
        if not self.executor.nonfinite(lists, sharded):
            return True
        if self.nonfinite == "raise":
            bad = next((
                p for buckets in batches for b in buckets.values()
                for p, g in zip(b.params, b.grads) if not bool(torch.isfinite(g).all())
            ), None)
            where = f"parameter {self._param_name(bad)}" if bad is not None else "the shard of another rank"
            raise NonFiniteGradientError(
                f"non-finite gradient in {where}; parameters and optimizer state were left unchanged"
            )
        return False

    def _hyperparameters(self, group: dict[str, Any], lookahead: bool) -> tuple[dict[str, Any], bool]:
        """The hyperparameters the update runs with, and whether the parameters hold θ̃."""
        h = {k: v for k, v in group.items() if k != "params"}
        interim = self.algorithm.interim(h)
        if interim and not lookahead and h.get("weight_decay", 0) != 0:
            h["weight_decay"] = 0.0  # already added at θ̃ (_decay_at_interim)
        return h, lookahead and interim

    def _apply(self, group: dict[str, Any], batch: _Batch, lookahead: bool) -> None:
        names = self.algorithm.buffers(group)
        needed = set(names)
        states = batch.states = [self.state[p] for p in batch.params]
        for p, state in zip(batch.params, states):
            state["step"] = state.get("step", 0) + 1
            if state.keys() >= needed:
                continue
            for name in names:
                if name not in state:  # new, or a hyperparameter (e.g. momentum) became non-zero
                    state[name] = ex.new_buffer(self.algorithm, name, p, group)
        h, group_lookahead = self._hyperparameters(group, lookahead)
        # a complex parameter is updated as its real view (torch.optim's convention); its state
        # is kept complex, as torch keeps it, and updated through the same view
        if batch.plain:
            lists = [batch.params, batch.grads, *([s[n] for s in states] for n in names)]
        else:
            lists = [ex.plain_all(batch.params)[0], batch.grads,
                     *(ex.plain_all([s[n] for s in states])[0] for n in names)]
        self.executor.run(self.algorithm, h, lists, [s["step"] for s in batch.states], group_lookahead)

    # ------------------------------------------------------------------ Nesterov's interim point
    def _fix_interim_mode(self, mode: str) -> None:
        if self._interim_mode is None:
            self._interim_mode = mode
        elif self._interim_mode != mode:
            held = "θ̃ (the look-ahead point)" if self._interim_mode == "lookahead" else "θ"
            raise RuntimeError(
                f"{type(self).__name__} with Nesterov momentum was first stepped "
                f"{'without' if self._interim_mode == 'lookahead' else 'with'} a closure, so the "
                f"parameters hold {held}; keep calling step() "
                f"{'without' if self._interim_mode == 'lookahead' else 'with'} a closure"
            )

    def _displacements(self) -> Iterator[tuple[dict[str, Any], list[Tensor], list[Tensor]]]:
        for group in self.param_groups:
            if not self.algorithm.interim(group) or self.algorithm.displacement is None:
                continue
            names = self.algorithm.buffers(group)
            params = [p for p in group["params"] if names and all(n in self.state.get(p, {}) for n in names)]
            if params:
                bufs = {n: [self.state[p][n] for p in params] for n in names}
                yield group, params, self.algorithm.displacement(ex.resolve(group), bufs)

    def _call_closure_at_interim(self, closure: Callable[[], Any]) -> Any:
        """Move to θ̃ = θ + αv, evaluate the closure there, restore θ bit for bit."""
        saved = []
        for _, params, disp in self._displacements():
            saved.append((params, torch._foreach_mul(params, 1.0)))
            torch._foreach_add_(params, disp)
        try:
            loss = _call(closure)
            self._decay_at_interim()
            return loss
        finally:
            for params, backup in saved:
                torch._foreach_copy_(params, backup)

    def _decay_at_interim(self) -> None:
        # The gradient at θ̃ of J(θ) + (λ/2)‖θ‖² is ∇J(θ̃) + λθ̃: add λθ̃ while the parameters are
        # at θ̃; the update of these groups then runs with weight_decay = 0.
        for group in self.param_groups:
            if self.algorithm.interim(group) and group.get("weight_decay", 0) != 0:
                params = [p for p in group["params"] if p.grad is not None]
                if not params:  # a frozen group, or one whose gradients appear later
                    continue
                decayed = with_weight_decay([p.grad for p in params], params, group["weight_decay"])
                self._interim_grads.update(zip(params, decayed))

    @contextlib.contextmanager
    def at_theta(self) -> Iterator[None]:
        """Hold θ in the parameters for the duration of the block.

        Without a closure, Nesterov methods keep the look-ahead point θ̃ = θ + αv in the
        parameters. Evaluate or save the model inside ``with optimizer.at_theta():`` to use θ; the
        parameters return to θ̃ exactly afterwards. Outside look-ahead mode it does nothing.
        """
        saved = []
        if self._interim_mode == "lookahead":
            with torch.no_grad():
                for _, params, disp in self._displacements():
                    saved.append((params, torch._foreach_mul(params, 1.0)))
                    torch._foreach_sub_(params, disp)
        try:
            yield
        finally:
            with torch.no_grad():
                for params, backup in saved:
                    torch._foreach_copy_(params, backup)

    # ------------------------------------------------------------------ copies
    #: What a copy must keep besides torch's defaults/state/param_groups.
    _COPIED = ("executor", "nonfinite", "_interim_mode")

    def __getstate__(self) -> dict[str, Any]:
        """deepcopy and pickle keep the execution path, the non-finite policy, the skipped-step
        count and Nesterov's mode, so that a copy continues with the same iterates; device-side
        plans are rebuilt on the first step."""
        state = super().__getstate__()
        state.update({k: getattr(self, k) for k in self._COPIED}, _skipped=self.skipped_steps)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "executor" not in state:  # a pickle from before the executor (0.x): its path and failure memory
            state["executor"] = ex.Executor(state.pop("impl", "auto"))
            state["executor"].fused_off = state.pop("_fused_off", False)
        super().__setstate__(state)
        self.defaults.pop("differentiable", None)  # torch adds it for its own classes' old pickles
        self._interim_grads = {}

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """torch.optim's state dict and a ``"deepdescent"`` entry (class, skipped steps, Nesterov's
        mode), added before the state_dict post-hooks run (as torch orders them)."""
        return state_dict_with(self, super().state_dict, {
            "optimizer": type(self).__name__,
            "skipped_steps": self.skipped_steps,
            "interim_mode": self._interim_mode,
            "path": self.executor.path,
        })

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict from :meth:`state_dict` — or one of the same layout without the
        ``"deepdescent"`` entry (``torch.distributed.checkpoint``'s get/set_optimizer_state_dict
        rebuild it without), then with default metadata. torch's order: load pre-hooks, then
        every check (hyperparameters as the constructor checks them, state tensors' dtype and
        shape, step counts, metadata), then the state is replaced in one go, then post-hooks.
        A failed check raises ValueError and changes nothing.

        The execution path the checkpoint recorded is taken again (the fused one compiled now if
        need be); where it is unavailable, a warning says the iterates may differ in the last bits."""
        load_checked(self, state_dict, self._check_checkpoint, self._apply_checkpoint)

    def _apply_checkpoint(self, state_dict: dict[str, Any], meta: dict[str, Any]) -> None:
        self.executor.plans.clear()
        super().load_state_dict({k: v for k, v in state_dict.items() if k != "deepdescent"})
        self._restore_state_dtype(state_dict)
        self._skipped, self.executor.device_skipped = int(meta.get("skipped_steps", 0)), None
        self._interim_mode = meta.get("interim_mode")
        self.executor.resume(meta.get("path"), type(self).__name__)

    def _check_checkpoint(self, state_dict: dict[str, Any]) -> dict[str, Any]:
        """Every check of :meth:`load_state_dict`; returns the metadata (defaults where absent)."""
        name = type(self).__name__
        pairs = check_layout(self, state_dict)
        meta = state_dict.get("deepdescent")
        if meta is None:
            self._check_layout(state_dict)
            meta = {}
            if state_dict["state"] and any(self.algorithm.interim(g) for g in self.param_groups):
                warnings.warn(f"{name}: the state_dict has no 'deepdescent' entry, so whether the parameters hold "
                              "θ or Nesterov's look-ahead point θ̃ is unknown; the next step() fixes it (with or "
                              "without a closure)", RuntimeWarning, stacklevel=3)
        elif not isinstance(meta, dict) or meta.get("optimizer") != name:
            found = meta.get("optimizer") if isinstance(meta, dict) else repr(meta)
            raise ValueError(f"cannot load a state_dict of {found} into {name}")
        skipped = meta.get("skipped_steps", 0)
        if isinstance(skipped, bool) or not isinstance(skipped, int) or skipped < 0:
            raise ValueError(f"invalid deepdescent.skipped_steps={skipped!r}: must be an integer >= 0")
        if meta.get("interim_mode") not in (None, "closure", "lookahead"):
            raise ValueError(f"invalid deepdescent.interim_mode={meta.get('interim_mode')!r}: must be None, "
                             "'closure' or 'lookahead'")
        if meta.get("path") not in (None, "fused", "eager"):
            raise ValueError(f"invalid deepdescent.path={meta.get('path')!r}: must be None, 'fused' or 'eager'")
        for i, (saved, group) in enumerate(pairs):
            check_group_keys(self, i, saved)
            try:
                self._validate_group({**group, **saved})
            except ValueError as err:
                raise ValueError(f"param_groups[{i}] of the state_dict: {err}") from None
        self._check_shapes(state_dict)
        self._check_interim_mode(state_dict, meta)
        return meta

    def _check_interim_mode(self, state_dict: dict[str, Any], meta: dict[str, Any]) -> None:
        """Whether the parameters hold θ or Nesterov's θ̃ must agree with the groups' Nesterov flags:
        a flag flipped in the dict would step from the wrong point."""
        mode = meta.get("interim_mode")
        stepped = {i for i, s in state_dict["state"].items() if s}
        nesterov = [self.algorithm.interim({**group, **saved}) for saved, group in
                    zip(state_dict["param_groups"], self.param_groups)]
        if mode is not None and not any(nesterov):
            raise ValueError(f"deepdescent.interim_mode={mode!r} says the parameters were stepped with Nesterov "
                             "momentum, but no param group of the state_dict uses it (nesterov=False in each)")
        if mode is None and meta and any(flag and stepped & set(saved["params"]) for flag, saved in
                                         zip(nesterov, state_dict["param_groups"])):
            raise ValueError("a param group of the state_dict uses Nesterov momentum and has stepped, but "
                             "deepdescent.interim_mode is None: it was stepped without Nesterov momentum "
                             "(nesterov flipped in the dict?)")

    def _check_layout(self, state_dict: dict[str, Any]) -> None:
        """A dict without the metadata entry must have this optimizer's layout: no group key and
        no state entry that this optimizer would not have written (a torch.optim dict carries
        options such as ``amsgrad`` or ``maximize`` whose meaning would be lost)."""
        name = type(self).__name__
        known = {"params", "param_names", "initial_lr"}
        params = [p for g in self.param_groups for p in g["params"]]
        saved_ids = [i for g in state_dict["param_groups"] if isinstance(g, dict) for i in g.get("params", [])]
        owner = {i: g for g, saved in zip(self.param_groups, state_dict["param_groups"]) if isinstance(saved, dict)
                 for i in saved.get("params", [])}
        for saved, group in zip(state_dict["param_groups"], self.param_groups):
            extra = sorted(set(saved) - set(group) - known) if isinstance(saved, dict) else []
            if extra:
                raise ValueError(f"cannot load this state_dict into {name}: it is not from deepdescent (no "
                                 f"'deepdescent' entry) and its param groups hold options {name} does not have: {extra}")
        for i, s in state_dict["state"].items():
            if i in owner and isinstance(s, dict) and len(saved_ids) == len(params):
                extra = sorted(set(s) - set(self.algorithm.buffers(owner[i])) - {"step"})
                if extra:
                    raise ValueError(f"cannot load this state_dict into {name}: it is not from deepdescent (no "
                                     f"'deepdescent' entry) and its state holds {extra}, which {name} does not keep")

    def _restore_state_dtype(self, state_dict: dict[str, Any]) -> None:
        # torch.optim casts floating state to the parameter's dtype; the float32 state of a
        # bfloat16/float16 parameter is taken from the saved values instead (no round trip).
        params = [p for g in self.param_groups for p in g["params"]]
        index = dict(zip((i for g in state_dict["param_groups"] for i in g["params"]), params))
        for i, saved in state_dict["state"].items():
            p = index[i]
            if p.dtype not in LOW_PRECISION:
                continue
            for key, value in saved.items():
                if key != "step" and isinstance(value, Tensor) and value.is_floating_point():
                    self.state[p][key] = value.to(device=p.device, dtype=state_dtype(p.dtype))

    def _check_shapes(self, state_dict: dict[str, Any]) -> None:
        params = [p for g in self.param_groups for p in g["params"]]
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        if len(saved_ids) != len(params):
            raise ValueError(
                f"state_dict has {len(saved_ids)} parameters, {type(self).__name__} has {len(params)}"
            )
        index = dict(zip(saved_ids, params))
        hyper = {i: {**group, **saved} for saved, group in zip(state_dict["param_groups"], self.param_groups)
                 for i in saved["params"]}  # the hyperparameters each parameter will step with
        for i, s in state_dict["state"].items():
            p = index.get(i)
            if p is None:
                raise ValueError(f"state_dict has state for parameter index {i!r}, which no group lists")
            if not isinstance(s, dict):
                raise ValueError(f"the state of parameter {self._param_name(p)} must be a dict, got {type(s).__name__}")
            if s:  # stepped at least once: the step count and every buffer of the algorithm are there
                missing = [k for k in ("step", *self.algorithm.buffers(hyper[i])) if k not in s]
                if missing:
                    raise ValueError(f"the state of parameter {self._param_name(p)} lacks {missing} (it holds "
                                     f"{sorted(s)}): {type(self).__name__} keeps "
                                     f"{['step', *self.algorithm.buffers(hyper[i])]} once a parameter has stepped")
                if step_count(s["step"]) == 0:
                    raise ValueError(f"invalid state 'step' of parameter {self._param_name(p)}=0 beside its buffers: "
                                     "a parameter with state has stepped at least once (step >= 1)")
            for key, value in s.items():
                where = f"state {key!r} of parameter {self._param_name(p)}"
                if key == "step":
                    check_step(where, value)
                elif key in self.algorithm.buffers(hyper[i]) and not isinstance(value, Tensor):
                    raise ValueError(f"{where} is a {type(value).__name__}; it must be a tensor of the parameter's "
                                     f"shape {tuple(p.shape)}")
                elif isinstance(value, Tensor) and (value.shape != p.shape or not (
                        value.is_complex() if p.is_complex() else value.is_floating_point())):
                    kind = "complex" if p.is_complex() else "floating"
                    raise ValueError(f"{where} is a {value.dtype} tensor of shape {tuple(value.shape)}; it must be "
                                     f"a {kind} tensor of the parameter's shape {tuple(p.shape)}")

    # ------------------------------------------------------------------ helpers
    def _param_name(self, p: Tensor) -> str:
        return param_name(self, p)


_GRAD, _SPARSE = operator.attrgetter("grad"), operator.attrgetter("is_sparse")
_DEVICE, _DTYPE = operator.attrgetter("device"), operator.attrgetter("dtype")
_IS_CPU = operator.attrgetter("is_cpu")


def _one_device(tensors: list[Tensor]) -> bool:
    """Whether the tensors share one device, checked in C (``p.device`` builds an object per call:
    on the CPU a flag is read instead)."""
    if tensors[0].is_cpu:
        return all(map(_IS_CPU, tensors))
    return len(set(map(_DEVICE, tensors))) == 1


def _call(closure: Callable[[], Any]) -> Any:
    with torch.enable_grad():
        return closure()
