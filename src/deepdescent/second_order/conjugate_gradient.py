"""``ConjugateGradient``: nonlinear conjugate gradients, Algorithm 8.9."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from deepdescent.algorithms import validation as check
from deepdescent.second_order.base import LineSearchOptimizer


class ConjugateGradient(LineSearchOptimizer):
    r"""Nonlinear conjugate gradients (Algorithm 8.9).

    g_t ← ∇J(θ_t);  β_t = (g_t − g_{t−1})ᵀg_t / g_{t−1}ᵀg_{t−1}  (Polak–Ribière, 8.31)
    or β_t = g_tᵀg_t / g_{t−1}ᵀg_{t−1}  (Fletcher–Reeves, 8.30);
    ρ_t = −g_t + β_t ρ_{t−1};  ε* = argmin_ε J(θ_t + ερ_t) (line search);  θ_{t+1} = θ_t + ε*ρ_t.

    β is reset to 0 every ``restart_every`` iterations (the book: e.g. k = 5; None: never), and —
    a documented safeguard — whenever ρ_t is not a descent direction (g_tᵀρ_t ≥ 0).
    ``line_search``: ``"strong_wolfe"`` (c₂ = 0.1, as recommended for CG), ``"armijo"``, or
    ``"exact_quadratic"`` (the exact minimizer on a quadratic, where CG reaches the minimum of a
    k-dimensional problem in at most k iterations).

    Like ``torch.optim.LBFGS``, one ``step(closure)`` runs up to ``max_iter`` iterations on the
    (deterministic) closure and stops early when max|g| ≤ ``tolerance_grad`` or the change in θ or
    J falls under ``tolerance_change``. The closure may call ``backward()`` (LBFGS convention) or
    just return the loss.
    """

    _c2 = 0.1

    def __init__(self, params: Any, beta: str = "polak_ribiere", restart_every: int | None = None,
                 line_search: str = "strong_wolfe", *, max_iter: int = 20, tolerance_grad: float = 1e-7,
                 tolerance_change: float = 1e-9, on_line_search_failure: str = "warn", lr: float = 1.0) -> None:
        super().__init__(params, dict(lr=lr, beta=beta, restart_every=restart_every, line_search=line_search,
                                      max_iter=max_iter, tolerance_grad=tolerance_grad,
                                      tolerance_change=tolerance_change,
                                      on_line_search_failure=on_line_search_failure))

    def _check(self, defaults: dict[str, Any]) -> None:
        super()._check(defaults)
        check.choice("beta", defaults["beta"], ("polak_ribiere", "fletcher_reeves"))
        r = defaults["restart_every"]
        if r is not None and (isinstance(r, bool) or not isinstance(r, int) or r < 1):
            raise ValueError(f"invalid restart_every={r!r}: must be None or an integer >= 1")

    def _direction(self, g: Tensor) -> Tensor:
        state, every = self._state, self.defaults["restart_every"]
        g_prev, d_prev = state.get("g_prev"), state.get("d_prev")
        t = state["n_iter"]
        if g_prev is None or (every is not None and t % every == 0):
            beta = 0.0
        elif self.defaults["beta"] == "polak_ribiere":
            beta = float((g - g_prev) @ g) / float(g_prev @ g_prev)
        else:
            beta = float(g @ g) / float(g_prev @ g_prev)
        d = -g if beta == 0.0 else -g + beta * d_prev
        state["g_prev"], state["d_prev"] = g, d
        return d

    def _reset(self) -> None:
        self._state["d_prev"] = -self._state["g_prev"]

    def _after(self, s: Tensor, y: Tensor, g_new: Tensor) -> None:
        pass  # CG keeps only g_{t−1} and ρ_{t−1}, stored by _direction

    def _initial_step(self, g: Tensor, d: Tensor) -> float:
        decrease = self._state.get("last_decrease")
        if self._state["n_iter"] == 0 or not decrease:
            return super()._initial_step(g, d)
        return min(1.0, 2.02 * decrease / -float(g @ d))  # Nocedal & Wright eq. 3.60
