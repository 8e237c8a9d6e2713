"""The lab's verdicts: equal compute budgets, no clock in the results, targets that agree with the
tables, grids that bracket the optimum, a profile over every problem, a report that never trains."""

from __future__ import annotations

import math
import time

import pytest
import torch
from rich.console import Console

from deepdescent.lab import engine, optimizers, problems, protocol, report, search, study, suites, verdict
from deepdescent.lab.engine import RunResult


class _Counting:
    """Wraps a problem's loss and counts its calls on the full training set and on minibatches."""

    def __init__(self, problem: problems.Problem) -> None:
        self.full = self.mini = 0
        self.problem = problem

    def build(self, seed: int, quick: bool):
        task = self.problem.build(seed, quick)
        loss, n = task.loss, len(task.x_train)

        def counted(out, y):
            if not torch.is_grad_enabled():  # the recorded points and the test set: measurement, not training
                pass
            elif y.shape[0] == n:
                self.full += 1
            elif y.shape[0] == task.batch_size:
                self.mini += 1
            return loss(out, y)
        task.loss = counted
        return task


def _counted(name: str) -> tuple[_Counting, problems.Problem]:
    counter = _Counting(problems.problem(name))
    return counter, problems.Problem(name, "", "", counter.build)


@pytest.mark.parametrize("name,optimizer", [("digits_mlp", "Adam"), ("deep_linear", "Nesterov"),
                                            ("cliff", "L-BFGS"), ("quadratic_deep", "CG"),
                                            ("digits_mlp", "DeltaBarDelta"), ("cliff", "DampedNewton")])
def test_every_optimizer_spends_the_same_budget(name, optimizer):
    """Gradient-equivalents counted independently (the loss calls on the full batch and on
    minibatches, the curvature products from the optimizer's own counter): every optimizer ends at
    the budget — first-order exactly (to one step), second-order at its first step past it — and its
    result is the last point within it."""
    budget = 6.0
    counter, prob = _counted(name)
    spec = optimizers.optimizer(optimizer)
    run = engine.run_member(prob, spec, spec.default_lr, 0, True, budget=budget)
    task = problems.problem(name).build(0, True)
    n = len(task.x_train)
    spent = counter.mini * task.batch_size / n + counter.full  # the evaluation points use 1000 examples
    assert run.budget == budget and not run.diverged
    if spec.kind == "second":
        products = 0
        if optimizer == "DampedNewton":  # n Hessian-vector products per step, 2 each
            products = 2 * sum(p.numel() for p in task.model.parameters()) * (run.steps[-1])
        spent += products
        assert run.grad_equiv[-1] == pytest.approx(spent)
        assert spent >= budget  # it ran until the budget was spent
        assert run.grad_equiv[run.within_budget() - 1] <= budget
    else:
        assert spent <= budget and budget - spent < task.step_cost(task.batch_size if spec.kind == "first" else n)
        assert run.grad_equiv[-1] == pytest.approx(spent)
    assert run.final_train_loss == run.train_loss[run.within_budget() - 1]


def test_problem_budgets_are_in_gradient_equivalents():
    for name in suites.suite("quick").problems("cpu"):
        task = problems.problem(name).build(0, True)
        full = task.steps_for(len(task.x_train))
        assert task.steps * task.step_cost(task.batch_size) <= task.budget + 1e-9
        assert full == (task.budget if task.oracle else math.floor(task.budget))


def _jumping_clock(monkeypatch):
    """A clock that jumps an hour at every reading: as if the machine were very loaded."""
    now = [time.perf_counter()]

    def clock():
        now[0] += 3600.0
        return now[0]
    monkeypatch.setattr(time, "perf_counter", clock)


def _values(run: RunResult) -> tuple:
    return run.steps, run.grad_equiv, run.train_loss, run.diverged, run.truncated, run.test_loss


@pytest.mark.parametrize("optimizer", ["Adam", "L-BFGS", "HessianFree"])
def test_results_never_depend_on_the_clock_unless_a_time_limit_is_set(optimizer, monkeypatch):
    prob, spec = problems.problem("cliff"), optimizers.optimizer(optimizer)
    quiet = engine.run_member(prob, spec, spec.default_lr, 0, True, budget=4)
    quiet_vec = engine.run_vectorized(prob, spec, [spec.default_lr], [0], True, budget=4) \
        if spec.kind == "first" else None
    _jumping_clock(monkeypatch)
    loaded = engine.run_member(prob, spec, spec.default_lr, 0, True, budget=4)
    assert _values(loaded) == _values(quiet) and not loaded.truncated
    if quiet_vec:
        assert _values(engine.run_vectorized(prob, spec, [spec.default_lr], [0], True, budget=4)[0]) == \
            _values(quiet_vec[0])
    # the limit, when set, cuts after the first step (a second-order step can cost 16 epochs here) and says so
    cut = engine.run_member(prob, spec, spec.default_lr, 0, True, budget=200, time_limit=60.0)
    assert cut.truncated and cut.steps[-1] == 1 and cut.grad_equiv[-1] < 200
    if spec.kind == "first":
        assert engine.run_vectorized(prob, spec, [spec.default_lr], [0], True, budget=4, time_limit=60.0)[0].truncated


