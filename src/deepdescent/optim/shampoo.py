r"""``Shampoo``: preconditioned stochastic tensor optimization (Gupta, Koren & Singer 2018), with
the practical changes of Anil et al. (2020, "Scalable second order optimization for deep learning").

A parameter is matricized as G ∈ ℝ^{m×n} (its first dimension against the rest) and cut into
blocks of at most ``block_size`` × ``block_size`` (Anil §3.2). Each block keeps two statistics,
and every ``update_freq`` steps their inverse fourth roots (Gupta Alg. 1; Anil §3.1):

    L ← β₂ L + (1 − β₂) G Gᵀ,   R ← β₂ R + (1 − β₂) Gᵀ G      (β₂ = 1: the sums L += G Gᵀ of Gupta)
    P_L = (L + εI)^{-1/4},   P_R = (R + εI)^{-1/4}             (eigendecomposition in float64)
    S = P_L G P_R

— with L₀ = R₀ = 0, so that at β₂ = 1 the preconditioner is Gupta's (L₀ = εI). Learning-rate
grafting (Anil §4.2, "layer-wise grafting", here per block): the step takes S's direction and the
norm of a first-order method's step on the same block, u = ‖D‖/‖S‖ · S, with D = g/(√v̂ + δ) for
``graft="adam"`` (v ← β₂v + (1 − β₂)g², bias-corrected; AdaGrad's sum at β₂ = 1), D = g for
``"sgd"``; ``"none"`` takes S as it is. Parameters of fewer than two dimensions take D (g without
grafting). The step is the book's momentum (Algorithm 8.2) along u: v ← αv − ηu; θ ← θ + v.
``weight_decay`` λ adds λθ to g before everything (an L2 penalty, as in Anil's implementation).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from deepdescent.algorithms import validation as check
from deepdescent.optim.base import NonFinite
from deepdescent.optim.preconditioned import PreconditionedOptimizer, Unstable, momentum_step, real

GRAFTS = ("adam", "sgd", "none")


class Shampoo(PreconditionedOptimizer):
    r"""Shampoo with blocking, grafting and momentum (module docstring for the formulas).

    Symbols: ``lr`` = η, ``momentum`` = α (β₁ of Anil et al.), ``beta2`` = β₂, ``eps`` = ε
    (Gupta's ε: the preconditioners' floor), ``graft_eps`` = δ of the Adam graft.

    Args:
        params: parameters or param groups (hyperparameters may differ per group).
        lr: step size η > 0 (the graft's learning rate: with ``graft="adam"``, Adam's scale).
        momentum: α in [0, 1).
        beta2: decay β₂ in (0, 1] of the statistics and of the Adam graft; 1 sums them (Gupta 2018).
        eps: ε > 0 added to L and R before their roots. It bounds how much a direction the
            statistics have not seen is amplified (ε^(-1/4): 32 at the default 1e-6, as in Anil et
            al.'s implementation and pytorch-optimizer; at 1e-12, 1000 — enough to turn rounding
            differences, e.g. DDP's averaged gradients against one process's, into visible ones).
        graft: ``"adam"`` (default), ``"sgd"`` or ``"none"``.
        graft_eps: δ > 0 of the Adam graft.
        update_freq: recompute the inverse roots every this many steps (the statistics are
            updated every step).
        block_size: the largest side of a preconditioned block (≥ 1).
        weight_decay: λ ≥ 0.
        nonfinite: ``"skip"`` (default), ``"raise"`` or ``"propagate"``, as for the book's optimizers.
            Statistics or roots that cannot be used (products of the gradients that overflowed)
            leave the step out under ``"skip"`` and raise
            :class:`~deepdescent.optim.NonFiniteGradientError` otherwise, nothing changed.
    """

    def __init__(self, params: Any, lr: float | Tensor = 1e-3, momentum: float = 0.9, beta2: float = 0.999,
                 eps: float = 1e-6, graft: str = "adam", graft_eps: float = 1e-8, update_freq: int = 10,
                 block_size: int = 256, weight_decay: float = 0.0, *, nonfinite: NonFinite = "skip") -> None:
        defaults = dict(lr=lr, momentum=momentum, beta2=beta2, eps=eps, graft=graft, graft_eps=graft_eps,
                        update_freq=update_freq, block_size=block_size, weight_decay=weight_decay)
        super().__init__(params, defaults, nonfinite=nonfinite)

    def _check(self, group: dict[str, Any]) -> None:
        check.positive("lr", group["lr"])
        check.unit_interval("momentum", group["momentum"])
        beta2 = group["beta2"]
        if isinstance(beta2, bool) or not isinstance(beta2, (int, float)) or not 0.0 < beta2 <= 1.0:
            raise ValueError(f"invalid beta2={beta2!r}: must be in (0, 1] (1 sums the statistics)")
        check.positive("eps", group["eps"])
        check.choice("graft", group["graft"], GRAFTS)
        check.positive("graft_eps", group["graft_eps"])
        check.non_negative("weight_decay", group["weight_decay"])
        for name in ("update_freq", "block_size"):
            check.positive_int(name, group[name])

    def _state_shapes(self, p: Tensor, group: dict[str, Any]) -> dict[str, tuple[int, ...]]:
        r = real(p)
        shapes = {"momentum_buffer": tuple(r.shape), "graft_v": tuple(r.shape)}
        if r.dim() >= 2:
            for i, j, (m, n) in blocks(r, group["block_size"]):
                shapes.update({f"L{i}.{j}": (m, m), f"R{i}.{j}": (n, n), f"PL{i}.{j}": (m, m),
                               f"PR{i}.{j}": (n, n)})
        return shapes

    def _plan(self, group: dict[str, Any], params: list[Tensor]) -> Callable[[], None]:
        lr, momentum, wd = float(group["lr"]), float(group["momentum"]), float(group["weight_decay"])
        planned = []  # (p, its new state entries, its step direction u)
        for p in params:
            state = self.state[p]
            k = self._steps(state) + 1
            r, g = real(p), real(p.grad)
            if wd:
                g = g.add(r, alpha=wd)
            new: dict[str, Tensor] = {}
            graft = self._graft(group, state, new, g, k)
            u = graft if r.dim() < 2 or r.numel() == 0 else self._precondition(group, state, new, g, graft, k)
            planned.append((p, new, u))
        flags = [torch.isfinite(t).all() for _, new, u in planned for t in (u, *new.values())
                 if t.device.type != "meta"]  # meta: no values to look at
        if flags and not bool(torch.stack(flags).all()):
            raise Unstable("Shampoo's statistics or direction are not finite (the gradients' products overflowed)")

        def commit() -> None:
            for p, new, u in planned:
                state = self.state[p]
                state.update(new, step=self._steps(state) + 1)
                momentum_step(real(p), state, u, lr, momentum, 0.0)
        return commit

    def _graft(self, group: dict[str, Any], state: dict[str, Any], new: dict[str, Tensor], g: Tensor,
               k: int) -> Tensor:
        """D: the first-order step whose norm the preconditioned one takes (its new second moment
        goes to ``new``)."""
        if group["graft"] != "adam":
            return g
        beta2 = float(group["beta2"])
        v = state.get("graft_v", torch.zeros_like(g))
        if beta2 == 1.0:
            v = new["graft_v"] = v.addcmul(g, g)
            denominator = v.sqrt()
        else:
            v = new["graft_v"] = (v * beta2).addcmul_(g, g, value=1.0 - beta2)
            denominator = (v / (1.0 - beta2 ** k)).sqrt()
        return g / denominator.add_(float(group["graft_eps"]))

    def _precondition(self, group: dict[str, Any], state: dict[str, Any], new: dict[str, Tensor], g: Tensor,
                      graft: Tensor, k: int) -> Tensor:
        beta2, eps, size = float(group["beta2"]), float(group["eps"]), group["block_size"]
        matrix, graft_matrix = g.reshape(g.shape[0], -1), graft.reshape(g.shape[0], -1)
        out = torch.empty_like(matrix)
        refresh = (k - 1) % group["update_freq"] == 0
        for i, j, _ in blocks(g, size):
            rows, cols = slice(i * size, (i + 1) * size), slice(j * size, (j + 1) * size)
            block = matrix[rows, cols]
            names = (f"L{i}.{j}", f"R{i}.{j}", f"PL{i}.{j}", f"PR{i}.{j}")
            for name, stat in zip(names[:2], (block @ block.T, block.T @ block)):
                old = state.get(name)
                if old is None:
                    new[name] = stat if beta2 == 1.0 else stat * (1.0 - beta2)
                else:
                    new[name] = old + stat if beta2 == 1.0 else (old * beta2).add_(stat, alpha=1.0 - beta2)
            if refresh or names[2] not in state:
                new[names[2]], new[names[3]] = inverse_root(new[names[0]], eps), inverse_root(new[names[1]], eps)
            s = new.get(names[2], state.get(names[2])) @ block @ new.get(names[3], state.get(names[3]))
            if group["graft"] != "none":
                norm = torch.linalg.vector_norm(s)
                s = s * torch.where(norm > 0, torch.linalg.vector_norm(graft_matrix[rows, cols]) / norm, 0.0)
            out[rows, cols] = s
        return out.reshape(g.shape)


def blocks(t: Tensor, size: int) -> list[tuple[int, int, tuple[int, int]]]:
    """The blocks (i, j, (rows, columns)) of ``t`` matricized as (first dimension, the rest)."""
    m, n = t.shape[0], t[0].numel() if t.shape[0] else 0
    return [(i, j, (min(size, m - i * size), min(size, n - j * size)))
            for i in range(-(-m // size)) for j in range(-(-n // size))]


def inverse_root(stat: Tensor, eps: float) -> Tensor:
    """(S + εI)^{-1/4} of a symmetric positive semi-definite S, by an eigendecomposition in float64
    (eigenvalues below 0 from rounding are taken as 0); :class:`Unstable` if S is not finite."""
    dtype = stat.dtype
    stat = stat.double()
    if stat.device.type != "meta" and not bool(torch.isfinite(stat).all()):
        raise Unstable("a Shampoo statistic is not finite (the gradients overflowed its products)")
    try:
        values, vectors = torch.linalg.eigh(stat)
    except torch.linalg.LinAlgError as err:
        raise Unstable(f"Shampoo's eigendecomposition failed: {err}") from None
    root = (values.clamp(min=0.0) + eps).pow(-0.25)
    return ((vectors * root) @ vectors.T).to(dtype)
