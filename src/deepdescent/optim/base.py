"""What every deepdescent first-order optimizer shares.

:class:`BookOptimizer` turns a functional algorithm (``deepdescent.algorithms``) into a
``torch.optim.Optimizer``: it validates hyperparameters, creates per-parameter state lazily, keeps
a non-finite gradient from reaching parameters or state, evaluates the interim point of Nesterov
methods, executes the update in cache-sized chunks on the CPU, and checks what
``load_state_dict`` is given.
"""

from __future__ import annotations

import contextlib
import numbers
import warnings
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterator
from typing import Any, Literal

import torch
from torch import Tensor
from torch.optim import Optimizer

from deepdescent.algorithms import momentum as _momentum
from deepdescent import kernels
from deepdescent.algorithms._common import with_weight_decay
from deepdescent.optim import _device
from deepdescent.optim._checkpoint import check_group_keys, check_layout, load_checked
from deepdescent.optim import _validation as check

NonFinite = Literal["skip", "raise", "propagate"]
#: Parameter dtypes whose optimizer state is kept in float32 (and whose update is computed in float32).
LOW_PRECISION = (torch.bfloat16, torch.float16)
#: Parameter dtypes of the fused paths, per device kind.
_FUSED_DTYPES = {"cpu": (torch.float32, torch.float64, *LOW_PRECISION), "cuda": (torch.float32, *LOW_PRECISION)}
_FUSED_NEEDS = ("tensors (parameters and gradients of one dtype: float32, float64 on the CPU, bfloat16 or "
                "float16; state of the dtype state_dtype() gives)")
#: Elements per CPU chunk (measured best on 2-thread EPYC, L2 1 MiB per core; see BENCHMARKS.md).
CPU_CHUNK_NUMEL = 1 << 16


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


