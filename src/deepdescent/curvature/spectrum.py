"""The Hessian's spectrum from Hessian-vector products alone: extreme eigenvalues by Lanczos
(warm-started), the trace by Hutchinson's estimator, the spectral density by stochastic Lanczos
quadrature (Ghorbani et al. 2019)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

Operator = Callable[[Tensor], Tensor]  # v ↦ H v on flat vectors


@dataclass
class LanczosResult:
    """Extreme Ritz values of H, their residuals ‖Hu − θu‖ and a convergence flag.

    ``vector`` is the Ritz vector of λmax: pass it as ``start`` next time (warm start)."""

    lambda_max: float
    lambda_min: float
    residual_max: float
    residual_min: float
    converged: bool
    iterations: int
    vector: Tensor
    ritz_values: Tensor
    ritz_weights: Tensor  # squared first components of T's eigenvectors (for quadrature)
    converged_max: bool = False  # each end on its own: λmax usually converges in fewer products than λmin
    converged_min: bool = False
    basis: Tensor | None = None  # (m, n): the Krylov basis, orthonormal rows, with QᵀHQ = T (trace: Σ ritz_values)


def _tridiagonal(op: Operator, start: Tensor, k: int, tol: float | None = None
                 ) -> tuple[Tensor, Tensor, Tensor, float]:
    """Up to k Lanczos steps with full reorthogonalization: (α, β, basis (m, n), β_m). With ``tol``,
    stops as soon as both extreme Ritz pairs have residuals β_j·|s_j| ≤ tol·max|θ| (checked every
    step: an eigendecomposition of a j×j tridiagonal matrix costs far less than one product). The
    basis is one preallocated (k, n) block: the steps between products cost a few small kernels."""
    basis = torch.empty(k, start.numel(), dtype=start.dtype, device=start.device)
    basis[0] = start / start.norm()
    alphas: list[float] = []
    betas: list[float] = []
    beta_last = 0.0
    for j in range(k):
        q = basis[j]
        w = op(q)
        a = float(w @ q)
        alphas.append(a)
        w = w - a * q - (betas[-1] * basis[j - 1] if betas else 0.0)
        done = basis[: j + 1]
        for _ in range(2):  # full reorthogonalization, twice ("twice is enough"): k is small, stability matters
            w = w - done.T @ (done @ w)
        beta = float(w.norm())
        beta_last = beta
        if j == k - 1 or beta < 1e-12 * max(1.0, abs(a)) or (tol is not None and _extremes_converged(alphas, betas,
                                                                                                        beta, tol)):
            break
        betas.append(beta)
        basis[j + 1] = w / beta
    dtype = torch.float64
    m = len(alphas)
    return torch.tensor(alphas, dtype=dtype), torch.tensor(betas, dtype=dtype), basis[:m], beta_last


def _extremes_converged(alphas: list[float], betas: list[float], beta: float, tol: float) -> bool:
    if len(alphas) < 2:
        return False
    t = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)  # numpy: 15 µs at this size, torch 37
    theta, s = np.linalg.eigh(t)
    scale = max(abs(theta[0]), abs(theta[-1]), 1e-30)
    return beta * abs(s[-1, -1]) <= tol * scale and beta * abs(s[-1, 0]) <= tol * scale


def lanczos(op: Operator, n: int, *, k: int = 20, start: Tensor | None = None, tol: float = 1e-3,
            generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
            device: torch.device | str = "cpu", stop_early: bool = False) -> LanczosResult:
    """λmax and λmin of the symmetric operator ``op`` after at most ``k`` products.

    Converged when both residuals are at most ``tol``·max(|λmax|, |λmin|) (the residual bounds the
    distance of a Ritz value to an eigenvalue); ``converged_max`` and ``converged_min`` say it of
    each end. ``start``: the previous call's ``vector``, mixed
    with a little noise so the other end of the spectrum is still found. ``stop_early``: stop at
    the first step where both ends have converged (fewer than k products).
    """
    noise = torch.randn(n, generator=generator, dtype=dtype).to(device)
    v = noise if start is None else start.to(dtype=dtype, device=device) + 1e-2 * noise / math.sqrt(n)
    alphas, betas, basis, beta_last = _tridiagonal(op, v, k, tol if stop_early else None)
    m = len(alphas)
    t = torch.diag(alphas) + (torch.diag(betas, 1) + torch.diag(betas, -1) if m > 1 else 0)
    theta, s = torch.linalg.eigh(t)
    residuals = (beta_last * s[-1]).abs()
    scale = max(abs(theta[0].item()), abs(theta[-1].item()), 1e-30)
    vectors = basis.T.to(torch.float64)
    top = (vectors @ s[:, -1].to(vectors.device)).to(dtype)
    converged_max, converged_min = bool(residuals[-1] <= tol * scale), bool(residuals[0] <= tol * scale)
    return LanczosResult(theta[-1].item(), theta[0].item(), residuals[-1].item(), residuals[0].item(),
                         converged_max and converged_min, m, top, theta, s[0] ** 2, converged_max, converged_min,
                         basis)


@dataclass
class TraceEstimate:
    trace: float
    stderr: float
    samples: int


def hutchinson(op: Operator, n: int, *, samples: int = 20, generator: torch.Generator | None = None,
               dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
               batched: Operator | None = None, deflation: LanczosResult | None = None) -> TraceEstimate:
    """tr(H) ≈ mean of zᵀHz over Rademacher vectors z (Hutchinson 1989), with its standard error.
    ``batched``: Z ↦ (H zᵢ)ᵢ on a (samples, n) matrix, all probes in one call (same values).

    ``deflation``: a Lanczos run on the same H. Its basis Q spans the extreme eigendirections, whose
    part of the trace is known exactly, tr(QᵀHQ) = tr T = Σ Ritz values; the probes estimate the
    rest, tr(PHP) with P = I − QᵀQ, from Pz (Hutch++'s split, Meyer et al. 2021, with the Krylov
    basis as the sketch). Unbiased as before; the few large eigenvalues no longer enter the
    variance (a neural network's Hessian after some training: standard errors 2–12× smaller).
    """
    if samples < 2:
        raise ValueError(f"invalid samples={samples}: need at least 2 for a standard error")
    z = (torch.randint(0, 2, (samples, n), generator=generator) * 2 - 1).to(dtype=dtype, device=device)
    known = 0.0
    if deflation is not None:
        q = deflation.basis.to(dtype=dtype, device=device)
        z = z - (z @ q.T) @ q
        known = float(deflation.ritz_values.sum())
    hz = batched(z) if batched is not None else torch.stack([op(row) for row in z])
    v = (z * hz).sum(1).to(torch.float64).cpu()
    return TraceEstimate(known + v.mean().item(), (v.std() / math.sqrt(samples)).item(), samples)


@dataclass
class SpectralDensity:
    """Nodes and weights of stochastic Lanczos quadrature; ``density(grid, sigma)`` smooths them."""

    nodes: Tensor
    weights: Tensor

    def density(self, grid: Tensor, sigma: float) -> Tensor:
        g = grid.to(torch.float64)[:, None]
        kernel = torch.exp(-0.5 * ((g - self.nodes[None, :]) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
        return kernel @ self.weights


def slq(op: Operator, n: int, *, k: int = 30, runs: int = 4, generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> SpectralDensity:
    """Spectral density of H by stochastic Lanczos quadrature: ``runs`` Lanczos runs of ``k`` steps
    from random unit vectors; each Ritz value θᵢ carries the weight τᵢ² (first component of its
    eigenvector of T), averaged over the runs. The weights sum to 1."""
    nodes, weights = [], []
    for _ in range(runs):
        r = lanczos(op, n, k=k, generator=generator, dtype=dtype, device=device)
        nodes.append(r.ritz_values)
        weights.append(r.ritz_weights / runs)
    return SpectralDensity(torch.cat(nodes), torch.cat(weights))


@dataclass
class Eigenpairs:
    """The top Ritz pairs of H (largest first), with residuals ‖Hu − θu‖."""

    values: Tensor  # (k,)
    vectors: Tensor  # (n, k), orthonormal columns
    residuals: Tensor  # (k,)
    converged: bool


def top_eigenpairs(op: Operator, n: int, top: int, *, steps: int | None = None, tol: float = 1e-3,
                   generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
                   device: torch.device | str = "cpu") -> Eigenpairs:
    """The ``top`` largest eigenvalues of H and their eigenvectors from one Lanczos run of ``steps``
    products (default max(3·top, 30), at most n), with full reorthogonalization — PyHessian's
    ``eigenvalues(top_n=…)`` computes the same by deflated power iterations. Converged when every
    residual is at most ``tol``·|λmax|."""
    if not 1 <= top <= n:
        raise ValueError(f"invalid top={top}: between 1 and the number of parameters ({n})")
    steps = min(n, steps or max(3 * top, 30))
    start = torch.randn(n, generator=generator, dtype=dtype).to(device)
    alphas, betas, basis, beta_last = _tridiagonal(op, start, steps)
    m = len(alphas)
    if m < top:  # the Krylov space closed early (H has fewer distinct eigenvalues): what it holds
        top = m
    t = torch.diag(alphas) + (torch.diag(betas, 1) + torch.diag(betas, -1) if m > 1 else 0)
    theta, s = torch.linalg.eigh(t)
    order = torch.arange(m - 1, m - 1 - top, -1)
    vectors = basis.T.to(torch.float64) @ s[:, order].to(basis.device)
    residuals = (beta_last * s[-1, order]).abs()
    scale = max(abs(theta[-1].item()), 1e-30)
    return Eigenpairs(theta[order], vectors.to(dtype), residuals, bool((residuals <= tol * scale).all()))


def hessian_diagonal(op: Operator, n: int, *, batched: Operator | None = None, chunk: int = 256,
                     dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> Tensor:
    """diag(H) exactly, from the products with the unit vectors (n products, ``chunk`` at a time
    when ``batched`` takes a (k, n) matrix): for small models, where Cockpit's HessTrace is exact."""
    diag = torch.empty(n, dtype=dtype, device=device)
    for first in range(0, n, chunk):
        rows = torch.arange(first, min(first + chunk, n), device=device)
        units = torch.zeros(len(rows), n, dtype=dtype, device=device)
        units[torch.arange(len(rows), device=device), rows] = 1
        products = batched(units) if batched is not None else torch.stack([op(u) for u in units])
        diag[rows] = products[torch.arange(len(rows), device=device), rows]
    return diag
