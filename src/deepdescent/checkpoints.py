"""``load_state_dict`` in torch's order, with every check before anything changes (shared by the
first- and second-order optimizers)."""

from __future__ import annotations

import numbers
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer


def load_checked(opt: Optimizer, state_dict: Any, check: Callable[[dict[str, Any]], Any],
                 apply: Callable[[dict[str, Any], Any], None]) -> None:
    """Load pre-hooks (which may replace the dict), then ``check`` (raises ValueError, changes
    nothing), then ``apply(state_dict, checked)`` with torch's own hooks switched off (they ran
    already), then the load post-hooks."""
    if not isinstance(state_dict, dict):
        raise ValueError(f"state_dict must be a dict (from Optimizer.state_dict()), got {type(state_dict).__name__}")
    state_dict = dict(state_dict)
    for hook in opt._optimizer_load_state_dict_pre_hooks.values():
        result = hook(opt, state_dict)
        if result is not None:
            state_dict = result
    checked = check(state_dict)
    hooks = opt._optimizer_load_state_dict_pre_hooks, opt._optimizer_load_state_dict_post_hooks
    opt._optimizer_load_state_dict_pre_hooks = opt._optimizer_load_state_dict_post_hooks = OrderedDict()
    try:
        apply(state_dict, checked)
    finally:
        opt._optimizer_load_state_dict_pre_hooks, opt._optimizer_load_state_dict_post_hooks = hooks
    _unalias(opt, state_dict)
    for hook in opt._optimizer_load_state_dict_post_hooks.values():
        hook(opt)


def _tensors(value: Any) -> list[Tensor]:
    if isinstance(value, Tensor):
        return [value]
    return [t for v in value for t in _tensors(v)] if isinstance(value, (list, tuple)) else []


def _address(t: Tensor) -> int | None:
    """Where ``t``'s memory starts (None for an empty tensor, or one without plain storage)."""
    try:
        return t.untyped_storage().data_ptr() if t.numel() else None
    except (RuntimeError, NotImplementedError):
        return None


def _unalias(opt: Optimizer, state_dict: dict[str, Any]) -> None:
    """The loaded state never shares memory with the dict it came from: torch.optim keeps a state
    tensor that is already of the parameter's dtype and device as the very object given, so an
    in-memory round trip (``torch.distributed.checkpoint``'s get/set_optimizer_state_dict, a dict
    handed from one optimizer to another) would leave two optimizers updating one buffer."""
    given = {_address(t) for entry in state_dict["state"].values() if isinstance(entry, dict)
             for v in entry.values() for t in _tensors(v)} - {None}

    def own(v: Any) -> Any:
        if isinstance(v, Tensor):
            return v.clone(memory_format=torch.preserve_format) if _address(v) in given else v
        return type(v)(own(x) for x in v) if isinstance(v, (list, tuple)) else v

    for entry in opt.state.values():
        for key, value in list(entry.items()):
            entry[key] = own(value)


def check_layout(opt: Optimizer, state_dict: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """The shape every optimizer's state dict has: 'state' (a dict) and 'param_groups' (a list of
    dicts with a 'params' list), as many groups and parameters as ``opt``. Returns (saved, own)
    group pairs."""
    name = type(opt).__name__
    if not isinstance(state_dict.get("state"), dict) or not isinstance(state_dict.get("param_groups"), list):
        raise ValueError("state_dict must be a dict with 'state' and 'param_groups' (a dict and a list, as "
                         "Optimizer.state_dict() returns)")
    saved_groups = state_dict["param_groups"]
    if len(saved_groups) != len(opt.param_groups):
        raise ValueError(f"state_dict has {len(saved_groups)} param groups, {name} has {len(opt.param_groups)}")
    for i, (saved, group) in enumerate(zip(saved_groups, opt.param_groups)):
        if not isinstance(saved, dict) or not isinstance(saved.get("params"), list):
            raise ValueError(f"param_groups[{i}] of the state_dict must be a dict with a 'params' list")
        if len(saved["params"]) != len(group["params"]):
            raise ValueError(f"param_groups[{i}] of the state_dict has {len(saved['params'])} parameters, {name}'s "
                             f"has {len(group['params'])}")
    return list(zip(saved_groups, opt.param_groups))


def check_group_keys(opt: Optimizer, i: int, saved: dict[str, Any]) -> None:
    missing = sorted(set(opt.defaults) - set(saved))
    if missing:
        raise ValueError(f"param_groups[{i}] of the state_dict lacks {missing}")


def step_count(value: Any) -> Any:
    """A step count as a number (a 0-dim tensor holds it on the device path)."""
    return value.item() if isinstance(value, Tensor) and value.dim() == 0 else value


def check_step(where: str, value: Any) -> None:
    """A step count: an integer >= 0 (a 0-dim tensor holding one on the device path)."""
    number = step_count(value)
    if isinstance(number, bool) or not isinstance(number, numbers.Real) or number < 0 or number != int(number):
        raise ValueError(f"invalid {where}={value!r}: must be an integer >= 0")


def param_name(opt: Optimizer, p: Tensor) -> str:
    """How an error names parameter ``p`` of ``opt``: its name if the group has names, its place and shape."""
    for gi, group in enumerate(opt.param_groups):
        for pi, q in enumerate(group["params"]):
            if q is p:
                names = group.get("param_names")
                where = f"param_groups[{gi}]['params'][{pi}]"
                shape = f"shape {tuple(p.shape)}"
                return f"{names[pi]!r} ({where}, {shape})" if names else f"{where} ({shape})"
    return f"(shape {tuple(p.shape)})"


def state_dict_with(opt: Optimizer, state_dict: Callable[[], dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any]:
    """torch's ``state_dict()`` (the callable, run without ``opt``'s post-hooks) with ``meta`` as its
    ``"deepdescent"`` entry, then the post-hooks: they see the entry, as torch orders them."""
    post = opt._optimizer_state_dict_post_hooks
    opt._optimizer_state_dict_post_hooks = OrderedDict()
    try:
        sd = state_dict()
    finally:
        opt._optimizer_state_dict_post_hooks = post
    sd["deepdescent"] = meta
    for hook in post.values():
        result = hook(opt, sd)
        if result is not None:
            sd = result
    return sd