class BookOptimizer(Optimizer):
    """Base class; subclasses implement :meth:`_validate_group`, :meth:`_state_names` and
    :meth:`_update` (and :meth:`_uses_interim_point` for Nesterov methods).

    Mixed precision: the state of bfloat16/float16 parameters is float32 (:func:`state_dtype`), the
    update is computed in float32 and the parameters are rounded (to nearest even) once per step,
    on every path (eager, fused C++, Triton); other parameters keep state in their own dtype.
    """

    def __init__(self, params: Any, defaults: dict[str, Any], *, nonfinite: NonFinite = "skip",
                 impl: str = "auto") -> None:
        check.choice("nonfinite", nonfinite, ("skip", "raise", "propagate"))
        check.choice("impl", impl, ("auto", "fused", "eager"))
        #: execution path: "fused" (one generated C++ loop per step, CPU), "eager" (multi-tensor
        #: ops), "auto" (fused where it applies, eager elsewhere; a fused path that cannot be built
        #: says why once and falls back)
        self.impl = impl
        self._fused_off = False
        self._validate_group(dict(defaults))
        super().__init__(params, defaults)
        self.nonfinite: NonFinite = nonfinite
        self._skipped = 0  # skipped steps counted on the host; on CUDA, on the device (skipped_steps)
        self._skipped_device: Tensor | None = None
        self._plans: dict[int, Any] = {}  # per param group, for the fused device step (optim/_device.py)
        # How Nesterov's interim point θ̃ is handled, fixed at the first step: "closure" (the
        # parameters hold θ; step(closure) evaluates the gradient at θ̃) or "lookahead" (the
        # parameters hold θ̃; step() without closure).
        self._interim_mode: str | None = None
        self._interim_grads: dict[Tensor, Tensor] = {}

    # ------------------------------------------------------------------ hyperparameters
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """As torch.optim: keys the optimizer does not know (timm's ``lr_scale``, a scheduler's
        ``max_lr``, user tags) are kept in the group and ignored by the update."""
        super().add_param_group(param_group)
        if hasattr(self, "_plans"):
            self._plans.clear()
        group = self.param_groups[-1]
        self._validate_group(group)
        for p in group["params"]:
            if not p.is_leaf and p.requires_grad:
                raise ValueError("can't optimize a non-leaf tensor")
            if p.dtype == torch.complex32:  # no real view of it has a fused or eager float path
                raise ValueError(f"{type(self).__name__} supports complex64 and complex128 parameters, got "
                                 f"{p.dtype} (shape {tuple(p.shape)}); use p.to(torch.complex64)")

    def _validate_group(self, group: dict[str, Any]) -> None:
        """Raise ValueError for any invalid hyperparameter of ``group``."""
        raise NotImplementedError

    # ------------------------------------------------------------------ state
    def _state_names(self, group: dict[str, Any]) -> tuple[str, ...]:
        """Names of the per-parameter state tensors this group's update needs."""
        raise NotImplementedError

    def _update(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                bufs: dict[str, list[Tensor]], steps: list[int], lookahead: bool) -> None:
        """Apply the algorithm box to one chunk of one group (lists of equal length).

        ``lookahead``: the parameters hold Nesterov's interim point θ̃ (step without closure).
        """
        raise NotImplementedError

    def _init_buffer(self, name: str, p: Tensor, group: dict[str, Any]) -> Tensor:
        """The initial value of state buffer ``name`` for ``p`` (zero, as every box of §8.5 says)."""
        return torch.zeros_like(p, dtype=state_dtype(p.dtype), memory_format=torch.preserve_format)

    def _uses_interim_point(self, group: dict[str, Any]) -> bool:
        """Whether the gradient of this group is taken at θ̃ = θ + αv (Nesterov)."""
        return False

    def _velocity_displacement(self, group: dict[str, Any], velocity: list[Tensor]) -> list[Tensor]:
        return _momentum.interim_displacement(
            velocity, lr=_lr(group), momentum=group["momentum"], convention=group.get("convention", "book")
        )

    # ------------------------------------------------------------------ the step
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """Perform one optimization step.

        Args:
            closure: re-evaluates the model and returns the loss (after ``backward()``). For
                Nesterov methods (Algorithms 8.3, 8.6) it is called at the interim point θ̃.
        """
        loss = None
        interim = any(self._uses_interim_point(g) for g in self.param_groups)
        if interim:
            self._fix_interim_mode("closure" if closure is not None else "lookahead")
        if closure is not None:
            loss = self._call_closure_at_interim(closure) if interim else _call(closure)
        lookahead = self._interim_mode == "lookahead"
        if _device.step(self, lookahead):  # fused on the GPU: no synchronization
            return loss
        self._plans.clear()  # the general path may replace state tensors
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
        return self._skipped + (int(self._skipped_device.item()) if self._skipped_device is not None else 0)

    def _gather(self, group: dict[str, Any]) -> dict[tuple[torch.device, torch.dtype], _Batch]:
        buckets: dict[tuple[torch.device, torch.dtype], _Batch] = defaultdict(_Batch)
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError(
                    f"{type(self).__name__} does not support sparse gradients "
                    f"(parameter {self._param_name(p)}); use torch.optim.SparseAdam or dense gradients"
                )
            batch = buckets[(p.device, p.dtype)]
            batch.params.append(p)
            grad = self._interim_grads.pop(p, p.grad) if self._interim_grads else p.grad
            batch.sharded |= _is_dtensor(grad)
            batch.grads.append(_plain(grad))
        return buckets

    def _gradients_finite(self, batches: list[dict[Any, _Batch]]) -> bool:
        if self.nonfinite == "propagate":
            return True
        flags = [self._found_nonfinite(b.grads) for buckets in batches for b in buckets.values() if b.grads]
        if any(b.sharded for buckets in batches for b in buckets.values()):
            flags = [_found_on_any_rank(flags)]  # every shard takes the same decision
        if not any(bool(f) for f in flags):  # on the CPU, reading a CPU scalar is not a sync
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

    def _found_nonfinite(self, grads: list[Tensor]) -> Any:
        if self.impl != "eager" and grads[0].device.type == "cpu" and grads[0].dtype in (torch.float32, torch.float64):
            found = kernels.any_nonfinite(grads)  # the compiled read-only check (it checks the layout)
            if found is not None:
                return found
        return _found_nonfinite(grads)

    def _group_for_update(self, group: dict[str, Any], lookahead: bool) -> tuple[dict[str, Any], bool]:
        """The hyperparameters the update runs with, and whether the parameters hold θ̃."""
        group_lookahead = lookahead and self._uses_interim_point(group)
        if self._uses_interim_point(group) and not lookahead and group["weight_decay"] != 0:
            group = {**group, "weight_decay": 0.0}  # already added at θ̃ (_decay_at_interim)
        return group, group_lookahead

    def _fused_device_update(self, group: dict[str, Any], plan: Any, table: Tensor, aligned: bool, lookahead: bool,
                             found: Tensor) -> None:
        group, group_lookahead = self._group_for_update(group, lookahead)
        kernels.device_update(self, group, group_lookahead, plan, table, aligned, found)

    def _apply(self, group: dict[str, Any], batch: _Batch, lookahead: bool) -> None:
        names = self._state_names(group)
        for p in batch.params:
            state = self.state[p]
            state["step"] = state.get("step", 0) + 1
            for name in names:
                if name not in state:  # new, or a hyperparameter (e.g. momentum) became non-zero
                    state[name] = _like(p, self._init_buffer(name, _real(p), group).to(state_dtype(_real(p).dtype)))
            batch.states.append(state)
        group, group_lookahead = self._group_for_update(group, lookahead)
        # a complex parameter is updated as its real view (torch.optim's convention); its state
        # is kept complex, as torch keeps it, and updated through the same view
        lists = [[_plain(p) for p in batch.params], batch.grads,
                 *([_plain(s[n]) for s in batch.states] for n in names)]
        steps = [s["step"] for s in batch.states]
        if self._use_fused(lists):
            try:
                kernels.fused_update(self, group, group_lookahead, names, lists, steps)
                return
            except kernels.FusedUnavailable as err:
                self._fused_failed(str(err))
            except (TypeError, AttributeError) as err:  # an update the tracer cannot follow
                self._fused_failed(f"{type(self).__name__} cannot be traced: {err}")
            except RuntimeError as err:  # the kernel checks the layout before writing anything
                if "deepdescent-fused" not in str(err):
                    raise
                if self.impl == "fused":
                    raise RuntimeError(f"impl='fused' needs contiguous {_FUSED_NEEDS}") from err
        for (params, grads, *bufs), chunk_steps in _chunks(lists, steps):
            if params[0].dtype in LOW_PRECISION:  # compute in float32 (the state's dtype), store rounded
                wide = [p.float() for p in params]
                self._update(group, wide, [g.float() for g in grads], dict(zip(names, bufs)), chunk_steps,
                             group_lookahead)
                torch._foreach_copy_(params, wide)
            else:
                self._update(group, params, grads, dict(zip(names, bufs)), chunk_steps, group_lookahead)

    def _use_fused(self, lists: list[list[Tensor]]) -> bool:
        if self.impl == "eager" or self._fused_off:
            return False
        first = lists[0][0]
        device = "cuda" if first.device.type in kernels.TRITON_DEVICES else first.device.type
        wide = state_dtype(first.dtype)
        # on the CPU the compiled loop checks every tensor's layout itself (cheaper than from Python)
        ok = first.dtype in _FUSED_DTYPES.get(device, ()) and (device == "cpu" or all(
            t.dtype == (first.dtype if i < 2 else wide) and t.device == first.device and t.is_contiguous()
            for i, lst in enumerate(lists) for t in lst))
        if not ok and self.impl == "fused":
            raise RuntimeError(f"impl='fused' needs contiguous {_FUSED_NEEDS} (got {first.dtype} on {first.device})")
        reason = kernels.available(device)
        if ok and reason:
            self._fused_failed(reason)
            return False
        return ok

    def _fused_failed(self, reason: str) -> None:
        if self.impl == "fused":
            raise RuntimeError(f"impl='fused' is not available: {reason}")
        if not self._fused_off:
            kernels.warn_unavailable(reason)
        self._fused_off = True

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
            if not self._uses_interim_point(group):
                continue
            params = [p for p in group["params"] if "velocity" in self.state.get(p, {})]
            if params:
                yield group, params, self._velocity_displacement(group, [self.state[p]["velocity"] for p in params])

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
            if self._uses_interim_point(group) and group["weight_decay"] != 0:
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
    _COPIED = ("impl", "nonfinite", "_fused_off", "_interim_mode")

    def __getstate__(self) -> dict[str, Any]:
        """deepcopy and pickle keep the execution path, the non-finite policy, the skipped-step
        count and Nesterov's mode, so that a copy continues with the same iterates; device-side
        plans are rebuilt on the first step."""
        state = super().__getstate__()
        state.update({k: getattr(self, k) for k in self._COPIED}, _skipped=self.skipped_steps)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.defaults.pop("differentiable", None)  # torch adds it for its own classes' old pickles
        self._skipped_device, self._plans, self._interim_grads = None, {}, {}

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """torch.optim's state dict and a ``"deepdescent"`` entry (class, skipped steps, Nesterov's
        mode), added before the state_dict post-hooks run (as torch orders them)."""
        post = self._optimizer_state_dict_post_hooks
        self._optimizer_state_dict_post_hooks = OrderedDict()
        try:
            sd = super().state_dict()
        finally:
            self._optimizer_state_dict_post_hooks = post
        sd["deepdescent"] = {
            "optimizer": type(self).__name__,
            "skipped_steps": self.skipped_steps,
            "interim_mode": self._interim_mode,
        }
        for hook in post.values():
            result = hook(self, sd)
            if result is not None:
                sd = result
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict from :meth:`state_dict` — or one of the same layout without the
        ``"deepdescent"`` entry (``torch.distributed.checkpoint``'s get/set_optimizer_state_dict
        rebuild it without), then with default metadata. torch's order: load pre-hooks, then
        every check (hyperparameters as the constructor checks them, state tensors' dtype and
        shape, step counts, metadata), then the state is replaced in one go, then post-hooks.
        A failed check raises ValueError and changes nothing."""
        load_checked(self, state_dict, self._check_checkpoint, self._apply_checkpoint)

    def _apply_checkpoint(self, state_dict: dict[str, Any], meta: dict[str, Any]) -> None:
        self._plans.clear()
        super().load_state_dict({k: v for k, v in state_dict.items() if k != "deepdescent"})
        self._restore_state_dtype(state_dict)
        self._skipped, self._skipped_device = int(meta.get("skipped_steps", 0)), None
        self._interim_mode = meta.get("interim_mode")

    def _check_checkpoint(self, state_dict: dict[str, Any]) -> dict[str, Any]:
        """Every check of :meth:`load_state_dict`; returns the metadata (defaults where absent)."""
        name = type(self).__name__
        pairs = check_layout(self, state_dict)
        meta = state_dict.get("deepdescent")
        if meta is None:
            self._check_layout(state_dict)
            meta = {}
            if state_dict["state"] and any(self._uses_interim_point(g) for g in self.param_groups):
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
        for i, (saved, group) in enumerate(pairs):
            check_group_keys(self, i, saved)
            try:
                self._validate_group({**group, **saved})
            except ValueError as err:
                raise ValueError(f"param_groups[{i}] of the state_dict: {err}") from None
        self._check_shapes(state_dict)
        return meta

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
                extra = sorted(set(s) - set(self._state_names(owner[i])) - {"step"})
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
        for i, s in state_dict["state"].items():
            p = index.get(i)
            if p is None:
                raise ValueError(f"state_dict has state for parameter index {i!r}, which no group lists")
            if not isinstance(s, dict):
                raise ValueError(f"the state of parameter {self._param_name(p)} must be a dict, got {type(s).__name__}")
            for key, value in s.items():
                where = f"state {key!r} of parameter {self._param_name(p)}"
                if key == "step":
                    _check_step(where, value)
                elif isinstance(value, Tensor) and (value.shape != p.shape or not (
                        value.is_complex() if p.is_complex() else value.is_floating_point())):
                    kind = "complex" if p.is_complex() else "floating"
                    raise ValueError(f"{where} is a {value.dtype} tensor of shape {tuple(value.shape)}; it must be "
                                     f"a {kind} tensor of the parameter's shape {tuple(p.shape)}")

    # ------------------------------------------------------------------ helpers
    def _param_name(self, p: Tensor) -> str:
        for gi, group in enumerate(self.param_groups):
            for pi, q in enumerate(group["params"]):
                if q is p:
                    names = group.get("param_names")
                    where = f"param_groups[{gi}]['params'][{pi}]"
                    return f"{names[pi]!r} ({where}, shape {tuple(p.shape)})" if names else f"{where} (shape {tuple(p.shape)})"
        return f"(shape {tuple(p.shape)})"


def _check_step(where: str, value: Any) -> None:
    """A step count: an integer >= 0 (a 0-dim tensor holding one on the device path)."""
    number = value.item() if isinstance(value, Tensor) and value.dim() == 0 else value
    if isinstance(number, bool) or not isinstance(number, numbers.Real) or number < 0 or number != int(number):
        raise ValueError(f"invalid {where}={value!r}: must be an integer >= 0")


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the optimizer state (and of the update's arithmetic) for parameters of ``dtype``:
    float32 for bfloat16/float16 parameters, the parameters' own dtype otherwise."""
    return torch.float32 if dtype in LOW_PRECISION else dtype


