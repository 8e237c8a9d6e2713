r"""``KFAC``: natural gradient with a Kronecker-factored Fisher (Martens & Grosse 2015), the
per-layer curvature approximation that answered §8.6's question of scale.

For a layer s = W a (``nn.Linear``; ``nn.Conv2d`` on its unfolded patches, Grosse & Martens 2016),
with the bias as a last column of W and a 1 appended to a, the Fisher block of W is approximated by

    F ≈ A ⊗ G,   A = E[a aᵀ],   G = E[ĝ ĝᵀ],   ĝ = ∂ℓ/∂s   (M&G eq. 1–3)

so that its inverse applied to the gradient ∇ of W is two small solves (M&G §4.2):

    V = (G + γ/π · I)⁻¹ ∇ (A + πγ · I)⁻¹,    π² = (tr A / dim A) / (tr G / dim G)

— the factored Tikhonov damping of M&G §6.3, γ = √``damping``. The factors are running averages
(A ← ε A + (1 − ε) A_batch with ε = min(1 − 1/k, ``stat_decay``), M&G §5), refreshed every
``factor_every`` steps; the damped inverses every ``inv_every`` steps (M&G's T₃). The step is
clipped by its KL-norm, as the common implementations do: with η = ``lr``,

    ν = min(1, √(``kl_clip`` / (η² Σ_layers ⟨V, ∇⟩))),   d = ν V,

and taken with the book's momentum (Algorithm 8.2): d ← d + λθ; v ← αv − ηd; θ ← θ + v.

Conventions (documented deviations):

* **Empirical Fisher.** ĝ is the gradient of the loss the user back-propagates (M&G sample the
  targets from the model's predictive distribution for G). The loss is taken to be a mean over the
  first dimension of the layer's output (torch's ``reduction="mean"``): ĝ = B · ∂L/∂s for a batch of B.
* **Weight sharing** (a Linear layer over a sequence, a convolution over positions) uses the
  "expand" form: every position is a row, A = E_rows[a aᵀ] and G = (1/B) Σ_rows ĝ ĝᵀ.
* **Other parameters** (normalization layers, embeddings, grouped convolutions, a parameter of no
  watched layer) take the first-order fallback: the momentum step above along their gradient.
* **Data parallel**: with a process group running (DDP), the ranks add their factor sums and counts
  before each refresh, so every rank takes the full batch's factors and the same step.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from deepdescent.algorithms import validation as check
from deepdescent.optim.base import NonFinite
from deepdescent.optim.preconditioned import PreconditionedOptimizer, Unstable, momentum_step, real

_LAYERS = (nn.Linear, nn.Conv2d)


class _Layer:
    """One watched layer: its parameters, and the sums of a aᵀ and ĝ ĝᵀ over the backward passes
    since the last step (``collect`` says whether the next step refreshes the factors)."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.weight: Tensor = module.weight
        self.bias: Tensor | None = module.bias
        self.collect = True
        self.handles: list[Any] = []
        self.clear()

    def __deepcopy__(self, memo: dict[int, Any]) -> _Layer:
        """A copy of the model (an EMA model, a checkpoint) carries a copy of the hook: it gathers
        nothing, since no optimizer reads it."""
        dead = _Layer.__new__(_Layer)
        dead.collect, dead.handles = False, []
        dead.clear()
        return dead

    def clear(self) -> None:
        self.a_sum: Tensor | None = None
        self.g_sum: Tensor | None = None
        self.rows = 0
        self.batches = 0

    @property
    def sizes(self) -> tuple[int, int]:
        """(dim A, dim G): inputs (+1 for the bias) and outputs."""
        w = self.weight
        return w[0].numel() + (self.bias is not None), w.shape[0]

    def attach(self) -> None:
        self.handles = [self.module.register_forward_hook(self.forward_hook)]

    def detach(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def forward_hook(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if not (self.collect and torch.is_grad_enabled() and isinstance(output, Tensor) and output.requires_grad):
            return
        a = args[0].detach()
        output.register_hook(lambda g: self.accumulate(a, g.detach()))

    def accumulate(self, a: Tensor, g: Tensor) -> None:
        batch = a.shape[0]
        rows_a = self._rows(a)
        if isinstance(self.module, nn.Conv2d):
            g = g.movedim(1, -1)  # (B, H, W, out): one row per position
        rows_g = g.reshape(-1, g.shape[-1]) * batch  # ĝ = B ∂L/∂s: the loss is a mean over the batch
        a_part, g_part = rows_a.T @ rows_a, rows_g.T @ rows_g
        self.a_sum = a_part if self.a_sum is None else self.a_sum + a_part
        self.g_sum = g_part if self.g_sum is None else self.g_sum + g_part
        self.rows += rows_a.shape[0]
        self.batches += batch

    def _rows(self, a: Tensor) -> Tensor:
        m = self.module
        if isinstance(m, nn.Conv2d):
            a = F.unfold(a, m.kernel_size, m.dilation, m.padding, m.stride)  # (B, C·kh·kw, positions)
            a = a.transpose(1, 2).reshape(-1, a.shape[1])
        else:
            a = a.reshape(-1, a.shape[-1])
        if self.bias is not None:
            a = torch.cat([a, a.new_ones(a.shape[0], 1)], dim=1)
        return a

    def batch_factors(self) -> tuple[Tensor, Tensor] | None:
        """(A_batch, G_batch) from the passes since the last step — over every process of the
        default group when one is running (DDP: each rank saw its shard of the batch; the sums and
        counts are added across ranks, so every rank takes the full batch's factors and the same
        step); None when no pass was gathered."""
        if self.collect and _distributed():  # every rank gathers on the same steps
            self._all_reduce()
        if self.a_sum is None or self.g_sum is None or not self.rows:
            return None
        return self.a_sum / self.rows, self.g_sum / self.batches

    def _all_reduce(self) -> None:
        import torch.distributed as dist

        dim_a, dim_g = self.sizes
        w = self.weight
        a = self.a_sum if self.a_sum is not None else w.new_zeros(dim_a, dim_a)
        g = self.g_sum if self.g_sum is not None else w.new_zeros(dim_g, dim_g)
        counts = torch.tensor([float(self.rows), float(self.batches)], dtype=torch.float64, device=w.device)
        for t in (a, g, counts):
            dist.all_reduce(t)
        self.a_sum, self.g_sum = a, g
        self.rows, self.batches = int(counts[0]), int(counts[1])


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def watchable(module: nn.Module) -> bool:
    """Whether K-FAC preconditions ``module``: a real ``nn.Linear``, or an ``nn.Conv2d`` with one
    group, zero padding given as numbers."""
    if not isinstance(module, _LAYERS) or module.weight.is_complex():
        return False
    if isinstance(module, nn.Conv2d):
        return module.groups == 1 and module.padding_mode == "zeros" and not isinstance(module.padding, str)
    return True


class KFAC(PreconditionedOptimizer):
    r"""K-FAC (Martens & Grosse 2015): each ``nn.Linear``/``nn.Conv2d`` layer's gradient
    preconditioned by its Kronecker-factored Fisher (module docstring for the formulas).

    Give it the model (``KFAC(model, lr=...)``) or its parameters and the model
    (``KFAC(model.parameters(), model=model)``): forward hooks on the model's layers gather the
    factors during the ordinary ``loss.backward()``; ``step()`` then needs no closure. Parameters
    of no watched layer take the first-order fallback (momentum SGD).

    Symbols (M&G): ``lr`` = η (ε in the book's boxes), ``momentum`` = α (M&G's μ),
    ``damping`` = γ² (λ + η of M&G §6.3), ``stat_decay`` = the running averages' ε (0.95 in M&G).

    Args:
        params: an ``nn.Module`` (its parameters, its layers watched), or parameters / param groups.
        lr: step size η > 0 of the preconditioned direction.
        momentum: α in [0, 1) (Algorithm 8.2's velocity; 0.9 as in M&G's experiments).
        damping: γ² > 0, split between the factors by π (factored Tikhonov damping, M&G §6.3).
        weight_decay: λ ≥ 0, an L2 penalty added to the (preconditioned or fallback) direction.
        stat_decay: the factors' running-average decay in [0, 1).
        kl_clip: bound on η² Σ⟨V, ∇⟩ (the step's KL-norm); 0 turns clipping off.
        factor_every: refresh the factors every this many steps (the backward passes in between
            gather nothing).
        inv_every: recompute the damped inverses every this many steps (M&G's T₃).
        model: the module whose layers to watch, when ``params`` are parameters.
        nonfinite: ``"skip"`` (default), ``"raise"`` or ``"propagate"``, as for the book's
            optimizers; a step that skips also drops the statistics it gathered. Factors that cannot
            be used (statistics that overflowed: not positive definite, a non-finite direction)
            leave the step out under ``"skip"`` and raise
            :class:`~deepdescent.optim.NonFiniteGradientError` otherwise, nothing changed.
    """

    def __init__(self, params: Any, lr: float | Tensor = 0.01, momentum: float = 0.9, damping: float = 1e-3,
                 weight_decay: float = 0.0, stat_decay: float = 0.95, kl_clip: float = 1e-3,
                 factor_every: int = 1, inv_every: int = 10, *, model: nn.Module | None = None,
                 nonfinite: NonFinite = "skip") -> None:
        if isinstance(params, nn.Module):
            model, params = params, params.parameters()
        defaults = dict(lr=lr, momentum=momentum, damping=damping, weight_decay=weight_decay,
                        stat_decay=stat_decay, kl_clip=kl_clip, factor_every=factor_every, inv_every=inv_every)
        super().__init__(params, defaults, nonfinite=nonfinite)
        self._layers: dict[Tensor, _Layer] = {}
        if model is not None:
            self.watch(model)
        else:
            warnings.warn("KFAC was given no model: no layer is watched and every parameter takes the first-order "
                          "fallback; pass the model (KFAC(model, ...) or model=model)", UserWarning, stacklevel=2)

    def _check(self, group: dict[str, Any]) -> None:
        check.positive("lr", group["lr"])
        check.unit_interval("momentum", group["momentum"])
        check.positive("damping", group["damping"])
        check.non_negative("weight_decay", group["weight_decay"])
        check.unit_interval("stat_decay", group["stat_decay"])
        check.non_negative("kl_clip", group["kl_clip"])
        for name in ("factor_every", "inv_every"):
            check.positive_int(name, group[name])

    def watch(self, model: nn.Module) -> list[str]:
        """Watch ``model``'s Linear and Conv2d layers whose weight this optimizer steps (hooks
        that gather the factors); returns their names."""
        mine = {p for g in self.param_groups for p in g["params"]}
        names = []
        for name, module in model.named_modules():
            if watchable(module) and module.weight in mine and module.weight not in self._layers:
                bias = module.bias
                layer = _Layer(module)
                if bias is not None and bias not in mine:
                    layer.bias = None  # the bias is not ours to step: precondition W alone
                layer.attach()
                self._layers[module.weight] = layer
                names.append(name or type(module).__name__)
        return names

    def _state_shapes(self, p: Tensor, group: dict[str, Any]) -> dict[str, tuple[int, ...]]:
        shapes = {"momentum_buffer": tuple(real(p).shape)}
        layer = self._layers.get(p)
        if layer is not None:
            dim_a, dim_g = layer.sizes
            shapes.update(factor_A=(dim_a, dim_a), factor_G=(dim_g, dim_g), inverse_A=(dim_a, dim_a),
                          inverse_G=(dim_g, dim_g), factor_updates=())
        return shapes

    def _discard(self) -> None:
        for layer in self._layers.values():
            layer.clear()

    def _loaded(self) -> None:
        for layer in self._layers.values():
            layer.clear()
            layer.collect = self._collects(layer)

    def _collects(self, layer: _Layer) -> bool:
        group = next(g for g in self.param_groups if any(p is layer.weight for p in g["params"]))
        return self._steps(self.state[layer.weight]) % group["factor_every"] == 0

    def _plan(self, group: dict[str, Any], params: list[Tensor]) -> Callable[[], None]:
        lr, momentum, wd = float(group["lr"]), float(group["momentum"]), float(group["weight_decay"])
        stepping = set(params)
        layers = [layer for p, layer in self._layers.items() if p in stepping]
        entries: dict[Tensor, dict[str, Tensor]] = {}  # the new factors and inverses of each layer
        natural: dict[Tensor, tuple[Tensor, Tensor]] = {}  # (V, ∇) of each layer
        for layer in layers:  # the same layers in the same order on every rank (batch_factors reduces)
            planned = self._natural_gradient(group, layer)
            if planned is not None:
                entries[layer.weight], natural[layer.weight] = planned
        inner = [(v * grad).sum().double() for v, grad in natural.values()]  # ⟨V, ∇⟩ per layer
        flags = [torch.isfinite(t).all() for new in entries.values() for t in new.values()]
        if inner and not bool(torch.stack([torch.isfinite(torch.stack(inner)).all(), *flags]).all()):
            raise Unstable("K-FAC's factors or direction are not finite (the layer statistics overflowed)")
        kl = float(torch.stack(inner).sum()) * lr * lr if inner else 0.0
        kl_clip = float(group["kl_clip"])
        nu = min(1.0, math.sqrt(kl_clip / kl)) if kl_clip > 0 and kl > 0 else 1.0
        directions: dict[Tensor, Tensor] = {}
        for layer in layers:
            if layer.weight in natural:
                v = natural[layer.weight][0] * nu
                directions[layer.weight] = v[:, :layer.weight[0].numel()].reshape(layer.weight.shape)
                if layer.bias is not None and layer.bias.grad is not None:
                    directions[layer.bias] = v[:, -1]

        def commit() -> None:
            for weight, new in entries.items():
                self.state[weight].update(new)
            for p in params:
                state = self.state[p]
                state["step"] = self._steps(state) + 1
                d = directions.get(p)
                momentum_step(real(p), state, real(p.grad) if d is None else d, lr, momentum, wd)
            for layer in layers:
                layer.clear()
                layer.collect = self._steps(self.state[layer.weight]) % group["factor_every"] == 0
        return commit

    def _natural_gradient(self, group: dict[str, Any], layer: _Layer) -> tuple[dict[str, Tensor],
                                                                                tuple[Tensor, Tensor]] | None:
        """The layer's new state entries (factors, inverses) and (V, ∇): its gradient as one matrix
        [∇W | ∇b] and the damped Kronecker solve; None when the layer has no factors yet (it never
        ran forward and backward). Nothing is changed: the caller commits."""
        state = self.state[layer.weight]
        new: dict[str, Tensor] = {}
        batch = layer.batch_factors()
        if batch is not None:
            k = int(state.get("factor_updates", torch.tensor(0.0))) + 1
            decay = min(1.0 - 1.0 / k, float(group["stat_decay"]))
            for key, fresh in zip(("factor_A", "factor_G"), batch):
                old = state.get(key)
                new[key] = fresh.clone() if old is None else old * decay + fresh * (1.0 - decay)
            new["factor_updates"] = torch.tensor(float(k))
        factors = new.get("factor_A", state.get("factor_A")), new.get("factor_G", state.get("factor_G"))
        if factors[0] is None:
            return None
        if "inverse_A" not in state or self._steps(state) % group["inv_every"] == 0:
            new["inverse_A"], new["inverse_G"] = damped_inverses(*factors, float(group["damping"]))
        inverse_a = new.get("inverse_A", state.get("inverse_A"))
        inverse_g = new.get("inverse_G", state.get("inverse_G"))
        w = layer.weight
        grad = w.grad.reshape(w.shape[0], -1)
        if layer.bias is not None:
            bias_grad = layer.bias.grad if layer.bias.grad is not None else torch.zeros_like(layer.bias)
            grad = torch.cat([grad, bias_grad[:, None]], dim=1)
        return new, (inverse_g @ grad @ inverse_a, grad)

    # ------------------------------------------------------------------ copies
    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_watched"] = [layer.module for layer in self._layers.values()]
        state["_unbiased"] = [layer.bias is None for layer in self._layers.values()]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "_watched" not in state:  # torch's load_state_dict sets only the state and the groups
            super().__setstate__(state)
            return
        watched, unbiased = state.pop("_watched"), state.pop("_unbiased")
        super().__setstate__(state)
        self._layers = {}
        for module, no_bias in zip(watched, unbiased):  # the copied hooks of the original are inert copies
            layer = _Layer(module)
            if no_bias:
                layer.bias = None
            layer.attach()
            self._layers[module.weight] = layer
        self._loaded()


def damped_inverses(a: Tensor, g: Tensor, damping: float) -> tuple[Tensor, Tensor]:
    """(A + πγI)⁻¹ and (G + γ/π I)⁻¹ with γ = √damping and π² = (tr A/dim A)/(tr G/dim G)
    (M&G §6.3), computed in float64 by Cholesky factorization."""
    a64, g64 = a.double(), g.double()
    ta, tg = float(a64.diagonal().mean()), float(g64.diagonal().mean())
    pi = math.sqrt(ta / tg) if ta > 0 and tg > 0 else 1.0
    gamma = math.sqrt(damping)

    def inverse(m: Tensor, shift: float) -> Tensor:
        m = m + shift * torch.eye(m.shape[0], dtype=m.dtype, device=m.device)
        factor, info = torch.linalg.cholesky_ex(m)
        if int(info) != 0 or not math.isfinite(shift):
            raise Unstable(f"a damped Kronecker factor of K-FAC is not positive definite (shift {shift:.3g}); "
                           "its statistics overflowed or the damping is too small")
        return torch.cholesky_inverse(factor).to(a.dtype)
    return inverse(a64, pi * gamma), inverse(g64, gamma / pi)
