"""Instruments: each measures one §8.2 quantity group, has a cost tier and a default cadence.

An instrument's ``measure(ctx)`` returns a dict of JSON-serialisable values (numbers, lists of
numbers, dicts of numbers). The :class:`~deepdescent.diagnostics.Monitor` decides when it runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from deepdescent.curvature.objective import ModelObjective
from deepdescent.curvature.spectrum import hessian_diagonal, hutchinson, lanczos, slq, top_eigenpairs
from deepdescent.curvature.vectors import flat, unflat_like
from deepdescent.diagnostics.recurrent import probing


@dataclass
class StepContext:
    """What a measurement may use: the model, the loss, the current minibatch, the optimizer."""

    model: nn.Module
    loss_fn: Any
    inputs: Tensor
    targets: Tensor
    loss: float | None
    optimizer: torch.optim.Optimizer | None
    step: int
    mode: str
    state: dict[str, Any] = field(default_factory=dict)  # the Monitor's memory (θ₀, θ_{t−1}, …)
    seed: int | None = None  # the dropout masks of this step's measurements (None: the global stream)
    _objective: ModelObjective | None = None

    @property
    def objective(self) -> ModelObjective:
        if self._objective is None:
            self._objective = ModelObjective(self.model, self.loss_fn, self.inputs, self.targets, mode=self.mode,
                                             seed=self.seed)
        return self._objective

    def params(self) -> list[tuple[str, Tensor]]:
        return [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]

    def lr(self) -> float | None:
        if self.optimizer is None:
            return None
        lr = self.optimizer.param_groups[0].get("lr")
        return float(lr) if lr is not None else None

    def hessian(self) -> tuple[Any, dict[str, Tensor]]:
        """(v ↦ H v on dicts, g) at this step's θ and minibatch, built once per step and shared by
        the instruments measuring at it (:meth:`ModelObjective.hvp_operator`)."""
        if "_hessian" not in self.__dict__:
            op, g, _ = self.objective.hvp_operator()
            self.__dict__["_hessian"] = (op, g)
        return self.__dict__["_hessian"]

    def flat_hvp(self):
        op, g = self.hessian()
        names, like = list(g), list(g.values())

        def flat_op(v: Tensor) -> Tensor:
            return flat(list(op(dict(zip(names, unflat_like(v, like)))).values()))
        return flat_op, sum(t.numel() for t in like), like[0]

    def flat_hvp_many(self):
        """Z ↦ (H zᵢ)ᵢ on a (k, n) matrix in one vmapped backward pass; None when autograd cannot
        batch this model's backward (then the products are taken one by one)."""
        op, g = self.hessian()
        if self.state.get("batched_hvp") is False or not hasattr(op, "many"):
            return None
        names, like = list(g), list(g.values())
        sizes = [t.numel() for t in like]

        def many(z: Tensor) -> Tensor:
            chunks = z.split(sizes, dim=1)
            v = {name: c.reshape(z.shape[0], *t.shape) for name, c, t in zip(names, chunks, like)}
            try:
                out = op.many(v)
            except (RuntimeError, NotImplementedError):  # no batching rule for some op: one by one, from now on
                self.state["batched_hvp"] = False
                flat_op, _, _ = self.flat_hvp()
                return torch.stack([flat_op(row) for row in z])
            return torch.cat([o.reshape(z.shape[0], -1) for o in out.values()], dim=1)
        return many


class Instrument:
    """Base class. ``tier``: "cheap" (from what the step already computed) or "expensive"
    (extra forward/backward passes); ``every``: the default cadence in steps."""

    name = "instrument"
    tier = "expensive"
    every = 100
    #: rough cost in gradient evaluations, used to budget the first run (before it was timed)
    gradients = 10.0

    def measure(self, ctx: StepContext) -> dict[str, Any]:
        raise NotImplementedError