def _real(t: Tensor) -> Tensor:
    """A complex tensor as its real view (``[..., 2]``, sharing memory); any other tensor as is."""
    return torch.view_as_real(t) if t.is_complex() else t


try:
    from torch.distributed.tensor import DTensor as _DTensor
except ImportError:  # a build without torch.distributed
    _DTensor = None


def _is_dtensor(t: Tensor) -> bool:
    return _DTensor is not None and isinstance(t, _DTensor)


def _plain(t: Tensor) -> Tensor:
    """What the update works on: a DTensor's local shard (every box of §8.3–8.5 is elementwise, so
    each rank updates its shard exactly as one process would), a complex tensor's real view."""
    return _real(t.to_local() if _is_dtensor(t) else t)


def _found_on_any_rank(flags: list[Any]) -> Tensor:
    """The non-finite flag of all ranks (a max all-reduce over the default group): sharded ranks
    must skip, or not, together."""
    import torch.distributed as dist

    found = torch.stack([torch.as_tensor(f, dtype=torch.float32).reshape(()) for f in flags]).amax() \
        if flags else torch.zeros(())
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(found, op=dist.ReduceOp.MAX)
    return found


def _like(p: Tensor, buffer: Tensor) -> Tensor:
    """A state buffer built on the real view of ``p``, kept in ``p``'s kind (complex for complex p)."""
    return torch.view_as_complex(buffer.contiguous()) if p.is_complex() else buffer


