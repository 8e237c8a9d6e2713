"""NAdam: Nesterov momentum in Adam (Dozat 2016, "Incorporating Nesterov momentum into Adam") —
the book's Algorithm 8.3 carried into Algorithm 8.7 — with the momentum schedule of the paper
that torch.optim.NAdam implements.

::

    t ← t + 1
    μₜ = ρ₁(1 − ½·0.96^(tψ));  μₜ₊₁ = ρ₁(1 − ½·0.96^((t+1)ψ));  Π ← Π·μₜ
    s ← ρ₁s + (1 − ρ₁)g;   r ← ρ₂r + (1 − ρ₂)g⊙g
    θ ← θ − ε [ (1 − μₜ)/(1 − Π) g + μₜ₊₁/(1 − Π μₜ₊₁) s ] / (√(r/(1 − ρ₂ᵗ)) + δ)

The first term is the current gradient's share, the second the look-ahead momentum: Nesterov's
interim point moved into the update, so no gradient is taken elsewhere than at θ.

Symbols: ``lr`` = ε (0.002), ``betas`` = (ρ₁, ρ₂), ``eps`` = δ, ``momentum_decay`` = ψ (0.004).

Execution: Π (the product of the μ's) is kept per element, a state buffer like s and r (torch
keeps one number per tensor): the fused kernel then reads and writes it with the moments instead
of needing a per-tensor state of its own; it costs one more buffer of memory.
"""

from __future__ import annotations

import torch
from torch import Tensor

from deepdescent.algorithms import validation as check
from deepdescent.algorithms.common import Rate, scaled, sqrt, with_weight_decay
from deepdescent.algorithms.spec import Algorithm, Hyper, Hyperparameter, Variant, zero_buffer


def update(params: list[Tensor], grads: list[Tensor], exp_avg: list[Tensor], exp_avg_sq: list[Tensor],
           mu_product: list[Tensor], steps: list[int], *, lr: Rate, beta1: float, beta2: float, eps: float,
           weight_decay: float, momentum_decay: float) -> None:
    """One NAdam step; ``steps`` holds t per tensor, already incremented."""
    grads = with_weight_decay(grads, params, weight_decay)
    mu = [beta1 * (1.0 - 0.5 * (0.96**momentum_decay) ** t) for t in steps]  # μₜ
    mu_next = [beta1 * (1.0 - 0.5 * (0.96**momentum_decay) ** (t + 1)) for t in steps]  # μₜ₊₁
    torch._foreach_mul_(mu_product, mu)  # Π ← Π·μₜ
    torch._foreach_lerp_(exp_avg, grads, 1.0 - beta1)  # s ← ρ₁s + (1 − ρ₁)g
    torch._foreach_mul_(exp_avg_sq, beta2)
    torch._foreach_addcmul_(exp_avg_sq, grads, grads, value=1.0 - beta2)  # r ← ρ₂r + (1 − ρ₂)g⊙g
    denom = sqrt(exp_avg_sq)
    torch._foreach_div_(denom, [(1.0 - beta2**t) ** 0.5 for t in steps])
    torch._foreach_add_(denom, eps)  # √(r/(1 − ρ₂ᵗ)) + δ
    rest = torch._foreach_mul(mu_product, -1.0)
    torch._foreach_add_(rest, 1.0)  # 1 − Π
    step = torch._foreach_mul(grads, [1.0 - m for m in mu])
    torch._foreach_div_(step, rest)  # (1 − μₜ)/(1 − Π) g
    rest_next = torch._foreach_mul(mu_product, [-m for m in mu_next])
    torch._foreach_add_(rest_next, 1.0)  # 1 − Π μₜ₊₁
    look = torch._foreach_mul(exp_avg, mu_next)
    torch._foreach_div_(look, rest_next)  # μₜ₊₁/(1 − Π μₜ₊₁) s
    torch._foreach_add_(step, look)
    torch._foreach_div_(step, denom)
    if isinstance(lr, list):
        torch._foreach_mul_(step, scaled(lr, -1.0))
        torch._foreach_add_(params, step)
    else:
        torch._foreach_add_(params, step, alpha=-lr)


def _init(name: str, p: Tensor, h: Hyper) -> Tensor:
    if name == "mu_product":
        return torch.ones_like(p, memory_format=torch.preserve_format)  # Π = 1 (the empty product)
    return zero_buffer(name, p, h)


def _step(h: Hyper, params: list[Tensor], grads: list[Tensor], bufs: dict[str, list[Tensor]], steps: list[int],
          lookahead: bool) -> None:
    beta1, beta2 = h["betas"]
    update(params, grads, bufs["exp_avg"], bufs["exp_avg_sq"], bufs["mu_product"], steps, lr=h["lr"], beta1=beta1,
           beta2=beta2, eps=h["eps"], weight_decay=h["weight_decay"], momentum_decay=h["momentum_decay"])


SPEC = Algorithm(
    name="NAdam",
    reference="Dozat (2016): Nesterov momentum (Algorithm 8.3) in Adam (Algorithm 8.7)",
    hyperparameters=(
        Hyperparameter("lr", 0.002, check.non_negative, "ε", "step size"),
        Hyperparameter("betas", (0.9, 0.999), check.betas, "ρ₁, ρ₂", "decay rates of the moment estimates"),
        Hyperparameter("eps", 1e-8, check.positive, "δ", "added to √r̂"),
        Hyperparameter("weight_decay", 0.0, check.non_negative, "λ", "adds λθ to g (L2 penalty)"),
        Hyperparameter("momentum_decay", 4e-3, check.non_negative, "ψ", "schedule of μₜ (Dozat's 0.004)"),
    ),
    buffers=lambda h: ("exp_avg", "exp_avg_sq", "mu_product"),
    update=_step,
    init=_init,
    variants=(Variant("NAdam", "Dozat 2016", in_book=False),),
    torch_class="NAdam",
    torch_options=lambda h: dict(h),
)
