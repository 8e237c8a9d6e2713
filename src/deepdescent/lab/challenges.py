"""The §8.2 challenges measured along a member's run: what the instrumented member of each race
records at each of its points (on a fixed measurement batch of ``EXAMPLES`` training examples,
outside the budget), with the curvature tools of :mod:`deepdescent.curvature`.

- ‖g‖ and gᵀHg, the quantities of Figure 8.1 (§8.2.1): a step −εg changes the loss by
  ½ε²gᵀHg − εgᵀg.
- λmax and λmin of the Hessian H (Lanczos, ``LANCZOS_STEPS`` products): gradient descent on a
  quadratic is stable while ε·λmax < 2 (§4.3.1, §8.2.1: ill-conditioning); λmin < 0 where the
  gradient is small is a saddle point (§8.2.3).
- The largest minibatch gradient norm since the previous point: a spike far above ‖g‖ is a cliff
  (§8.2.4).
- The gradient norm of each parameter tensor: orders of magnitude between the first and the last
  layers are vanishing or exploding gradients (§8.2.5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from deepdescent.curvature.spectrum import lanczos

#: Hessian-vector products per λ estimate (each about two gradients' cost).
LANCZOS_STEPS = 12
#: The measurement batch: the first training examples (fixed: every point measures one function),
#: so that a measurement costs a bounded number of gradients whatever the dataset's size.
EXAMPLES = 256
#: |λmin| below this fraction of λmax counts as flat (no saddle claimed): a trained network's
#: Hessian has many near-zero eigenvalues of either sign.
FLAT = 1e-2


@dataclass
class Measurement:
    """The challenges' quantities at one point (NaN where the model cannot be differentiated twice)."""

    grad_norm: float
    gTHg: float
    lambda_max: float
    lambda_min: float
    converged: bool  # both ends of the spectrum converged (residual ≤ 1e-3 λmax)
    layers: list[float]  # ‖g‖ of each trainable parameter tensor, in the model's order


def measure(model: nn.Module, loss_fn, x: Tensor, y: Tensor, *, seed: int = 0, spectrum: bool = True) -> Measurement:
    """One gradient with its graph kept, then gᵀHg and (``spectrum``) Lanczos on v ↦ Hv by double
    backward, so that any model autograd differentiates twice works, recurrent ones included.
    Without ``spectrum`` λmax and λmin are NaN (the instrumented run takes them at every other
    point and at the end: the Lanczos products cost most)."""
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        with torch.enable_grad():
            g = torch.autograd.grad(loss_fn(model(x), y), params, create_graph=True)
            flat_g = torch.cat([t.reshape(-1) for t in g])

            def hv(v: Tensor) -> Tensor:
                out = torch.autograd.grad(flat_g, params, grad_outputs=v.to(flat_g.dtype), retain_graph=True)
                return torch.cat([t.reshape(-1) for t in out]).detach()
            gd = flat_g.detach()
            curv = float(gd @ hv(gd))
            top, bottom, converged = math.nan, math.nan, False
            if spectrum:
                n = gd.numel()
                res = lanczos(hv, n, k=min(LANCZOS_STEPS, n), dtype=gd.dtype, device=gd.device,
                              generator=torch.Generator().manual_seed(seed))
                top, bottom, converged = res.lambda_max, res.lambda_min, res.converged
    except RuntimeError:  # no double backward (a custom op, cuDNN's RNN): not measured
        return Measurement(math.nan, math.nan, math.nan, math.nan, False, [])
    layers = [float(t.detach().norm()) for t in g]
    return Measurement(float(gd.norm()), curv, top, bottom, converged, layers)


def minibatch_norm(model: nn.Module) -> float:
    """‖g‖ of the gradients the last backward pass left in ``.grad``."""
    norms = [p.grad.norm() for p in model.parameters() if p.grad is not None]
    return float(torch.stack(norms).norm()) if norms else math.nan
