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
- The gradient noise scale B_simple = tr(Σ)/‖G‖² (McCandlish et al. 2018, "An empirical model of
  large-batch training", eq. 2.8 and App. A; §8.1.3 of the book: the standard error of a
  minibatch gradient falls as 1/√B): minibatches much smaller than B_simple give noise-dominated
  steps, much larger ones waste computation. Estimated from the gradients of ``CHUNKS`` equal
  chunks of the measurement batch and of the whole batch.
- ‖∂L/∂h_t‖ at every time step t of a recurrent model's first RNN/LSTM/GRU call (the
  diagnostics' unrolled probes): the ratio of the first step's to the last step's is how much of
  the gradient survives the recurrence, the long-term dependencies of §8.2.5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from deepdescent.curvature.spectrum import lanczos
from deepdescent.diagnostics.recurrent import probing

#: Hessian-vector products per λ estimate (each about two gradients' cost).
LANCZOS_STEPS = 12
#: The measurement batch: the first training examples (fixed: every point measures one function),
#: so that a measurement costs a bounded number of gradients whatever the dataset's size.
EXAMPLES = 256
#: |λmin| below this fraction of λmax counts as flat (no saddle claimed): a trained network's
#: Hessian has many near-zero eigenvalues of either sign.
FLAT = 1e-2
#: The instrumented run takes the spectrum (the costly Lanczos products) at every
#: ``SPECTRUM_EVERY``-th recorded point and at the end.
SPECTRUM_EVERY = 4
#: Chunks of the measurement batch for the noise scale (each at least 2 examples).
CHUNKS = 8


@dataclass
class Measurement:
    """The challenges' quantities at one point (NaN where the model cannot be differentiated twice)."""

    grad_norm: float
    gTHg: float
    lambda_max: float
    lambda_min: float
    converged: bool  # both ends of the spectrum converged (residual ≤ 1e-3 λmax)
    layers: list[float]  # ‖g‖ of each trainable parameter tensor, in the model's order
    noise_scale: float = math.nan  # B_simple = tr(Σ)/‖G‖² in examples (NaN: too few examples, or ‖G‖ = 0)
    time_steps: list[float] | None = None  # ‖∂L/∂h_t‖ per time step (None: no recurrent module)


def measure(model: nn.Module, loss_fn, x: Tensor, y: Tensor, *, seed: int = 0, spectrum: bool = True) -> Measurement:
    """One gradient with its graph kept, then gᵀHg and (``spectrum``) Lanczos on v ↦ Hv by double
    backward, so that any model autograd differentiates twice works, recurrent ones included.
    Without ``spectrum`` λmax and λmin are NaN (the instrumented run takes them at every
    ``SPECTRUM_EVERY``-th point and at the end: the Lanczos products cost most). The model's
    buffers (batch norm's running statistics) are left as they were: measuring never changes a run."""
    saved = [(b, b.clone()) for b in model.buffers()]
    try:
        return _measure(model, loss_fn, x, y, seed, spectrum)
    finally:
        with torch.no_grad():
            for b, value in saved:
                b.copy_(value)


def noise_scale(model: nn.Module, loss_fn, x: Tensor, y: Tensor) -> float:
    """B_simple from the gradients g_b of ``CHUNKS`` chunks of b examples and their mean g_B, the
    gradient of all B = CHUNKS·b (McCandlish et al. 2018, App. A): E‖g_b‖² = ‖G‖² + tr(Σ)/b, so
    ‖G‖² ≈ (B‖g_B‖² − b·mean‖g_b‖²)/(B − b) and tr(Σ) ≈ (mean‖g_b‖² − ‖g_B‖²)/(1/b − 1/B).
    NaN when the batch is too small to split or the estimated ‖G‖² is not positive."""
    small = len(x) // CHUNKS
    if small < 2:
        return math.nan
    big = small * CHUNKS
    params = [p for p in model.parameters() if p.requires_grad]
    total = [torch.zeros_like(p) for p in params]
    g_small = 0.0
    for i in range(CHUNKS):
        part = slice(i * small, (i + 1) * small)
        with torch.enable_grad():
            g = torch.autograd.grad(loss_fn(model(x[part]), y[part]), params, allow_unused=True)
        g = [torch.zeros_like(p) if t is None else t for p, t in zip(params, g)]
        g_small += sum(float(t.square().sum()) for t in g) / CHUNKS
        total = [a + b for a, b in zip(total, g)]
    g_big = sum(float(t.square().sum()) for t in total) / CHUNKS**2
    signal = (big * g_big - small * g_small) / (big - small)
    trace = (g_small - g_big) / (1 / small - 1 / big)
    return trace / signal if signal > 0 and trace >= 0 else math.nan


def _measure(model: nn.Module, loss_fn, x: Tensor, y: Tensor, seed: int, spectrum: bool) -> Measurement:
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
    noise = noise_scale(model, loss_fn, x, y)
    return Measurement(float(gd.norm()), curv, top, bottom, converged, layers, noise, time_steps(model, loss_fn, x, y))


def time_steps(model: nn.Module, loss_fn, x: Tensor, y: Tensor) -> list[float] | None:
    """‖∂L/∂h_t‖ (the last layer's hidden state, averaged over the examples) at every step t of the
    model's first RNN/LSTM/GRU call, by a forward pass unrolled with a probe per step; None for a
    model without one (or a bidirectional or projected one, which the probes do not follow)."""
    if not any(isinstance(m, (nn.RNN, nn.LSTM, nn.GRU)) for m in model.modules()):
        return None
    try:
        with torch.enable_grad(), probing(model) as recorded:
            loss = loss_fn(model(x), y)
        if not recorded or not recorded[0]:
            return None
        grads = torch.autograd.grad(loss, recorded[0], allow_unused=True)
    except (NotImplementedError, RuntimeError):
        return None
    return [0.0 if g is None else float(g.reshape(g.shape[0] if g.dim() > 1 else 1, -1).norm(dim=1).mean())
            for g in grads]


def minibatch_norm(model: nn.Module) -> float:
    """‖g‖ of the gradients the last backward pass left in ``.grad``."""
    norms = [p.grad.norm() for p in model.parameters() if p.grad is not None]
    return float(torch.stack(norms).norm()) if norms else math.nan
