"""Weight initialization schemes of §8.4, each writing into a tensor in place (under no_grad).

Every function takes an optional ``torch.Generator`` for reproducibility and returns the tensor.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from deepdescent.init.fans import fans

_GAINS = {"linear": 1.0, "identity": 1.0, "sigmoid": 1.0, "tanh": 5.0 / 3.0, "relu": math.sqrt(2.0),
          "selu": 0.75, "conv": 1.0}


def gain(nonlinearity: str = "linear", negative_slope: float = 0.01) -> float:
    """The gain g for orthogonal (Saxe et al. 2013) and scaled initialization, per nonlinearity:
    linear/sigmoid 1, tanh 5/3, relu √2, leaky_relu √(2/(1 + a²)), selu 3/4 (torch's values)."""
    if nonlinearity == "leaky_relu":
        return math.sqrt(2.0 / (1.0 + negative_slope**2))
    if nonlinearity not in _GAINS:
        raise ValueError(f"unknown nonlinearity={nonlinearity!r}; valid: {', '.join([*_GAINS, 'leaky_relu'])}")
    return _GAINS[nonlinearity]


def _uniform(w: Tensor, bound: float, generator: torch.Generator | None) -> Tensor:
    with torch.no_grad():
        return w.uniform_(-bound, bound, generator=generator)


def uniform_(w: Tensor, *, generator: torch.Generator | None = None, transposed: bool = False, gates: int = 1) -> Tensor:
    """W ~ U(−1/√m, 1/√m) (§8.4), so Var(W) = 1/(3m)."""
    m, _ = fans(w, transposed=transposed, gates=gates)
    return _uniform(w, 1.0 / math.sqrt(m), generator)


def normalized_(w: Tensor, *, generator: torch.Generator | None = None, transposed: bool = False,
                gates: int = 1, gain: float = 1.0) -> Tensor:
    """Normalized initialization (Glorot & Bengio 2010, eq. 8.23): W ~ U(−√(6/(m+n)), √(6/(m+n))),
    so Var(W) = 2/(m + n); ``gain`` scales the bound."""
    m, n = fans(w, transposed=transposed, gates=gates)
    return _uniform(w, gain * math.sqrt(6.0 / (m + n)), generator)


def orthogonal_(w: Tensor, *, gain: float = 1.0, generator: torch.Generator | None = None, gates: int = 1) -> Tensor:
    """Random orthogonal matrix times ``gain`` (Saxe et al. 2013).

    The weight is viewed as a matrix (rows = first dimension, columns = the rest: a conv kernel's
    ``(out, in·∏k)``); a non-square one is semi-orthogonal: W Wᵀ = g²I when rows ≤ columns, else
    WᵀW = g²I. With ``gates`` > 1 each gate block is made orthogonal on its own.
    """
    if w.dim() < 2:
        raise ValueError(f"orthogonal_ needs a weight with at least 2 dimensions, got shape {tuple(w.shape)}")
    with torch.no_grad():
        for block in w.chunk(gates, dim=0):
            rows, cols = block.shape[0], block[0].numel()
            a = torch.randn(max(rows, cols), min(rows, cols), generator=generator, dtype=torch.float64)
            q, r = torch.linalg.qr(a)
            q = q * torch.sign(torch.diagonal(r))  # Haar-distributed (Mezzadri 2007)
            q = q if rows >= cols else q.T
            block.copy_((gain * q).reshape(block.shape).to(block.dtype))
    return w


def sparse_(w: Tensor, k: int = 15, *, std: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
    """Sparse initialization (Martens 2010): each unit gets exactly ``k`` non-zero incoming weights,
    drawn from N(0, std²); the rest are 0. The total input of a unit then does not grow with m.

    A unit is a row of the weight (an output of Linear, an output channel of a conv: its incoming
    weights are ``in·∏k``). ``torch.nn.init.sparse_`` instead zeroes a fraction of each column.
    """
    if w.dim() < 2:
        raise ValueError(f"sparse_ needs a weight with at least 2 dimensions, got shape {tuple(w.shape)}")
    incoming = w[0].numel()
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= incoming:
        raise ValueError(f"invalid k={k!r}: must be an integer in [1, {incoming}] (the number of inputs per unit)")
    with torch.no_grad():
        rows = w.shape[0]
        keep = torch.rand(rows, incoming, generator=generator).argsort(dim=1)[:, :k]
        values = torch.randn(rows, k, generator=generator) * std
        flat = torch.zeros(rows, incoming, dtype=w.dtype)
        flat.scatter_(1, keep, values.to(w.dtype))
        w.copy_(flat.reshape(w.shape))
    return w


def random_walk_gain(width: int, nonlinearity: str = "relu") -> float:
    """The gain of random walk initialization (Sussillo & Abbott 2014) for layers of ``width`` N:
    linear g = exp(1/(2N)); ReLU g = √2 · exp(1.2/(max(N, 6) − 2.4))."""
    if width < 1:
        raise ValueError(f"invalid width={width}: must be >= 1")
    if nonlinearity == "linear":
        return math.exp(1.0 / (2.0 * width))
    if nonlinearity == "relu":
        return math.sqrt(2.0) * math.exp(1.2 / (max(width, 6) - 2.4))
    raise ValueError(f"random walk gains are known for 'linear' and 'relu', not {nonlinearity!r}")


def random_walk_(w: Tensor, nonlinearity: str = "relu", *, generator: torch.Generator | None = None) -> Tensor:
    """Random walk initialization: W ~ N(0, g²/m) with g = :func:`random_walk_gain` (m = fan-in),
    which keeps the log-norm of back-propagated vectors a zero-drift random walk; it trains
    networks of hundreds of layers."""
    m, _ = fans(w)
    g = random_walk_gain(m, nonlinearity)
    with torch.no_grad():
        return w.normal_(0.0, g / math.sqrt(m), generator=generator)
