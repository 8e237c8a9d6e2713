"""What the second-order optimizers share: the parameters as one flat vector (over any number of
param groups), closure evaluation with counters, line searches, restoring θ on failure."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from deepdescent.curvature.autograd import ClosureEvaluation, evaluate_closure
from deepdescent.curvature.vectors import flat, unflat_like
from deepdescent.algorithms import validation as check
from deepdescent.checkpoints import check_group_keys, check_layout, load_checked
from deepdescent.second_order import line_search as ls


#: The counters every second-order method keeps (integers >= 0).
_COUNTERS = ("func_evals", "grad_evals", "curvature_products", "n_iter", "line_search_failures", "cg_iterations")


class LineSearchWarning(RuntimeWarning):
    """A line search failed; the parameters were restored and the failure counted."""


class SecondOrderOptimizer(Optimizer):
    """Base class. Hyperparameters are global (one solve over all parameters): param groups only
    gather parameters, and a group that sets a hyperparameter differently is refused."""

    def __init__(self, params: Any, defaults: dict[str, Any]) -> None:
        self._check(defaults)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """As torch.optim (later groups are optimized too; unknown keys are kept), but a
        hyperparameter of the method must be the same in every group: one solve covers them all.
        A method with memory keeps it: its vectors grow by zeros and its n×n matrices by an
        identity block for the new coordinates (BFGS's inverse Hessian starts there at I, as it
        started everywhere), so the next step continues over all parameters."""
        before = self._size() if hasattr(self, "state") else 0
        super().add_param_group(param_group)
        if any(p.dtype == torch.complex32 for p in self.param_groups[-1]["params"]):
            del self.param_groups[-1]
            raise ValueError(f"{type(self).__name__} supports complex64 and complex128 parameters (as their real "
                             "views), not complex32; use p.to(torch.complex64)")
        for key, value in self.param_groups[-1].items():
            if key in self.defaults and key != "params" and value != self.defaults[key]:
                del self.param_groups[-1]
                raise ValueError(f"{type(self).__name__} solves over all parameters at once: hyperparameter "
                                 f"{key}={value!r} cannot differ per param group (default {self.defaults[key]!r})")
        limit = self.defaults.get("max_params")
        n = self._size()
        if limit is not None and n > limit:
            del self.param_groups[-1]
            raise ValueError(self._too_many(n, limit))
        self._grow_state(before, n)

    def _size(self) -> int:
        """n, the length of the flat parameter vector (complex parameters count twice)."""
        return sum(p.numel() * (2 if p.is_complex() else 1) for p in self._params)

    def _grow_state(self, old: int, new: int) -> None:
        params = self._params
        state = self.state.get(params[0]) if params and old else None
        if not state or new == old:
            return

        def grow(value: Any) -> Any:
            if isinstance(value, Tensor) and value.dim() == 1 and value.numel() == old:
                return torch.cat([value, value.new_zeros(new - old)])
            if isinstance(value, Tensor) and value.dim() == 2 and value.shape == (old, old):
                out = torch.eye(new, dtype=value.dtype, device=value.device)
                out[:old, :old] = value
                return out
            return [grow(v) for v in value] if isinstance(value, list) else value
        for key, value in list(state.items()):
            state[key] = grow(value)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.defaults.pop("differentiable", None)  # torch adds it for its own classes' old pickles

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """As torch.optim (load pre-hooks, load, post-hooks), but every check first — layout, each
        saved group's hyperparameters as the constructor checks them, counters, and state tensors
        (floating, of the flat parameter vector's size n: vectors, n×n matrices, lists of vectors) —
        so that a bad dict raises ValueError and changes nothing."""
        load_checked(self, state_dict, self._check_checkpoint,
                     lambda sd, _: super(SecondOrderOptimizer, self).load_state_dict(sd))

    def _check_checkpoint(self, state_dict: dict[str, Any]) -> None:
        name = type(self).__name__
        for i, (saved, _) in enumerate(check_layout(self, state_dict)):
            check_group_keys(self, i, saved)
            try:
                self._check({**self.defaults, **{k: v for k, v in saved.items() if k != "params"}})
            except (ValueError, TypeError) as err:
                raise ValueError(f"param_groups[{i}] of the state_dict: {err}") from None
        n = self._size()
        for index, entry in state_dict["state"].items():
            if not isinstance(entry, dict):
                raise ValueError(f"the state of parameter index {index!r} must be a dict, got {type(entry).__name__}")
            for key, value in entry.items():
                where = f"{name} state {key!r}"
                if key in _COUNTERS and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                    raise ValueError(f"invalid {where}={value!r}: must be an integer >= 0")
                for t in value if isinstance(value, list) else [value]:
                    if isinstance(t, Tensor) and (not t.is_floating_point() or t.dim() > 2 or
                                                  any(size != n for size in t.shape)):
                        raise ValueError(f"{where} is a {t.dtype} tensor of shape {tuple(t.shape)}; it must be a "
                                         f"floating vector of {n} elements or a {n}×{n} matrix")

    @property
    def _params(self) -> list[Tensor]:
        """The parameters that require grad, over all groups (one flat vector)."""
        return [p for g in self.param_groups for p in g["params"] if p.requires_grad]

    @property
    def _lr(self) -> float:
        """The step scale ``lr`` (1: the method's own step), the same in every group; a scheduler
        that sets the groups apart is refused."""
        rates = {float(g["lr"]) for g in self.param_groups}
        if len(rates) > 1:
            raise ValueError(f"{type(self).__name__} solves over all parameters at once: the param groups' lr "
                             f"must agree, got {sorted(rates)}")
        return rates.pop()

    def _too_many(self, n: int, limit: int) -> str:
        return f"{type(self).__name__} keeps O(n²) memory: {n} parameters exceed max_params={limit}"

    def _check(self, defaults: dict[str, Any]) -> None:
        """Validate hyperparameters (subclasses extend)."""
        check.non_negative("lr", defaults.get("lr", 1.0))
        if "line_search" in defaults and defaults["line_search"] is not None:
            check.choice("line_search", defaults["line_search"], ls.METHODS)
        if "on_line_search_failure" in defaults:
            check.choice("on_line_search_failure", defaults["on_line_search_failure"], ("warn", "raise"))

    # ------------------------------------------------------------------ flat parameter vector
    @property
    def _state(self) -> dict[str, Any]:
        state = self.state[self._params[0]]  # global state, stored like torch.optim.LBFGS
        if not state:
            state.update(func_evals=0, grad_evals=0, curvature_products=0, n_iter=0, line_search_failures=0)
        return state

    def _get(self) -> Tensor:
        return flat([p.detach() for p in self._params]).clone()

    @torch.no_grad()
    def _set(self, x: Tensor) -> None:
        for p, v in zip(self._params, unflat_like(x, self._params)):
            p.copy_(v)

    def _evaluate(self, closure: Callable[[], Any], *, create_graph: bool = False,
                  want_output: bool = False) -> ClosureEvaluation:
        ev = evaluate_closure(closure, self._params, create_graph=create_graph, want_output=want_output)
        self._state["func_evals"] += 1
        self._state["grad_evals"] += 1
        return ev

    def _phi(self, closure: Callable[[], Any], x0: Tensor, d: Tensor) -> ls.Phi:
        def phi(t: float) -> tuple[float, Tensor]:
            self._set(x0 + t * d)
            try:
                ev = self._evaluate(closure)
            except Exception:  # noqa: BLE001 - a non-finite loss at a trial point is just a bad point
                return float("inf"), torch.full_like(d, float("nan"))
            return ev.value, ev.grad
        return phi

    def _line_search(self, closure: Callable[[], Any], x0: Tensor, f0: float, g0: Tensor, d: Tensor,
                     t0: float, method: str, c2: float) -> ls.LineSearchResult:
        phi = self._phi(closure, x0, d)
        slope = float(g0 @ d)
        if method == "strong_wolfe":
            return ls.strong_wolfe(phi, f0, slope, t0, c2=c2, direction=d, g0=g0)
        if method == "armijo":
            return ls.armijo(phi, f0, slope, t0)
        return ls.exact_quadratic(phi, f0, slope, g0, d)

    def _failed(self, x0: Tensor, message: str) -> None:
        """Restore θ₀, count the failure, warn or raise."""
        self._set(x0)
        self._state["line_search_failures"] += 1
        text = f"{type(self).__name__}: line search failed ({message}); parameters restored"
        if self.defaults.get("on_line_search_failure") == "raise":
            raise ls.LineSearchError(text)
        warnings.warn(text, LineSearchWarning, stacklevel=3)

    def _guarded(self, closure: Callable[[], Any], body: Callable[[Callable[[], Any]], Any]) -> Any:
        """Run one step; on any error put the parameters back as they were before it. Without a
        parameter that requires grad, or at lr = 0, the closure is evaluated and nothing moves."""
        if closure is None:
            raise ValueError(f"{type(self).__name__}.step needs a closure that re-evaluates the loss")
        if not self._params or self._lr == 0:
            with torch.enable_grad():
                result = closure()
            return result[0] if isinstance(result, tuple) else result
        x0 = self._get()
        try:
            return body(closure)
        except BaseException:
            self._set(x0)
            raise


class LineSearchOptimizer(SecondOrderOptimizer):
    """The iteration shared by CG, BFGS and L-BFGS: a direction from the method, a line search
    along it, the method's update from (s, y). One ``step(closure)`` runs up to ``max_iter``
    iterations, as ``torch.optim.LBFGS`` does, and stops early on small gradients or changes."""

    _c2: float = 0.9  # strong-Wolfe curvature constant (CG uses 0.1)

    def _check(self, defaults: dict[str, Any]) -> None:
        super()._check(defaults)
        if not isinstance(defaults["max_iter"], int) or defaults["max_iter"] < 1:
            raise ValueError(f"invalid max_iter={defaults['max_iter']!r}: must be an integer >= 1")
        for name in ("tolerance_grad", "tolerance_change"):  # any number, as torch.optim.LBFGS takes them:
            value = defaults[name]  # +inf stops at once, 0 or less (-inf) never stops on this test
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
                raise ValueError(f"invalid {name}={value!r}: must be a number (±inf allowed: -inf never stops on it, "
                                 "+inf stops at once), not NaN")

    def _direction(self, g: Tensor) -> Tensor:
        raise NotImplementedError

    def _after(self, s: Tensor, y: Tensor, g_new: Tensor) -> None:
        """Update the method's memory after an accepted step s with gradient change y."""
        raise NotImplementedError

    def _initial_step(self, g: Tensor, d: Tensor) -> float:
        # first iteration: a step of length ~1 in the ℓ₁ sense (as torch.optim.LBFGS); then 1
        # (quasi-Newton directions are scaled), or from the last decrease (CG, N&W eq. 3.60)
        if self._state["n_iter"] == 0:
            return min(1.0, 1.0 / float(g.abs().sum()))
        return 1.0

    def step(self, closure: Callable[[], Any]) -> Any:  # type: ignore[override]
        """Up to ``max_iter`` iterations; returns the closure's loss at the start of the step (as
        torch.optim.LBFGS). ``lr`` scales each line search's first trial step (torch's LBFGS)."""
        def body(closure: Callable[[], Any]) -> Any:
            state, hp = self._state, self.defaults
            ev = self._evaluate(closure)
            f, g = ev.value, ev.grad
            f_start = ev.returned
            for _ in range(hp["max_iter"]):
                if float(g.abs().max()) <= hp["tolerance_grad"]:
                    break
                d = self._direction(g)
                if float(g @ d) >= 0:  # not a descent direction (safeguard): steepest descent
                    self._reset()
                    d = -g
                x0 = self._get()
                result = self._line_search(closure, x0, f, g, d, max(self._lr * self._initial_step(g, d), 1e-10),
                                           hp["line_search"], c2=self._c2)
                if not result.success:
                    self._failed(x0, result.message)
                    break
                s = result.step * d
                self._set(x0 + s)
                self._after(s, result.grad - g, result.grad)
                state["n_iter"] += 1
                state["last_decrease"] = f - result.f
                change = abs(f - result.f)
                f, g = result.f, result.grad
                if change < hp["tolerance_change"] or float(s.abs().max()) < hp["tolerance_change"]:
                    break
            state["loss"] = f
            return f_start
        return self._guarded(closure, body)

    def _reset(self) -> None:
        """Forget the method's memory (used when its direction is not a descent direction)."""