class Cheap(Instrument):
    """Loss, global and per-layer gradient norms, update size, distance from θ₀, non-finite
    gradient elements, gradient-norm spikes against an exponential average (cliffs, §8.2.4) and
    clipping events (for :class:`~deepdescent.training.Clipped`)."""

    name, tier, every = "cheap", "cheap", 10  # every step would cost ~20% of a small model's step
    gradients = 0.5  # norms of what backward() left: about half a step on a small model

    def __init__(self, spike_factor: float = 5.0, ema: float = 0.9) -> None:
        self.spike_factor, self.ema = spike_factor, ema

    def measure(self, ctx: StepContext) -> dict[str, Any]:
        named = [(n, p) for n, p in ctx.params() if p.grad is not None]
        grads = [p.grad for _, p in named]
        values: dict[str, Any] = {"loss": ctx.loss}
        if grads:
            norms = torch.stack(torch._foreach_norm(grads)).double().tolist()  # one transfer
            finite = [x for x in norms if math.isfinite(x)]
            total = math.sqrt(sum(x * x for x in finite)) if finite else math.nan
            values["grad_norm"] = total
            values["layer_grad_norms"] = {n: x for (n, _), x in zip(named, norms)}
            values["nonfinite_grads"] = 0 if len(finite) == len(norms) else int(
                sum(int((~torch.isfinite(g)).sum()) for g in grads))
            avg = ctx.state.get("grad_norm_ema")
            values["spike_ratio"] = total / avg if avg else 1.0
            values["spike"] = bool(avg and total > self.spike_factor * avg)
            if math.isfinite(total):
                ctx.state["grad_norm_ema"] = total if avg is None else self.ema * avg + (1 - self.ema) * total
        params = [p.detach() for _, p in ctx.params()]
        prev = ctx.state.get("previous_params")
        if prev is not None and ctx.state.get("previous_step") == ctx.step - 1:  # θ_{t−1}, kept at the last step
            values["update_norm"] = float(torch.stack(torch._foreach_norm(torch._foreach_sub(params, prev))).norm())
        values["distance_from_init"] = float(torch.stack(torch._foreach_norm(
            torch._foreach_sub(params, ctx.state["initial_params"]))).norm())
        last_norm = getattr(ctx.optimizer, "last_norm", None)
        if last_norm is not None:
            values["clipped"] = bool((last_norm > ctx.optimizer.threshold).any())  # type: ignore[union-attr]
        return values


class IllConditioning(Instrument):
    """§8.2.1: gᵀg, gᵀHg (one HVP) and the book's ratio ½ε²gᵀHg / (εgᵀg) at the optimizer's
    current ε; a ratio above 1 means a gradient step of that size increases the local quadratic
    model. Also the predicted change ½ε²gᵀHg − εgᵀg (the Taylor expansion of §8.2.1)."""

    name, every, gradients = "ill_conditioning", 20, 4.0

    def measure(self, ctx: StepContext) -> dict[str, Any]:
        op, g = ctx.hessian()
        hg = op(g)
        gg = float(sum((x * x).sum() for x in g.values()))
        ghg = float(sum((x * y).sum() for x, y in zip(g.values(), hg.values())))
        values: dict[str, Any] = {"gTg": gg, "gTHg": ghg}
        eps = ctx.lr()
        if eps is not None and gg > 0:
            values["lr"] = eps
            values["ratio"] = 0.5 * eps * ghg / gg
            values["predicted_change"] = 0.5 * eps**2 * ghg - eps * gg
        return values


#: the most parameters for which Curvature(exact=True) takes the n products of the exact diagonal
EXACT_LIMIT = 20_000


