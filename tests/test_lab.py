"""The lab and the CLI end to end on a tiny suite (seconds)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import warnings
from dataclasses import replace
from html.parser import HTMLParser

import pytest
import torch
from typer.testing import CliRunner

from deepdescent.cli import app
from deepdescent.algorithms import REGISTRY
from deepdescent.lab import engine, optimizers, problems, protocol, suites
from deepdescent.second_order import CurvatureSkipWarning, LineSearchWarning

TINY = ["--problem", "saddle", "--problem", "cliff", "--optimizer", "Adam", "--optimizer", "L-BFGS",
        "--budget", "3", "--seeds", "2"]


_VARIANTS = [v.name for spec in REGISTRY.values() for v in spec.variants]  # every first-order racer
_PROBLEMS = ["digits_mlp", "quadratic_deep", "deep_linear", "cliff"]


@pytest.mark.parametrize("problem,optimizer", [(_PROBLEMS[i % len(_PROBLEMS)], name)
                                               for i, name in enumerate(_VARIANTS)])
def test_vectorized_members_match_member_by_member_training(problem, optimizer, monkeypatch):
    # the same execution path (eager multi-tensor ops) on both sides, so that only the stacking
    # differs: the fused kernel rounds differently, which deep or chaotic problems amplify
    monkeypatch.setenv("DEEPDESCENT_NO_FUSED", "1")
    warnings.simplefilter("ignore", RuntimeWarning)
    spec, prob = optimizers.optimizer(optimizer), problems.problem(problem)
    lrs = [spec.default_lr / 10, spec.default_lr]
    vec = engine.run_vectorized(prob, spec, lrs, [0, 1], quick=True, budget=5)
    for r in vec:
        ref = engine.run_member(prob, spec, r.lr, r.seed, quick=True, budget=5)
        assert r.diverged == ref.diverged and r.grad_equiv == ref.grad_equiv and r.budget == ref.budget == 5
        assert r.steps == ref.steps
        if optimizer == "DeltaBarDelta":
            # its sign tests turn a rounding difference into a different rate now and then: the
            # transient differs where the rates overshoot, the end point agrees
            assert r.train_loss[-1] == pytest.approx(ref.train_loss[-1], rel=1e-3)
        else:
            assert r.train_loss == pytest.approx(ref.train_loss, rel=2e-4, abs=1e-6), (r.lr, r.seed)


class _Checker(HTMLParser):
    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self):
        super().__init__()
        self.stack, self.images, self.errors = [], 0, []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images += 1
            if not dict(attrs).get("src", "").startswith("data:image/png;base64,"):
                self.errors.append("an image is not embedded")
        elif tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(f"unbalanced </{tag}>")


def test_bench_end_to_end_report_and_rebuild(tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["bench", *TINY, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "saddle" in result.output and "L-BFGS" in result.output
    page = (out / "report.html").read_text()
    checker = _Checker()
    checker.feed(page)
    assert not checker.errors and not checker.stack and checker.images >= 7
    assert "Reference: saddle point f(0, 0) = 0, minima f(0, ±√2) = −1" in page and "comparable: analytic" in page
    assert "<th>LS fails</th>" in page
    for stem in ["performance_profile", "saddle_curves", "saddle_sensitivity", "saddle_trajectories",
                 "cliff_trajectories", "saddle_instruments", "saddle_spectrum", "cliff_spectrum"]:
        assert (out / "figures" / f"{stem}.png").stat().st_size > 5000
        assert (out / "figures" / f"{stem}.svg").is_file()
    (out / "report.html").unlink()
    meta = json.loads((out / "meta.json").read_text())
    assert meta["database"] == "results.db" and str(tmp_path) not in json.dumps(meta)  # relative to the run
    meta["optimizers"].append("SGD")  # asked for, never run: left out of the report, no empty study made
    (out / "meta.json").write_text(json.dumps(meta))
    out = out.rename(tmp_path / "moved")  # a copied or moved run reads its own results
    studies = _studies(out / "results.db")
    rebuilt = CliRunner().invoke(app, ["report", str(out)])
    assert rebuilt.exit_code == 0, rebuilt.output
    assert (out / "report.html").is_file() and _studies(out / "results.db") == studies


def _studies(db) -> int:
    with sqlite3.connect(db) as con:
        return con.execute("SELECT COUNT(*) FROM studies").fetchone()[0]


def test_failed_line_searches_are_counted_not_printed():
    problem, spec = problems.problem("saddle"), optimizers.optimizer("L-BFGS")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = engine.run_member(problem, spec, None, 0, True, budget=300)
    assert not [w for w in caught if issubclass(w.category, (LineSearchWarning, CurvatureSkipWarning))]
    # the same optimizer in a plain loop, over the same budget, warns once per failed line search
    task = problem.build(0, True)
    opt = spec.make(task.model.parameters(), None)
    state = opt.state[task.model.theta]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        while state.get("func_evals", 0) < 300:
            opt.step(lambda: task.loss(task.model(task.x_train), task.y_train))
    failures = sum(issubclass(w.category, LineSearchWarning) for w in caught)
    assert failures > 10 and run.line_search_failures == failures
    assert engine.RunResult.from_json(run.to_json()).line_search_failures == failures


def _complete(db):
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT s.study_name, p1.param_value, p2.param_value FROM trials t "
                           "JOIN studies s ON s.study_id = t.study_id "
                           "JOIN trial_params p1 ON p1.trial_id = t.trial_id AND p1.param_name = 'lr' "
                           "JOIN trial_params p2 ON p2.trial_id = t.trial_id AND p2.param_name = 'seed' "
                           "WHERE t.state = 'COMPLETE'").fetchall()
    return rows


def test_killed_bench_resumes_without_losing_or_repeating(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "deepdescent.cli", "bench", *TINY, "--out", str(out), "--no-report"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = out / "results.db"
    deadline = time.time() + 120
    before: list = []
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
        if db.exists():
            try:
                before = _complete(db)
            except sqlite3.Error:
                continue
            if len(before) >= 6:
                break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert before, "the bench finished no trial before the kill"
    before = _complete(db)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "deepdescent report" in done.stdout and not (out / "report.html").exists()  # --no-report
    after = _complete(db)
    assert len(after) == len(set(after))  # nothing repeated
    assert set(before) <= set(after)  # nothing lost
    # per problem, Adam: its grid (3 lrs and any extension) × 2 seeds, the default lr being a grid
    # point, + 1 instrumented run; L-BFGS: 2 seeds
    grids = {p: {lr for name, lr, _ in after if name.startswith(f"{p}/Adam/grid/")} for p in ("saddle", "cliff")}
    assert all(len(g) >= 3 for g in grids.values())
    assert len(after) == sum(2 * len(g) + 1 + 2 for g in grids.values())


def test_ctrl_c_prints_one_line_with_the_command_to_resume(tmp_path):
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) with two workers: one
    line naming the command that resumes, no worker's traceback."""
    out = tmp_path / "run"
    # digits_mlp too: enough work left when the interrupt comes, however fast the machine
    cmd = [sys.executable, "-m", "deepdescent.cli", "bench", *TINY, "--problem", "digits_mlp", "--workers", "2",
           "--out", str(out)]
    # as from a terminal: SIGINT at its default (a runner started in the background, `cmd &`, would
    # hand down an ignored SIGINT, and Python keeps it ignored)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
        try:
            if len(_complete(out / "results.db")) >= 2:
                break
        except sqlite3.Error:
            continue
    assert proc.poll() is None, "the race ended before the interrupt"
    os.killpg(proc.pid, signal.SIGINT)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, output
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output
    lines = [line for line in output.splitlines() if "resume with" in line]
    assert len(lines) == 1 and "deepdescent bench --problem saddle" in lines[0] and str(out) in lines[0]


