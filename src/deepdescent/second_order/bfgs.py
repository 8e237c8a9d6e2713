"""``BFGS`` and ``LBFGS``: quasi-Newton methods of §8.6.3."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

from deepdescent.second_order.base import LineSearchOptimizer


class CurvatureSkipWarning(RuntimeWarning):
    """A quasi-Newton update was skipped because yᵀs ≤ 0 would break positive definiteness."""


def _curvature_ok(s: Tensor, y: Tensor) -> bool:
    return float(y @ s) > 1e-10 * float(s.norm() * y.norm())


class BFGS(LineSearchOptimizer):
    r"""BFGS (Broyden, Fletcher, Goldfarb, Shanno): M_t ≈ H⁻¹ refined by rank-two updates (§8.6.3).

    ρ_t = −M_t g_t;  ε* by line search;  θ_{t+1} = θ_t + ε*ρ_t (8.33);  with s = θ_{t+1} − θ_t,
    y = g_{t+1} − g_t, r = 1/yᵀs:  M ← (I − r s yᵀ) M (I − r y sᵀ) + r s sᵀ.

    M starts at I (as scipy.optimize's BFGS; the first step's length comes from the line search,
    whose first trial is a step of ℓ₁-length 1). An update with yᵀs ≤ 10⁻¹⁰‖s‖‖y‖ would break positive definiteness: it is skipped,
    counted in ``state["skipped_updates"]`` and warned about. O(n²) memory: above ``max_params``
    the optimizer refuses (use :class:`LBFGS`). Iterations per ``step`` and the closure
    convention are as in :class:`~deepdescent.second_order.ConjugateGradient`.
    """

    def __init__(self, params: Any, line_search: str = "strong_wolfe", max_params: int = 5000, *, max_iter: int = 20,
                 tolerance_grad: float = 1e-7, tolerance_change: float = 1e-9,
                 on_line_search_failure: str = "warn", lr: float = 1.0) -> None:
        super().__init__(params, dict(lr=lr, line_search=line_search, max_params=max_params, max_iter=max_iter,
                                      tolerance_grad=tolerance_grad, tolerance_change=tolerance_change,
                                      on_line_search_failure=on_line_search_failure))

    def _too_many(self, n: int, limit: int) -> str:
        return (f"BFGS keeps a dense {n}×{n} inverse-Hessian approximation: {n} parameters exceed "
                f"max_params={limit}. Use deepdescent.optim.LBFGS (O(n) memory)")

    def _direction(self, g: Tensor) -> Tensor:
        m = self._state.get("inverse_hessian")
        return -g if m is None else -(m @ g)

    def _reset(self) -> None:
        self._state.pop("inverse_hessian", None)

    def _after(self, s: Tensor, y: Tensor, g_new: Tensor) -> None:
        state = self._state
        if not _curvature_ok(s, y):
            state["skipped_updates"] = state.get("skipped_updates", 0) + 1
            warnings.warn("BFGS: update skipped, yᵀs ≤ 0 would break positive definiteness", CurvatureSkipWarning,
                          stacklevel=4)
            return
        m = state.get("inverse_hessian")
        if m is None:
            m = torch.eye(len(s), dtype=s.dtype, device=s.device)
        r = 1.0 / float(y @ s)
        my = m @ y
        # (I − r s yᵀ) M (I − r y sᵀ) + r s sᵀ, expanded
        m = m - r * (torch.outer(s, my) + torch.outer(my, s)) + (r * r * float(y @ my) + r) * torch.outer(s, s)
        state["inverse_hessian"] = m


class LBFGS(LineSearchOptimizer):
    r"""Limited-memory BFGS (§8.6.3): the BFGS direction from the last ``history`` pairs (s, y) by
    the two-loop recursion, starting from H₀ = (sᵀy / yᵀy) I: O(n·history) per step.

    Unlike ``torch.optim.LBFGS`` it accepts any number of param groups (they form one vector) and
    offers ``"armijo"`` and ``"exact_quadratic"`` line searches; with exact line searches on a
    quadratic its directions are mutually conjugate. Pairs with yᵀs ≤ 10⁻¹⁰‖s‖‖y‖ are skipped
    (``state["skipped_updates"]``). Iterations per ``step`` and the closure convention are as in
    :class:`~deepdescent.second_order.ConjugateGradient`.
    """

    def __init__(self, params: Any, history: int = 10, line_search: str = "strong_wolfe", *, max_iter: int = 20,
                 tolerance_grad: float = 1e-7, tolerance_change: float = 1e-9,
                 on_line_search_failure: str = "warn", lr: float = 1.0) -> None:
        if isinstance(history, bool) or not isinstance(history, int) or history < 1:
            raise ValueError(f"invalid history={history!r}: must be an integer >= 1")
        super().__init__(params, dict(lr=lr, history=history, line_search=line_search, max_iter=max_iter,
                                      tolerance_grad=tolerance_grad, tolerance_change=tolerance_change,
                                      on_line_search_failure=on_line_search_failure))

    def _direction(self, g: Tensor) -> Tensor:
        s_list, y_list = self._state.get("s", []), self._state.get("y", [])
        q = -g
        alphas = []
        for s, y in zip(reversed(s_list), reversed(y_list)):
            a = float(s @ q) / float(y @ s)
            alphas.append(a)
            q = q - a * y
        if s_list:
            q = q * (float(s_list[-1] @ y_list[-1]) / float(y_list[-1] @ y_list[-1]))
        for (s, y), a in zip(zip(s_list, y_list), reversed(alphas)):
            b = float(y @ q) / float(y @ s)
            q = q + (a - b) * s
        return q

    def _reset(self) -> None:
        self._state["s"], self._state["y"] = [], []

    def _after(self, s: Tensor, y: Tensor, g_new: Tensor) -> None:
        state = self._state
        if not _curvature_ok(s, y):
            state["skipped_updates"] = state.get("skipped_updates", 0) + 1
            return
        state.setdefault("s", []).append(s)
        state.setdefault("y", []).append(y)
        if len(state["s"]) > self.defaults["history"]:
            state["s"].pop(0)
            state["y"].pop(0)
