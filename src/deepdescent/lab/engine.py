"""The execution engine: train one (optimizer, learning rate, seed) member, or many members of one
first-order optimizer at once.

Vectorized members: the parameters of all members are stacked along a leading member axis, the
forward and backward passes run under ``torch.func.vmap`` over ``functional_call`` (for a
``Sequential`` of ``Linear`` layers and activations, as batched matrix products with one backward
pass for all members, which is faster), and one update applies the algorithm (its spec, through
the public executor that the optimizer classes use, mixed precision included) to all members,
the learning rate a per-member tensor. Members are independent: one that diverges does not
affect the others. A non-finite gradient ends a member's run as diverged, in both engines (the
optimizer classes would skip that step; the race counts it). Methods with line searches and
closures run member by member.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, vmap

from deepdescent import executor as ex
from deepdescent.lab import challenges
from deepdescent.lab.optimizers import OptimizerSpec
from deepdescent.lab.problems import Problem, Task
from deepdescent.second_order import CurvatureSkipWarning, LineSearchWarning

EVAL_POINTS = 20
#: Members evaluated together: a batch of activations that stays in cache (a 2× faster evaluation
#: than all members at once on the digits MLP, measured by bench/lab_engine.py).
EVAL_CHUNK = 12
DIVERGED = 1e6  # a loss this many times the initial one counts as divergence


@dataclass
class RunResult:
    """One member's run, recorded at ``EVAL_POINTS`` evenly spaced points of its compute budget.

    Every optimizer of a problem gets the same ``budget`` in gradient-equivalents (one full-batch
    gradient is 1; a minibatch gradient ``batch/n``; a curvature-vector product 2; each function
    evaluation of a line search 1). A method whose last step crossed the budget records that point
    too (its curve shows it), but its result is the last point within the budget. Nothing here
    depends on the clock unless a time limit was set: ``truncated`` then says the limit cut the run.
    """

    optimizer: str
    lr: float | None
    seed: int
    budget: float = math.inf
    steps: list[int] = field(default_factory=list)
    grad_equiv: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    test_loss: float = math.nan
    test_accuracy: float | None = None
    diverged: bool = False
    truncated: bool = False  # stopped by an explicit time limit before its budget was spent
    seconds: float = math.nan  # wall time, for information only: never ranked or tabulated
    trajectory: list[list[float]] | None = None
    vectorized: bool = False
    line_search_failures: int = 0  # steps whose line search failed (parameters restored)
    #: The §8.2 challenges at each recorded point (instrumented runs only; lab.challenges): ‖g‖
    #: and gᵀHg (Fig. 8.1), λmax and λmin of H (with Lanczos's convergence), each parameter
    #: tensor's ‖g‖, on the measurement batch (``challenges.EXAMPLES``) at θ; and the largest
    #: minibatch ‖g‖ since the previous point (cliffs; NaN for full-batch methods).
    grad_norm: list[float] | None = None
    gTHg: list[float] | None = None
    lambda_max: list[float] | None = None
    lambda_min: list[float] | None = None
    lambda_converged: list[bool] | None = None
    layer_names: list[str] | None = None
    layer_grad_norms: list[list[float]] | None = None
    grad_peak: list[float] | None = None
    noise_scale: list[float] | None = None  # B_simple = tr(Σ)/‖G‖², in examples (§8.1.3)
    #: The held-out loss (and accuracy, for classifiers) at each recorded point, on the first
    #: ``eval_examples`` test examples: AlgoPerf's time to a validation target.
    test_curve: list[float] | None = None
    test_accuracy_curve: list[float] | None = None
    #: A workload's own held-out metric (Workload.metric): its name and direction, its value at
    #: each recorded point and at the end (on the whole held-out set).
    metric_name: str | None = None
    metric_lower_is_better: bool = False
    test_metric_curve: list[float] | None = None
    test_metric: float | None = None
    time_grad_norms: list[list[float]] | None = None  # ‖∂L/∂h_t‖ per time step at each point (recurrent models)

    def within_budget(self) -> int:
        """How many recorded points lie within the budget."""
        return sum(ge <= self.budget * (1 + 1e-9) for ge in self.grad_equiv)

    @property
    def final_train_loss(self) -> float:
        """The training loss when the budget was spent (+∞ for a diverged run)."""
        n = self.within_budget()
        return math.inf if self.diverged or not n else self.train_loss[n - 1]

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RunResult:
        d = dict(d)
        for key, missing in (("test_loss", math.nan), ("seconds", math.nan), ("budget", math.inf)):
            if d.get(key) is None:
                d[key] = missing
        return cls(**d)


def _eval_points(steps: int) -> set[int]:
    return {round(i * steps / EVAL_POINTS) for i in range(EVAL_POINTS + 1)}


def _order(n: int, seed: int) -> Tensor:
    """Shuffle once, then reuse the order every epoch (§8.1.3)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(10_000 + seed))