def _run(losses: list[float], ge: list[float] | None = None, *, name: str = "SGD", lr: float | None = 0.1,
         seed: int = 0, budget: float = 3.0) -> RunResult:
    ge = ge or [float(i) for i in range(len(losses))]
    return RunResult(name, lr, seed, budget=budget, steps=list(range(len(losses))), grad_equiv=ge,
                     train_loss=losses)


def _race(runs: list[RunResult]) -> dict[str, list[RunResult]]:
    return {"grid": runs, "tuned": runs, "defaults": runs, "instruments": []}


def test_seeds_reaching_the_target_and_times_are_recorded_values():
    # the digits case: a median final loss below the target must not read "never"
    a = _run([1.0, 0.5, 0.02, 0.02], seed=0)
    b = _run([1.0, 0.6, 0.3, 0.0614], seed=1)
    c = _run([1.0, 0.9, 0.5, 0.5], seed=2, name="Momentum")
    race = {"SGD": _race([a, b]), "Momentum": _race([c])}
    tgt, rows = verdict.leaderboard(race)
    assert tgt == pytest.approx(0.0407 * 1.05 + 1e-8)
    sgd = next(r for r in rows if r.optimizer == "SGD")
    assert sgd.final == pytest.approx(0.0407) and sgd.final <= tgt
    assert (sgd.reached, sgd.seeds, sgd.ge_to_target) == (1, 2, 2.0)
    # with two seeds reaching it at 1 and 2 epochs, the time is one of them, not 1.5
    d = _run([1.0, 0.01, 0.01, 0.01], seed=1)
    assert verdict.leaderboard({"SGD": _race([a, d])})[1][0].ge_to_target in (1.0, 2.0)


def test_a_run_that_bounces_off_the_target_does_not_lead():
    bounced = _run([1.0, 1e-6, 0.0049, 0.0049], name="RMSProp+Nesterov", lr=0.01)
    steady = _run([1.0, 0.5, 1e-10, 1.8e-15], name="Nesterov", lr=0.01)
    slow = _run([1.0, 0.5, 0.2, 0.1], name="SGD")
    _, rows = verdict.leaderboard({"RMSProp+Nesterov": _race([bounced]), "Nesterov": _race([steady]),
                                   "SGD": _race([slow])})
    assert [r.optimizer for r in rows] == ["Nesterov", "RMSProp+Nesterov", "SGD"]
    assert rows[0].ge_to_target == 2.0 and rows[1].reached == 0 and rows[1].ge_to_target == math.inf
    # a point past the budget never counts: the result is the last point within it
    late = _run([1.0, 0.5, 0.4, 1e-9], ge=[0.0, 1.0, 2.0, 3.5], name="L-BFGS", lr=None)
    assert late.final_train_loss == 0.4 and verdict.time_to_target(late, 0.45) == 2.0


def test_the_performance_profile_counts_a_problem_not_run_as_failed():
    one = {"SGD": _race([_run([1.0, 0.1, 0.01, 0.01])]), "Newton": _race([_run([1.0, 0.001, 0.001, 0.001],
                                                                                  name="Newton", lr=None)])}
    two = {"SGD": _race([_run([1.0, 0.1, 0.01, 0.01])])}  # Newton could not run here (too many parameters)
    ratios = verdict.performance_profile({"a": one, "b": two})
    assert ratios["SGD"] == [2.0, 1.0] and ratios["Newton"] == [1.0, math.inf]


class _FakeEngine:
    """Members whose final loss is (log₁₀ lr − log₁₀ best)², with the best learning rate chosen."""

    def __init__(self, best: float) -> None:
        self.best, self.calls = best, []

    def __call__(self, race, lrs, seeds):
        self.calls.append(list(lrs))
        return [_run([1.0, (math.log10(lr) - math.log10(self.best)) ** 2], name=race.spec.name, lr=lr, seed=s)
                for lr in lrs for s in seeds]


