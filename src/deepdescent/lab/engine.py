"""The execution engine: train one (optimizer, learning rate, seed) member, or many members of one
first-order optimizer at once.

Vectorized members: the parameters of all members are stacked along a leading member axis, the
forward and backward passes run under ``torch.func.vmap`` over ``functional_call`` (for a
``Sequential`` of ``Linear`` layers and activations, as batched matrix products with one backward
pass for all members, which is faster), and one update applies the optimizer's own functional
core (``deepdescent.algorithms``, reached through the optimizer class's ``_update``) to all members,
the learning rate a per-member tensor. Members are
independent: one that diverges does not affect the others. Methods with line searches and
closures run member by member.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, vmap

from deepdescent.lab.optimizers import OptimizerSpec
from deepdescent.lab.problems import Problem, Task
from deepdescent.second_order import CurvatureSkipWarning, LineSearchWarning

EVAL_POINTS = 20
EVAL_EXAMPLES = 1000
#: Members evaluated together: a batch of activations that stays in cache (a 2× faster evaluation
#: than all members at once on the digits MLP, measured by bench/lab_engine.py).
EVAL_CHUNK = 12
DIVERGED = 1e6  # a loss this many times the initial one counts as divergence


@dataclass
class RunResult:
    """One member's run. Histories are sampled at ``EVAL_POINTS`` evenly spaced steps."""

    optimizer: str
    lr: float | None
    seed: int
    steps: list[int] = field(default_factory=list)
    grad_equiv: list[float] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    test_loss: float = math.nan
    test_accuracy: float | None = None
    diverged: bool = False
    trajectory: list[list[float]] | None = None
    vectorized: bool = False
    line_search_failures: int = 0  # steps whose line search failed (parameters restored)

    @property
    def final_train_loss(self) -> float:
        return math.inf if self.diverged or not self.train_loss else self.train_loss[-1]

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RunResult:
        d = dict(d)
        if d.get("test_loss") is None:
            d["test_loss"] = math.nan
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


def _finish(result: RunResult, task: Task, model: nn.Module) -> None:
    with torch.no_grad():
        out = model(task.x_test)
        result.test_loss = float(task.loss(out, task.y_test))
        if task.classification:
            result.test_accuracy = _accuracy(out, task.y_test)


def run_member(problem: Problem, spec: OptimizerSpec, lr: float | None, seed: int, quick: bool,
               budget_seconds: float = 60.0, device: str = "cpu") -> RunResult:
    """Train one member with the optimizer class itself, in a plain PyTorch loop, on ``device``."""
    task = problem.build(seed, quick).to(device)
    model = task.model
    opt = spec.make(model.parameters(), lr)
    n = len(task.x_train)
    order = _order(n, seed).to(device)
    x_eval, y_eval = task.x_train[:EVAL_EXAMPLES], task.y_train[:EVAL_EXAMPLES]
    result = RunResult(spec.name, lr, seed)
    points = _eval_points(task.steps)
    spent, start, first = 0.0, time.perf_counter(), None
    track = [] if task.trajectory_2d else None
    at_theta = getattr(opt, "at_theta", None)

    def evaluate(step: int) -> bool:
        nonlocal first
        with torch.no_grad(), (at_theta() if at_theta else _null()):
            loss = float(task.loss(model(x_eval), y_eval))
            if track is not None:
                track.append([float(v) for v in next(model.parameters()).detach().flatten()[:2]])
        first = loss if first is None else first
        result.steps.append(step)
        result.grad_equiv.append(spent)
        result.wall.append(time.perf_counter() - start)
        result.train_loss.append(loss)
        if not math.isfinite(loss) or loss > DIVERGED * max(abs(first), 1e-12):
            result.diverged = True
        return result.diverged

    if evaluate(0):
        return result
    for step in range(1, task.steps + 1):
        if spec.kind == "first":
            idx = _batch_indices(order, step - 1, task.batch_size)
            x, y = task.x_train[idx], task.y_train[idx]
            opt.zero_grad()
            task.loss(model(x), y).backward()
            opt.step()
            spent += len(idx) / n
        elif spec.kind == "full_batch":
            opt.zero_grad()
            task.loss(model(task.x_train), task.y_train).backward()
            opt.step()
            spent += 1.0
        else:
            def closure():
                out = model(task.x_train)
                loss = task.loss(out, task.y_train)
                return (loss, out) if spec.closure_output else loss
            try:
                with warnings.catch_warnings():
                    # expected events of these methods, counted in their state; not printed over the progress bar
                    warnings.simplefilter("ignore", LineSearchWarning)
                    warnings.simplefilter("ignore", CurvatureSkipWarning)
                    opt.step(closure)
            except Exception:  # noqa: BLE001 - a closure error (non-finite loss) ends the run as diverged
                result.diverged = True
                break
            st = opt.state[next(model.parameters())]
            spent = st.get("func_evals", 0) + 2 * st.get("curvature_products", 0)
            result.line_search_failures = st.get("line_search_failures", 0)
        if step in points or step == task.steps:
            if evaluate(step):
                break
        if time.perf_counter() - start > budget_seconds:
            evaluate(step)
            break
    result.trajectory = track
    if not result.diverged:
        with (at_theta() if at_theta else _null()):
            _finish(result, task, model)
    return result


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