def _batch_indices(order: Tensor, step: int, batch: int) -> Tensor:
    n = len(order)
    start = (step * batch) % n
    idx = torch.arange(start, start + batch, device=order.device) % n
    return order[idx]


def _accuracy(out: Tensor, y: Tensor) -> float:
    return float((out.argmax(-1) == y).float().mean())


class _inference:
    """The model in evaluation mode for the duration (batch norm's running statistics, no
    dropout), its own mode after: recorded losses are the inference-mode function's."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.mode = model, model.training

    def __enter__(self) -> None:
        self.model.eval()

    def __exit__(self, *exc: Any) -> None:
        self.model.train(self.mode)


def _results(spec_name: str, lr: float | None, seed: int, task: Task, **kw: Any) -> RunResult:
    """A new run's record, with empty held-out curves for what the task measures."""
    return RunResult(spec_name, lr, seed, budget=task.budget, test_curve=[],
                     test_accuracy_curve=[] if task.classification else None,
                     metric_name=task.metric_name if task.metric else None,
                     metric_lower_is_better=task.lower_is_better, test_metric_curve=[] if task.metric else None, **kw)


def _metric(task: Task, out: Tensor, y: Tensor) -> float:
    value = task.metric(out, y)  # type: ignore[misc]
    return float(value)


def _held_out(result: RunResult, task: Task, out: Tensor, y: Tensor) -> None:
    """Record the held-out loss (accuracy, the workload's metric) of ``out`` at this point."""
    result.test_curve.append(float(task.loss(out, y)))  # type: ignore[union-attr]
    if task.classification:
        result.test_accuracy_curve.append(_accuracy(out, y))  # type: ignore[union-attr]
    if task.metric is not None:
        result.test_metric_curve.append(_metric(task, out, y))  # type: ignore[union-attr]


def _finish(result: RunResult, task: Task, model: nn.Module) -> None:
    with torch.no_grad(), _inference(model):
        out = model(task.x_test)
        result.test_loss = float(task.loss(out, task.y_test))
        if task.classification:
            result.test_accuracy = _accuracy(out, task.y_test)
        if task.metric is not None:
            result.test_metric = _metric(task, out, task.y_test)


def _budgeted(problem: Problem, seed: int, quick: bool, device: str, budget: float | None) -> Task:
    task = problem.build(seed, quick).to(device)
    if budget is not None:
        if not budget > 0:
            raise ValueError(f"invalid budget={budget!r}: gradient-equivalents must be > 0")
        task = replace(task, budget=float(budget))
    return task