@pytest.mark.parametrize("best,interior", [(0.3, True), (1e-9, False), (2e-3, True)])
def test_the_grid_is_extended_until_it_brackets_the_best_learning_rate(best, interior, tmp_path, monkeypatch):
    fake = _FakeEngine(best)
    monkeypatch.setattr(search, "_members", fake)
    url, spec, prob = f"sqlite:///{tmp_path / 'r.db'}", optimizers.optimizer("Adam"), problems.problem("saddle")
    proto = protocol.Protocol(budget=6, seeds=2)
    grid, done = search.grid_search(search.Race(prob, spec, proto, url), [0, 1])
    base = optimizers.lr_grid(spec.default_lr, 6)
    chosen = search.best_lr(grid, done, [0, 1])
    assert set(base) <= set(grid) and grid == sorted(grid)
    assert (grid[0] < chosen < grid[-1]) == interior
    if interior:
        assert abs(math.log10(chosen / best)) <= 0.4 + 1e-9  # within half a grid step (0.8 decades)
    else:
        assert len(grid) == 6 + protocol.MAX_EXTENSION and chosen == grid[0]
    assert len(fake.calls[0]) == 6 and all(len(c) == 1 for c in fake.calls[1:])  # one point per extension
    again, _ = search.grid_search(search.Race(prob, spec, proto, url, run=False), [0, 1])  # the report's read
    assert again == grid and len(fake.calls) == len(grid) - 5
    row = verdict.row("Adam", {"grid": [done[(lr, s)] for lr in grid for s in (0, 1)],
                               "tuned": [done[(chosen, s)] for s in (0, 1)], "defaults": []}, 1.0)
    assert row.lr_interior == interior and row.grid_points == len(grid)


def test_ties_do_not_push_the_grid_outwards():
    runs = {(lr, 0): _run([1.0, 0.0], lr=lr) for lr in (1e-3, 1e-2, 1e-1)}
    assert search.best_lr([1e-3, 1e-2, 1e-1], runs, [0]) == 1e-2


@pytest.fixture(scope="module")
def tiny_race(tmp_path_factory):
    """A real race stored and read back: saddle and cliff, two first-order and two second-order."""
    url = f"sqlite:///{tmp_path_factory.mktemp('race') / 'r.db'}"
    proto = protocol.Protocol(budget=3, seeds=2)
    results = {}
    for p in ("saddle", "cliff"):
        for o in ("SGD", "Adam", "Newton", "L-BFGS"):
            study.run_race(problems.problem(p), optimizers.optimizer(o), proto, url)
            results.setdefault(p, {})[o] = study.run_race(problems.problem(p), optimizers.optimizer(o), proto, url,
                                                           run=False)
    return results


def test_no_row_below_its_target_reads_never(tiny_race):
    for race in tiny_race.values():
        tgt, rows = verdict.leaderboard(race)
        assert rows[0].reached >= 1  # the target is met by the best
        for r in rows:
            if r.final <= tgt:
                assert r.reached >= 1 and math.isfinite(r.ge_to_target), r
            if r.reached:
                assert r.ge_to_target <= max(run.budget for run in race[r.optimizer]["tuned"])


def test_the_same_budget_for_every_optimizer_of_a_problem(tiny_race):
    for name, race in tiny_race.items():
        budget = problems.problem(name).build(0, True).budget
        for tracks in race.values():
            for run in tracks["grid"] + tracks["defaults"] + tracks["instruments"]:
                assert run.budget == budget
                assert run.grad_equiv[run.within_budget() - 1] <= budget


