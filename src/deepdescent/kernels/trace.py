"""Trace an algorithm's functional update into an elementwise expression graph.

The functional core (``deepdescent.algorithms``) is the one place where each formula is written,
as multi-tensor ``torch._foreach_*`` operations. Running it on symbolic tensors and symbolic
scalars records, for every state list, the expression of its new value in terms of the old values
of all lists, the hyperparameters and per-tensor scalars (Adam's step t). A code generator then
writes one fused loop (C++ here, other back ends alike) from that graph: the math is never
written a second time, so it cannot drift.

The core calls ``torch._foreach_*`` on lists of :class:`Sym`; torch hands those calls to
``Sym.__torch_function__`` (its protocol for tensor-like objects), which records them. Nothing in
torch's namespace is replaced, so other threads running optimizers meanwhile are unaffected.

Python control flow in the core (``if momentum == 0``) is resolved during tracing with the
concrete hyperparameter values; the trace is valid for every configuration with the same
outcomes, which :func:`structure_key` captures. Only ``==`` and ``!=`` may decide a branch
(zero or not is what the key records); using a symbolic scalar as a bool (``if momentum:``) or
ordering it (``<``) raises TypeError instead of silently taking one branch.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Graph:
    """Nodes are tuples: ("load", list_index) | ("scalar", name) | ("tensor_scalar", name) |
    ("const", value) | (op, *node_ids) with op in add, sub, mul, div, neg, sqrt, pow, max, abs,
    where (its first argument > 0 selects the second, else the third), fma (a·b + c rounded once)
    and lerp (ATen's: a + w(b − a) for |w| < ½, else b − (1 − w)(b − a), each one fused
    multiply-add).

    Each elementwise node is one rounding of the eager op it records, in ATen's order: the generated
    kernels round exactly where the multi-tensor ops do, so the fused and eager paths agree bit
    for bit (``torch.add(x, y, alpha=a)`` is fma(y, a, x) in ATen's vectorized CPU kernels, and
    ``addcmul`` is fma(v·t₁, t₂, x); ``addcdiv`` is x + (v·t₁)/t₂, two roundings)."""

    nodes: list[tuple] = field(default_factory=list)
    memo: dict[tuple, int] = field(default_factory=dict)

    def add(self, node: tuple) -> int:
        if node not in self.memo:
            self.memo[node] = len(self.nodes)
            self.nodes.append(node)
        return self.memo[node]


_G: Graph | None = None  # the graph being traced


def _node(x: Any) -> int:
    assert _G is not None
    if isinstance(x, Sym):
        return x.node
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return _G.add(("const", float(x)))
    raise TypeError(f"cannot trace a value of type {type(x).__name__}")


class Sym:
    """A symbolic scalar or tensor element. ``value`` is a concrete stand-in for comparisons."""

    def __init__(self, node: int, value: float = math.nan, dtype: torch.dtype = torch.float32) -> None:
        self.node, self.value, self.dtype = node, value, dtype

    def _op(self, op: str, *others: Any, value: float = math.nan) -> Sym:
        assert _G is not None
        return Sym(_G.add((op, self.node, *(_node(o) for o in others))), value, self.dtype)

    def _rop(self, op: str, other: Any, value: float = math.nan) -> Sym:
        assert _G is not None
        return Sym(_G.add((op, _node(other), self.node)), value, self.dtype)

    def __add__(self, o: Any) -> Sym:
        return self._op("add", o, value=self.value + _val(o))

    def __radd__(self, o: Any) -> Sym:
        return self._rop("add", o, value=_val(o) + self.value)

    def __sub__(self, o: Any) -> Sym:
        return self._op("sub", o, value=self.value - _val(o))

    def __rsub__(self, o: Any) -> Sym:
        return self._rop("sub", o, value=_val(o) - self.value)

    def __mul__(self, o: Any) -> Sym:
        return self._op("mul", o, value=self.value * _val(o))

    def __rmul__(self, o: Any) -> Sym:
        return self._rop("mul", o, value=_val(o) * self.value)

    def __truediv__(self, o: Any) -> Sym:
        return self._op("div", o, value=_safe(lambda: self.value / _val(o)))

    def __rtruediv__(self, o: Any) -> Sym:
        return self._rop("div", o, value=_safe(lambda: _val(o) / self.value))

    def __neg__(self) -> Sym:
        return self._op("neg", value=-self.value)

    def __pow__(self, o: Any) -> Sym:
        return self._op("pow", o, value=_safe(lambda: self.value ** _val(o)))

    def __rpow__(self, o: Any) -> Sym:
        return self._rop("pow", o, value=_safe(lambda: _val(o) ** self.value))

    # comparisons decide Python branches in the core: they use the concrete stand-in value
    def __eq__(self, o: object) -> bool:  # type: ignore[override]
        return self.value == _val(o)

    def __ne__(self, o: object) -> bool:  # type: ignore[override]
        return self.value != _val(o)

    def __hash__(self) -> int:
        return hash(self.node)

    def where_positive(self, a: Any, b: Any) -> Sym:
        """``a`` where this value is > 0, else ``b`` (both computed; one kept): a branch on a
        per-tensor value such as RAdam's ρₜ > 5, which the kernel takes per tensor."""
        assert _G is not None
        value = _val(a) if self.value > 0 else _val(b)
        return Sym(_G.add(("where", self.node, _node(a), _node(b))), value, self.dtype)

    def __bool__(self) -> bool:
        raise TypeError("a symbolic hyperparameter cannot decide a branch by its truth value; compare it with "
                        "== 0 or != 0 (the kernel's structure records zero/non-zero) or take the branch outside "
                        "the traced update")

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        op = _OPS.get(getattr(func, "__name__", ""))
        if op is None:
            raise TypeError(f"the kernel tracer cannot follow torch.{getattr(func, '__name__', func)}; mark the "
                            "algorithm fused=False or write it with the traced multi-tensor ops")
        return op(*args, **(kwargs or {}))