@pytest.mark.parametrize("search", ["qmc", "tpe"])
def test_sampled_searches_store_and_resume(search, tmp_path):
    args = ["bench", "--problem", "saddle", "--optimizer", "Adam", "--budget", "3", "--seeds", "2",
            "--search", search, "--out", str(tmp_path / "run"), "--no-report"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    import optuna

    url = f"sqlite:///{tmp_path / 'run' / 'results.db'}"
    name = next(s.study_name for s in optuna.get_all_study_summaries(url) if f"/{search}/" in s.study_name)
    trials = optuna.load_study(study_name=name, storage=url).get_trials()
    lrs = [t.params["lr"] for t in trials]
    assert len(trials) == 3 and len(set(lrs)) == 3 and all(1e-5 <= lr <= 1e-1 for lr in lrs)
    again = CliRunner().invoke(app, args)  # everything is stored: nothing is proposed again
    assert again.exit_code == 0
    assert len(optuna.load_study(study_name=name, storage=url).get_trials()) == 3


@pytest.mark.parametrize("args,message", [
    (["--problem", "sadle"], "unknown problem 'sadle'"),
    (["--optimizer", "Adamm"], "unknown optimizer 'Adamm'"),
    (["--suite", "medium"], "unknown suite 'medium'"),
    (["--device", "tpu"], "device='tpu'; valid: cpu, cuda, cuda:N"),
    (["--device", "cuda:x"], "device='cuda:x'; valid"),
    (["--search", "random"], "unknown search 'random'"),
    (["--problem", "adding:T=1"], "T='1': must be an integer from 2 to 10000"),
    (["--problem", "adding:T=1000000000"], "T='1000000000': must be an integer from 2 to 10000"),
    (["--problem", "deep_linear:depth=1000000000"], "depth='1000000000': must be an integer from 1 to 1000"),
    (["--problem", "adding:depth=3"], "is not key=value"),
    (["--problem", "deep_linear:scheme=he"], "scheme='he'"),
])
def test_bench_bad_arguments(args, message, tmp_path):
    result = CliRunner().invoke(app, ["bench", *args, "--out", str(tmp_path / "x")])
    assert result.exit_code != 0 and message in _unboxed(result.output)


def _unboxed(output: str) -> str:
    """The text of typer's error box, its lines joined (a long message wraps at any word)."""
    return " ".join(line.strip(" │╭╮╰╯─") for line in output.splitlines())


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is available")
def test_bench_on_cuda_without_a_gpu_says_so(tmp_path):
    result = CliRunner().invoke(app, ["bench", *TINY, "--device", "cuda", "--out", str(tmp_path / "x")])
    assert result.exit_code != 0 and "no CUDA device is available" in result.output


def _cpu_tensors(obj, seen=None) -> list[str]:
    """CPU tensors an object holds: attributes, closure cells, and functions it closes over."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return []
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return [str(tuple(obj.shape))] if obj.device.type == "cpu" else []
    found = []
    cells = [c.cell_contents for c in (getattr(obj, "__closure__", None) or ())]
    for v in cells + list(getattr(obj, "__dict__", {}).values()):
        if isinstance(v, torch.Tensor) or callable(v):
            found += _cpu_tensors(v, seen)
    return found


@pytest.mark.parametrize("name", list(problems.PROBLEMS))
def test_every_problem_moves_to_another_device_whole(name):
    """``--device``: Task.to moves the model, the data and every tensor the loss holds (checked on
    PyTorch's meta device, so that no GPU is needed); a tensor left on the CPU would fail on a GPU."""
    task = problems.problem(name).build(0, True).to("meta")
    assert all(p.device.type == "meta" for p in task.model.parameters())
    assert all(t.device.type == "meta" for t in (task.x_train, task.y_train, task.x_test, task.y_test))
    assert _cpu_tensors(task.loss) == [], f"{name}: the loss holds CPU tensors"
    loss = task.loss(task.model(task.x_train[:4]), task.y_train[:4])
    assert loss.device.type == "meta" and loss.dim() == 0
    proto = protocol.Protocol(device="cuda:1")
    assert protocol.Protocol.from_tag(proto.tag()) == proto and protocol.Protocol.from_tag(protocol.Protocol().tag()).device == "cpu"


def test_unwritable_out_and_corrupt_storage(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = CliRunner().invoke(app, ["bench", *TINY, "--out", str(blocker / "sub")])
    assert result.exit_code != 0 and "cannot write" in result.output
    out = tmp_path / "run"
    out.mkdir()
    (out / "results.db").write_bytes(b"this is not a database" * 100)
    result = CliRunner().invoke(app, ["bench", *TINY, "--out", str(out)])
    assert result.exit_code != 0
    assert "cannot open the result storage" in str(result.exception) + result.output


def test_parameterized_problems():
    adding = problems.problem("adding:T=100")
    assert adding.name == "adding:T=100" and adding.build(0, True).x_train.shape[1:] == (100, 2)
    assert problems.problem("adding").build(0, False).x_train.shape[1] == 50
    deep = problems.problem("deep_linear:scheme=normalized,depth=3")
    assert deep.name == "deep_linear:depth=3,scheme=normalized"  # canonical: keys sorted
    model = deep.build(0, True).model
    assert len(model) == 3
    w = model[0].weight.detach()
    assert not torch.allclose(w @ w.T, torch.eye(16), atol=0.1)  # Glorot, not orthogonal
    w = problems.problem("deep_linear:depth=3").build(0, True).model[0].weight.detach()
    torch.testing.assert_close(w @ w.T, torch.eye(16), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="takes no parameters"):
        problems.problem("saddle:T=3")


def _fake_runs(losses: list[float]) -> dict[str, list[engine.RunResult]]:
    run = engine.RunResult("SGD", 0.1, 0, steps=[0, 10, 20, 30], grad_equiv=[0.0, 1.0, 2.0, 3.0],
                           train_loss=losses)
    return {"grid": [run], "tuned": [run], "defaults": [run]}


def test_depth_study_uses_one_target_for_every_depth():
    from deepdescent.lab import report

    results = {"deep_linear:depth=2,scheme=orthogonal": {"SGD": _fake_runs([1.0, 0.2, 0.1, 0.1])},
               "deep_linear:depth=8,scheme=orthogonal": {"SGD": _fake_runs([1.0, 0.9, 0.5, 0.2])},
               "digits_mlp": {"SGD": _fake_runs([2.0, 1.0, 0.5, 0.4])}}
    common, table = report.depth_study(results)
    assert common == pytest.approx(0.2 * 1.05 + 1e-8)  # the looser of the two targets (depth 8's)
    assert table == {"orthogonal": {2: {"SGD": 1.0}, 8: {"SGD": 3.0}}}  # epochs; depth 2 by its own target: 2


def test_depth_suite_end_to_end(tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["bench", "--problem", "deep_linear:depth=2", "--problem", "deep_linear:depth=4",
                                      "--optimizer", "SGD", "--budget", "2", "--seeds", "1", "--workers", "1",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    page = (out / "report.html").read_text()
    assert "<h2>Depth and initialization</h2>" in page
    assert (out / "figures" / "depth_initialization.png").stat().st_size > 5000
    assert (out / "figures" / "deep_linear-depth-4_curves.svg").is_file()
    assert suites.suite("depth").problems("cpu")[0] == "deep_linear:depth=2,scheme=orthogonal"


def test_report_of_a_non_run_directory(tmp_path):
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert result.exit_code != 0 and "not a `deepdescent bench` run directory" in result.output
    (tmp_path / "meta.json").write_text('{"protocol": "v1-quick-b3-s2-grid", "problems": [], "optimizers": []}')
    result = CliRunner().invoke(app, ["report", str(tmp_path)], env={"COLUMNS": "400"})
    assert result.exit_code != 0 and "holds results of protocol v1" in result.output


def test_list_shows_problems_and_optimizers():
    result = CliRunner().invoke(app, ["list"])
    assert result.exit_code == 0
    for name in ["quadratic_deep", "adding", "HessianFree", "RMSProp+Nesterov"]:
        assert name in result.output


@pytest.mark.parametrize("name", list(problems.PROBLEMS))
def test_every_problem_builds_deterministically(name):
    a, b = problems.problem(name).build(0, True), problems.problem(name).build(0, True)
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        assert p.equal(q)
    assert a.x_train.equal(b.x_train)
    loss = a.loss(a.model(a.x_train[: a.batch_size]), a.y_train[: a.batch_size])
    assert loss.isfinite()


def test_bench_with_two_worker_processes(tmp_path):
    out = tmp_path / "run"
    args = ["bench", "--problem", "saddle", "--optimizer", "Adam", "--optimizer", "L-BFGS", "--budget", "2",
            "--seeds", "1", "--workers", "2", "--out", str(out), "--no-report"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = _complete(out / "results.db")
    grid = [r for r in rows if "/Adam/grid/" in r[0]]
    assert len(grid) >= 2  # 2 lrs, and any extension
    assert len(rows) == len(set(rows)) == len(grid) + 1 + 1 + 1  # Adam: grid, defaults 1, instruments 1; L-BFGS: 1


def test_the_second_order_suite_races_kfac_and_shampoo_where_they_apply():
    chosen = suites.suite("second_order")
    assert chosen.optimizers() == suites.SECOND_ORDER
    assert chosen.problems("cpu") == suites.suite("quick").problems("cpu")
    kfac, shampoo = optimizers.optimizer("K-FAC"), optimizers.optimizer("Shampoo")
    assert kfac.family == shampoo.family == "second" and not kfac.in_book and kfac.kind == "first"
    assert "K-FAC" not in suites.book()
    from deepdescent.lab import study

    assert not study.applicable(problems.problem("saddle"), kfac, True)  # a parameter vector: no layer to watch
    assert study.applicable(problems.problem("saddle"), shampoo, True)
    assert study.applicable(problems.problem("digits_mlp"), kfac, True)


def test_kfac_trains_a_lab_member_through_its_model():
    """The engine hands K-FAC the model (its layers watched): the member's loss falls, and every
    step was preconditioned (the factors exist for each Linear layer)."""
    made = []
    spec = optimizers.optimizer("K-FAC")
    watching = replace(spec, make=lambda m, lr: made.append(spec.make(m, lr)) or made[-1])
    result = engine.run_member(problems.problem("digits_mlp"), watching, 0.01, 0, True, budget=2)
    assert result.train_loss[-1] < 0.5 * result.train_loss[0] and not result.diverged
    opt = made[0]
    assert len(opt._layers) == 3 and all("factor_A" in opt.state[w] for w in opt._layers)