def _found_nonfinite(grads: list[Tensor]) -> Tensor:
    """A 0-dim tensor, non-zero when some gradient element is NaN or ±Inf: one read of the grads.

    Uses the multi-tensor check behind ``torch.amp.GradScaler`` (one kernel for the whole list;
    its unscale by 1.0 leaves the values as they are). Where that op is missing, per-tensor
    min/max: finite exactly when every element is (a sum of squares could overflow for finite g).
    """
    found = torch.zeros((), dtype=torch.float32, device=grads[0].device)
    check = getattr(torch, "_amp_foreach_non_finite_check_and_unscale_", None)
    if check is not None and grads[0].dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        check(grads, found, torch.ones((), dtype=torch.float32, device=grads[0].device))
        return found
    extremes = torch.stack([torch.stack(torch.aminmax(g)) for g in grads if g.numel()] or [found.expand(2)])
    return (~extremes.isfinite()).any()


def _call(closure: Callable[[], Any]) -> Any:
    with torch.enable_grad():
        return closure()


def _lr(group: dict[str, Any]) -> Any:
    """The group's learning rate as a float (a 0-dim tensor lr is read here, once per step); a
    symbolic scalar (kernel tracing, :mod:`deepdescent.kernels`) passes through."""
    lr = group["lr"]
    if isinstance(lr, Tensor):
        return lr.item()
    return float(lr) if isinstance(lr, numbers.Real) else lr