def test_the_report_never_trains(tiny_race, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the report computed a gradient")
    monkeypatch.setattr(torch.Tensor, "backward", refuse)
    monkeypatch.setattr(torch.autograd, "grad", refuse)
    page = report.write(tiny_race, tmp_path, {"suite": "test", "protocol": "v3"}).read_text()
    assert "<h2 id='verdict'>Verdict</h2>" in page and page.index("Verdict") < page.index("Performance profile")
    assert (tmp_path / "figures" / "saddle_instruments.png").is_file()  # Fig. 8.1 from the recorded run
    assert "Newton</b> (Alg. 8.8): the box as written" in page  # the raced variant is named


def test_a_race_report_beside_science_records_starts_with_published_results(tiny_race, tmp_path):
    from deepdescent.lab import science

    science.run_suite(tmp_path, "tiny", only=["saddles"])
    page = report.write(tiny_race, tmp_path, {"suite": "test", "protocol": "v3"}).read_text()
    assert "<h2 id='published'>Published results</h2>" in page
    assert page.index("Published results") < page.index("<h2 id='verdict'>Verdict</h2>")
    assert "Saddle points" in page and (tmp_path / "figures" / "science-saddles.png").is_file()


def test_terminal_tables_fit_80_columns(tiny_race):
    wide = _run([2.3, 0.5, 0.1, 0.0001234], name="RMSProp+Nesterov", lr=0.00063)  # the widest cells
    wide.test_loss, wide.test_accuracy = 0.0975, 0.978
    broken = _run([2.3, math.inf], name="DeltaBarDelta", lr=2.5e-5)
    broken.diverged, broken.test_accuracy = True, 0.1
    console = Console(width=80, record=True, color_system=None)
    report.terminal({**tiny_race, "digits_mlp": {"RMSProp+Nesterov": _race([wide]),
                                                 "DeltaBarDelta": _race([broken])}}, console)
    text = console.export_text()
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80
    assert "2/2" in text and "wins" in text


def test_targets_are_relative_to_the_problems_floor():
    """A large irreducible loss (the noisy quadratic's) must not make the target trivial: 5% of the
    distance to the known floor, not of the loss."""
    task = problems.problem("quadratic_deep").build(0, True)
    theta = task.x_train.mean(0)  # the exact minimizer of the training loss
    assert task.floor == pytest.approx(float(task.loss(theta.expand(len(task.x_train), -1), task.x_train)), rel=1e-5)
    assert task.floor > 50  # DeepOBS: ½ E[(x − x̄)ᵀQ(x − x̄)] with x ~ N(0, 0.36 I), tr Q ≈ 470: about 85
    race = {"SGD": _race([_run([300.0, task.floor + 0.2])])}
    assert verdict.board("quadratic_deep", race)[0] == pytest.approx(task.floor + 0.2 + 0.01, abs=1e-3)
    assert verdict.board("digits_mlp", {"SGD": _race([_run([2.0, 0.1])])})[0] == pytest.approx(0.105)


def test_protocol_tags_round_trip_with_a_time_limit():
    for proto in (protocol.Protocol(), protocol.Protocol(time_limit=2.5, device="cuda:1"), protocol.Protocol(time_limit=60)):
        assert protocol.Protocol.from_tag(proto.tag()) == proto
    assert protocol.Protocol(time_limit=60).tag() != protocol.Protocol().tag()
    with pytest.raises(ValueError, match="time_limit=0"):
        protocol.Protocol(time_limit=0)


def test_only_a_batching_failure_falls_back_to_member_by_member(monkeypatch, caplog):
    """What torch.func cannot batch runs member by member, said in the log; any other error of the
    vectorized engine propagates (a blanket fallback would hide an engine bug)."""
    import logging

    with pytest.raises(RuntimeError) as caught:
        torch.func.vmap(lambda x: x.sum().item())(torch.zeros(2, 3))
    assert engine._vmap_failure(caught.value)
    assert not engine._vmap_failure(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))

    prob, spec, proto = problems.problem("saddle"), optimizers.optimizer("Adam"), protocol.Protocol(budget=3)
    members = []
    monkeypatch.setattr(engine, "run_member", lambda p, s, lr, seed, q, **kw: members.append((lr, seed)) or
                        _run([1.0, 0.5], name=s.name, lr=lr, seed=seed))

    def unbatchable(*args, **kwargs):
        raise engine.NotVectorizable("torch.func cannot batch saddle's model: vmap: .item()")
    monkeypatch.setattr(engine, "run_vectorized", unbatchable)
    with caplog.at_level(logging.WARNING, logger="deepdescent.lab"):
        runs = search._members(search.Race(prob, spec, proto, "unused"), [0.1, 0.01], [0, 1])
    assert len(runs) == 4 and members == [(0.1, 0), (0.1, 1), (0.01, 0), (0.01, 1)]
    assert "Adam on saddle runs member by member" in caplog.text

    def broken(*args, **kwargs):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")
    monkeypatch.setattr(engine, "run_vectorized", broken)
    with pytest.raises(RuntimeError, match="mat1 and mat2"):
        search._members(search.Race(prob, spec, proto, "unused"), [0.1], [0])


def _held(losses: list[float], accuracy: list[float], *, name: str = "SGD", seed: int = 0) -> RunResult:
    run = _run([1.0, 0.5, 0.4, 0.3], name=name, seed=seed)
    run.test_curve, run.test_accuracy_curve = losses, accuracy
    return run