def figure_8_1(model: nn.Module, loss_fn, x: Tensor, y: Tensor) -> tuple[float, float]:
    """‖g‖ and gᵀHg of the loss on (x, y) (the quantities of the book's Figure 8.1, §8.2.1): a
    gradient step −εg changes the loss by ½ε²gᵀHg − εgᵀg. One gradient and one Hessian-vector
    product (double backward); NaN where the model cannot be differentiated twice."""
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        with torch.enable_grad():
            g = torch.autograd.grad(loss_fn(model(x), y), params, create_graph=True)
            gd = [t.detach() for t in g]
            hg = torch.autograd.grad(sum((a * b).sum() for a, b in zip(g, gd)), params)
    except RuntimeError:
        return math.nan, math.nan
    norm = math.sqrt(sum(float(t.square().sum()) for t in gd))
    return norm, sum(float((a * b).sum()) for a, b in zip(gd, hg))


class NotVectorizable(Exception):
    """This (problem, optimizer) cannot run as stacked members: run it member by member."""


def _vmap_failure(err: BaseException) -> bool:
    """Whether an error of the first vectorized step comes from torch.func's transforms (an op
    without a batching rule, data-dependent control flow, a module that updates a buffer in place
    such as batch norm's running statistics) rather than from the engine or the model itself."""
    text = str(err)
    return any(s in text for s in ("vmap", "functorch", "Batching rule", "batching rule", "BatchedTensor",
                                   "batched tensor", "During a grad", "mutate a captured Tensor"))


class _Deadline:
    """An explicit time limit (None: none, and the clock is never read)."""

    def __init__(self, seconds: float | None) -> None:
        if seconds is not None and not seconds > 0:
            raise ValueError(f"invalid time_limit={seconds!r}: seconds must be > 0 (or None for no limit)")
        self.end = None if seconds is None else time.perf_counter() + seconds

    def passed(self) -> bool:
        return self.end is not None and time.perf_counter() > self.end


def run_member(problem: Problem, spec: OptimizerSpec, lr: float | None, seed: int, quick: bool, *,
               device: str = "cpu", budget: float | None = None, time_limit: float | None = None,
               instruments: bool = False) -> RunResult:
    """Train one member with the optimizer class itself, in a plain PyTorch loop, on ``device``,
    until the problem's budget of gradient-equivalents (or ``budget``) is spent. ``time_limit``
    (seconds, off by default) cuts the run and flags it ``truncated``; ``instruments`` records
    the §8.2 challenges' quantities (:mod:`.challenges`) at every recorded point."""
    task = _budgeted(problem, seed, quick, device, budget)
    model = task.model
    opt = spec.make(model if spec.takes_model else model.parameters(), lr)
    n = len(task.x_train)
    order = _order(n, seed).to(device)
    x_eval, y_eval = task.x_train[:task.eval_examples], task.y_train[:task.eval_examples]
    x_held, y_held = task.x_test[:task.eval_examples], task.y_test[:task.eval_examples]
    x_meas, y_meas = task.x_train[:task.measure_examples], task.y_train[:task.measure_examples]
    result = _results(spec.name, lr, seed, task)
    peak = [math.nan]  # the largest minibatch ‖g‖ since the last point (instrumented runs)
    if instruments:
        result.grad_norm, result.gTHg, result.lambda_max, result.lambda_min = [], [], [], []
        result.lambda_converged, result.layer_grad_norms, result.grad_peak, result.noise_scale = [], [], [], []
        result.time_grad_norms = []
        result.layer_names = [n for n, p in model.named_parameters() if p.requires_grad]

    def watch() -> None:
        norm = challenges.minibatch_norm(model)
        peak[0] = norm if math.isnan(peak[0]) else max(peak[0], norm)
    deadline, started = _Deadline(time_limit), time.perf_counter()
    first: float | None = None
    track = [] if task.trajectory_2d else None
    at_theta = getattr(opt, "at_theta", None) or _evaluation_mode(opt)
    _training_mode(opt)

    def evaluate(step: int, spent: float) -> bool:
        nonlocal first
        with (at_theta() if at_theta else _null()):
            with torch.no_grad(), _inference(model):
                loss = float(task.loss(model(x_eval), y_eval))
                _held_out(result, task, model(x_held), y_held)
                if track is not None:
                    track.append([float(v) for v in next(model.parameters()).detach().flatten()[:2]])
            if instruments:
                spectrum = len(result.grad_norm) % challenges.SPECTRUM_EVERY == 0  # type: ignore[arg-type]
                _record(result, challenges.measure(model, task.loss, x_meas, y_meas, seed=seed, spectrum=spectrum),
                        peak[0])
                peak[0] = math.nan
        first = loss if first is None else first
        result.steps.append(step)
        result.grad_equiv.append(spent)
        result.train_loss.append(loss)
        if not math.isfinite(loss) or loss > DIVERGED * max(abs(first), 1e-12):
            result.diverged = True
        return result.diverged

    if not evaluate(0, 0.0):
        if spec.kind == "second":
            _second_order_loop(task, spec, opt, model, result, evaluate, deadline)
        else:
            _minibatch_loop(task, spec, opt, model, order, evaluate, deadline, result, watch if instruments else None)
    result.trajectory = track
    if instruments and result.lambda_max and math.isnan(result.lambda_max[-1]):  # λ at the end, always
        with (at_theta() if at_theta else _null()):
            m = challenges.measure(model, task.loss, x_meas, y_meas, seed=seed)
        result.lambda_max[-1], result.lambda_min[-1] = m.lambda_max, m.lambda_min  # type: ignore[index]
        result.lambda_converged[-1] = m.converged  # type: ignore[index]
    result.seconds = time.perf_counter() - started
    if not result.diverged:
        with (at_theta() if at_theta else _null()):
            _finish(result, task, model)
    return result


