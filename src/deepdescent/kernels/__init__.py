"""Fused optimizer steps generated from the functional core.

:func:`fused_update` traces an algorithm's ``update`` (the box, as written in
``deepdescent.algorithms`` and described by its spec) into an expression graph (:mod:`.trace`), generates one fused C++
loop from it (:mod:`.cpp`) and runs it over all elements of all tensors: one pass over memory per
step instead of one per operation. The standard kernels are compiled into one extension once per
machine (``scripts/setup.sh`` does it) and cached on disk by ``torch.utils.cpp_extension``; a
configuration outside the standard set compiles on demand. A step never waits for a compiler:
where a kernel is not on disk yet, it is compiled in a background thread (said once) while the
eager path serves, and steps switch to it when it is ready. ``DEEPDESCENT_KERNEL_BUILD=wait`` (or
``impl="fused"``) makes the step wait instead, for runs that must take one path throughout.

``python -m deepdescent.kernels`` builds (or loads) the standard kernels and prints what it did.
"""

from __future__ import annotations

import hashlib
import numbers
import os
import platform
import sys
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from deepdescent.algorithms import REGISTRY
from deepdescent.algorithms.spec import Algorithm
from deepdescent.kernels import cpp
from deepdescent.kernels.trace import Trace, structure_key, trace

Kernel = Callable[[list[list[Tensor]], list[float], list[float]], None]

_LOCK = threading.Lock()  # traces and the table of loaded functions
_BUILD_LOCK = threading.Lock()  # one compilation at a time
_BUILDER: threading.Thread | None = None  # the background compilation, while it runs
_TRACES: dict[tuple, tuple[Trace, list[str], str]] = {}
_FUNCTIONS: dict[str, Kernel] = {}
_DISABLED: str | None = None  # why the fused path cannot be used on this machine
#: Device kinds whose fused step is the generated Triton kernel. The tests add "cpu" and set
#: TRITON_INTERPRET=1 to run that kernel in Triton's interpreter on a machine without a GPU.
TRITON_DEVICES: tuple[str, ...] = ("cuda",)


class FusedUnavailable(RuntimeError):
    """The fused CPU path cannot be built here (no C++ compiler, or the build failed)."""


class FusedPending(RuntimeError):
    """The kernel is being compiled in the background: run this step on the eager path."""


def _numeric(group: dict[str, Any], keys: Any) -> dict[str, float]:
    """The group's numeric hyperparameters among ``keys`` (the algorithm's own, its defaults): keys
    that schedulers (OneCycleLR's max_lr, …) or users (timm's lr_scale, tags) add never reach a
    kernel, so they never change its structure or trigger a compilation. Sorted by key: the order
    in which a group lists its keys (a per-group ``weight_decay`` comes first) must not change the
    generated code, else a new process would compile what the standard set already holds."""
    out = {}
    for key, value in sorted(group.items(), key=lambda item: item[0]):
        if key not in keys or isinstance(value, (bool, str)):
            continue
        if isinstance(value, (tuple, list)):
            out.update({f"{key}{i}": float(v) for i, v in enumerate(value)})
        elif isinstance(value, Tensor):
            out[key] = float(value.item())
        elif isinstance(value, numbers.Real):
            out[key] = float(value)
    return out


