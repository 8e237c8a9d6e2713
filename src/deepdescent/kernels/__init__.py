"""Fused optimizer steps generated from the functional core.

:func:`fused_update` traces an algorithm's ``update`` (the box, as written in
``deepdescent.algorithms`` and described by its spec) into an expression graph (:mod:`.trace`),
generates one fused C++ loop from it (:mod:`.cpp`) and runs it over all elements of all tensors:
one pass over memory per step instead of one per operation. Each op of the graph rounds where
ATen's eager op rounds, so the fused and eager paths give the same bits (tests/test_kernels.py
checks every registered algorithm).

Kernels per algorithm: each algorithm's standard kernels are one extension, named by the hash of
its own code, compiled once per machine (``scripts/setup.sh`` does it) and loaded from the disk
cache by every later process, before its first step. Adding or changing one algorithm compiles
only its kernels; an algorithm whose update uses an op the tracer cannot follow runs eager (one
warning naming the op) and leaves the others untouched. A configuration outside the standard
set is an extension of its own.

Where an extension is not on disk, it is compiled in a background thread (said once) and the
optimizer that asked runs eager for its whole life (:class:`deepdescent.executor.Executor` keeps
one path per optimizer); optimizers created after the build use the kernel.
``DEEPDESCENT_KERNEL_BUILD=wait`` (or ``impl="fused"``) waits for the compiler instead;
``DEEPDESCENT_KERNEL_BUILD=never`` compiles nothing (the eager path serves what is not built). Builds
happen in a private folder and are moved into place whole; a lock held by the building process
(released by the system when it dies, however it dies) keeps two processes from compiling the
same extension, and a process killed mid-build blocks nobody.

``python -m deepdescent.kernels`` builds (or loads) the standard kernels and prints what it did.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import numbers
import os
import platform
import shutil
import socket
import sys
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import filelock
import torch
from torch import Tensor

from deepdescent.algorithms import REGISTRY
from deepdescent.algorithms.spec import Algorithm
from deepdescent.kernels import cpp
from deepdescent.kernels.trace import Trace, structure_key, trace

Kernel = Callable[[list[list[Tensor]], list[float], list[float]], None]

_LOCK = threading.Lock()  # traces and the table of loaded functions
_BUILD_LOCK = threading.Lock()  # one compilation at a time in this process
_BUILDERS: dict[str, Any] = {}  # background compilations (threads, the builder process), by extension name
_TRACES: dict[tuple, tuple[Trace, list[str], str]] = {}
_FUNCTIONS: dict[str, Kernel] = {}
_DISABLED: str | None = None  # why the fused path cannot be used on this machine (no compiler)
_EAGER_ONLY: dict[str, str] = {}  # algorithm name → why it has no fused kernel here
_FAILED: dict[str, str] = {}  # extension name → why its build failed (not tried again in this process)
#: Device kinds whose fused step is the generated Triton kernel. The tests add "cpu" and set
#: TRITON_INTERPRET=1 to run that kernel in Triton's interpreter on a machine without a GPU.
TRITON_DEVICES: tuple[str, ...] = ("cuda",)
#: The kernel libraries are compiled with these flags. ``-ffp-contract=off``: the compiler fuses no
#: multiply-add the trace does not name, so each op rounds where ATen's eager op rounds.
CFLAGS = ["-O3", "-march=native", "-fno-math-errno", "-ffp-contract=off", "-fopenmp-simd", "-std=c++17", "-fPIC",
          "-shared"]
#: The runtime extension's flags (its parallel loop is torch's, over OpenMP).
RUNTIME_CFLAGS = ["-O3", "-march=native", "-fopenmp"]


class FusedUnavailable(RuntimeError):
    """The fused CPU path cannot be built here (no C++ compiler, or the build failed)."""


class NotTraceable(FusedUnavailable):
    """This algorithm's update uses an op the kernel tracer cannot follow: it runs eager."""


class FusedPending(RuntimeError):
    """The kernel is being compiled in the background: run on the eager path."""


@dataclass(frozen=True)
class Extension:
    """One compiled library: its name (the hash of its code), its C++ and its functions.
    ``runtime``: the torch extension every kernel runs through; otherwise a kernel library."""

    name: str
    label: str  # what it holds, for messages: "Adam", "Adam (one configuration)", …
    code: str
    functions: tuple[str, ...]
    runtime: bool = False
    standard: bool = True  # part of the standard set (``python -m deepdescent.kernels`` builds it)


