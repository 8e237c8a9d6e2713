"""Derivatives of the loss a closure returns, by reverse-mode autograd (double backward for
curvature products). Model-agnostic: whatever the closure computes, with any param groups."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from deepdescent.curvature.vectors import flat, real_dot


class ClosureError(ValueError):
    """The closure did not return what the optimizer needs."""


@dataclass
class ClosureEvaluation:
    """One evaluation of a closure: the loss (with its graph when ``create_graph``), the gradient
    (a flat vector) and, for Gauss–Newton products, the network output."""

    loss: Tensor
    grad: Tensor
    grads: tuple[Tensor, ...]  # per parameter, with graph when create_graph
    output: Tensor | None = None
    returned: Any = None  # the loss as the closure returned it (what ``step`` returns, as torch.optim's)

    @property
    def value(self) -> float:
        return float(self.loss.detach())


def _split(result: Any, want_output: bool) -> tuple[Tensor, Tensor | None]:
    if isinstance(result, tuple):
        if len(result) != 2:
            raise ClosureError(f"the closure returned a tuple of {len(result)}; expected loss or (loss, output)")
        loss, output = result
    else:
        loss, output = result, None
    if isinstance(loss, numbers.Real) and not isinstance(loss, bool):  # as torch.optim.LBFGS: backward() ran
        loss = torch.tensor(float(loss), dtype=torch.float64)  # the number as given (never rounded to float32)
    if not isinstance(loss, Tensor):
        raise ClosureError(f"the closure must return the loss (a tensor or a number), got {type(loss).__name__}")
    if loss.numel() != 1:
        raise ClosureError(f"the closure must return a scalar loss, got a tensor of shape {tuple(loss.shape)}")
    if not math.isfinite(float(loss.detach())):
        raise ClosureError(f"the closure returned a non-finite loss ({float(loss.detach())})")
    if want_output and output is None:
        raise ClosureError("curvature='gauss_newton' needs the closure to return (loss, output), output being the "
                           "network output the loss was computed from")
    return loss.reshape(()), output


def evaluate_closure(closure: Callable[[], Any], params: list[Tensor], *, create_graph: bool = False,
                     want_output: bool = False) -> ClosureEvaluation:
    """Call ``closure`` with gradients enabled and differentiate the loss it returns.

    The closure may follow torch.optim.LBFGS's convention (zero_grad, backward, return loss): then
    the gradient is read from ``.grad``. A closure that returns the loss without calling
    ``backward()`` works too, and is required when ``create_graph`` (curvature products).
    Raises :class:`ClosureError` for a missing, non-scalar or non-finite loss or gradient.
    """
    with torch.enable_grad():
        result = closure()
        loss, output = _split(result, want_output)
        if not isinstance(result[0] if isinstance(result, tuple) else result, Tensor):
            if create_graph:
                raise ClosureError("this optimizer differentiates the loss twice: the closure must return it as a "
                                   "tensor with its graph, not a number (the closure returned a number)")
            if all(p.grad is None for p in params):
                raise ClosureError("the closure returned a number and no parameter has a gradient: call backward() "
                                   "in the closure (torch.optim.LBFGS's convention) or return the loss tensor")
        grads: tuple[Tensor, ...] | None = None
        if loss.requires_grad:
            try:
                grads = torch.autograd.grad(loss, params, create_graph=create_graph, retain_graph=True,
                                            allow_unused=True)
            except RuntimeError as err:
                if create_graph or "second time" not in str(err):
                    raise ClosureError(
                        "cannot differentiate the loss the closure returned: this optimizer needs a closure that "
                        f"returns the loss without calling backward() ({err})"
                    ) from err
        if grads is None:  # backward() already ran in the closure
            if create_graph:
                raise ClosureError("this optimizer needs a closure that returns the loss with its graph "
                                   "(do not call backward() or detach the loss)")
            grads = tuple(p.grad for p in params)
        grads = tuple(torch.zeros_like(p) if g is None else g for p, g in zip(params, grads))
    g = flat([x.detach() for x in grads])
    if not torch.isfinite(g).all():
        raise ClosureError("the gradient of the loss contains NaN or Inf")
    returned = result[0] if isinstance(result, tuple) else result
    return ClosureEvaluation(loss, g, grads, output, returned.detach() if isinstance(returned, Tensor) else returned)


def hvp(evaluation: ClosureEvaluation, params: list[Tensor], v: list[Tensor]) -> Tensor:
    """H v (flat) by differentiating gᵀv, where g was computed with ``create_graph=True``."""
    dot = sum(real_dot(g, vi) for g, vi in zip(evaluation.grads, v) if g.requires_grad)
    if not isinstance(dot, Tensor) or not dot.requires_grad:
        return torch.zeros_like(flat([p.detach() for p in params]))
    out = torch.autograd.grad(dot, params, retain_graph=True, allow_unused=True)
    return flat([torch.zeros_like(p) if o is None else o for p, o in zip(params, out)])


def gnvp(evaluation: ClosureEvaluation, params: list[Tensor], v: list[Tensor]) -> Tensor:
    """Gauss–Newton product G v = Jᵀ (∇²_z L) J v, z the network output (Schraudolph 2002).

    J v comes from the double-backward trick (differentiate Jᵀu with respect to a dummy u);
    (∇²_z L) w from differentiating (∂L/∂z)ᵀ w; Jᵀ w from one backward pass of z.
    """
    z = evaluation.output
    assert z is not None
    with torch.enable_grad():
        u = torch.zeros_like(z, requires_grad=True)
        jt_u = torch.autograd.grad(z, params, u, create_graph=True, retain_graph=True, allow_unused=True)
        pairs = [(a, b) for a, b in zip(jt_u, v) if a is not None]
        jv = torch.autograd.grad(sum(real_dot(a, b) for a, b in pairs), u, retain_graph=True)[0]
        dl_dz = torch.autograd.grad(evaluation.loss, z, create_graph=True, retain_graph=True, allow_unused=True)[0]
        if dl_dz is None:
            raise ValueError("the closure's loss was not computed from the output it returned: a Gauss–Newton closure "
                             "returns (loss, output) from one forward pass, e.g. out = model(x); return loss_fn(out, y), out")
        hjv = None
        if dl_dz.requires_grad:  # else the loss is linear in z (e.g. out.sum()): its Hessian in z is 0
            hjv = torch.autograd.grad((dl_dz * jv.detach()).sum(), z, retain_graph=True, allow_unused=True)[0]
        if hjv is None:  # the loss is linear in z
            hjv = torch.zeros_like(z)
        out = torch.autograd.grad(z, params, hjv, retain_graph=True, allow_unused=True)
    return flat([torch.zeros_like(p) if o is None else o for p, o in zip(params, out)])