def _training_mode(opt: Any) -> None:
    """Optimizers that keep an evaluation point of their own (Schedule-Free's ``train()``/``eval()``)
    are put in training mode before the first step."""
    if callable(getattr(opt, "train", None)) and callable(getattr(opt, "eval", None)):
        opt.train()


def _evaluation_mode(opt: Any):
    """A context in which the model holds the point the optimizer means to be evaluated: its
    ``eval()`` (Schedule-Free's averaged iterate) for the duration, ``train()`` after; None when the
    optimizer has no such modes."""
    if not (callable(getattr(opt, "train", None)) and callable(getattr(opt, "eval", None))):
        return None

    class _Mode:
        def __enter__(self) -> None:
            opt.eval()

        def __exit__(self, *exc: Any) -> None:
            opt.train()
    return _Mode


def _record(result: RunResult, m: challenges.Measurement, peak: float) -> None:
    for name, value in (("grad_norm", m.grad_norm), ("gTHg", m.gTHg), ("lambda_max", m.lambda_max),
                        ("lambda_min", m.lambda_min), ("lambda_converged", m.converged),
                        ("layer_grad_norms", m.layers), ("grad_peak", peak), ("noise_scale", m.noise_scale),
                        ("time_grad_norms", m.time_steps or [])):
        getattr(result, name).append(value)


def _minibatch_loop(task: Task, spec: OptimizerSpec, opt, model, order, evaluate, deadline, result,
                    watch: Callable[[], None] | None = None) -> None:
    """First-order methods: ``budget / cost`` steps, minibatches (or the full batch) in a fixed
    order; ``watch()`` after each backward pass (the instrumented run's gradient peaks)."""
    n = len(task.x_train)
    batch = task.batch_size if spec.kind == "first" else n
    steps, cost = task.steps_for(batch), task.step_cost(batch)
    points = _eval_points(steps)
    for step in range(1, steps + 1):
        if batch == n:
            x, y = task.x_train, task.y_train
        else:
            idx = _batch_indices(order, step - 1, batch)
            x, y = task.x_train[idx], task.y_train[idx]
        opt.zero_grad()
        task.loss(model(x), y).backward()
        if watch is not None:
            watch()
        opt.step()
        if getattr(opt, "skipped_steps", 0):  # a non-finite gradient: the member diverged
            result.diverged = True
            return
        cut = deadline.passed()
        if step in points or cut:
            if evaluate(step, step * cost):
                return
        if cut:
            result.truncated = step < steps
            return