def _symbolic(h: dict[str, Any], syms: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in h.items():
        if isinstance(value, (tuple, list)) and not isinstance(value, str) and f"{key}0" in syms:
            out[key] = tuple(syms[f"{key}{i}"] for i in range(len(value)))
        elif key in syms:
            out[key] = syms[key]
        else:
            out[key] = value
    return out


def _trace_for(spec: Algorithm, h: dict[str, Any], lookahead: bool,
               names: tuple[str, ...]) -> tuple[Trace, list[str], str]:
    numeric = _numeric(h, spec.names)
    others = {k: v for k, v in h.items() if k in spec.names and isinstance(v, (bool, str))}
    key = (spec.name, structure_key({**numeric, **others}), lookahead, names)
    if key not in _TRACES:
        def update(lists, syms, tsyms):
            params, grads, *bufs = lists
            spec.update(_symbolic(h, syms), params, grads, dict(zip(names, bufs)), [tsyms["step"]], lookahead)
        tr = trace(update, 2 + len(names), numeric, {"step": 1.0})
        _TRACES[key] = (tr, list(numeric), cpp.function_name(tr))
    return _TRACES[key]


def traced(spec: Algorithm, h: dict[str, Any], lookahead: bool = False) -> tuple[Trace, list[str]]:
    """The expression graph of ``spec``'s update with hyperparameters ``h`` (cached), and the
    names of the scalars its kernel takes, in order (:func:`scalar_values` gives their values)."""
    with _LOCK:
        tr, names, _ = _trace_for(spec, h, lookahead, spec.buffers(h))
    return tr, names


def scalar_values(spec: Algorithm, h: dict[str, Any]) -> dict[str, float]:
    """The numeric hyperparameters a kernel of ``spec`` takes (pairs as ``betas0``, ``betas1``)."""
    return _numeric(h, spec.names)


def _cpu_tag() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        flags = platform.processor()
    return hashlib.sha1(flags.encode()).hexdigest()[:8]


def _build_folder(name: str) -> str:
    """A build folder per environment (its Python prefix and torch version): two virtual
    environments never rebuild each other's kernels. A lock left by a process killed while
    compiling (torch.utils.cpp_extension would wait on it forever) is removed after 10 minutes."""
    env = hashlib.sha1(f"{sys.prefix}|{torch.__version__}".encode()).hexdigest()[:10]
    root = os.environ.get("DEEPDESCENT_KERNEL_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "deepdescent"))
    folder = os.path.join(root, f"kernels-{env}", name)
    os.makedirs(folder, exist_ok=True)
    lock = os.path.join(folder, "lock")
    if os.path.exists(lock) and time.time() - os.path.getmtime(lock) > 600:
        warnings.warn(f"deepdescent: removing a stale build lock {lock!r} (a compiler killed mid-build)",
                      RuntimeWarning, stacklevel=3)
        os.remove(lock)
    return folder


def _extension(traces: list[Trace]) -> tuple[list[str], list[str], str] | None:
    """(C++ files, function names, extension name) of the kernels of ``traces`` not loaded yet:
    the kernels split over as many files as there are cores (the compiler runs one per file, in
    parallel), then the bindings."""
    seen, sources, names = set(), [], []
    for t in traces:
        name = cpp.function_name(t)
        if name not in _FUNCTIONS and name not in seen:
            seen.add(name)
            names.append(name)
            sources.append(cpp.source(t))
    if not names:
        return None
    if "any_nonfinite" not in _FUNCTIONS:
        names.append("any_nonfinite")
    digest = hashlib.sha1((cpp.HEADER + "\n".join(sources)).encode()).hexdigest()[:12]
    parts = max(1, min(len(sources) // 8, os.cpu_count() or 1, 8))  # a file holds 8 kernels at least
    files = [*cpp.translation_units(sources, parts), cpp.bindings(names)]
    return files, names, f"deepdescent_kernels_{digest}_{_cpu_tag()}"


def _write(folder: str, filename: str, text: str) -> str:
    """Write a source file unless it already holds ``text`` (a new mtime would make ninja rebuild)."""
    path = os.path.join(folder, filename)
    try:
        with open(path) as f:
            if f.read() == text:
                return path
    except OSError:
        pass
    with open(f"{path}.{os.getpid()}.tmp", "w") as f:
        f.write(text)
    os.replace(f"{path}.{os.getpid()}.tmp", path)
    return path


def _on_disk(traces: list[Trace]) -> bool:
    """Whether the extension of ``traces`` is already built (loading it takes a moment, no compiler)."""
    ext = _extension(traces)
    return ext is None or os.path.exists(os.path.join(_build_folder(ext[2]), f"{ext[2]}.so"))


def _compile(traces: list[Trace]) -> None:
    """Compile the kernels of ``traces`` into one extension (or load it from disk) and register its functions."""
    global _DISABLED
    from torch.utils import cpp_extension

    with _BUILD_LOCK:
        ext = _extension(traces)
        if ext is None:
            return
        files, names, name = ext
        folder = _build_folder(name)
        try:
            module = cpp_extension.load(
                name=name, sources=[_write(folder, f"{name}_{i}.cpp", text) for i, text in enumerate(files)],
                build_directory=folder, extra_cflags=["-O3", "-march=native", "-fno-math-errno", "-fopenmp"],
                extra_ldflags=["-fopenmp"], verbose=False)
        except Exception as err:  # noqa: BLE001 - no compiler, no headers: fall back, say why once
            _DISABLED = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
            raise FusedUnavailable(_DISABLED) from err
        with _LOCK:
            _FUNCTIONS.update({n: getattr(module, n) for n in names})


def _standard_traces() -> list[Trace]:
    with _LOCK:
        return [_trace_for(spec, h, look, spec.buffers(h))[0] for spec, h, look in standard_configurations()]


def _make_available(tr: Trace, wait: bool) -> None:
    """Load or compile the kernel of ``tr`` (the standard set first, as one extension). Unless
    ``wait`` (or DEEPDESCENT_KERNEL_BUILD=wait), a kernel that is not on disk is compiled in a
    background thread and FusedPending is raised: the caller runs the eager path meanwhile."""
    global _BUILDER
    wanted = ([_standard_traces()] if not _FUNCTIONS else []) + [[tr]]
    wait = wait or os.environ.get("DEEPDESCENT_KERNEL_BUILD") == "wait"
    if wait or all(_on_disk(t) for t in wanted):
        for traces in wanted:
            _compile(traces)
        return
    with _LOCK:
        if _BUILDER is None or not _BUILDER.is_alive():
            _BUILDER = threading.Thread(target=_build_in_background, args=(wanted,), name="deepdescent-kernels",
                                        daemon=True)
            _BUILDER.start()
    raise FusedPending("deepdescent: compiling the fused CPU kernels in the background (about a minute, once per "
                       "machine); steps run on the eager path until they are ready")


def _build_in_background(wanted: list[list[Trace]]) -> None:
    try:
        for traces in wanted:
            _compile(traces)
    except FusedUnavailable:  # recorded in _DISABLED: the next fused step says why and falls back
        pass


def wait_for_build(timeout: float | None = None) -> bool:
    """Wait for a background compilation (if one runs); True when none is running any more."""
    builder = _BUILDER
    if builder is not None:
        builder.join(timeout)
    return builder is None or not builder.is_alive()


def device_update(spec: Algorithm, h: dict[str, Any], lookahead: bool, plan: Any, table: Tensor, aligned: bool,
                  found: Tensor) -> None:
    """The generated Triton kernel for ``spec`` with hyperparameters ``h`` over the tensors of
    ``plan`` (executor/device.py), their addresses at ``table``; skipped (nothing written) when
    ``found`` is set."""
    from deepdescent.kernels import triton_backend

    with _LOCK:
        tr, scalar_names, _ = _trace_for(spec, h, lookahead, plan.names)
    numeric = _numeric(h, spec.names)
    triton_backend.update(tr, plan.dtype, plan.blocks, table, plan.step_table, len(plan.steps),
                          [numeric[k] for k in scalar_names], found, aligned)


def fused_update(spec: Algorithm, h: dict[str, Any], lookahead: bool, names: tuple[str, ...],
                 lists: list[list[Tensor]], steps: list[Any], *, wait: bool = False) -> None:
    """Run ``spec``'s update with hyperparameters ``h`` on tensor lists (params, grads,
    buffers...): the generated C++ loop on the CPU, the generated Triton kernel on CUDA. Raises
    FusedPending (nothing written) while the CPU kernel compiles in the background, unless ``wait``."""
    if lists[0][0].device.type in TRITON_DEVICES:
        from deepdescent.kernels import triton_backend

        with _LOCK:
            tr, scalar_names, _ = _trace_for(spec, h, lookahead, names)
        numeric = _numeric(h, spec.names)
        triton_backend.launch(tr, lists, [numeric[k] for k in scalar_names], steps)
        return
    if _DISABLED:
        raise FusedUnavailable(_DISABLED)
    with _LOCK:
        tr, scalar_names, name = _trace_for(spec, h, lookahead, names)
        function = _FUNCTIONS.get(name)
    if function is None:
        _make_available(tr, wait)
        function = _FUNCTIONS[name]
    numeric = _numeric(h, spec.names)
    function(lists, [numeric[k] for k in scalar_names], [float(s) for s in steps])


def any_nonfinite(tensors: list[Tensor]) -> bool | None:
    """True when some element of the (contiguous float32/float64 CPU) tensors is NaN or ±Inf: one
    read-only, vectorized pass. None when the compiled check is not available (use another)."""
    fn = _FUNCTIONS.get("any_nonfinite")
    if fn is None:
        return None
    try:
        return bool(fn(tensors))
    except RuntimeError as err:  # non-contiguous or mixed: let the caller use another check
        if "deepdescent-fused" in str(err):
            return None
        raise


def standard_configurations() -> list[tuple[Algorithm, dict[str, Any], bool]]:
    """(spec, hyperparameters, lookahead) for every kernel structure of every registered algorithm."""
    return [(spec, h, look) for spec in REGISTRY.values() for h, look in spec.kernel_structures()]


def build() -> int:
    """Trace and compile the standard kernels (or load them from the disk cache); their count."""
    _compile(_standard_traces())
    return len(_FUNCTIONS)


def available(device: str = "cpu") -> str | None:
    """None when the fused path works here for ``device``, else why not."""
    if os.environ.get("DEEPDESCENT_NO_FUSED"):
        return "disabled by DEEPDESCENT_NO_FUSED"
    if device == "cuda":
        from deepdescent.kernels import triton_backend

        return triton_backend.available(interpret="cpu" in TRITON_DEVICES)
    return _DISABLED