class Curvature(Instrument):
    """§8.2.3: λmax and λmin of the Hessian by Lanczos (warm-started from the previous call's
    top Ritz vector), their residuals and convergence flags (each end, and both); a
    negative-curvature (saddle) indicator; tr(H) by Hutchinson with its standard error, the
    Lanczos run's part of it exact (:func:`~deepdescent.curvature.spectrum.hutchinson`'s
    ``deflation``).
    ``exact=True`` (≤ 20,000 parameters): tr H and each layer's trace from the exact diagonal
    instead; ``top=k``: the k largest eigenvalues with their residuals.

    The defaults (at most ``k`` = 10 Lanczos products, 5 Hutchinson probes) are a monitor's: λmax
    to ``tol`` in most measurements (warm-started: 3–8 products on minibatches of 32), λmin often
    not (the bottom of a minibatch Hessian's spectrum is dense; its flag says so); a
    negative Ritz value is negative curvature even unconverged (θmin ≥ λmin). Raise ``k`` and
    ``trace_samples`` for precision at a higher cost per measurement."""

    name, every = "curvature", 200

    def __init__(self, k: int = 10, tol: float = 1e-3, trace_samples: int = 5, seed: int = 0, *, top: int = 0,
                 exact: bool = False) -> None:
        if exact and trace_samples:
            trace_samples = 0  # the exact trace replaces the estimate
        self.k, self.tol, self.trace_samples, self.top, self.exact = k, tol, trace_samples, top, exact
        self.gradients = 3.0 * (k + trace_samples + 3 * top)
        self.generator = torch.Generator().manual_seed(seed)
        self.start: Tensor | None = None

    def measure(self, ctx: StepContext) -> dict[str, Any]:
        op, n, like = ctx.flat_hvp()
        r = lanczos(op, n, k=self.k, start=self._start(ctx), tol=self.tol, generator=self.generator,
                    dtype=like.dtype, device=like.device, stop_early=True)
        self.start = r.vector
        values: dict[str, Any] = {
            "lambda_max": r.lambda_max, "lambda_min": r.lambda_min, "residual_max": r.residual_max,
            "residual_min": r.residual_min, "converged": r.converged, "converged_max": r.converged_max,
            "converged_min": r.converged_min, "lanczos_iterations": r.iterations,
            "negative_curvature": r.lambda_min < -self.tol * abs(r.lambda_max),
            "min_max_ratio": r.lambda_min / r.lambda_max if r.lambda_max else math.nan,
        }
        if self.trace_samples:
            t = hutchinson(op, n, samples=self.trace_samples, generator=self.generator, dtype=like.dtype,
                           batched=ctx.flat_hvp_many(), device=like.device, deflation=r)
            values.update(trace=t.trace, trace_stderr=t.stderr)
        if self.exact:
            values.update(self._exact(ctx, op, n, like))
        if self.top:
            pairs = top_eigenpairs(op, n, self.top, tol=self.tol, generator=self.generator, dtype=like.dtype,
                                   device=like.device)
            values.update(top_eigenvalues=pairs.values.tolist(), top_residuals=pairs.residuals.tolist(),
                          top_converged=pairs.converged)
        return values

    def _start(self, ctx: StepContext) -> Tensor | None:
        """The previous top Ritz vector; the first time, the gradient's direction, which lies
        mostly in the top eigenspace of the Hessian (Gur-Ari et al. 2018): λmax to 1e-3 in 7, 13, 9
        products on the MLP, CNN and LSTM of bench/diagnostics.py at initialization, 7–15 from
        random vectors (BENCHMARKS §3)."""
        if self.start is not None:
            return self.start
        g = flat(list(ctx.hessian()[1].values()))
        norm = g.norm()
        return g / norm if norm > 0 and torch.isfinite(norm) else None

    def _exact(self, ctx: StepContext, op, n: int, like: Tensor) -> dict[str, Any]:
        """tr H and each layer's share from the exact diagonal (n products): small models only."""
        if n > EXACT_LIMIT:
            raise ValueError(f"Curvature(exact=True) takes one product per parameter: {n} parameters is more "
                             f"than {EXACT_LIMIT}; use the Hutchinson estimate (trace_samples) instead")
        diag = hessian_diagonal(op, n, batched=ctx.flat_hvp_many(), dtype=like.dtype, device=like.device)
        _, g = ctx.hessian()
        sizes = [t.numel() for t in g.values()]
        return {"trace": float(diag.sum()), "trace_stderr": 0.0,
                "layer_traces": {name: float(d.sum()) for name, d in zip(g, diag.split(sizes))}}


class Spectrum(Instrument):
    """§8.2.3: the Hessian's spectral density by stochastic Lanczos quadrature (nodes, weights)."""

    name, every = "spectrum", 1000

    def __init__(self, k: int = 30, runs: int = 3, seed: int = 0) -> None:
        self.k, self.runs, self.generator = k, runs, torch.Generator().manual_seed(seed)
        self.gradients = 3.0 * k * runs

    def measure(self, ctx: StepContext) -> dict[str, Any]:
        op, n, like = ctx.flat_hvp()
        d = slq(op, n, k=self.k, runs=self.runs, generator=self.generator, dtype=like.dtype, device=like.device)
        return {"nodes": d.nodes.tolist(), "weights": d.weights.tolist()}


