"""Triton code generation from a traced update (GPU): one launch per step for all tensors.

The traced graph (:mod:`.trace`) becomes one Triton kernel that walks all tensors of all lists
(multi-tensor apply: each program handles one block of one tensor, found through a block table).
The parts that depend only on hyperparameters and per-tensor scalars (bias corrections, 1 − ρ, …)
are computed per program in float64 from the hyperparameters (kernel arguments) and the tensor's
step counter (read on the device); the elementwise part runs in float32. Nothing is copied to the
device and nothing is read back per step. The math is the functional core's, traced.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import struct
import tempfile
from typing import Any

import torch
from torch import Tensor

from deepdescent.kernels.trace import Trace, live_nodes, uniform_nodes

#: Elements and warps per program of the update kernel, and of the read-only non-finite check
#: (defaults: the best of bench/gpu_profile.py's sweep on an H200; the environment overrides them).
BLOCK = int(os.environ.get("DEEPDESCENT_TRITON_BLOCK", 1024))
NUM_WARPS = int(os.environ.get("DEEPDESCENT_TRITON_WARPS", 8))
CHECK_BLOCK = int(os.environ.get("DEEPDESCENT_TRITON_CHECK_BLOCK", 8192))
CHECK_WARPS = int(os.environ.get("DEEPDESCENT_TRITON_CHECK_WARPS", 16))
_MODULES: dict[str, Any] = {}
_TL = {"add": "({a} + {b})", "sub": "({a} - {b})", "mul": "({a} * {b})", "div": "({a} / {b})", "neg": "(-{a})",
       "sqrt": "tl.sqrt({a})", "max": "tl.maximum({a}, {b})", "abs": "tl.abs({a})",
       "where": "tl.where({a} > 0, {b}, {c})", "fma": "tl.fma({a}, {b}, {c})",
       # ATen's lerp: one multiply-add from whichever end is nearer the weight
       "lerp": "tl.fma(tl.where(tl.abs({c}) < 0.5, {c}, {c} - 1.0), {b} - {a}, tl.where(tl.abs({c}) < 0.5, {a}, {b}))"}


def _uniform_inputs(trace: Trace) -> list[int]:
    """The uniform nodes the elementwise part reads (each becomes one per-tensor value)."""
    uni, needed = uniform_nodes(trace), live_nodes(trace)
    used = set()
    for i in needed:
        node = trace.graph.nodes[i]
        if not uni[i] and node[0] != "load":
            used.update(a for a in node[1:] if uni[a])
    used.update(n for n in trace.outputs.values() if uni[n])
    return sorted(used)


def _uniform_closure(trace: Trace) -> list[int]:
    """The uniform nodes the kernel computes: those it reads and everything they depend on."""
    keep, stack = set(_uniform_inputs(trace)), list(_uniform_inputs(trace))
    while stack:
        node = trace.graph.nodes[stack.pop()]
        if node[0] not in ("scalar", "tensor_scalar", "const"):
            for a in node[1:]:
                if a not in keep:
                    keep.add(a)
                    stack.append(a)
    return sorted(keep)


# a^b with b not a step counter (NAdam's 0.96^ψ): as 2^(b·log₂a), in float64, for a ≥ 0 (every base
# of the chapter's formulas is a decay rate); core Triton ops, which its interpreter has too
_TL64 = {**_TL, "pow": "tl.where({b} == 0, 1.0, tl.exp2(tl.log2({a}) * {b}))"}
# β^t with t a step counter (a whole number): by squaring, in float64; float32 → bfloat16 rounded to
# nearest even with integer operations. Both run the same in Triton's interpreter (which has no
# libdevice and truncates casts to bfloat16), so the CPU tests execute the very same kernel text.
_POWI = '''
@triton.jit
def _powi(base, n):
    result = tl.full([], 1.0, tl.float64)
    e = n.to(tl.int64)
    while e > 0:
        result = tl.where((e % 2) == 1, result * base, result)
        base = base * base
        e = e // 2
    return result


@triton.jit
def _to_bf16(x):
    bits = x.to(tl.uint32, bitcast=True)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    rounded = tl.where(x != x, 0x7FC0, rounded)
    return rounded.to(tl.uint16).to(tl.bfloat16, bitcast=True)
'''


def source(trace: Trace, name: str, param_dtype: str = "float32") -> str:
    """The kernel: per program, the per-tensor values (bias corrections, …) in float64 from the
    hyperparameters (passed by value, each as two float32 halves) and the tensor's step counter
    (read on the device), then the elementwise update in float32 for one block of one tensor.
    Parameters and gradients (lists 0 and 1) are ``param_dtype`` (float32, bfloat16 or float16),
    the state float32; values are rounded to ``param_dtype`` (to nearest even) only when stored."""
    uni, needed = uniform_nodes(trace), live_nodes(trace)
    cols = _uniform_inputs(trace)
    lists = sorted({n[1] for i, n in enumerate(trace.graph.nodes) if n[0] == "load" and i in needed}
                   | set(trace.outputs))
    scalar_args = "".join(f"s{k}h, s{k}l, " for k in range(len(trace.scalars)))
    lines = [
        "import triton", "import triton.language as tl", "from triton.language.extra import libdevice", "",
        _POWI, "",
        "@triton.jit",
        f"def {name}(ptrs, step_ptrs, numels, block_tensor, block_start, found, n_tensors, {scalar_args}"
        "BLOCK: tl.constexpr, ALIGNED: tl.constexpr):",
        "    pid = tl.program_id(0)",
        "    t = tl.load(block_tensor + pid)",
        "    offs = tl.multiple_of(tl.load(block_start + pid), BLOCK) + tl.arange(0, BLOCK)",
        "    limit = tl.where(tl.load(found) == 0, tl.load(numels + t), 0)  # a non-finite step writes nothing",
        "    mask = offs < limit",
    ]
    for i in _uniform_closure(trace):
        node = trace.graph.nodes[i]
        if node[0] == "scalar":
            k = trace.scalars.index(node[1])
            lines.append(f"    u{i} = (tl.full([], 0.0, tl.float64) + s{k}h) + s{k}l")
        elif node[0] == "tensor_scalar":
            lines.append(f"    u{i} = tl.load(tl.load(step_ptrs + t).to(tl.pointer_type(tl.float32))).to(tl.float64)")
        elif node[0] == "const":
            lines.append(f"    u{i} = tl.full([], {node[1]!r}, tl.float64)")
        elif node[0] == "pow" and trace.graph.nodes[node[2]][0] == "tensor_scalar":
            lines.append(f"    u{i} = _powi(u{node[1]}, u{node[2]})")
        elif node[0] == "pow" and trace.graph.nodes[node[2]] == ("const", 0.5):
            lines.append(f"    u{i} = tl.sqrt(u{node[1]})")
        else:
            lines.append(f"    u{i} = " + _TL64[node[0]].format(**dict(zip("abc", (f"u{a}" for a in node[1:])))))
    for c in cols:
        lines.append(f"    v{c} = u{c}.to(tl.float32)")
    for li in lists:  # addresses from a table carry no alignment: say it, so loads are vectorized
        dtype = param_dtype if li < 2 else "float32"
        lines.append(f"    p{li} = tl.load(ptrs + {li} * n_tensors + t).to(tl.pointer_type(tl.{dtype}))")
        lines.append("    if ALIGNED:")
        lines.append(f"        p{li} = tl.multiple_of(p{li}, 16)")
    for i, node in enumerate(trace.graph.nodes):
        if i not in needed or uni[i]:
            continue
        if node[0] == "load":
            lines.append(f"    v{i} = tl.load(p{node[1]} + offs, mask=mask, other=1.0).to(tl.float32)")
        else:
            args = dict(zip("abc", (f"v{a}" for a in node[1:])))
            lines.append(f"    v{i} = " + _TL[node[0]].format(**args))
    for li, n in sorted(trace.outputs.items()):
        value = f"v{n}" if li >= 2 or param_dtype == "float32" else f"v{n}.to(tl.{param_dtype})"
        if li < 2 and param_dtype == "bfloat16":  # to nearest even, by hand: the interpreter would truncate
            value = f"_to_bf16(v{n})"
        lines.append(f"    tl.store(p{li} + offs, {value}, mask=mask)")
    return "\n".join(lines) + "\n"


def _load(text: str, name: str) -> Any:
    """The jitted function ``name`` of module source ``text`` (written once to a temp folder:
    Triton reads a kernel's source from its file)."""
    interpret = os.environ.get("TRITON_INTERPRET", "0")  # an interpreted kernel is another module
    key = hashlib.sha1((text + interpret).encode()).hexdigest()[:16]
    if key not in _MODULES:
        folder = os.path.join(tempfile.gettempdir(), "deepdescent_triton")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"k_{key}.py")
        if not os.path.exists(path):
            with open(f"{path}.{os.getpid()}.tmp", "w") as f:
                f.write(text)
            os.replace(f"{path}.{os.getpid()}.tmp", path)
        spec = importlib.util.spec_from_file_location(f"deepdescent_triton_k_{key}", path)
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        spec.loader.exec_module(module)  # type: ignore[union-attr]
        _MODULES[key] = getattr(module, name)
    return _MODULES[key]