def _val(x: Any) -> float:
    return x.value if isinstance(x, Sym) else float(x)


def _safe(f: Callable[[], float]) -> float:
    try:
        return f()
    except (ZeroDivisionError, OverflowError, ValueError):
        return math.nan


# ----------------------------------------------------------------------------- foreach ops
def _each(a: Any, i: int) -> Any:
    return a[i] if isinstance(a, (list, tuple)) else a


def _map(fn: Callable[..., Sym], *lists: Any) -> list[Sym]:
    n = len(next(x for x in lists if isinstance(x, (list, tuple))))
    return [fn(*(_each(x, i) for x in lists)) for i in range(n)]


def _inplace(target: list[Sym], result: list[Sym]) -> None:
    for t, r in zip(target, result):
        t.node = r.node


def _sqrt(x: Sym) -> Sym:
    return x._op("sqrt")


def _max(x: Sym, c: Any) -> Sym:
    return x._op("max", c)


def _lerp(a: Sym, b: Sym, w: Any) -> Sym:
    return a._op("lerp", b, w)


def _fma(a: Any, b: Any, c: Sym) -> Sym:
    """a·b + c with one rounding (``c`` is the tensor the op updates)."""
    assert _G is not None
    return Sym(_G.add(("fma", _node(a), _node(b), c.node)), math.nan, c.dtype)


