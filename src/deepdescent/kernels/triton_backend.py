"""Triton code generation from a traced update (GPU): one launch per step for all tensors.

The traced graph (:mod:`.trace`) is split in two: the parts that depend only on hyperparameters and
per-tensor scalars (bias corrections, 1 − ρ, …) are evaluated on the host in float64, vectorized over
the tensors, and uploaded with the pointer tables; the elementwise part becomes the body of a
Triton kernel that walks all tensors of all lists (multi-tensor apply: each program handles one
block of one tensor, found through a block table). The math is the functional core's, traced.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
from typing import Any

import torch
from torch import Tensor

from deepdescent.kernels.cpp import _uniform
from deepdescent.kernels.trace import Trace

BLOCK = 2048
_MODULES: dict[str, Any] = {}
_TORCH_OPS = {"add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div, "neg": torch.neg,
              "sqrt": torch.sqrt, "pow": torch.pow, "max": torch.maximum}
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


def uniform_values(trace: Trace, scalars: list[float], tensor_scalars: Tensor) -> Tensor:
    """(n_tensors, n_uniform) float64 values of the uniform nodes, computed where
    ``tensor_scalars`` (n_tensors, k) lives (on the device: nothing is copied up per step)."""
    ts = tensor_scalars.to(torch.float64)
    n = ts.shape[0]
    env: dict[int, Tensor] = {}
    cols = _uniform_inputs(trace)
    uni = _uniform(trace)
    for i, node in enumerate(trace.graph.nodes):
        if not uni[i]:
            continue
        kind = node[0]
        if kind == "scalar":
            env[i] = torch.full((n,), scalars[trace.scalars.index(node[1])], dtype=torch.float64, device=ts.device)
        elif kind == "tensor_scalar":
            env[i] = ts[:, trace.tensor_scalars.index(node[1])]
        elif kind == "const":
            env[i] = torch.full((n,), node[1], dtype=torch.float64, device=ts.device)
        else:
            env[i] = _TORCH_OPS[kind](*(env[a] for a in node[1:]))
    return torch.stack([env[c] for c in cols], dim=1) if cols else torch.zeros(n, 0, dtype=torch.float64,
                                                                                  device=ts.device)


def source(trace: Trace, name: str) -> str:
    uni, needed = _uniform(trace), _needed(trace)
    cols = _uniform_inputs(trace)
    lists = sorted({n[1] for i, n in enumerate(trace.graph.nodes) if n[0] == "load" and i in needed}
                   | set(trace.outputs))
    lines = [
        "import triton", "import triton.language as tl", "", "", "@triton.jit",
        f"def {name}(ptrs, numels, block_tensor, block_start, uniform, found, n_tensors, BLOCK: tl.constexpr,",
        "           ALIGNED: tl.constexpr):",
        "    pid = tl.program_id(0)",
        "    t = tl.load(block_tensor + pid)",
        "    offs = tl.multiple_of(tl.load(block_start + pid), BLOCK) + tl.arange(0, BLOCK)",
        "    mask = (offs < tl.load(numels + t)) & (tl.load(found) == 0)  # a non-finite step writes nothing",
    ]
    for li in lists:  # addresses from a table carry no alignment: say it, so loads are vectorized
        lines.append(f"    p{li} = tl.load(ptrs + {li} * n_tensors + t).to(tl.pointer_type(tl.float32))")
        lines.append("    if ALIGNED:")
        lines.append(f"        p{li} = tl.multiple_of(p{li}, 16)")
    for k, c in enumerate(cols):
        lines.append(f"    v{c} = tl.load(uniform + t * {len(cols)} + {k}).to(tl.float32)")
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
    addresses = tuple(t.data_ptr() for lst in lists for t in lst)
    ptrs_d = _POINTERS.get(addresses)
    if ptrs_d is None:  # new tensors (e.g. fresh .grad after zero_grad(set_to_none=True))
        if len(_POINTERS) > 64:
            _POINTERS.clear()
        ptrs_d = _POINTERS[addresses] = torch.tensor(addresses, dtype=torch.int64).to(device)
    if steps and isinstance(steps[0], Tensor):
        ts = torch.stack(steps).reshape(-1, 1)
    else:
        ts = torch.tensor([[float(s)] for s in steps], dtype=torch.float64).to(device)
    uni_d = uniform_values(trace, scalars, ts)
    flag = found if found is not None else torch.zeros((), device=device)
    aligned = all(a % 16 == 0 for a in addresses)
    _kernel(trace)[(tables.blocks,)](ptrs_d, tables.numels, tables.block_tensor, tables.block_start, uni_d, flag,
                                     len(sizes), BLOCK=BLOCK, ALIGNED=aligned)


def available() -> str | None:
    try:
        import triton  # noqa: F401
    except ImportError:
        return "triton is not installed"
    return None if torch.cuda.is_available() else "no CUDA device"