def check_source(dtype: str) -> str:
    """A read-only multi-tensor check: sets ``found`` to 1 when some element is NaN or ±Inf."""
    return f"""import triton
import triton.language as tl


@triton.jit
def check(ptrs, numels, block_tensor, block_start, found, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    t = tl.load(block_tensor + pid)
    offs = tl.load(block_start + pid) + tl.arange(0, BLOCK)
    p = tl.load(ptrs + t).to(tl.pointer_type(tl.{dtype}))
    x = tl.load(p + offs, mask=offs < tl.load(numels + t), other=0.0).to(tl.float32)
    # x·0 is NaN exactly when x is NaN or ±Inf; every lane that sees one writes the same 1 (no atomics,
    # and only builtins: Triton's interpreter cannot run library functions such as tl.max here)
    tl.store(found + offs * 0, tl.full([BLOCK], 1.0, tl.float32), mask=(x * 0.0) != 0.0)
"""


BUMP_SOURCE = """import triton
import triton.language as tl


@triton.jit
def bump(step_ptrs, n, found, skipped, COUNT: tl.constexpr, BLOCK: tl.constexpr):
    f = tl.load(found)
    for i in range(0, n, BLOCK):
        idx = i + tl.arange(0, BLOCK)
        ptr = tl.load(step_ptrs + idx, mask=idx < n, other=0).to(tl.pointer_type(tl.float32))
        tl.store(ptr, tl.load(ptr, mask=idx < n) + (1.0 - f), mask=idx < n)
    if COUNT:
        tl.store(skipped, tl.load(skipped) + f)
"""