def _second_order_loop(task: Task, spec: OptimizerSpec, opt, model, result, evaluate, deadline) -> None:
    """Closure methods on the full batch: steps until the budget is spent, counting every
    function evaluation 1 and every curvature-vector product 2; a point is recorded each time the
    spent compute crosses one of ``EVAL_POINTS`` evenly spaced marks, and when the budget is spent."""
    calls = 0

    def closure():
        nonlocal calls
        calls += 1
        if spec.foreign:  # torch's closure convention: zero the gradients, backward, return the loss
            opt.zero_grad()
            with torch.enable_grad():
                loss = task.loss(model(task.x_train), task.y_train)
                loss.backward()
            return loss
        out = model(task.x_train)
        loss = task.loss(out, task.y_train)
        return (loss, out) if spec.closure_output else loss

    spent, mark, step = 0.0, 1, 0
    while spent < task.budget:
        step += 1
        try:
            with warnings.catch_warnings():
                # expected events of these methods, counted in their state; not printed over the progress bar
                warnings.simplefilter("ignore", LineSearchWarning)
                warnings.simplefilter("ignore", CurvatureSkipWarning)
                opt.step(closure)
        except Exception:  # noqa: BLE001 - a closure error (non-finite loss) ends the run as diverged
            result.diverged = True
            return
        st = opt.state[next(p for p in model.parameters() if p.requires_grad)]
        # deepdescent's methods count their evaluations and curvature products; any other
        # optimizer is charged one gradient-equivalent per closure call (a loss and its gradient)
        spent = float(calls) if spec.foreign else float(st.get("func_evals", 0) + 2 * st.get("curvature_products", 0))
        result.line_search_failures = st.get("line_search_failures", 0)
        crossed = False
        while mark <= EVAL_POINTS and spent >= task.budget * mark / EVAL_POINTS - 1e-9:
            mark, crossed = mark + 1, True
        cut = deadline.passed()
        if crossed or cut or spent >= task.budget:
            if evaluate(step, spent):
                return
        if cut:
            result.truncated = spent < task.budget
            return


_ELEMENTWISE = (nn.Tanh, nn.ReLU, nn.Sigmoid, nn.Identity)


def _stacked_forward(model: nn.Module):
    """For an ``nn.Sequential`` of ``Linear`` layers and parameter-free activations: the forward of
    all members at once, ``forward(params, x)`` with params stacked along a leading member axis and
    x either per member (M, B, in) or shared (B, in). None for any other model (vmap runs it)."""
    if not isinstance(model, nn.Sequential):
        return None
    plan: list[tuple] = []
    for name, m in model.named_children():
        if type(m) is nn.Linear:
            plan.append((f"{name}.weight", f"{name}.bias" if m.bias is not None else None))
        elif type(m) in _ELEMENTWISE:
            plan.append((m,))
        else:
            return None

    def forward(p: dict[str, Tensor], x: Tensor) -> Tensor:
        h = x
        for layer in plan:
            if len(layer) == 1:
                h = layer[0](h)
                continue
            w = p[layer[0]].transpose(1, 2)  # (M, in, out)
            h = torch.matmul(h, w) if h.dim() == 2 else torch.bmm(h, w)  # a shared x broadcasts
            if layer[1] is not None:
                h = h + p[layer[1]].unsqueeze(1)
        return h
    return forward


def _per_member_loss(loss):
    """loss(out, y) of each member, out and y with a leading member axis: the mean-reduced losses
    the lab uses, computed unreduced and averaged per member; any other loss through vmap."""
    if loss is nn.functional.cross_entropy:
        return lambda out, y: nn.functional.cross_entropy(out.flatten(0, 1), y.flatten(0, 1), reduction="none") \
            .view(y.shape[:2]).mean(1)
    if loss is nn.functional.mse_loss:
        return lambda out, y: (out - y).square().flatten(1).mean(1)
    return vmap(loss)


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