def _one(x: Any) -> bool:
    """Whether ``x`` is the plain number 1 (never decided on a symbol)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x == 1.0


def _ops() -> dict[str, Callable[..., Any]]:
    def add(xs, other, alpha=1.0):  # ATen: x + o, or fma(o, α, x)
        return _map(lambda x, o: x + o if _one(alpha) else _fma(o, alpha, x), xs, other)

    def sub(xs, other, alpha=1.0):  # ATen: x − o, or fma(o, −α, x)
        return _map(lambda x, o: x - o if _one(alpha) else _fma(o, -alpha, x), xs, other)

    def addcmul(xs, a, b, value=1.0):  # ATen: fma(v·a, b, x)
        return _map(lambda x, ai, bi, v: _fma(ai if _one(v) else v * ai, bi, x), xs, a, b, value)

    def addcdiv(xs, a, b, value=1.0):  # ATen: x + (v·a)/b
        return _map(lambda x, ai, bi, v: x + (ai if _one(v) else v * ai) / bi, xs, a, b, value)

    table = {
        "add": add,
        "sub": sub,
        "mul": lambda xs, other: _map(lambda x, o: x * o, xs, other),
        "div": lambda xs, other: _map(lambda x, o: x / o, xs, other),
        "addcmul": addcmul,
        "addcdiv": addcdiv,
        "sqrt": lambda xs: _map(_sqrt, xs),
        "clamp_min": lambda xs, c: _map(_max, xs, c),
        "maximum": lambda xs, other: _map(_max, xs, other),
        "abs": lambda xs: _map(lambda x: x._op("abs"), xs),
        "neg": lambda xs: _map(lambda x: -x, xs),
        "lerp": lambda xs, ends, w: _map(_lerp, xs, ends, w),
    }
    out: dict[str, Callable[..., Any]] = {}
    for name, fn in table.items():
        out[f"_foreach_{name}"] = fn
        out[f"_foreach_{name}_"] = (lambda f: lambda xs, *a, **k: _inplace(xs, f(xs, *a, **k)))(fn)
    return out


_OPS = _ops()


@contextlib.contextmanager
def _tracing(graph: Graph) -> Iterator[None]:
    global _G
    if _G is not None:
        raise RuntimeError("a trace is already running (traces are serialized by the kernels' lock)")
    _G = graph
    try:
        yield
    finally:
        _G = None


@dataclass
class Trace:
    """The traced update: ``outputs`` maps list index → node of its new value."""

    graph: Graph
    n_lists: int
    outputs: dict[int, int]
    scalars: list[str]
    tensor_scalars: list[str]


def trace(update: Callable[..., None], n_lists: int, scalars: dict[str, float], tensor_scalars: dict[str, float],
          dtype: torch.dtype = torch.float32) -> Trace:
    """Run ``update(lists, scalar_syms, tensor_scalar_syms)`` on one symbolic element per list.

    ``lists[i]`` is a one-element list holding the symbolic value of list i (params, grads, state
    buffers, in the order the caller chooses). ``scalars`` are the hyperparameters (one value per
    launch) and ``tensor_scalars`` the per-tensor values (one per tensor), with concrete stand-ins.
    """
    graph = Graph()
    with _tracing(graph):
        lists = [[Sym(graph.add(("load", i)), dtype=dtype)] for i in range(n_lists)]
        loads = [x[0].node for x in lists]
        syms = {k: Sym(graph.add(("scalar", k)), v) for k, v in scalars.items()}
        tsyms = {k: Sym(graph.add(("tensor_scalar", k)), v) for k, v in tensor_scalars.items()}
        update(lists, syms, tsyms)
    outputs = {i: x[0].node for i, x in enumerate(lists) if x[0].node != loads[i]}
    return Trace(graph, n_lists, outputs, list(scalars), list(tensor_scalars))


def uniform_nodes(trace: Trace) -> list[bool]:
    """Per node: whether it does not depend on tensor elements (a per-tensor value, computed once
    per tensor in double by every back end)."""
    uni: list[bool] = []
    for node in trace.graph.nodes:
        if node[0] == "load":
            uni.append(False)
        elif node[0] in ("scalar", "tensor_scalar", "const"):
            uni.append(True)
        else:
            uni.append(all(uni[a] for a in node[1:]))
    return uni


def live_nodes(trace: Trace) -> set[int]:
    """The nodes the outputs depend on (every back end generates code for these only)."""
    needed, stack = set(trace.outputs.values()), list(trace.outputs.values())
    while stack:
        node = trace.graph.nodes[stack.pop()]
        if node[0] not in ("load", "scalar", "tensor_scalar", "const"):
            for a in node[1:]:
                if a not in needed:
                    needed.add(a)
                    stack.append(a)
    return needed


def structure_key(values: dict[str, Any]) -> tuple:
    """What decides the traced control flow: which numbers are zero, and every non-number."""
    return tuple(sorted((k, ("zero" if v == 0 else "nonzero") if isinstance(v, (int, float)) and not isinstance(
        v, bool) else v) for k, v in values.items()))