class _Tables:
    """Block tables of one bucket of tensors (cached while the tensors' sizes stay the same)."""

    def __init__(self, sizes: list[int], device: torch.device, block: int) -> None:
        bt, bs = [], []
        for t, n in enumerate(sizes):
            for b in range(0, n, block):
                bt.append(t)
                bs.append(b)
        self.blocks = len(bt)
        self.numels = torch.tensor(sizes, dtype=torch.int64, device=device)
        self.block_tensor = torch.tensor(bt, dtype=torch.int32, device=device)
        self.block_start = torch.tensor(bs, dtype=torch.int64, device=device)


_TABLES: dict[tuple, _Tables] = {}
_POINTERS: dict[tuple, Tensor] = {}


def _f32(x: float) -> float:
    return struct.unpack("f", struct.pack("f", x))[0]


def tables(sizes: tuple[int, ...], device: torch.device, block: int | None = None) -> _Tables:
    """Block tables for tensors of these sizes, ``block`` (default :data:`BLOCK`) elements per block (cached)."""
    key = (sizes, device, block or BLOCK)
    if key not in _TABLES:
        _TABLES[key] = _Tables(list(sizes), device, block or BLOCK)
    return _TABLES[key]


def pointer_table(addresses: list[int] | tuple[int, ...], device: torch.device) -> Tensor:
    """The addresses as an int64 device tensor. Cached, so tensors that keep their memory (the
    caching allocator usually hands a gradient the same block step after step) cost no copy; a new
    table goes through pinned memory, so the copy does not wait for the device."""
    key = (device, tuple(addresses))
    table = _POINTERS.get(key)
    if table is None:
        if len(_POINTERS) > 64:
            _POINTERS.clear()
        host = torch.tensor(key[1] or (0,), dtype=torch.int64)
        if device.type == "cuda":
            host = host.pin_memory()
        table = _POINTERS[key] = host.to(device, non_blocking=True)
    return table