class _batchable:
    """Where torch.func's transforms first meet the model: their failure (:func:`_vmap_failure`)
    becomes NotVectorizable (the caller runs member by member); any other error passes."""

    def __init__(self, problem: Problem, first: bool = True) -> None:
        self.problem, self.first = problem, first

    def __enter__(self) -> None:
        pass

    def __exit__(self, kind: Any, err: BaseException | None, tb: Any) -> None:
        if self.first and isinstance(err, (RuntimeError, NotImplementedError)) and _vmap_failure(err):
            raise NotVectorizable(f"torch.func cannot batch {self.problem.name}'s model: {err}") from err


def run_vectorized(problem: Problem, spec: OptimizerSpec, lrs: list[float], seeds: list[int],
                   quick: bool, *, device: str = "cpu", budget: float | None = None,
                   time_limit: float | None = None) -> list[RunResult]:
    """All (lr, seed) members of one first-order optimizer in one process, stacked, on ``device``;
    the same steps, budget and records as :func:`run_member` for each."""
    members = [(lr, s) for lr in lrs for s in seeds]
    tasks = {s: _budgeted(problem, s, quick, device, budget) for s in seeds}
    task = tasks[seeds[0]]
    if not task.stack:
        raise NotVectorizable(f"{problem.name} races member by member (its workload says stack=False)")
    model = task.model
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = {n: torch.stack([dict(tasks[s].model.named_parameters())[n].detach() for _, s in members]).clone()
              for n in names}
    algo = spec.algorithm
    if algo is None:
        raise NotVectorizable(f"{spec.name} is not a first-order algorithm of the registry")
    base = spec.hyperparameters(lrs[0])
    state_names = algo.buffers(base)
    state = {sn: {n: torch.zeros_like(params[n]) for n in names} for sn in state_names}
    for i, lr in enumerate(lrs):  # members are ordered by lr, then seed; state that does not start at 0
        lo, hi, h = i * len(seeds), (i + 1) * len(seeds), {**base, "lr": lr, "initial_lr": lr}
        for sn in state_names:  # (delta-bar-delta's rates)
            for n in names:
                state[sn][n][lo:hi] = algo.init(sn, params[n][lo:hi], h)
    lookahead = algo.interim(base)
    # one update for all members: the learning rate as one (members, 1, …, 1) tensor per parameter
    rates = torch.tensor([lr for lr, _ in members], device=device)
    member_lr = [rates.view(-1, *[1] * (params[n_].dim() - 1)) for n_ in names]
    member_h = {**base, "lr": member_lr, "initial_lr": member_lr}  # each member at its own lr
    # the eager multi-tensor path (measured faster than a fused C++ call per learning rate: 36
    # calls' overhead exceeds the memory traffic saved)
    runner = ex.Executor("eager")
    nonfinite = torch.zeros(len(members), dtype=torch.bool, device=device)

    def member_loss(p: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        return task.loss(functional_call(model, p, (x,)), y)

    stacked = _stacked_forward(model)
    if stacked is None:  # any model: torch.func
        step_fn = vmap(grad_and_value(member_loss))
        eval_all = vmap(member_loss, in_dims=(0, None, None))
    else:  # Linear layers and activations: batched matrix products, one backward for all members
        per_member = _per_member_loss(task.loss)

        def step_fn(p: dict[str, Tensor], x: Tensor, y: Tensor) -> tuple[dict[str, Tensor], Tensor]:
            leaves = {k: v.detach().requires_grad_() for k, v in p.items()}
            with torch.enable_grad():
                losses = per_member(stacked(leaves, x), y)
                grads = torch.autograd.grad(losses.sum(), list(leaves.values()))
            return dict(zip(leaves, grads)), losses.detach()

        def eval_all(p: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
            out = stacked(p, x)
            return per_member(out, y.expand(out.shape[0], *y.shape))

    def eval_fn(p: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        with _inference(model):
            return torch.cat([eval_all({k: v[i:i + EVAL_CHUNK] for k, v in p.items()}, x, y)
                              for i in range(0, len(members), EVAL_CHUNK)])
    n = len(task.x_train)
    orders = torch.stack([_order(n, s) for _, s in members]).to(device)
    batch = n if spec.kind == "full_batch" else task.batch_size
    steps, cost = task.steps_for(batch), task.step_cost(batch)
    x_eval, y_eval = task.x_train[:task.eval_examples], task.y_train[:task.eval_examples]
    x_held, y_held = task.x_test[:task.eval_examples], task.y_test[:task.eval_examples]
    results = [_results(spec.name, lr, s, task, vectorized=True) for lr, s in members]
    tracks: list[list[list[float]]] | None = [[] for _ in members] if task.trajectory_2d else None
    first: Tensor | None = None
    points = _eval_points(steps)
    deadline, started = _Deadline(time_limit), time.perf_counter()

    def theta() -> dict[str, Tensor]:
        if not lookahead:
            return params
        assert algo.displacement is not None
        disp = algo.displacement(member_h, {sn: [state[sn][n_] for n_ in names] for sn in state_names})
        return {n_: params[n_] - d for n_, d in zip(names, disp)}  # θ = θ̃ − αv

    def outputs(p: dict[str, Tensor], x: Tensor) -> Tensor:
        """Every member's outputs on ``x`` (the same inputs for all), in inference mode."""
        forward = (lambda q: stacked(q, x)) if stacked is not None else vmap(lambda q: functional_call(model, q, (x,)))
        with torch.no_grad(), _inference(model):
            return torch.cat([forward({k: v[i:i + EVAL_CHUNK] for k, v in p.items()})
                              for i in range(0, len(members), EVAL_CHUNK)])

    def evaluate(step: int) -> None:
        nonlocal first
        with torch.no_grad():
            th = theta()
            losses = eval_fn(th, x_eval, y_eval)
            held = outputs(th, x_held)
        first = losses.clone() if first is None else first
        bad = ~torch.isfinite(losses) | (losses > DIVERGED * first.abs().clamp_min(1e-12)) | nonfinite
        for i, r in enumerate(results):
            r.steps.append(step)
            r.grad_equiv.append(step * cost)
            r.train_loss.append(float(losses[i]))
            r.diverged = r.diverged or bool(bad[i])
            _held_out(r, task, held[i], y_held)
            if tracks is not None:
                tracks[i].append([float(v) for v in th[names[0]][i].flatten()[:2]])

    with _batchable(problem):
        evaluate(0)
    for step in range(1, steps + 1):
        start_ = ((step - 1) * batch) % n  # the same position for every member, each in its own order
        idx = orders[:, torch.arange(start_, start_ + batch, device=orders.device) % n]
        with _batchable(problem, step == 1):
            grads, _ = step_fn(params, task.x_train[idx], task.y_train[idx])
        g = [grads[n_] for n_ in names]
        nonfinite |= ex.nonfinite_members(g)
        with torch.no_grad():
            runner.run(algo, member_h, [[params[n_] for n_ in names], g,
                                        *([state[sn][n_] for n_ in names] for sn in state_names)],
                       [step] * len(names), lookahead)
        cut = deadline.passed()
        if step in points or cut:
            evaluate(step)
        if cut:
            for r in results:
                r.truncated = step < steps
            break
    outs = outputs(theta(), task.x_test)
    for i, r in enumerate(results):
        r.seconds = (time.perf_counter() - started) / len(results)
        if tracks is not None:
            r.trajectory = tracks[i]
        if not r.diverged:
            r.test_loss = float(task.loss(outs[i], task.y_test))
            if task.classification:
                r.test_accuracy = _accuracy(outs[i], task.y_test)
            if task.metric is not None:
                r.test_metric = _metric(task, outs[i], task.y_test)
    return results
