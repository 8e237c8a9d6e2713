"""The fused step on a GPU: four launches for the whole optimizer, no host synchronization.

Per step: zero the non-finite flag, check the gradients (one read-only pass), advance the step
counters (t ← t + 1 − found) and the skipped-step count, and run the update kernel generated from
the algorithm. What does not change between steps — which parameters, their state tensors, their
addresses, the block tables — is kept in a :class:`Plan` per param group; a step only reads the
gradients' addresses. A plan is rebuilt when the group's parameters, their memory or the state the
hyperparameters call for change; ``load_state_dict``, ``add_param_group`` and any step that takes the
general path drop all plans (so state replaced through the optimizer's own methods is always seen).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from deepdescent import kernels

if TYPE_CHECKING:
    from deepdescent.optim.base import BookOptimizer


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


def _build(opt: BookOptimizer, group: dict[str, Any], params: list[Tensor], names: tuple[str, ...]) -> Plan | None:
    """A plan for ``params`` (or None where the fused device step does not apply: then the general
    path runs). Creates the state the step needs, counters as float32 device tensors."""
    from deepdescent.optim.base import _FUSED_DTYPES, _is_dtensor, state_dtype

    first = params[0]
    if first.device.type not in kernels.TRITON_DEVICES or first.dtype not in _FUSED_DTYPES["cuda"]:
        return None
    if any(_is_dtensor(p) for p in params):  # sharded (FSDP2): the general path updates the local shards
        return None
    if kernels.available("cuda") is not None:
        return None
    wide = state_dtype(first.dtype)
    states = []
    for p in params:
        if p.device != first.device or p.dtype != first.dtype or not p.is_contiguous():
            return None
        state = opt.state[p]
        for name in names:
            if name not in state:
                state[name] = opt._init_buffer(name, p, group).to(wide)
            buf = state[name]
            if buf.dtype != wide or buf.device != p.device or not buf.is_contiguous() or buf.shape != p.shape:
                return None
        step = state.get("step", 0)
        if not (isinstance(step, Tensor) and step.device == p.device and step.dtype == torch.float32):
            state["step"] = torch.tensor(float(step), dtype=torch.float32, device=p.device)
        states.append(state)
    return Plan(params, names, states)


def step(opt: BookOptimizer, lookahead: bool) -> bool:
    """Run the fused device step for every group; False (having changed nothing but the creation of
    state) where it does not apply, and the general path must run."""
    from deepdescent.kernels import triton_backend as tb

    if opt.nonfinite == "raise" or opt.impl == "eager" or opt._fused_off or opt._interim_grads:
        return False
    work = []
    for group in opt.param_groups:
        if group["params"] and group["params"][0].device.type not in kernels.TRITON_DEVICES:
            return False  # before any per-parameter work: the CPU path pays nothing for this check
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            continue
        grads = [p.grad for p in params]
        try:
            if not all([g.is_contiguous() for g in grads]):
                return False
        except RuntimeError:  # sparse gradients have no strides: the general path says what is wrong
            return False
        names = opt._state_names(group)
        plan = opt._plans.get(id(group))
        if plan is None or not plan.current(params, names):
            plan = _build(opt, group, params, names)
            if plan is None:
                return False
            opt._plans[id(group)] = plan
        work.append((group, plan, grads))
    if not work or len({plan.device for _, plan, _ in work}) != 1:
        return False
    device = work[0][1].device
    found = torch.zeros((), dtype=torch.float32, device=device)
    tables = []
    for _, plan, grads in work:
        gptrs = [g.data_ptr() for g in grads]
        tables.append((tb.pointer_table(plan.pptrs + gptrs + plan.bptrs, device),
                       plan.aligned and all(a % 16 == 0 for a in gptrs)))
        if opt.nonfinite == "skip":
            tb.check(plan.sizes, tb.pointer_table(gptrs, device), plan.dtype, found)
    if opt._skipped_device is None:
        opt._skipped_device = torch.zeros((), dtype=torch.float32, device=device)
    for i, (_, plan, _) in enumerate(work):  # the counters first: the update reads the new t
        tb.bump(plan.step_table, len(plan.steps), found, opt._skipped_device if i == 0 else None)
    for (group, plan, _), (table, aligned) in zip(work, tables):
        opt._fused_device_update(group, plan, table, aligned, lookahead, found)
    return True