def _numeric(group: dict[str, Any], keys: Any) -> dict[str, float]:
    """The group's numeric hyperparameters among ``keys`` (the algorithm's own, its defaults): keys
    that schedulers (OneCycleLR's max_lr, …) or users (timm's lr_scale, tags) add never reach a
    kernel, so they never change its structure or trigger a compilation. Sorted by key: the order
    in which a group lists its keys (a per-group ``weight_decay`` comes first) must not change the
    generated code, else a new process would compile what the standard set already holds."""
    out = {}
    for key in sorted(keys):
        value = group.get(key)
        if value is None or isinstance(value, (bool, str)):
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


def _trace_for(spec: Algorithm, h: dict[str, Any], lookahead: bool, names: tuple[str, ...],
               numeric: dict[str, float] | None = None) -> tuple[Trace, list[str], str]:
    """The traced update of ``spec`` for the structure of ``h`` (cached), the names of its kernel's
    scalars in order, and the kernel's name. ``numeric``: ``_numeric(h, spec.names)`` if the caller
    has it."""
    numeric = _numeric(h, spec.names) if numeric is None else numeric
    others = {k: v for k, v in h.items() if k in spec.names and isinstance(v, (bool, str))}
    key = (spec.name, structure_key({**numeric, **others}), lookahead, names)
    if key not in _TRACES:
        def update(lists, syms, tsyms):
            params, grads, *bufs = lists
            spec.update(_symbolic(h, syms), params, grads, dict(zip(names, bufs)), [tsyms["step"]], lookahead)
        try:
            tr = trace(update, 2 + len(names), numeric, {"step": 1.0})
        except Exception as err:  # noqa: BLE001 - any op or construct the tracer cannot follow
            why = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else err!r}"
            raise NotTraceable(f"{spec.name} has no fused kernel: its update cannot be traced ({why})") from err
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