def per_example_gradients(ctx: StepContext) -> Tensor:
    """(m, n): the flat gradient of each example's loss, by ``vmap`` over ``grad``; one backward
    pass per example (micro-batches of 1) when ``vmap`` cannot run the model."""
    if ctx.mode == "train" and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in ctx.model.modules()):
        raise ValueError("per-example gradients are not defined with train-mode BatchNorm (each example's gradient "
                         "depends on the whole batch); use Monitor(mode='eval') for gradient-noise measurements")
    obj = ctx.objective
    p = obj.params()
    buffers = {n: b for n, b in ctx.model.named_buffers()}

    def single(params, x, y):
        out = functional_call(ctx.model, (params, buffers), (x.unsqueeze(0),))
        return ctx.loss_fn(out, y.unsqueeze(0))

    try:
        with _mode(ctx.model, ctx.mode):
            g = vmap(grad(single), in_dims=(None, 0, 0), randomness="different")(p, ctx.inputs, ctx.targets)
        return torch.cat([t.reshape(t.shape[0], -1) for t in g.values()], dim=1)
    except Exception:  # noqa: BLE001 - e.g. data-dependent control flow, in-place ops, train-mode BatchNorm
        ctx.state.setdefault("vmap_fallback", True)
        rows = []
        for i in range(ctx.inputs.shape[0]):
            with _mode(ctx.model, ctx.mode):
                rows.append(flat(list(grad(single)(p, ctx.inputs[i], ctx.targets[i]).values())))
        return torch.stack(rows)


class _mode:
    def __init__(self, model: nn.Module, mode: str) -> None:
        self.model, self.mode, self.was = model, mode, model.training

    def __enter__(self) -> None:
        self.model.train(self.mode == "train")

    def __exit__(self, *exc: Any) -> None:
        self.model.train(self.was)


class GradientNoise(Instrument):
    """§8.1.3, §8.2.6: per-example gradients gᵢ of the minibatch (loss_fn must average over the
    batch), the trace of their covariance Σ, the standard error of the minibatch gradient
    √(tr Σ / m), and the simple noise scale B_simple = tr Σ / ‖G‖² (McCandlish et al. 2018, eq. 2.8),
    the batch size beyond which larger batches stop paying off, with its signal-to-noise ratio
    ‖G‖² / (tr Σ / m); the adaptive batch-size tests (:func:`batch_size_tests`) and a histogram of
    the per-example gradient elements (``bins`` bins).

    ‖ḡ‖² is biased: E‖ḡ‖² = ‖G‖² + tr Σ/m, so tr Σ / ‖ḡ‖² could never exceed m. As McCandlish et
    al. (App. A) do, ‖G‖² is estimated without bias by ‖ḡ‖² − tr Σ̂/m (Σ̂ the sample covariance,
    divisor m − 1), and B_simple is the ratio of the two estimates' averages over measurements —
    exponential with weight ``beta`` (bias-corrected, as Adam's), or plain over all measurements
    with ``beta=None`` (for a fixed θ). ``dataset_size`` N: minibatches drawn without replacement
    from N examples (an epoch's shuffle) get the finite-population correction
    Var(ḡ) = (N − m)/(N·m)·E[tr Σ̂]; without it they are taken as drawn with replacement.
    """

    name, every, gradients = "gradient_noise", 50, 4.0

    def __init__(self, beta: float | None = 0.95, dataset_size: int | None = None, bins: int = 40) -> None:
        if beta is not None and not 0 <= beta < 1:
            raise ValueError(f"invalid beta={beta!r}: the averages' weight must be in [0, 1), or None for a plain mean")
        if dataset_size is not None and dataset_size < 2:
            raise ValueError(f"invalid dataset_size={dataset_size!r}: the number of training examples (≥ 2), or None")
        self.beta, self.dataset_size, self.bins = beta, dataset_size, bins
        self._sums = [0.0, 0.0, 0.0]  # weighted Σ of tr Σ, of ‖G‖²'s estimate, and of the weights
        self._count = 0

    def measure(self, ctx: StepContext) -> dict[str, Any]:
        return self.statistics(per_example_gradients(ctx)) | {"vmap": not ctx.state.get("vmap_fallback", False)}

    def statistics(self, per_example: Tensor) -> dict[str, Any]:
        """The measurement from an (m, n) matrix of per-example gradients; updates the averages."""
        g = per_example.double()
        m = g.shape[0]
        if m < 2:
            raise ValueError("gradient noise needs a minibatch of at least 2 examples")
        mean = g.mean(0)
        sq = float(mean @ mean)
        sample_trace = (float((g * g).sum()) - m * sq) / (m - 1)  # tr Σ̂ = (Σᵢ‖gᵢ‖² − m‖ḡ‖²)/(m − 1)
        n = self.dataset_size
        if n is not None and m > n:
            raise ValueError(f"a minibatch of {m} examples is larger than dataset_size={n}")
        mean_variance = sample_trace * ((n - m) / (n * m) if n else 1 / m)  # E[‖ḡ − G‖²], estimated
        trace_cov = sample_trace * ((n - 1) / n if n else 1.0)  # tr Σ of the population
        self._average(trace_cov, sq - mean_variance)
        trace_avg, signal_avg = self._sums[0] / self._sums[2], self._sums[1] / self._sums[2]
        return {"batch_size": m, "trace_cov": trace_cov, "grad_norm": math.sqrt(sq),
                "grad_norm_sq_unbiased": sq - mean_variance, "grad_stderr": math.sqrt(trace_cov / m),
                "snr": signal_avg / (trace_avg / m) if trace_avg else math.inf,
                "b_simple": trace_avg / signal_avg if signal_avg > 0 else math.inf,
                "measurements": self._count, **batch_size_tests(g, mean, sq, sample_trace),
                "histogram": histogram(g, self.bins)}

    def _average(self, trace_cov: float, signal: float) -> None:
        decay = 1.0 if self.beta is None else self.beta
        self._count += 1
        self._sums = [decay * self._sums[0] + trace_cov, decay * self._sums[1] + signal, decay * self._sums[2] + 1]