def run_vectorized(problem: Problem, spec: OptimizerSpec, lrs: list[float], seeds: list[int],
                   quick: bool, device: str = "cpu") -> list[RunResult]:
    """All (lr, seed) members of one first-order optimizer in one process, stacked, on ``device``."""
    members = [(lr, s) for lr in lrs for s in seeds]
    tasks = {s: problem.build(s, quick).to(device) for s in seeds}
    task = tasks[seeds[0]]
    model = task.model
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = {n: torch.stack([dict(tasks[s].model.named_parameters())[n].detach() for _, s in members]).clone()
              for n in names}
    proto = spec.make([nn.Parameter(torch.zeros(1))], lrs[0])
    base_group = {k: v for k, v in proto.param_groups[0].items() if k != "params"}
    groups = []  # (lo, hi, group) per learning rate: members are ordered by lr, then seed
    for i, lr in enumerate(lrs):
        groups.append((i * len(seeds), (i + 1) * len(seeds), {**base_group, "lr": lr}))
    state_names = proto._state_names(base_group)  # type: ignore[attr-defined]
    state = {sn: {n: torch.zeros_like(params[n]) for n in names} for sn in state_names}
    for lo, hi, group in groups:  # state that does not start at 0 (delta-bar-delta's rates)
        for sn in state_names:
            for n in names:
                state[sn][n][lo:hi] = proto._init_buffer(sn, params[n][lo:hi], group)  # type: ignore[attr-defined]
    lookahead = proto._uses_interim_point(base_group)  # type: ignore[attr-defined]
    # one update for all members: the learning rate as one (members, 1, …, 1) tensor per parameter
    rates = torch.tensor([lr for lr, _ in members], device=device)
    member_group = {**base_group, "lr": [rates.view(-1, *[1] * (params[n_].dim() - 1)) for n_ in names]}

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
        return torch.cat([eval_all({k: v[i:i + EVAL_CHUNK] for k, v in p.items()}, x, y)
                          for i in range(0, len(members), EVAL_CHUNK)])
    n = len(task.x_train)
    orders = torch.stack([_order(n, s) for _, s in members]).to(device)
    batch = n if spec.kind == "full_batch" else task.batch_size
    x_eval, y_eval = task.x_train[:EVAL_EXAMPLES], task.y_train[:EVAL_EXAMPLES]
    results = [RunResult(spec.name, lr, s, vectorized=True) for lr, s in members]
    tracks: list[list[list[float]]] | None = [[] for _ in members] if task.trajectory_2d else None
    first: Tensor | None = None
    points = _eval_points(task.steps)
    start = time.perf_counter()

    def theta() -> dict[str, Tensor]:
        if not lookahead:
            return params
        disp = proto._velocity_displacement(member_group, [state["velocity"][n_] for n_ in names])  # type: ignore[attr-defined]
        return {n_: params[n_] - d for n_, d in zip(names, disp)}  # θ = θ̃ − αv

    def evaluate(step: int) -> None:
        nonlocal first
        with torch.no_grad():
            th = theta()
            losses = eval_fn(th, x_eval, y_eval)
        first = losses.clone() if first is None else first
        bad = ~torch.isfinite(losses) | (losses > DIVERGED * first.abs().clamp_min(1e-12))
        for i, r in enumerate(results):
            r.steps.append(step)
            r.grad_equiv.append(step * batch / n)
            r.wall.append(time.perf_counter() - start)
            r.train_loss.append(float(losses[i]))
            r.diverged = r.diverged or bool(bad[i])
            if tracks is not None:
                tracks[i].append([float(v) for v in th[names[0]][i].flatten()[:2]])

    evaluate(0)
    for step in range(1, task.steps + 1):
        start_ = ((step - 1) * batch) % n  # the same position for every member, each in its own order
        idx = orders[:, torch.arange(start_, start_ + batch, device=orders.device) % n]
        grads, _ = step_fn(params, task.x_train[idx], task.y_train[idx])
        with torch.no_grad():  # one multi-tensor update for all members (measured faster than a fused
            # C++ call per learning rate: 36 calls' overhead exceeds the memory traffic saved)
            proto._update(member_group, [params[n_] for n_ in names],  # type: ignore[attr-defined]
                          [grads[n_] for n_ in names], {sn: [state[sn][n_] for n_ in names] for sn in state_names},
                          [step] * len(names), lookahead)
        if step in points or step == task.steps:
            evaluate(step)
    th = theta()
    with torch.no_grad():
        forward = vmap(lambda p: functional_call(model, p, (task.x_test,)))
        outs = torch.cat([forward({k: v[i:i + EVAL_CHUNK] for k, v in th.items()})
                          for i in range(0, len(members), EVAL_CHUNK)])
    for i, r in enumerate(results):
        if tracks is not None:
            r.trajectory = tracks[i]
        if not r.diverged:
            r.test_loss = float(task.loss(outs[i], task.y_test))
            if task.classification:
                r.test_accuracy = _accuracy(outs[i], task.y_test)
    return results