def _cache_root() -> str:
    """The kernels of this environment (its Python prefix and torch version): two virtual
    environments never load or rebuild each other's kernels."""
    env = hashlib.sha1(f"{sys.prefix}|{torch.__version__}".encode()).hexdigest()[:10]
    root = os.environ.get("DEEPDESCENT_KERNEL_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "deepdescent"))
    return os.path.join(root, f"kernels-{env}")


def _library(ext: Extension) -> str:
    return os.path.join(_cache_root(), f"{ext.name}.so")


def _extension(label: str, sources: list[str], names: list[str]) -> Extension:
    """The kernel library holding ``sources`` (functions ``names``)."""
    code = cpp.kernel_library(sources)
    digest = hashlib.sha1(f"{code}|{' '.join(CFLAGS)}".encode()).hexdigest()[:12]
    slug = "".join(c for c in label.lower() if c.isalnum())[:24] or "kernels"
    return Extension(f"deepdescent_{slug}_{digest}_{_cpu_tag()}", label, code, tuple(names))


def _runtime_extension() -> Extension:
    """The torch extension that runs the kernels and holds the non-finite check."""
    digest = hashlib.sha1(f"{cpp.RUNTIME}|{' '.join(RUNTIME_CFLAGS)}".encode()).hexdigest()[:12]
    return Extension(f"deepdescent_runtime_{digest}_{_cpu_tag()}", "the kernel runtime", cpp.RUNTIME,
                     ("run_kernel", "any_nonfinite"), runtime=True)


def _algorithm_extension(spec: Algorithm) -> Extension:
    """The extension of ``spec``'s standard kernels (NotTraceable when its update cannot be traced)."""
    with _LOCK:
        traces = [_trace_for(spec, h, look, spec.buffers(h))[0] for h, look in spec.kernel_structures()]
    sources, names = [], []
    for t in traces:
        if cpp.function_name(t) not in names:
            names.append(cpp.function_name(t))
            sources.append(cpp.source(t))
    return _extension(spec.name, sources, names)


def _extension_of(spec: Algorithm, tr: Trace) -> Extension:
    """The extension that holds the kernel of ``tr``: the algorithm's standard one, or one of its own."""
    standard = _algorithm_extension(spec)
    name = cpp.function_name(tr)
    if name in standard.functions:  # an algorithm outside the registry is not in the standard set
        return standard if REGISTRY.get(spec.name) is spec else Extension(
            standard.name, standard.label, standard.code, standard.functions, standard=False)
    one = _extension(f"{spec.name} (one configuration)", [cpp.source(tr)], [name])
    return Extension(one.name, one.label, one.code, one.functions, standard=False)


def _loaded(ext: Extension) -> bool:
    return all(n in _FUNCTIONS for n in ext.functions)


_LIBRARIES: list[Any] = []  # the loaded kernel libraries (kept alive)


def _import(ext: Extension, path: str) -> None:
    """Load a built library (no compiler, no lock: the file is complete once it has its name)."""
    import ctypes
    import importlib.util

    if ext.runtime:
        spec = importlib.util.spec_from_file_location(ext.name, path)
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        spec.loader.exec_module(module)  # type: ignore[union-attr]
        with _LOCK:
            _FUNCTIONS.update({n: getattr(module, n) for n in ext.functions})
        return
    lib = ctypes.CDLL(path)
    run = _FUNCTIONS["run_kernel"]
    with _LOCK:
        _LIBRARIES.append(lib)
        for name in ext.functions:
            addresses = [ctypes.cast(getattr(lib, f"{name}_{suffix}"), ctypes.c_void_p).value
                         for suffix, _, _ in cpp.VARIANTS]
            _FUNCTIONS[name] = lambda lists, s, ts, a=addresses: run(a, lists, s, ts)


@contextlib.contextmanager
def _exclusive(ext: Extension) -> Iterator[None]:
    """Hold the build lock of ``ext`` across processes. The system releases it when its holder
    exits, however it exits: a process killed mid-build blocks nobody. Waiting says for whom."""
    root = _cache_root()
    os.makedirs(root, exist_ok=True)
    lock, owner = os.path.join(root, f"{ext.name}.lock"), os.path.join(root, f"{ext.name}.owner")
    guard = filelock.FileLock(lock)
    try:
        guard.acquire(timeout=0)
    except filelock.Timeout:
        try:
            with open(owner) as f:
                who = f.read().strip() or "another process"
        except OSError:
            who = "another process"
        logging.getLogger("deepdescent").warning(
            "deepdescent: waiting for %s, which is compiling the fused kernels of %s (%s)", who, ext.label, root)
        guard.acquire()
    try:
        with open(owner, "w") as f:
            f.write(f"process {os.getpid()} on {socket.gethostname()}")
        yield
    finally:
        guard.release()


def _built(ext: Extension) -> str:
    """The library file of ``ext``, compiled unless it is on disk (another process may have built
    it meanwhile): in a private folder, moved into place whole, under the cross-process lock of
    ``ext``. Libraries of different extensions compile at the same time (threads: each a compiler
    process)."""
    with _exclusive(ext):
        target = _library(ext)
        if not os.path.exists(target):
            folder = tempfile.mkdtemp(prefix=f"{ext.name}.build-", dir=_cache_root())
            try:
                built = _build_runtime(ext, folder) if ext.runtime else _build_kernels(ext, folder)
                os.replace(built, target)
            except Exception as err:  # noqa: BLE001 - no compiler, no headers: fall back, say why once
                first = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
                _FAILED[ext.name] = f"building {ext.label} failed: {type(err).__name__}: {first}"
                raise FusedUnavailable(_FAILED[ext.name]) from err
            finally:
                shutil.rmtree(folder, ignore_errors=True)
        return target


def _compile(ext: Extension) -> None:
    """Compile ``ext`` (or load it, if another process built it meanwhile) and register its functions."""
    with _BUILD_LOCK:
        if _loaded(ext):
            return
        _import(ext, _built(ext))


def _build_runtime(ext: Extension, folder: str) -> str:
    from torch.utils import cpp_extension

    source = os.path.join(folder, f"{ext.name}.cpp")
    with open(source, "w") as f:
        f.write(ext.code)
    cpp_extension.load(name=ext.name, sources=[source], build_directory=folder, extra_cflags=RUNTIME_CFLAGS,
                       extra_ldflags=["-fopenmp"], verbose=False)
    return os.path.join(folder, f"{ext.name}.so")


def _build_kernels(ext: Extension, folder: str) -> str:
    import subprocess

    source, out = os.path.join(folder, f"{ext.name}.cpp"), os.path.join(folder, f"{ext.name}.so")
    with open(source, "w") as f:
        f.write(ext.code)
    compiler = os.environ.get("CXX", "c++")
    done = subprocess.run([compiler, *CFLAGS, "-o", out, source], capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"{compiler} exited with {done.returncode}: {done.stderr.strip()[-2000:]}")
    return out


def _ensure(ext: Extension, wait: bool) -> None:
    """Make the functions of ``ext`` callable: loaded from disk when built (no compiler), else
    compiled — now when ``wait``, otherwise in a background thread (FusedPending). A kernel
    library needs the runtime: that comes first."""
    if _loaded(ext):
        return
    if not ext.runtime:
        _ensure(_runtime_extension(), wait)
    if os.path.exists(_library(ext)):
        with _BUILD_LOCK:
            if not _loaded(ext):
                _import(ext, _library(ext))
        return
    if _DISABLED or ext.name in _FAILED:
        raise FusedUnavailable(_DISABLED or _FAILED[ext.name])
    mode = os.environ.get("DEEPDESCENT_KERNEL_BUILD", "background")
    if wait or mode == "wait":
        _compile(ext)
        return
    if mode == "never":
        raise FusedPending(f"deepdescent: the fused CPU kernels of {ext.label} are not built and "
                           "DEEPDESCENT_KERNEL_BUILD=never: the eager path serves")
    with _LOCK:
        if ext.standard:  # a process of its own: it finishes even if this one exits first
            if "standard" not in _BUILDERS:
                _BUILDERS["standard"] = _spawn_builder()
        elif ext.name not in _BUILDERS:  # one configuration: a second or two, in a thread
            _BUILDERS[ext.name] = threading.Thread(target=_build_in_background, args=(ext,), daemon=True,
                                                   name=f"deepdescent-kernels-{ext.label}")
            _BUILDERS[ext.name].start()
    raise FusedPending(f"deepdescent: compiling the fused CPU kernels of {ext.label} in the background (once per "
                       "machine; scripts/setup.sh or `python -m deepdescent.kernels` builds them ahead); optimizers "
                       "that start meanwhile run on the eager path throughout, those created after use them")


def _spawn_builder() -> Any:
    """``python -m deepdescent.kernels --background`` in a new session, at low priority, its
    output in the cache folder: the standard set is built once, whoever asked first."""
    import subprocess

    os.makedirs(_cache_root(), exist_ok=True)
    with open(os.path.join(_cache_root(), "build.log"), "a") as log:
        return subprocess.Popen([sys.executable, "-m", "deepdescent.kernels", "--background"], stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _build_in_background(ext: Extension) -> None:
    try:
        _compile(_runtime_extension())
        _compile(ext)
    except FusedUnavailable as err:  # the next fused step of this extension tries again and says why
        logging.getLogger("deepdescent").warning("deepdescent: %s", err)


def wait_for_build(timeout: float | None = None) -> bool:
    """Wait for the background compilations this process started (threads, the builder process);
    True when none is running any more."""
    import subprocess

    for builder in list(_BUILDERS.values()):
        if isinstance(builder, threading.Thread):
            builder.join(timeout)
        else:
            with contextlib.suppress(subprocess.TimeoutExpired):
                builder.wait(timeout)
    return not any(b.is_alive() if isinstance(b, threading.Thread) else b.poll() is None for b in _BUILDERS.values())


def device_update(spec: Algorithm, h: dict[str, Any], lookahead: bool, plan: Any, table: Tensor, aligned: bool,
                  found: Tensor) -> None:
    """The generated Triton kernel for ``spec`` with hyperparameters ``h`` over the tensors of
    ``plan`` (executor/device.py), their addresses at ``table``; skipped (nothing written) when
    ``found`` is set."""
    from deepdescent.kernels import triton_backend

    numeric = _numeric(h, spec.names)
    with _LOCK:
        tr, scalar_names, _ = _trace_for(spec, h, lookahead, plan.names, numeric)
    triton_backend.update(tr, plan.dtype, plan.blocks, table, plan.step_table, len(plan.steps),
                          [numeric[k] for k in scalar_names], found, aligned)


def fused_update(spec: Algorithm, h: dict[str, Any], lookahead: bool, names: tuple[str, ...],
                 lists: list[list[Tensor]], steps: list[Any], *, wait: bool = False) -> None:
    """Run ``spec``'s update with hyperparameters ``h`` on tensor lists (params, grads,
    buffers...): the generated C++ loop on the CPU, the generated Triton kernel on CUDA.

    Raises (nothing written) FusedPending while the CPU kernel compiles in the background (unless
    ``wait``), NotTraceable when ``spec``'s update cannot be traced, FusedUnavailable when it
    cannot be built here."""
    if lists[0][0].device.type in TRITON_DEVICES:
        from deepdescent.kernels import triton_backend

        numeric = _numeric(h, spec.names)
        with _LOCK:
            tr, scalar_names, _ = _trace_for(spec, h, lookahead, names, numeric)
        triton_backend.launch(tr, lists, [numeric[k] for k in scalar_names], steps)
        return
    if _DISABLED:
        raise FusedUnavailable(_DISABLED)
    if spec.name in _EAGER_ONLY:
        raise NotTraceable(_EAGER_ONLY[spec.name])
    numeric = _numeric(h, spec.names)
    try:
        with _LOCK:
            tr, scalar_names, name = _trace_for(spec, h, lookahead, names, numeric)
            function = _FUNCTIONS.get(name)
        if function is None:
            _ensure(_extension_of(spec, tr), wait)
            function = _FUNCTIONS[name]
    except NotTraceable as err:
        _EAGER_ONLY[spec.name] = str(err)
        warnings.warn(f"deepdescent: {err}; it runs on the eager path (every other algorithm keeps its fused "
                      "kernels)", RuntimeWarning, stacklevel=4)
        raise
    function(lists, [numeric[k] for k in scalar_names], [float(s) for s in steps])


def any_nonfinite(tensors: list[Tensor]) -> bool | None:
    """True when some element of the (contiguous float32/float64 CPU) tensors is NaN or ±Inf: one
    read-only, vectorized pass. None when the compiled check is not available (use another): it
    is loaded from disk at the first call, or compiled in the background meanwhile."""
    fn = _FUNCTIONS.get("any_nonfinite")
    if fn is None:
        if _DISABLED:
            return None
        try:
            _ensure(_runtime_extension(), wait=False)
        except (FusedPending, FusedUnavailable):
            return None
        fn = _FUNCTIONS["any_nonfinite"]
    try:
        return bool(fn(tensors))
    except RuntimeError as err:  # non-contiguous or mixed: let the caller use another check
        if "deepdescent-fused" in str(err):
            return None
        raise


def standard_configurations() -> list[tuple[Algorithm, dict[str, Any], bool]]:
    """(spec, hyperparameters, lookahead) for every kernel structure of every registered algorithm."""
    return [(spec, h, look) for spec in REGISTRY.values() for h, look in spec.kernel_structures()]


def build(report: Callable[[str], None] | None = None) -> int:
    """Trace and compile the runtime and every registered algorithm's standard kernels (or load
    them from the disk cache), one library per algorithm; the number of functions loaded.
    An algorithm that cannot be traced or built is reported and left to the eager path."""
    global _DISABLED
    from concurrent.futures import ThreadPoolExecutor

    report = report or (lambda line: None)
    extensions = list(_extensions(report))
    todo = [e for e in extensions if not _loaded(e) and not os.path.exists(_library(e))]
    with ThreadPoolExecutor(max_workers=max(1, min(len(todo), os.cpu_count() or 1))) as pool:
        list(pool.map(_quietly_built, todo))  # every core compiles; loading (in order) follows
    for ext in extensions:
        if _loaded(ext):
            continue
        try:
            if ext.name in _FAILED:
                raise FusedUnavailable(_FAILED[ext.name])
            _compile(ext)
            report(f"{ext.label}: {len(ext.functions)} kernel(s)")
        except FusedUnavailable as err:
            report(f"{ext.label}: not built ({err})")
            if ext.runtime:  # nothing runs without it: say it once
                _DISABLED = str(err)
                break
    return len(_FUNCTIONS)


def _quietly_built(ext: Extension) -> bool:
    """Compile ``ext``'s library file; a failure is recorded and said by the load that follows."""
    try:
        _built(ext)
        return True
    except FusedUnavailable:
        return False


def _extensions(report: Callable[[str], None]) -> Iterator[Extension]:
    yield _runtime_extension()
    for spec in REGISTRY.values():
        if not spec.fused:
            report(f"{spec.name}: no fused kernel (fused=False: per-element branches)")
            continue
        try:
            yield _algorithm_extension(spec)
        except NotTraceable as err:
            report(f"{spec.name}: eager only ({err})")


def available(device: str = "cpu") -> str | None:
    """None when the fused path works here for ``device``, else why not."""
    if os.environ.get("DEEPDESCENT_NO_FUSED"):
        return "disabled by DEEPDESCENT_NO_FUSED"
    if device == "cuda":
        from deepdescent.kernels import triton_backend

        return triton_backend.available(interpret="cpu" in TRITON_DEVICES)
    return _DISABLED