def test_the_held_out_target_is_the_best_final_accuracy_less_5_percent_of_its_distance_to_1_first_reached():
    """AlgoPerf's validation target: the first recorded point that meets it counts (a run may dip
    below it later); a classifier's metric is accuracy, another's held-out loss."""
    adam = [_held([2, 1, 0.5, 0.4], [0.5, 0.91, 0.85, 0.90], name="Adam", seed=s) for s in (0, 1)]
    sgd = [_held([2, 1.5, 1.0, 0.8], [0.5, 0.6, 0.7, 0.8], seed=s) for s in (0, 1)]
    race = {"Adam": _race(adam), "SGD": _race(sgd)}
    metric, tgt = verdict.held_out_target(race, accuracy=True)
    assert metric == "accuracy" and tgt == pytest.approx(0.90 - 0.05 * 0.10, abs=1e-8)
    assert verdict.time_to_held_out(adam[0], metric, tgt) == 1.0  # 0.91 at epoch 1, though 0.85 at 2
    assert verdict.time_to_held_out(sgd[0], metric, tgt) == math.inf
    metric, tgt = verdict.held_out_target(race, accuracy=False)
    assert metric == "loss" and tgt == pytest.approx(0.4 * 1.05, abs=1e-8)
    assert verdict.time_to_held_out(adam[0], metric, tgt) == 3.0
    adam[0].diverged = True
    assert verdict.time_to_held_out(adam[0], metric, tgt) == math.inf
    old = _run([1.0, 0.5, 0.4, 0.3])  # records of an older protocol: no held-out curve, no target
    assert verdict.held_out_target({"SGD": _race([old])}, accuracy=True) is None


def test_the_overall_answer_ranks_by_problems_solved_then_speed_and_states_its_caveats():
    fast = {"SGD": _race([_run([1.0, 0.5, 0.3, 0.3])]), "Adam": _race([_run([1.0, 0.01, 0.01, 0.01], name="Adam")])}
    slow = {"SGD": _race([_run([1.0, 0.5, 0.01, 0.01])]), "Adam": _race([_run([1.0, 0.9, 0.8, 0.8], name="Adam")])}
    both = {"SGD": _race([_run([1.0, 0.2, 0.1, 0.01])]), "Adam": _race([_run([1.0, 0.01, 0.01, 0.01], name="Adam")])}
    said = verdict.overall({"saddle": fast, "cliff": slow, "rosenbrock": both})
    assert said[0].startswith("Across the 3 problems, Adam solved 2, within 2× of the fastest on 2")
    assert "it did not solve cliff (cliffs)" in said[0]
    assert said[1] == "Next: SGD, 2 solved, within 2× of the fastest on 1"
    assert said[2].startswith("Caveats: every learning rate was tuned per problem")
    assert verdict.overall({"saddle": fast}) == []  # one problem: its verdict says it all


def test_a_final_loss_never_reads_as_the_target_it_missed():
    """Adam on saddle ended 2e-5 above T: the table must not read "final −1, T = −1, 0/2"."""
    assert verdict.apart(-0.999999, [-0.999977, -1.0, math.inf]) == 6
    assert f"{-0.999977:.{verdict.apart(-0.999999, [-0.999977])}g}" != f"{-0.999999:.6g}"
    assert verdict.apart(0.5, [0.25, 0.75]) == 4  # already apart: the usual 4 digits


def test_every_lab_optimizer_has_a_colour_of_its_own():
    colours = [report.style(n)["color"] for n in optimizers.OPTIMIZERS]
    assert len(set(colours)) == len(colours)


def test_the_clock_sentence_times_the_members_run_alone_and_leaves_stacked_ones_out():
    """Seconds to the target at each tuned run's pace (not its whole run's seconds): K-FAC's run
    took longer than BFGS's but reached the target sooner; vectorized members (their time shared)
    are named and left out; one that does not reach the target is said so."""
    def timed(losses, seconds, name, vectorized=False):
        run = _run(losses, name=name, lr=None)
        run.seconds, run.vectorized = seconds, vectorized
        return run
    race = {
        "Adam": _race([timed([1.0, 0.5, 0.1, 0.01], 0.3, "Adam", vectorized=True)]),  # sets the target
        "K-FAC": _race([timed([1.0, 0.01, 0.01, 0.01], 6.0, "K-FAC")]),  # 1 epoch of 3 at 2 s an epoch
        "BFGS": _race([timed([1.0, 0.5, 0.01, 0.01], 3.6, "BFGS")]),  # 2 epochs at 1.2 s an epoch
        "CG": _race([timed([1.0, 0.9, 0.8, 0.7], 1.0, "CG")]),
    }
    text = verdict.clock("saddle", race)
    assert text.index("K-FAC 2 s") < text.index("BFGS 2.4 s"), text
    assert "not reached by most seeds: CG" in text and "Adam trained stacked" in text
    alone = {k: race[k] for k in ("Adam", "BFGS")}
    assert verdict.clock("saddle", alone) is None  # one method trained alone: nothing to compare
