"""The executor: how one step of an algorithm runs on a list of tensors.

It takes an algorithm spec (:mod:`deepdescent.algorithms.spec`), its hyperparameters and the
tensor lists (parameters, gradients, state buffers), and owns everything that is about running
rather than about the algorithm or the ``torch.optim`` protocol:

* the path: the fused kernel generated from the box (C++ on the CPU, Triton on CUDA) where the
  tensors allow it, else the eager multi-tensor ops; a fused path that cannot be built says why
  once and the eager path serves (``impl="fused"`` raises instead);
* CPU chunking: the eager path runs in cache-sized chunks;
* mixed precision: bfloat16/float16 parameters are updated in float32 (their state's dtype,
  :func:`state_dtype`) and rounded once per step, on every path;
* the non-finite check (one read of the gradients; all-reduced across ranks for sharded ones);
* the fused device step (:mod:`.device`): a few launches per step, no host synchronization.

It imports the algorithms and the kernels, never an optimizer: the optimizer classes and the
lab's vectorized engine both call it.
"""

from __future__ import annotations

import logging
import operator
import sys
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor

from deepdescent import kernels
from deepdescent.algorithms.spec import Algorithm

#: Parameter dtypes whose optimizer state is kept in float32 (and whose update is computed in float32).
LOW_PRECISION = (torch.bfloat16, torch.float16)
#: Parameter dtypes of the fused paths, per device kind.
FUSED_DTYPES = {"cpu": (torch.float32, torch.float64, *LOW_PRECISION), "cuda": (torch.float32, *LOW_PRECISION)}
_FUSED_NEEDS = ("tensors (parameters and gradients of one dtype: float32, float64 on the CPU, bfloat16 or "
                "float16; state of the dtype state_dtype() gives)")