def batch_size_tests(g: Tensor, mean: Tensor, sq: float, sample_trace: float) -> dict[str, float]:
    """The statistics of the adaptive batch-size tests, from per-example gradients gᵢ (rows of g):

    - norm test (Byrd et al. 2012): tr Σ̂ / (m‖ḡ‖²) — the batch is large enough for
      descent when it is at most θ² (θ < 1; they use θ = 0.9);
    - inner-product test (Bollapragada et al. 2018): Var̂ᵢ(gᵢᵀḡ) / (m‖ḡ‖⁴) ≤ θ²;
    - orthogonality test (ibid.): Σᵢ‖gᵢ − (gᵢᵀḡ/‖ḡ‖²)ḡ‖² / ((m − 1) m ‖ḡ‖²) ≤ ν².

    Each statistic × m / θ² is the batch size that test asks for."""
    m = g.shape[0]
    if sq == 0:
        return {"norm_test": math.inf, "inner_product_test": math.inf, "orthogonality_test": math.inf}
    inner = g @ mean  # gᵢᵀḡ
    inner_var = float(((inner - sq) ** 2).sum()) / (m - 1)
    orthogonal = float((g * g).sum() - (inner * inner).sum() / sq) / (m - 1)  # Σ‖gᵢ − proj‖², proj along ḡ
    return {"norm_test": sample_trace / (m * sq), "inner_product_test": inner_var / (m * sq * sq),
            "orthogonality_test": orthogonal / (m * sq)}


def histogram(g: Tensor, bins: int) -> dict[str, list[float]]:
    """Histogram of all per-example gradient elements (Cockpit's GradHist1d), on bins symmetric
    about 0 up to the largest |element|."""
    edge = float(g.abs().max()) or 1.0
    counts = torch.histc(g.float(), bins=bins, min=-edge, max=edge)
    return {"edges": torch.linspace(-edge, edge, bins + 1).tolist(), "counts": counts.tolist()}


