"""What the layer-wise preconditioned optimizers (K-FAC, Shampoo) share with the book's: the
torch.optim contract around a step that works on whole matrices rather than element by element —
the non-finite policy, the state dict with deepdescent's metadata, a load that checks everything
before it changes anything, complex parameters as their real views."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from deepdescent.algorithms import validation as check
from deepdescent.checkpoints import (
    check_group_keys,
    check_layout,
    check_step,
    load_checked,
    param_name,
    state_dict_with,
    step_count,
)
from deepdescent.optim.base import NonFinite, NonFiniteGradientError


class Unstable(ArithmeticError):
    """A curvature computation of a step failed (a factor not positive definite, an eigensolver
    that did not converge, a non-finite direction): the step is left out as a non-finite one."""


class PreconditionedOptimizer(Optimizer):
    """Base class: a subclass validates its hyperparameters (:meth:`_check`), says which state
    tensors each parameter may hold and their shapes (:meth:`_state_shapes`), and plans a step in
    :meth:`_plan` over the parameters whose gradients are set: everything that can fail is
    computed there, without changing anything, and the returned commit applies it. So a step whose
    curvature cannot be used (:class:`Unstable`) leaves parameters and state as they were."""

    def __init__(self, params: Any, defaults: dict[str, Any], *, nonfinite: NonFinite = "skip") -> None:
        check.choice("nonfinite", nonfinite, ("skip", "raise", "propagate"))
        self._check(defaults)
        super().__init__(params, defaults)
        self.nonfinite: NonFinite = nonfinite
        self._skipped = 0

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        try:
            self._check(self.param_groups[-1])
        except ValueError:
            del self.param_groups[-1]
            raise

    def _check(self, group: dict[str, Any]) -> None:
        raise NotImplementedError

    def _state_shapes(self, p: Tensor, group: dict[str, Any]) -> dict[str, tuple[int, ...]]:
        """The state tensors ``p`` may hold under ``group``'s hyperparameters, with their shapes
        (absent ones are created lazily)."""
        raise NotImplementedError

    def _plan(self, group: dict[str, Any], params: list[Tensor]) -> Callable[[], None]:
        """Compute the step of ``group`` (raises :class:`Unstable`, changes nothing); the returned
        function applies it."""
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """One step (``closure``, if given, re-evaluates the model and returns the loss)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        stepping = [[p for p in g["params"] if p.grad is not None] for g in self.param_groups]
        for p in (p for ps in stepping for p in ps):
            if p.grad.is_sparse:
                raise RuntimeError(f"{type(self).__name__} does not support sparse gradients (parameter "
                                   f"{self._param_name(p)}); use torch.optim.SparseAdam or dense gradients")
        if not self._finite([p for ps in stepping for p in ps]):
            return self._skip(loss)
        try:
            commits = [self._plan(group, params) for group, params in zip(self.param_groups, stepping)]
        except Unstable as err:
            if self.nonfinite == "skip":
                return self._skip(loss)
            raise NonFiniteGradientError(f"{err}; parameters and optimizer state were left unchanged") from None
        for commit in commits:
            commit()
        return loss

    def _skip(self, loss: Any) -> Any:
        self._skipped += 1
        self._discard()
        return loss

    def _discard(self) -> None:
        """Forget what a skipped step would have used (statistics gathered since the last step)."""

    def _finite(self, params: list[Tensor]) -> bool:
        if self.nonfinite == "propagate" or not params:
            return True
        if params[0].device.type == "meta":
            return True  # shape tracing: no values to look at, as torch.optim on the meta device
        flags = torch.stack([torch.isfinite(p.grad).all() for p in params])
        if bool(flags.all()):
            return True
        if self.nonfinite == "raise":
            bad = next((p for p in params if not bool(torch.isfinite(p.grad).all())), None)
            where = f"parameter {self._param_name(bad)}" if bad is not None else "a gradient"
            raise NonFiniteGradientError(f"non-finite gradient in {where}; parameters and optimizer state were "
                                         "left unchanged")
        return False

    @property
    def skipped_steps(self) -> int:
        """Steps left out because a gradient (or a curvature statistic) was not finite."""
        return self._skipped

    def _param_name(self, p: Tensor) -> str:
        return param_name(self, p)

    @staticmethod
    def _steps(state: dict[str, Any]) -> int:
        return int(step_count(state.get("step", 0)))

    # ------------------------------------------------------------------ copies and checkpoints
    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.update(nonfinite=self.nonfinite, _skipped=self._skipped)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.defaults.pop("differentiable", None)

    def state_dict(self) -> dict[str, Any]:
        """torch.optim's state dict and a ``"deepdescent"`` entry (class, skipped steps), added
        before the state_dict post-hooks run (as torch orders them)."""
        return state_dict_with(self, super().state_dict,
                               {"optimizer": type(self).__name__, "skipped_steps": self._skipped})

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's order (load pre-hooks, load, post-hooks) with every check first — layout, each
        saved group's hyperparameters as the constructor checks them, step counts, and every state
        tensor's name, dtype and shape for its parameter — so that a bad dict raises ValueError and
        changes nothing. A dict without the ``"deepdescent"`` entry loads with default metadata."""
        def apply(sd: dict[str, Any], meta: dict[str, Any]) -> None:
            super(PreconditionedOptimizer, self).load_state_dict({k: v for k, v in sd.items() if k != "deepdescent"})
            self._skipped = int(meta.get("skipped_steps", 0))
            self._loaded()
        load_checked(self, state_dict, self._check_checkpoint, apply)

    def _loaded(self) -> None:
        """After a load: make derived state consistent (subclasses)."""

    def _check_checkpoint(self, state_dict: dict[str, Any]) -> dict[str, Any]:
        name = type(self).__name__
        pairs = check_layout(self, state_dict)
        for i, (saved, _) in enumerate(pairs):
            check_group_keys(self, i, saved)
            try:
                self._check({**self.defaults, **saved})
            except (ValueError, TypeError) as err:
                raise ValueError(f"param_groups[{i}] of the state_dict: {err}") from None
        index = {k: (p, {**self.defaults, **saved}) for saved, group in pairs
                 for k, p in zip(saved["params"], group["params"])}
        for key, entry in state_dict["state"].items():
            if key not in index or not isinstance(entry, dict):
                raise ValueError(f"the state_dict's state {key!r} is not a dict of a parameter of {name}")
            p, group = index[key]  # the saved group's hyperparameters: the ones the state was made with
            shapes = self._state_shapes(p, group)
            for k, value in entry.items():
                where = f"{name} state {k!r} of parameter {self._param_name(p)}"
                if k == "step":
                    check_step(where, value)
                elif k not in shapes:
                    raise ValueError(f"unknown {where}; valid: step, {', '.join(shapes) or '(none)'}")
                elif not isinstance(value, Tensor) or not value.is_floating_point() or tuple(value.shape) != shapes[k]:
                    got = (f"a {value.dtype} tensor of shape {tuple(value.shape)}" if isinstance(value, Tensor)
                           else repr(value))
                    raise ValueError(f"{where} is {got}; it must be a floating tensor of shape {shapes[k]}")
        meta = state_dict.get("deepdescent", {})
        if not isinstance(meta, dict) or meta.get("optimizer", name) != name:
            saved_by = meta.get("optimizer") if isinstance(meta, dict) else meta
            raise ValueError(f"the state_dict was saved by {saved_by!r}, not {name}")
        check_step(f"{name} skipped_steps", meta.get("skipped_steps", 0))
        return meta


def real(t: Tensor) -> Tensor:
    """A complex tensor's real view (torch.optim's convention: complex parameters step as pairs)."""
    return torch.view_as_real(t) if t.is_complex() else t


def momentum_step(p: Tensor, state: dict[str, Any], direction: Tensor, lr: float, momentum: float,
                  weight_decay: float) -> None:
    """The book's momentum (Algorithm 8.2) along ``direction`` d: d ← d + λθ (L2 penalty);
    v ← αv − εd; θ ← θ + v (α = 0: θ ← θ − εd). ``p`` and ``direction`` are real views."""
    if weight_decay:
        direction = direction.add(p, alpha=weight_decay)
    if not momentum:
        p.add_(direction, alpha=-lr)
        return
    v = state.get("momentum_buffer")
    if v is None:
        v = state["momentum_buffer"] = torch.zeros_like(p)
    v.mul_(momentum).add_(direction, alpha=-lr)
    p.add_(v)