#: Elements per CPU chunk (measured best on 2-thread EPYC, L2 1 MiB per core; see BENCHMARKS.md).
CPU_CHUNK_NUMEL = 1 << 16
IMPLS = ("auto", "fused", "eager")


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the optimizer state (and of the update's arithmetic) for parameters of ``dtype``:
    float32 for bfloat16/float16 parameters, the parameters' own dtype otherwise."""
    return torch.float32 if dtype in LOW_PRECISION else dtype


class Executor:
    """Runs an algorithm's steps for one owner (an optimizer, a lab run).

    ``impl``: ``"auto"`` (fused where it applies, eager elsewhere), ``"fused"`` (require it) or
    ``"eager"``. :attr:`path` is the path the owner's steps take, fixed at its first step and kept
    for its whole life: ``"fused"`` when the kernel was ready (loaded, or on disk) then,
    ``"eager"`` when it was not (it compiles in the background for owners created later). A
    kernel that finishes compiling meanwhile never switches a running owner. :attr:`fused_off`
    records that the fused path failed here (said once). Copies (deepcopy, pickle) keep all three;
    device plans and counters are rebuilt on the next step.
    """

    def __init__(self, impl: str = "auto") -> None:
        self.impl = impl
        self.fused_off = False
        self.plans: dict[Any, Any] = {}  # per param group, for the fused device step
        self.device_skipped: Tensor | None = None  # skipped steps counted on the device

    @property
    def impl(self) -> str:
        return self._impl

    @impl.setter
    def impl(self, value: str) -> None:
        if value not in IMPLS:
            raise ValueError(f"invalid impl={value!r}: must be one of {', '.join(map(repr, IMPLS))}")
        self._impl = value
        #: "fused", "eager", or None until the first step decides (impl="auto")
        self.path: str | None = None if value == "auto" else value

    def __getstate__(self) -> dict[str, Any]:
        return {"impl": self.impl, "fused_off": self.fused_off, "path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["impl"])  # type: ignore[misc]
        self.fused_off = state["fused_off"]
        self.path = state.get("path", self.path)

    def __eq__(self, other: object) -> bool:
        """Equal when a step would run the same way (what a copy keeps)."""
        return isinstance(other, Executor) and self.__getstate__() == other.__getstate__()

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return (f"Executor(impl={self.impl!r}, path={self.path!r}"
                f"{', fused path unavailable here' if self.fused_off else ''})")

    def resume(self, path: Any, owner: str) -> None:
        """Take the path a checkpoint recorded (``state_dict()["deepdescent"]["path"]``) again: the
        fused one when it is available here (compiled now if need be), else the eager one, with a
        warning that the iterates will differ from an uninterrupted run in the last bits."""
        if self.impl != "auto" or path is None:
            return
        reason = kernels.available("cpu") or ("the fused path failed here" if self.fused_off else None)
        if path == "fused" and reason:
            warnings.warn(f"{owner}: the checkpoint was trained on the fused path, which is unavailable here "
                          f"({reason}); continuing on the eager path, the iterates may differ from an uninterrupted "
                          "run in the last bits", RuntimeWarning, stacklevel=4)
            path = "eager"
        self.path = path

    # ------------------------------------------------------------------ the update
    def run(self, spec: Algorithm, h: Mapping[str, Any], lists: list[list[Tensor]], steps: list[Any],
            lookahead: bool) -> None:
        """One step of ``spec`` with hyperparameters ``h`` on ``lists`` = [params, grads, *buffers]
        (the buffers in the order of ``spec.buffers(h)``), ``steps`` t per tensor (advanced)."""
        h = resolve(h)
        names = spec.buffers(h)
        if spec.fused and self.path != "eager" and self._use_fused(lists):
            try:
                # a fused owner waits for a kernel it lacks (a new configuration) rather than switch path
                kernels.fused_update(spec, h, lookahead, names, lists, steps, wait=self.path == "fused")
                self.path = "fused"
                return
            except kernels.FusedPending as pending:  # compiling in the background: eager for this owner's life
                self.path = "eager"
                _notice(str(pending))
            except kernels.FusedUnavailable as err:  # no compiler, a failed build, an update the tracer cannot follow
                self._fused_failed(str(err), warn=not isinstance(err, kernels.NotTraceable))  # kernels said it
            except RuntimeError as err:  # the kernel checks the layout before writing anything
                if "deepdescent-fused" not in str(err):
                    raise
                if self.impl == "fused":
                    raise RuntimeError(f"impl='fused' needs contiguous {_FUSED_NEEDS}") from err
        elif not spec.fused and self.impl == "fused":
            raise RuntimeError(f"impl='fused' is not available: {spec.name} has no fused kernel")
        eager(spec, h, lists, steps, lookahead)

    def _use_fused(self, lists: list[list[Tensor]]) -> bool:
        if self.impl == "eager" or self.fused_off:
            return False
        first = lists[0][0]
        device = "cuda" if first.device.type in kernels.TRITON_DEVICES else first.device.type
        wide = state_dtype(first.dtype)
        # on the CPU the compiled loop checks every tensor's layout itself (cheaper than from Python)
        ok = first.dtype in FUSED_DTYPES.get(device, ()) and (device == "cpu" or all(
            t.dtype == (first.dtype if i < 2 else wide) and t.device == first.device and t.is_contiguous()
            for i, lst in enumerate(lists) for t in lst))
        if not ok and self.impl == "fused":
            raise RuntimeError(f"impl='fused' needs contiguous {_FUSED_NEEDS} (got {first.dtype} on {first.device})")
        reason = kernels.available(device)
        if ok and reason:
            self._fused_failed(reason)
            return False
        return ok

    def _fused_failed(self, reason: str, warn: bool = True) -> None:
        if self.impl == "fused":
            raise RuntimeError(f"impl='fused' is not available: {reason}")
        if not self.fused_off and warn:
            warnings.warn(f"deepdescent: the fused CPU optimizer path is unavailable ({reason}); using the eager "
                          "multi-tensor path", RuntimeWarning, stacklevel=5)
        self.fused_off, self.path = True, "eager"

    # ------------------------------------------------------------------ the non-finite check
    def found_nonfinite(self, grads: list[Tensor]) -> Any:
        """Non-zero when some element of ``grads`` is NaN or ±Inf: one read-only pass (the compiled
        check on contiguous float32/float64 CPU tensors, else the multi-tensor one)."""
        if self.impl != "eager" and grads[0].device.type == "cpu" and grads[0].dtype in (torch.float32, torch.float64):
            found = kernels.any_nonfinite(grads)  # it checks the layout itself
            if found is not None:
                return found
        return found_nonfinite(grads)

    def nonfinite(self, grad_lists: list[list[Tensor]], sharded: bool = False) -> bool:
        """Whether any of the lists holds a non-finite element — on any rank, when ``sharded``
        (every shard must take the same decision). Tensors on the meta device hold no values (shape
        tracing steps through them, as through torch.optim): nothing to find there."""
        flags = [self.found_nonfinite(g) for g in grad_lists if g and g[0].device.type != "meta"]
        if sharded:
            flags = [found_on_any_rank(flags)]
        return any(bool(f) for f in flags)  # on the CPU, reading a CPU scalar is not a sync


_NOTICES: set[str] = set()


def _notice(message: str) -> None:
    """Say once per process what is happening (on stderr, through the ``deepdescent`` logger)."""
    if message not in _NOTICES:
        _NOTICES.add(message)
        logging.getLogger("deepdescent").warning(message)


def resolve(h: Mapping[str, Any]) -> dict[str, Any]:
    """The hyperparameters as the update reads them: a 0-dim tensor (a tensor lr) as its float,
    read once per step; anything else (numbers, a symbolic scalar, per-member lists) as is."""
    return {k: (v.item() if isinstance(v, Tensor) and v.dim() == 0 else v) for k, v in h.items() if k != "params"}


def eager(spec: Algorithm, h: Mapping[str, Any], lists: list[list[Tensor]], steps: list[Any], lookahead: bool) -> None:
    """The box's multi-tensor ops, chunk by chunk on the CPU; low-precision parameters in float32.
    Hyperparameters given per list entry (the lab's per-member learning rates) keep the lists whole."""
    names = spec.buffers(h)
    per_entry = any(isinstance(v, list) for v in h.values())
    for (params, grads, *bufs), chunk_steps in ([(lists, steps)] if per_entry else chunks(lists, steps)):
        if params[0].dtype in LOW_PRECISION:  # compute in float32 (the state's dtype), store rounded
            wide = [p.float() for p in params]
            spec.update(h, wide, [g.float() for g in grads], dict(zip(names, bufs)), chunk_steps, lookahead)
            torch._foreach_copy_(params, wide)
        else:
            spec.update(h, params, grads, dict(zip(names, bufs)), chunk_steps, lookahead)


def chunks(lists: list[list[Tensor]], steps: list[Any]) -> Iterator[tuple[list[list[Tensor]], list[Any]]]:
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


def found_nonfinite(grads: list[Tensor]) -> Tensor:
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


def nonfinite_members(grads: list[Tensor]) -> Tensor:
    """For tensors stacked along a leading member axis (the lab's vectorized members): a bool
    per member, True where some element of that member's gradients is NaN or ±Inf."""
    found = torch.zeros(grads[0].shape[0], dtype=torch.bool, device=grads[0].device)
    for g in grads:
        found |= ~torch.isfinite(g.reshape(g.shape[0], -1)).all(1)
    return found


def found_on_any_rank(flags: list[Any]) -> Tensor:
    """The non-finite flag of all ranks (a max all-reduce over the default group): sharded ranks
    must skip, or not, together."""
    import torch.distributed as dist

    found = torch.stack([torch.as_tensor(f, dtype=torch.float32).reshape(()) for f in flags]).amax() \
        if flags else torch.zeros(())
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(found, op=dist.ReduceOp.MAX)
    return found


# ---------------------------------------------------------------------- tensors as the update sees them
def is_dtensor(t: Tensor) -> bool:
    """Whether ``t`` is a DTensor (FSDP2's sharded tensor). No DTensor exists before its module is
    imported, so this never imports it (a second of start-up for every process otherwise)."""
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(t, module.DTensor)


def real(t: Tensor) -> Tensor:
    """A complex tensor as its real view (``[..., 2]``, sharing memory); any other tensor as is."""
    return torch.view_as_real(t) if t.is_complex() else t


def plain(t: Tensor) -> Tensor:
    """What the update works on: a DTensor's local shard (every box of §8.3–8.5 is elementwise, so
    each rank updates its shard exactly as one process would), a complex tensor's real view."""
    return real(t.to_local() if is_dtensor(t) else t)


def _sharded(tensors: list[Tensor]) -> bool:
    """Whether some tensor is a DTensor (their types collected in C)."""
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and any(issubclass(kind, module.DTensor) for kind in set(map(type, tensors)))


def is_plain(tensors: list[Tensor]) -> bool:
    """Whether no tensor is a DTensor or complex (:func:`plain_all` would change nothing), checked
    in C over the whole list."""
    return not _sharded(tensors) and _COMPLEX.isdisjoint(map(_DTYPE, tensors))


def plain_all(tensors: list[Tensor]) -> tuple[list[Tensor], bool]:
    """:func:`plain` of every tensor, and whether any was a DTensor. The types and dtypes are
    collected in C (``map``), so that the common case — no DTensor, no complex tensor — costs no
    Python call per tensor: a step's Python cost is per tensor, and a model has hundreds."""
    if _sharded(tensors):
        return [real(t.to_local() if is_dtensor(t) else t) for t in tensors], True
    if _COMPLEX.isdisjoint(map(_DTYPE, tensors)):
        return list(tensors), False
    return [torch.view_as_real(t) if t.is_complex() else t for t in tensors], False


_DTYPE = operator.attrgetter("dtype")
_COMPLEX = frozenset({torch.complex32, torch.complex64, torch.complex128})


def as_state(p: Tensor, buffer: Tensor) -> Tensor:
    """A state buffer built on the real view of ``p``, kept in ``p``'s kind (complex for complex p)."""
    return torch.view_as_complex(buffer.contiguous()) if p.is_complex() else buffer


def new_buffer(spec: Algorithm, name: str, p: Tensor, h: Mapping[str, Any]) -> Tensor:
    """The initial state buffer ``name`` of ``p`` (in :func:`state_dtype`, ``p``'s kind)."""
    return as_state(p, spec.init(name, real(p), h).to(state_dtype(real(p).dtype)))


__all__ = ["CPU_CHUNK_NUMEL", "FUSED_DTYPES", "LOW_PRECISION", "Executor", "as_state", "chunks", "eager",
           "found_nonfinite", "is_dtensor", "is_plain", "new_buffer", "nonfinite_members", "plain", "plain_all", "real",
           "resolve", "state_dtype"]
