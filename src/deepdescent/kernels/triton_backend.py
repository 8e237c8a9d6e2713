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

from deepdescent.kernels.cpp import _uniform
from deepdescent.kernels.trace import Trace

BLOCK = 2048
_MODULES: dict[str, Any] = {}
_TL = {"add": "({a} + {b})", "sub": "({a} - {b})", "mul": "({a} * {b})", "div": "({a} / {b})", "neg": "(-{a})",
       "sqrt": "tl.sqrt({a})", "max": "tl.maximum({a}, {b})"}


def _needed(trace: Trace) -> set[int]:
    needed, stack = set(trace.outputs.values()), list(trace.outputs.values())
    while stack:
        node = trace.graph.nodes[stack.pop()]
        if node[0] not in ("load", "scalar", "tensor_scalar", "const"):
            for a in node[1:]:
                if a not in needed:
                    needed.add(a)
                    stack.append(a)
    return needed


def _uniform_inputs(trace: Trace) -> list[int]:
    """The uniform nodes the elementwise part reads (each becomes one per-tensor value)."""
    uni, needed = _uniform(trace), _needed(trace)
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


_TL64 = {**_TL, "pow": "libdevice.pow({a}, {b})"}


def source(trace: Trace, name: str) -> str:
    """The kernel: per program, the per-tensor values (bias corrections, …) in float64 from the
    hyperparameters (passed by value, each as two float32 halves) and the tensor's step counter
    (read on the device), then the elementwise update in float32 for one block of one tensor."""
    uni, needed = _uniform(trace), _needed(trace)
    cols = _uniform_inputs(trace)
    lists = sorted({n[1] for i, n in enumerate(trace.graph.nodes) if n[0] == "load" and i in needed}
                   | set(trace.outputs))
    scalar_args = "".join(f"s{k}h, s{k}l, " for k in range(len(trace.scalars)))
    lines = [
        "import triton", "import triton.language as tl", "from triton.language.extra import libdevice", "", "",
        "@triton.jit",
        f"def {name}(ptrs, step_ptrs, numels, block_tensor, block_start, found, n_tensors, {scalar_args}"
        "BLOCK: tl.constexpr, ALIGNED: tl.constexpr):",
        "    pid = tl.program_id(0)",
        "    t = tl.load(block_tensor + pid)",
        "    offs = tl.multiple_of(tl.load(block_start + pid), BLOCK) + tl.arange(0, BLOCK)",
        "    mask = (offs < tl.load(numels + t)) & (tl.load(found) == 0)  # a non-finite step writes nothing",
    ]
    for i in _uniform_closure(trace):
        node = trace.graph.nodes[i]
        if node[0] == "scalar":
            k = trace.scalars.index(node[1])
            lines.append(f"    u{i} = s{k}h.to(tl.float64) + s{k}l.to(tl.float64)")
        elif node[0] == "tensor_scalar":
            lines.append(f"    u{i} = tl.load(tl.load(step_ptrs + t).to(tl.pointer_type(tl.float32))).to(tl.float64)")
        elif node[0] == "const":
            lines.append(f"    u{i} = tl.full([], {node[1]!r}, tl.float64)")
        else:
            lines.append(f"    u{i} = " + _TL64[node[0]].format(**dict(zip("ab", (f"u{a}" for a in node[1:])))))
    for c in cols:
        lines.append(f"    v{c} = u{c}.to(tl.float32)")
    for li in lists:  # addresses from a table carry no alignment: say it, so loads are vectorized
        lines.append(f"    p{li} = tl.load(ptrs + {li} * n_tensors + t).to(tl.pointer_type(tl.float32))")
        lines.append("    if ALIGNED:")
        lines.append(f"        p{li} = tl.multiple_of(p{li}, 16)")
    for i, node in enumerate(trace.graph.nodes):
        if i not in needed or uni[i]:
            continue
        if node[0] == "load":
            lines.append(f"    v{i} = tl.load(p{node[1]} + offs, mask=mask, other=1.0).to(tl.float32)")
        else:
            args = dict(zip("ab", (f"v{a}" for a in node[1:])))
            lines.append(f"    v{i} = " + _TL[node[0]].format(**args))
    for li, n in sorted(trace.outputs.items()):
        lines.append(f"    tl.store(p{li} + offs, v{n}, mask=mask)")
    return "\n".join(lines) + "\n"


def _kernel(trace: Trace) -> Any:
    text = source(trace, "kernel")
    key = hashlib.sha1(text.encode()).hexdigest()[:16]
    if key not in _MODULES:
        folder = os.path.join(tempfile.gettempdir(), "deepdescent_triton")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"k_{key}.py")
        if not os.path.exists(path):
            with open(path + ".tmp", "w") as f:
                f.write(text)
            os.replace(path + ".tmp", path)
        spec = importlib.util.spec_from_file_location(f"deepdescent_triton_k_{key}", path)
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        spec.loader.exec_module(module)  # type: ignore[union-attr]
        _MODULES[key] = module.kernel
    return _MODULES[key]


class _Tables:
    """Block tables of one bucket of tensors (cached while the tensors' sizes stay the same)."""

    def __init__(self, sizes: list[int], device: torch.device) -> None:
        bt, bs = [], []
        for t, n in enumerate(sizes):
            for b in range(0, n, BLOCK):
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


def launch(trace: Trace, lists: list[list[Tensor]], scalars: list[float], steps: list[Any],
           found: Tensor | None = None) -> None:
    """One launch over all tensors of ``lists`` (float32, contiguous, one CUDA device). ``steps``:
    per-tensor step counts (device tensors: no copy); ``found``: the device's non-finite flag."""
    device = lists[0][0].device
    sizes = [t.numel() for t in lists[0]]
    key = (tuple(sizes), device)
    if key not in _TABLES:
        _TABLES[key] = _Tables(sizes, device)
    tables = _TABLES[key]
    if tables.blocks == 0:
        return
    if not (steps and isinstance(steps[0], Tensor)):  # host-side counts (e.g. nonfinite="raise")
        counts = torch.tensor([float(x) for x in steps], dtype=torch.float32, device=device)
        steps = list(counts.unbind()) if len(steps) else []
    addresses = tuple(t.data_ptr() for lst in lists for t in lst)
    step_addresses = tuple(x.data_ptr() for x in steps)
    key_ptrs = addresses + step_addresses
    tables_d = _POINTERS.get(key_ptrs)
    if tables_d is None:  # new tensors (e.g. fresh .grad after zero_grad(set_to_none=True))
        if len(_POINTERS) > 64:
            _POINTERS.clear()
        tables_d = _POINTERS[key_ptrs] = (torch.tensor(addresses, dtype=torch.int64).to(device),
                                          torch.tensor(step_addresses or (0,), dtype=torch.int64).to(device))
    halves = []
    for x in scalars:  # a double as two float32 arguments: no copy to the device per step
        hi = _f32(x)
        halves += [hi, _f32(x - hi)]
    flag = found if found is not None else torch.zeros((), device=device)
    aligned = all(a % 16 == 0 for a in addresses)
    _kernel(trace)[(tables.blocks,)](tables_d[0], tables_d[1], tables.numels, tables.block_tensor, tables.block_start,
                                     flag, len(sizes), *halves, BLOCK=BLOCK, ALIGNED=aligned)


def available() -> str | None:
    try:
        import triton  # noqa: F401
    except ImportError:
        return "triton is not installed"
    return None if torch.cuda.is_available() else "no CUDA device"