def _chunks(lists: list[list[Tensor]], steps: list[int]) -> Iterator[tuple[list[list[Tensor]], list[int]]]:
    """Split parallel tensor lists (params, grads, state buffers) into chunks of about
    ``CPU_CHUNK_NUMEL`` elements; contiguous tensors larger than that are cut into flat views.

    On the CPU each multi-tensor op streams its whole list through memory, and each temporary
    it allocates is as large as its inputs (large ones are mapped fresh from the OS, page faults
    included). Chunk by chunk, a chunk's tensors stay in cache across the several ops of one
    update and temporaries stay small. On an accelerator the whole list is one chunk.
    """
    if not lists[0] or lists[0][0].device.type != "cpu":
        yield lists, steps
        return
    size, start = 0, 0
    for i, p in enumerate(lists[0]):
        n = p.numel()
        if n > CPU_CHUNK_NUMEL and all(lst[i].is_contiguous() for lst in lists):
            if start < i:
                yield [lst[start:i] for lst in lists], steps[start:i]
            pieces = [lst[i].view(-1).split(CPU_CHUNK_NUMEL) for lst in lists]
            for j in range(len(pieces[0])):
                yield [[piece[j]] for piece in pieces], steps[i:i + 1]
            size, start = 0, i + 1
            continue
        size += n
        if size >= CPU_CHUNK_NUMEL:
            yield [lst[start:i + 1] for lst in lists], steps[start:i + 1]
            size, start = 0, i + 1
    if start < len(lists[0]):
        yield [lst[start:] for lst in lists], steps[start:]
