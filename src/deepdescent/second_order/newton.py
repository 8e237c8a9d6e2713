"""``Newton``: Algorithm 8.8 with the regularized update (8.28) and a saddle-free option."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from deepdescent.curvature.autograd import ClosureEvaluation, hvp
from deepdescent.curvature.vectors import unflat_like
from deepdescent.algorithms import validation as check
from deepdescent.second_order.base import SecondOrderOptimizer


class Newton(SecondOrderOptimizer):
    r"""Newton's method (Algorithm 8.8), regularized (eq. 8.28).

    g ← ∇J(θ);  H ← ∇²J(θ);  solve (H + αI)Δθ = −g (Cholesky);  θ ← θ + Δθ.

    On a positive definite quadratic with α = 0 the minimum is reached in one step. As α grows
    the step tends to the gradient step −g/α. If H + αI is not positive definite, α is raised
    Levenberg–Marquardt style (α ← max(2α, 10⁻⁶·max|H|), until Cholesky succeeds) for that step;
    the α used is in ``state["damping_used"]``. ``indefinite="solve"`` instead takes the plain
    Newton step through an indefinite H (an LU solve): the method the book describes as attracted
    to saddle points (§8.2.3). ``saddle_free=True`` uses |H| = Q|Λ|Qᵀ instead of
    H (Dauphin et al. 2014): Newton is attracted to saddle points, the saddle-free step is repelled.

    H is built exactly from n Hessian-vector products (O(n) backward passes, O(n²) memory, O(n³)
    solve): only for small models. Above ``max_params`` the optimizer refuses; use
    :class:`~deepdescent.second_order.HessianFree` there.

    The closure must return the loss **without** calling ``backward()`` (the optimizer
    differentiates it twice). ``line_search``: None (full step), ``"armijo"`` or ``"strong_wolfe"``.
    """

    def __init__(self, params: Any, damping: float = 0.0, line_search: str | None = None, *, saddle_free: bool = False,
                 indefinite: str = "damp", max_params: int = 2000, on_line_search_failure: str = "warn",
                 lr: float = 1.0) -> None:
        super().__init__(params, dict(lr=lr, damping=damping, line_search=line_search, saddle_free=saddle_free,
                                      indefinite=indefinite, max_params=max_params,
                                      on_line_search_failure=on_line_search_failure))

    def _check(self, defaults: dict[str, Any]) -> None:
        super()._check(defaults)
        check.non_negative("damping", defaults["damping"])
        check.flag("saddle_free", defaults["saddle_free"])
        check.choice("indefinite", defaults["indefinite"], ("damp", "solve"))
        if not isinstance(defaults["max_params"], int) or defaults["max_params"] < 1:
            raise ValueError(f"invalid max_params={defaults['max_params']!r}: must be an integer >= 1")

    def _too_many(self, n: int, limit: int) -> str:
        return (f"Newton builds the dense {n}×{n} Hessian: {n} parameters exceed max_params={limit}. "
                "Use deepdescent.optim.HessianFree (CG on Hessian-vector products) for models this size")

    def hessian(self, closure: Callable[[], Any]) -> tuple[float, Tensor, Tensor]:
        """(loss, gradient, Hessian) at the current parameters, the Hessian by n HVPs."""
        ev, h = self._evaluate_hessian(closure)
        return ev.value, ev.grad, h

    def _evaluate_hessian(self, closure: Callable[[], Any]) -> tuple[ClosureEvaluation, Tensor]:
        # the evaluation is returned, never stashed on self: a compiled step (torch.compile) may
        # not see attributes set inside it
        ev = self._evaluate(closure, create_graph=True)
        n = ev.grad.numel()
        eye = torch.eye(n, dtype=ev.grad.dtype, device=ev.grad.device)
        rows = [hvp(ev, self._params, unflat_like(eye[i], self._params)) for i in range(n)]
        self._state["curvature_products"] += n
        h = torch.stack(rows)
        return ev, (h + h.T) / 2

    def _direction(self, g: Tensor, h: Tensor) -> tuple[Tensor, float]:
        if self.defaults["saddle_free"]:
            lam, q = torch.linalg.eigh(h)
            h = (q * lam.abs()) @ q.T
        alpha = float(self.defaults["damping"])
        eye = torch.eye(len(g), dtype=h.dtype, device=h.device)
        if self.defaults["indefinite"] == "solve" and not self.defaults["saddle_free"]:
            return -torch.linalg.solve(h + alpha * eye, g), alpha
        floor = 1e-6 * max(1.0, h.abs().max().item())
        for _ in range(200):
            factor, info = torch.linalg.cholesky_ex(h + alpha * eye)
            if info.item() == 0:
                return -torch.cholesky_solve(g.unsqueeze(1), factor).squeeze(1), alpha
            alpha = max(2 * alpha, floor)
        raise RuntimeError("could not make H + αI positive definite (the Hessian holds NaN or Inf?)")

    def step(self, closure: Callable[[], Any]) -> Any:  # type: ignore[override]
        """One Newton step; returns the closure's loss before it. ``lr`` scales the step (without a
        line search) or the line search's first trial step (1: the full Newton step)."""
        def body(closure: Callable[[], Any]) -> Any:
            ev, h = self._evaluate_hessian(closure)
            f0, g = ev.value, ev.grad
            d, alpha = self._direction(g, h)
            self._state["damping_used"] = alpha
            self._state["n_iter"] += 1
            x0 = self._get()
            method = self.defaults["line_search"]
            if method is None:
                self._set(x0 + self._lr * d)
            else:
                result = self._line_search(closure, x0, f0, g, d, self._lr, method, c2=0.9)
                if result.success:
                    self._set(x0 + result.step * d)
                else:
                    self._failed(x0, result.message)
            return ev.returned
        return self._guarded(closure, body)
