"""Line searches shared by nonlinear CG, BFGS and L-BFGS (and HessianFree's backtracking).

A line search is given φ(t) = J(θ₀ + t d) through ``phi(t) -> (f, g)`` (the loss and the flat
gradient at θ₀ + t d), the value f₀ and slope g₀ᵀd < 0 at t = 0, and returns a
:class:`LineSearchResult`. A failed search says so (``success=False`` and a message); the
optimizers then restore θ₀ and report it, never taking a silent zero step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

Phi = Callable[[float], tuple[float, Tensor]]
METHODS = ("strong_wolfe", "armijo", "exact_quadratic")


@dataclass
class LineSearchResult:
    step: float
    f: float
    grad: Tensor
    evals: int
    success: bool
    message: str = ""


class LineSearchError(RuntimeError):
    """Raised by an optimizer with ``on_line_search_failure="raise"``."""


def armijo(phi: Phi, f0: float, slope0: float, t0: float = 1.0, *, c1: float = 1e-4, shrink: float = 0.5,
           max_evals: int = 30) -> LineSearchResult:
    """Backtracking: the first t = t₀·shrinkᵏ with φ(t) ≤ f₀ + c₁ t g₀ᵀd (sufficient decrease)."""
    t = t0
    f, g = math.inf, None
    for evals in range(1, max_evals + 1):
        f, g = phi(t)
        if math.isfinite(f) and f <= f0 + c1 * t * slope0:
            return LineSearchResult(t, f, g, evals, True)
        t *= shrink
    return LineSearchResult(t, f, g, max_evals, False, f"no sufficient decrease in {max_evals} evaluations")  # type: ignore[arg-type]


def _cubic_min(t1: float, f1: float, d1: float, t2: float, f2: float, d2: float, lo: float, hi: float) -> float:
    """Minimizer of the cubic interpolating (t1, f1, d1), (t2, f2, d2), clamped into [lo, hi]
    (Nocedal & Wright eq. 3.59); the midpoint when the cubic has no minimizer."""
    a = d1 + d2 - 3 * (f1 - f2) / (t1 - t2)
    disc = a * a - d1 * d2
    if disc < 0:
        return (lo + hi) / 2
    b = math.copysign(math.sqrt(disc), t2 - t1)
    t = t2 - (t2 - t1) * (d2 + b - a) / (d2 - d1 + 2 * b)
    return min(max(t, lo), hi) if math.isfinite(t) else (lo + hi) / 2


def strong_wolfe(phi: Phi, f0: float, slope0: float, t0: float = 1.0, *, c1: float = 1e-4, c2: float = 0.9,
                 max_evals: int = 25, direction: Tensor | None = None, g0: Tensor | None = None) -> LineSearchResult:
    """Bracketing and zoom (Nocedal & Wright Algorithms 3.5, 3.6) for the strong Wolfe conditions:
    φ(t) ≤ f₀ + c₁ t φ'(0) and |φ'(t)| ≤ c₂ |φ'(0)|. ``direction`` gives φ'(t) = g(t)ᵀd."""
    assert direction is not None

    def slope(g: Tensor) -> float:
        return float(g @ direction)

    evals = 0
    t_prev, f_prev, s_prev, g_prev = 0.0, f0, slope0, g0
    t = t0
    lo = hi = None
    while evals < max_evals:
        f, g = phi(t)
        evals += 1
        s = slope(g)
        if not math.isfinite(f) or f > f0 + c1 * t * slope0 or (evals > 1 and f >= f_prev):
            lo, hi = (t_prev, f_prev, s_prev, g_prev), (t, f, s, g)
            break
        if abs(s) <= -c2 * slope0:
            return LineSearchResult(t, f, g, evals, True)
        if s >= 0:
            lo, hi = (t, f, s, g), (t_prev, f_prev, s_prev, g_prev)
            break
        t_prev, f_prev, s_prev, g_prev = t, f, s, g
        t = t * 4.0  # extrapolate
    else:
        return LineSearchResult(t_prev, f_prev, g_prev, evals, False,  # type: ignore[arg-type]
                                f"no bracket of a strong-Wolfe step in {max_evals} evaluations")
    # zoom between lo (sufficient decrease, lower f) and hi
    while evals < max_evals:
        (tl, fl, sl, _), (th, fh, sh, _) = lo, hi
        width = abs(th - tl)
        if width < 1e-12 * max(1.0, abs(tl)):
            break
        a, b = min(tl, th), max(tl, th)
        if math.isfinite(fh):
            t = _cubic_min(tl, fl, sl, th, fh, sh, a + 0.1 * width, b - 0.1 * width)
        else:
            t = (tl + th) / 2
        f, g = phi(t)
        evals += 1
        s = slope(g)
        if not math.isfinite(f) or f > f0 + c1 * t * slope0 or f >= fl:
            hi = (t, f, s, g)
        else:
            if abs(s) <= -c2 * slope0:
                return LineSearchResult(t, f, g, evals, True)
            if s * (th - tl) >= 0:
                hi = lo
            lo = (t, f, s, g)
    tl, fl, _, gl = lo
    ok = tl > 0 and fl <= f0 + c1 * tl * slope0  # sufficient decrease at least
    return LineSearchResult(tl, fl, gl, evals, ok, "" if ok else "the strong-Wolfe zoom did not converge")  # type: ignore[arg-type]


def exact_quadratic(phi: Phi, f0: float, slope0: float, g0: Tensor, direction: Tensor) -> LineSearchResult:
    """The exact minimizer along d of a quadratic: t* = −g₀ᵀd / dᵀHd, with Hd = g(θ₀ + d) − g₀
    (exact for a quadratic, whatever the step). Two evaluations. On a non-quadratic objective this
    is a secant step, not a line search; use it for quadratics (the book's facts)."""
    _, g1 = phi(1.0)
    curvature = float((g1 - g0) @ direction)
    if not curvature > 0:
        return LineSearchResult(0.0, f0, g0, 1, False, f"non-positive curvature dᵀHd = {curvature:.3g} along d")
    t = -slope0 / curvature
    f, g = phi(t)
    return LineSearchResult(t, f, g, 2, True)
