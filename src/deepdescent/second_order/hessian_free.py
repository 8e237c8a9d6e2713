"""``HessianFree``: truncated Newton with conjugate gradients on curvature-vector products
(Martens 2010)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from deepdescent.curvature.autograd import ClosureEvaluation, evaluate_closure, gnvp, hvp
from deepdescent.curvature.vectors import unflat_like
from deepdescent.algorithms import validation as check
from deepdescent.second_order.base import SecondOrderOptimizer


class HessianFree(SecondOrderOptimizer):
    r"""Hessian-free optimization (Martens 2010): each step approximately solves
    (B + λI) d = −g by conjugate gradients, B the Gauss–Newton matrix (``curvature="gauss_newton"``,
    positive semi-definite for convex losses) or the Hessian (``"hessian"``), using only
    curvature-vector products (never B itself).

    Following Martens (2010):

    * CG starts from ζ·d_prev (warm start, ζ = ``cg_decay`` = 0.95) and stops after ``cg_max_iter``
      iterations or when the relative progress of the quadratic model over the last
      k = max(10, 0.1 i) iterations falls under k·``cg_tol``;
    * CG-iterate backtracking: iterates saved at i = ⌈1.3ʲ⌉ are tried from the last backwards and
      the one with the lowest loss is kept; if none lowers the loss, an Armijo backtracking along
      it follows; if that fails too, θ is restored and the failure reported;
    * Levenberg–Marquardt damping: ρ = (J(θ + d) − J(θ)) / (gᵀd + ½ dᵀBd); λ ← 1.5λ if ρ < 1/4,
      λ ← (2/3)λ if ρ > 3/4;
    * optionally, CG preconditioned by M = (diag F + λI)^ξ, F the empirical Fisher's diagonal the
      caller passes as ``step(..., fisher_diagonal=F)`` (ξ = ``precondition_exponent`` = 0.75);
    * optionally, curvature products on a minibatch (``step(..., curvature_closure=...)``).

    Curvature products cost about two gradients each. The closure must return the loss without
    calling ``backward()`` — and ``(loss, output)`` for Gauss–Newton, ``output`` being the network
    output the loss was computed from. Use large minibatches or the full batch (§8.6).

    ``step(closure, curvature_closure=...)``: curvature products on another (smaller) batch than
    the gradient, as Martens (2010, §4.3) does — the gradient and the loss on the full batch, B on
    a minibatch of it; ``curvature_closure`` returns ``(loss, output)`` (Gauss–Newton) or the loss
    on that minibatch. ``state["curvature_examples"]`` then sums, over products, the fraction
    of the gradient's examples each used (read off the outputs' first dimension; 1 when the
    closures return no output): what a budget in gradient-equivalents charges.
    """

    def __init__(self, params: Any, damping: float = 1.0, curvature: str = "gauss_newton", cg_max_iter: int = 250,
                 *, cg_tol: float = 5e-4, cg_decay: float = 0.95, min_damping: float = 1e-8,
                 precondition_exponent: float = 0.75, on_line_search_failure: str = "warn", lr: float = 1.0) -> None:
        super().__init__(params, dict(lr=lr, damping=damping, curvature=curvature, cg_max_iter=cg_max_iter, cg_tol=cg_tol,
                                      cg_decay=cg_decay, min_damping=min_damping,
                                      precondition_exponent=precondition_exponent,
                                      on_line_search_failure=on_line_search_failure))

    def _check(self, defaults: dict[str, Any]) -> None:
        super()._check(defaults)
        check.positive("damping", defaults["damping"])
        check.choice("curvature", defaults["curvature"], ("gauss_newton", "hessian"))
        if not isinstance(defaults["cg_max_iter"], int) or defaults["cg_max_iter"] < 1:
            raise ValueError(f"invalid cg_max_iter={defaults['cg_max_iter']!r}: must be an integer >= 1")
        check.positive("cg_tol", defaults["cg_tol"])
        check.unit_interval("cg_decay", defaults["cg_decay"])
        check.positive("min_damping", defaults["min_damping"])
        xi = defaults["precondition_exponent"]
        if isinstance(xi, bool) or not isinstance(xi, (int, float)) or not 0.0 <= xi <= 1.0:
            raise ValueError(f"invalid precondition_exponent={xi!r}: must be in [0, 1] (Martens: 0.75)")

    def _product(self, ev: ClosureEvaluation, fraction: float) -> Callable[[Tensor], Tensor]:
        fn = gnvp if self.defaults["curvature"] == "gauss_newton" else hvp

        def product(v: Tensor) -> Tensor:
            self._state["curvature_products"] += 1
            self._state["curvature_examples"] = self._state.get("curvature_examples", 0.0) + fraction
            return fn(ev, self._params, unflat_like(v, self._params))
        return product

    def _cg(self, product: Callable[[Tensor], Tensor], g: Tensor, x0: Tensor,
            lam: float, m: Tensor | None = None) -> list[tuple[int, Tensor, float]]:
        """CG on φ(x) = ½xᵀ(B + λI)x + gᵀx, preconditioned by diag(``m``) if given; returns the
        saved iterates (i, x, φ(x))."""
        max_iter, tol = self.defaults["cg_max_iter"], self.defaults["cg_tol"]
        x = x0.clone()
        r = -g - (product(x) + lam * x) if x.abs().sum() > 0 else -g.clone()
        z = r / m if m is not None else r
        p = z.clone()
        rr = float(r @ z)  # rᵀM⁻¹r (rᵀr without a preconditioner)
        values: list[float] = []
        saved: list[tuple[int, Tensor, float]] = []
        next_save = 1
        for i in range(1, max_iter + 1):
            ap = product(p) + lam * p
            pap = float(p @ ap)
            if not pap > 0:  # negative curvature (Hessian mode): stop here
                break
            a = rr / pap
            x = x + a * p
            r = r - a * ap
            values.append(-0.5 * float(x @ (r - g)))  # φ(x) = ½xᵀAx + gᵀx with Ax = −g − r
            if i >= next_save:
                saved.append((i, x.clone(), values[-1]))
                next_save = max(math.ceil(next_save * 1.3), next_save + 1)
            k = max(10, int(0.1 * i))
            if i > k and values[-1] < 0 and (values[-1] - values[-1 - k]) / values[-1] < k * tol:
                break
            z = r / m if m is not None else r
            rr_new = float(r @ z)
            if rr_new == 0:
                break
            p = z + (rr_new / rr) * p
            rr = rr_new
        if values and (not saved or saved[-1][0] != len(values)):
            saved.append((len(values), x.clone(), values[-1]))
        if not saved:  # no CG progress (zero gradient or no positive curvature): the start point
            saved.append((0, x.clone(), 0.5 * float(x @ (product(x) + lam * x)) + float(g @ x)))
        return saved

    def step(self, closure: Callable[[], Any],  # type: ignore[override]
             curvature_closure: Callable[[], Any] | None = None, fisher_diagonal: Tensor | None = None) -> Any:
        """One HF step (a CG solve, backtracking, a damping update); returns the closure's loss
        before it. ``lr`` scales the accepted step (1: Martens's; the damping adapts to the
        method's own step). ``curvature_closure``: the curvature products' minibatch (default:
        the closure's batch). ``fisher_diagonal``: the mean over examples of the squared
        per-example gradients (flat, in parameter order); CG is then preconditioned by
        M = (diag F + λI)^ξ, ξ = ``precondition_exponent`` (Martens 2010, §4.7)."""
        def body(closure: Callable[[], Any]) -> Any:
            state = self._state
            gn = self.defaults["curvature"] == "gauss_newton"
            ev = self._evaluate(closure, create_graph=curvature_closure is None, want_output=gn)
            f0, g = ev.value, ev.grad
            lam = state.get("damping", float(self.defaults["damping"]))
            product = self._product(ev, 1.0) if curvature_closure is None else self._curvature_on(curvature_closure, ev)
            start = state.get("cg_init")
            start = self.defaults["cg_decay"] * start if start is not None else torch.zeros_like(g)
            saved = self._cg(product, g, start, lam, self._preconditioner(fisher_diagonal, g, lam))
            theta0 = self._get()
            # CG-iterate backtracking: from the last saved iterate backwards, keep the best
            best_f, best = math.inf, saved[-1]
            for it in reversed(saved):
                f = self._loss_at(closure, theta0 + it[1])
                if f < best_f:
                    best_f, best = f, it
                else:
                    break
            _, best_d, phi = best
            state["cg_init"] = saved[-1][1]
            step = 1.0
            if not best_f < f0:  # Armijo backtracking along the best iterate
                slope = float(g @ best_d)
                while step > 1e-6 and not best_f <= f0 + 1e-4 * step * slope:
                    step *= 0.5
                    best_f = self._loss_at(closure, theta0 + step * best_d)
            state["n_iter"] += 1
            if not best_f < f0:
                state["damping"] = lam * 1.5
                self._failed(theta0, "no CG iterate lowered the loss")
                return ev.returned
            d = step * best_d
            # undamped quadratic model at d, from φ (the graph of g is stale once θ moved):
            # ½xᵀBx = φ(x) − gᵀx − ½λ‖x‖²
            g_x = float(g @ best_d)
            model_change = step * g_x + step**2 * (phi - g_x - 0.5 * lam * float(best_d @ best_d))
            rho = (best_f - f0) / model_change if model_change < 0 else 0.0
            lam = lam * 1.5 if rho < 0.25 else lam * (2 / 3) if rho > 0.75 else lam
            state["damping"] = max(lam, self.defaults["min_damping"])
            state["reduction_ratio"] = rho
            state["cg_iterations"] = saved[-1][0]
            self._set(theta0 + self._lr * d)
            return ev.returned
        return self._guarded(closure, body)

    def _preconditioner(self, fisher: Tensor | None, g: Tensor, lam: float) -> Tensor | None:
        if fisher is None:
            return None
        if not isinstance(fisher, Tensor) or fisher.shape != g.shape:
            raise ValueError(f"fisher_diagonal must be a tensor of shape {tuple(g.shape)} (one entry per parameter), "
                             f"got {tuple(fisher.shape) if isinstance(fisher, Tensor) else type(fisher).__name__}")
        if not bool(torch.isfinite(fisher).all()) or bool((fisher < 0).any()):
            raise ValueError("fisher_diagonal must be finite and non-negative (mean squared per-example gradients)")
        return (fisher.to(g) + lam) ** self.defaults["precondition_exponent"]

    def _curvature_on(self, curvature_closure: Callable[[], Any], ev: ClosureEvaluation) -> Callable[[Tensor], Tensor]:
        """Products on the curvature minibatch: its own graph (one more forward pass)."""
        if not callable(curvature_closure):
            raise TypeError(f"curvature_closure must be callable (a closure on the curvature minibatch), "
                            f"got {type(curvature_closure).__name__}")
        gn = self.defaults["curvature"] == "gauss_newton"
        cev = evaluate_closure(curvature_closure, self._params, create_graph=True, want_output=gn)
        n_grad, n_curv = _examples(ev.output), _examples(cev.output)
        return self._product(cev, n_curv / n_grad if n_grad and n_curv else 1.0)

    def _loss_at(self, closure: Callable[[], Any], x: Tensor) -> float:
        self._set(x)
        self._state["func_evals"] += 1
        with torch.no_grad():
            result = closure()
        loss = result[0] if isinstance(result, tuple) else result
        value = float(loss)
        return value if math.isfinite(value) else math.inf


def _examples(output: Tensor | None) -> int | None:
    """Examples in a batch, read off the network output's first dimension (None without one)."""
    return int(output.shape[0]) if output is not None and output.dim() > 0 else None
