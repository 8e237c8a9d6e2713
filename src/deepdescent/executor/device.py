"""The fused step on a GPU: four launches for the whole optimizer, no host synchronization.

Per step: zero the non-finite flag, check the gradients (one read-only pass), advance the step
counters (t ← t + 1 − found) and the skipped-step count, and run the update kernel generated from
the algorithm. What does not change between steps — which parameters, their state tensors, their
addresses, the block tables — is kept in a :class:`Plan` per param group; a step only reads the
gradients' addresses. A plan is rebuilt when the group's parameters, their memory or the state the
hyperparameters call for change; the owner drops all plans (``executor.plans.clear()``) whenever it
may replace state tensors (``load_state_dict``, ``add_param_group``, a step on the general path).
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from deepdescent import kernels
from deepdescent.algorithms.spec import Algorithm
from deepdescent.executor import FUSED_DTYPES, Executor, is_dtensor, resolve, state_dtype


@dataclass
class Work:
    """One param group's part of a device step: ``key`` identifies the group across steps, ``h``
    its hyperparameters, ``lookahead`` whether its parameters hold θ̃, ``params`` those with a
    gradient."""

    key: Any
    h: dict[str, Any]
    lookahead: bool
    params: list[Tensor]


class Plan:
    """What one param group's fused device step needs besides the gradients."""

    __slots__ = ("ids", "pptrs", "names", "bptrs", "steps", "step_table", "sizes", "blocks", "dtype", "device",
                 "aligned")

    def __init__(self, params: list[Tensor], names: tuple[str, ...], states: list[dict[str, Any]]) -> None:
        from deepdescent.kernels import triton_backend as tb

        self.ids = [id(p) for p in params]
        self.pptrs = [p.data_ptr() for p in params]
        self.names = names
        self.bptrs = [s[n].data_ptr() for n in names for s in states]
        self.steps = [s["step"] for s in states]
        self.dtype, self.device = params[0].dtype, params[0].device
        self.step_table = tb.pointer_table([t.data_ptr() for t in self.steps], self.device)
        self.sizes = tuple(p.numel() for p in params)
        self.blocks = tb.tables(self.sizes, self.device)
        self.aligned = all(a % 16 == 0 for a in self.pptrs + self.bptrs)

    def current(self, params: list[Tensor], names: tuple[str, ...]) -> bool:
        return names == self.names and [id(p) for p in params] == self.ids and \
            [p.data_ptr() for p in params] == self.pptrs


def _build(spec: Algorithm, h: dict[str, Any], params: list[Tensor], names: tuple[str, ...],
           state: MutableMapping[Tensor, dict[str, Any]]) -> Plan | None:
    """A plan for ``params`` (or None where the fused device step does not apply: then the general
    path runs). Creates the state the step needs, counters as float32 device tensors."""
    first = params[0]
    if first.device.type not in kernels.TRITON_DEVICES or first.dtype not in FUSED_DTYPES["cuda"]:
        return None
    if any(is_dtensor(p) for p in params):  # sharded (FSDP2): the general path updates the local shards
        return None
    if kernels.available("cuda") is not None:
        return None
    wide = state_dtype(first.dtype)
    states = []
    for p in params:
        if p.device != first.device or p.dtype != first.dtype or not p.is_contiguous():
            return None
        st = state[p]
        for name in names:
            if name not in st:
                st[name] = spec.init(name, p, h).to(wide)
            buf = st[name]
            if buf.dtype != wide or buf.device != p.device or not buf.is_contiguous() or buf.shape != p.shape:
                return None
        step = st.get("step", 0)
        if not (isinstance(step, Tensor) and step.device == p.device and step.dtype == torch.float32):
            st["step"] = torch.tensor(float(step), dtype=torch.float32, device=p.device)
        states.append(st)
    return Plan(params, names, states)


def step(executor: Executor, spec: Algorithm, work: list[Work], state: MutableMapping[Tensor, dict[str, Any]],
         skip_nonfinite: bool) -> bool:
    """Run the fused device step for every group of ``work`` (state in ``state``, torch.optim's
    per-parameter dict); False (having changed nothing but the creation of state) where it does
    not apply, and the general path must run. ``skip_nonfinite``: check the gradients first and
    write nothing on a step where one is not finite."""
    from deepdescent.kernels import triton_backend as tb

    if executor.impl == "eager" or executor.fused_off or not spec.fused:
        return False
    ready = []
    for item in work:
        if not item.params:
            continue
        grads = [p.grad for p in item.params]
        try:
            if not all([g.is_contiguous() for g in grads]):
                return False
        except RuntimeError:  # sparse gradients have no strides: the general path says what is wrong
            return False
        h = resolve(item.h)
        names = spec.buffers(h)
        plan = executor.plans.get(item.key)
        if plan is None or not plan.current(item.params, names):
            plan = _build(spec, h, item.params, names, state)
            if plan is None:
                return False
            executor.plans[item.key] = plan
        ready.append((item, h, plan, grads))
    if not ready or len({plan.device for _, _, plan, _ in ready}) != 1:
        return False
    device = ready[0][2].device
    found = torch.zeros((), dtype=torch.float32, device=device)
    tables = []
    for _, _, plan, grads in ready:
        gptrs = [g.data_ptr() for g in grads]
        tables.append((tb.pointer_table(plan.pptrs + gptrs + plan.bptrs, device),
                       plan.aligned and all(a % 16 == 0 for a in gptrs)))
        if skip_nonfinite:
            tb.check(plan.sizes, tb.pointer_table(gptrs, device), plan.dtype, found)
    if executor.device_skipped is None:
        executor.device_skipped = torch.zeros((), dtype=torch.float32, device=device)
    for i, (_, _, plan, _) in enumerate(ready):  # the counters first: the update reads the new t
        tb.bump(plan.step_table, len(plan.steps), found, executor.device_skipped if i == 0 else None)
    for (item, h, plan, _), (table, aligned) in zip(ready, tables):
        kernels.device_update(spec, h, item.lookahead, plan, table, aligned, found)
    return True