class Recurrent(Instrument):
    """§8.2.5: ‖∂L/∂h_t‖ for every time step t of every RNN/LSTM/GRU module (and of hidden
    states marked with :func:`~deepdescent.diagnostics.mark_hidden`), averaged over the batch."""

    name, every, gradients = "recurrent", 50, 3.0

    def measure(self, ctx: StepContext) -> dict[str, Any]:
        params = dict(ctx.model.named_parameters())
        buffers = {n: b.clone() for n, b in ctx.model.named_buffers()}  # running statistics stay untouched
        with _mode(ctx.model, ctx.mode), torch.enable_grad(), probing(ctx.model) as recorded:
            loss = ctx.loss_fn(functional_call(ctx.model, (params, buffers), (ctx.inputs,)), ctx.targets)
        probes = [p for group in recorded for p in group]
        if not probes:
            raise ValueError("the model has no RNN/LSTM/GRU module and no state marked with mark_hidden()")
        grads = torch.autograd.grad(loss, probes, allow_unused=True)
        out, it = {}, iter(grads)
        for k, group in enumerate(recorded):
            per_step = [next(it) for _ in group]  # ∂L/∂h_t of this call's steps, in order
            out[f"call{k}"] = [0.0 if g is None else float(g.reshape(g.shape[0] if g.dim() > 1 else 1, -1)
                                                         .norm(dim=1).mean()) for g in per_step]
        return {"grad_norm_per_step": out}


class Interpolation(Instrument):
    """§8.2.7: the loss along the straight line θ(α) = θ₀ + α(θ_t − θ₀), α ∈ [0, 1.2], on a fixed
    evaluation batch (Goodfellow, Vinyals & Saxe 2015)."""

    name, every = "interpolation", 1000

    def __init__(self, points: int = 25) -> None:
        self.points, self.gradients = points, points / 3

    def measure(self, ctx: StepContext) -> dict[str, Any]:
        obj = _eval_objective(ctx)
        theta = obj.params()
        theta0 = dict(zip(obj.names, ctx.state["initial_params"]))
        alphas = torch.linspace(0, 1.2, self.points).tolist()
        with torch.no_grad():
            losses = [float(obj.loss({n: theta0[n] + a * (theta[n] - theta0[n]) for n in obj.names})) for a in alphas]
        return {"alpha": alphas, "loss": losses}


class Slice2D(Instrument):
    """§8.2.7: the loss on a 2-D slice θ + a·d₁ + b·d₂ around the current θ, with random directions
    normalized per filter to the norms of θ's filters (Li et al. 2018); 1-D parameters (biases,
    norms) get no displacement, as in that paper."""

    name, every = "slice2d", 5000

    def __init__(self, points: int = 11, radius: float = 1.0, seed: int = 0) -> None:
        self.points, self.radius, self.generator = points, radius, torch.Generator().manual_seed(seed)
        self.gradients = points * points / 3

    def _direction(self, theta: dict[str, Tensor]) -> dict[str, Tensor]:
        d = {}
        for n, t in theta.items():
            if t.dim() <= 1:
                d[n] = torch.zeros_like(t)
                continue
            r = torch.randn(t.shape, generator=self.generator, dtype=t.dtype).to(t.device)
            scale = t.reshape(t.shape[0], -1).norm(dim=1) / (r.reshape(r.shape[0], -1).norm(dim=1) + 1e-12)
            d[n] = r * scale.view(-1, *([1] * (t.dim() - 1)))
        return d

    def measure(self, ctx: StepContext) -> dict[str, Any]:
        obj = _eval_objective(ctx)
        theta = obj.params()
        d1, d2 = self._direction(theta), self._direction(theta)
        coords = torch.linspace(-self.radius, self.radius, self.points).tolist()
        with torch.no_grad():
            grid = [[float(obj.loss({n: theta[n] + a * d1[n] + b * d2[n] for n in obj.names})) for a in coords]
                    for b in coords]
        return {"coords": coords, "loss": grid}


def _eval_objective(ctx: StepContext) -> ModelObjective:
    batch = ctx.state.get("eval_batch") or (ctx.inputs, ctx.targets)
    ctx.state.setdefault("eval_batch", batch)
    return ModelObjective(ctx.model, ctx.loss_fn, batch[0], batch[1], mode="eval")


DEFAULT = (Cheap, IllConditioning, Curvature, GradientNoise)
ALL = (Cheap, IllConditioning, Curvature, Spectrum, GradientNoise, Recurrent, Interpolation, Slice2D)