_KERNELS: dict[tuple, tuple[Trace, Any]] = {}


def _update_kernel(trace: Trace, dtype: torch.dtype) -> Any:
    key = (id(trace), dtype, os.environ.get("TRITON_INTERPRET", "0"))
    entry = _KERNELS.get(key)
    if entry is None or entry[0] is not trace:
        entry = _KERNELS[key] = (trace, _load(source(trace, "kernel", _name(dtype)), "kernel"))
    return entry[1]


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def check(sizes: tuple[int, ...], table: Tensor, dtype: torch.dtype, found: Tensor) -> None:
    """Set ``found`` to 1 when some element of the tensors (of ``sizes``) at ``table`` is NaN or ±Inf."""
    blocks = tables(sizes, found.device, CHECK_BLOCK)
    if blocks.blocks:
        _load(check_source(_name(dtype)), "check")[(blocks.blocks,)](
            table, blocks.numels, blocks.block_tensor, blocks.block_start, found, BLOCK=CHECK_BLOCK,
            num_warps=CHECK_WARPS)


def bump(step_table: Tensor, n: int, found: Tensor, skipped: Tensor | None) -> None:
    """t ← t + 1 − found for the ``n`` step counters at ``step_table``; skipped += found."""
    if n:
        _load(BUMP_SOURCE, "bump")[(1,)](step_table, n, found, skipped if skipped is not None else found,
                                          COUNT=skipped is not None, BLOCK=1024)


def update(trace: Trace, dtype: torch.dtype, blocks: _Tables, table: Tensor, step_table: Tensor, n: int,
           scalars: list[float], found: Tensor, aligned: bool) -> None:
    """The traced update over ``n`` tensors per list, their addresses at ``table`` (list-major)."""
    if not blocks.blocks:
        return
    halves = []
    for x in scalars:  # a double as two float32 arguments: no copy to the device per step
        hi = _f32(x)
        halves += [hi, _f32(x - hi)]
    _update_kernel(trace, dtype)[(blocks.blocks,)](
        table, step_table, blocks.numels, blocks.block_tensor, blocks.block_start, found, n, *halves,
        BLOCK=BLOCK, ALIGNED=aligned, num_warps=NUM_WARPS)


def launch(trace: Trace, lists: list[list[Tensor]], scalars: list[float], steps: list[Any],
           found: Tensor | None = None) -> None:
    """One launch over all tensors of ``lists`` (contiguous, one device; parameters and gradients
    float32, bfloat16 or float16, state float32). ``steps``: per-tensor step counts (device
    tensors: no copy); ``found``: the device's non-finite flag."""
    device = lists[0][0].device
    if not (steps and isinstance(steps[0], Tensor)):  # host-side counts (e.g. nonfinite="raise")
        counts = torch.tensor([float(x) for x in steps], dtype=torch.float32, device=device)
        steps = list(counts.unbind()) if len(steps) else []
    addresses = [t.data_ptr() for lst in lists for t in lst]
    update(trace, lists[0][0].dtype, tables(tuple(t.numel() for t in lists[0]), device),
           pointer_table(addresses, device), pointer_table([x.data_ptr() for x in steps], device), len(lists[0]),
           scalars, found if found is not None else torch.zeros((), dtype=torch.float32, device=device),
           all(a % 16 == 0 for a in addresses))


def available(interpret: bool = False) -> str | None:
    """None when the kernel can run: triton installed, and a CUDA device (or, with ``interpret``,
    TRITON_INTERPRET=1: Triton's interpreter on the CPU)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return "triton is not installed"
    if torch.cuda.is_available() or (interpret and os.environ.get("TRITON_INTERPRET") == "1"):
        return None
    return "no CUDA device"

