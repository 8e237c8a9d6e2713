"""Your own workload in the lab (issue 26 §1): a Workload named by import path races under the lab's
protocol beside the book's optimizers; a broken one is named in one line and the others race; a
report never imports the workloads its run directory names."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import pathlib
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

import user_workloads
from deepdescent.cli import app
from deepdescent.lab import optimizers, problems, protocol, study
from deepdescent.lab.workload import Workload, WorkloadError, check

TESTS = pathlib.Path(__file__).resolve().parent


def _replayed_sgd(w: Workload, lr: float, seed: int) -> float:
    """A plain PyTorch loop: the seeded model, ``budget`` full-batch steps of torch.optim.SGD."""
    torch.manual_seed(seed)
    model = w.model()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    x, y = w.train
    for _ in range(int(w.budget)):
        opt.zero_grad()
        w.loss(model(x), y).backward()
        opt.step()
    with torch.no_grad():
        return float(w.loss(model(x), y))


def test_a_workload_races_under_the_protocol_and_each_member_is_a_plain_training_run():
    """Every member of SGD's grid (vectorized: all members stacked) ends where a plain loop with
    torch.optim.SGD at that learning rate and seed ends: the seed drives the model's
    initialization, the budget the number of steps, the data are the workload's."""
    w = user_workloads.full_batch()
    prob = problems.problem("user_workloads:full_batch")
    assert prob.workload and prob.name == "user_workloads:full_batch"
    runs = study.run_race(prob, optimizers.optimizer("SGD"), protocol.Protocol(budget=3, seeds=2), "sqlite://")
    assert len(runs["grid"]) >= 6 and all(r.vectorized for r in runs["grid"])
    for r in runs["grid"]:
        assert r.grad_equiv[-1] == w.budget and r.budget == w.budget
        expected = _replayed_sgd(w, r.lr, r.seed)
        if math.isfinite(expected) and expected < 1e3:
            assert r.final_train_loss == pytest.approx(expected, rel=1e-4, abs=1e-6), (r.lr, r.seed)
    assert len({r.train_loss[0] for r in runs["grid"]}) == 2  # two seeds, two initializations


@pytest.mark.parametrize("name,message", [
    ("user_workloads:not_a_workload", "is int, not a deepdescent.lab.workload.Workload"),
    ("user_workloads:returns_a_dict", "is dict, not a deepdescent.lab.workload.Workload"),
    ("user_workloads:wrong_train", r"train must be \(inputs, targets\).*shapes \(5, 2\) and \(4,\)"),
    ("user_workloads:no_parameters", "the model has no trainable parameters"),
    ("user_workloads:batch_too_large", r"batch_size=9; valid: an integer in \[1, 8\]"),
    ("user_workloads:not_a_scalar", r"returned \(2,\); expected a scalar tensor"),
    ("user_workloads:factory_raises", r"user_workloads:factory_raises\(\) raised FileNotFoundError: data/train.pt"),
    ("user_workloads:nope", "cannot import problem 'user_workloads:nope': AttributeError"),
    ("no_such_package.workloads:mine", "cannot import problem .*ModuleNotFoundError"),
    ("user_workloads:x;import os", "unknown problem"),
])
def test_a_broken_workload_is_named_with_what_is_wrong(name, message):
    with pytest.raises(ValueError, match=message):
        problems.problem(name)


@pytest.mark.parametrize("field,value,message", [
    ("budget", 0, r"budget=0; valid: a number of gradient-equivalents in \(0, 100000\]"),
    ("budget", float("nan"), "budget=nan"),
    ("floor", float("inf"), "floor=inf; valid: a finite number"),
    ("batch_size", True, "batch_size=True"),
    ("loss", "mse", "loss is str, not callable"),
    ("test", (torch.zeros(3, 2),), "test must be .* got a tuple of Tensor"),
    ("eval_examples", 0, r"eval_examples=0; valid: an integer ≥ 1"),
    ("measure_examples", 2.5, r"measure_examples=2.5; valid: an integer ≥ 1"),
    ("stack", "yes", "stack='yes'; valid: True or False"),
    ("lower_is_better", 1, "lower_is_better=1; valid: True or False"),
    ("metric", "mae", "metric is str, not callable"),
    ("metric", lambda out, t: out, r"metric\(model\(inputs\), targets\) returned \(2, 3\); expected a number"),
])
def test_each_field_of_a_workload_is_checked(field, value, message):
    w = dataclasses.replace(user_workloads.full_batch(), **{field: value})
    with pytest.raises(WorkloadError, match=message):
        check("mine", w)


def test_a_nonfinite_loss_at_initialization_is_refused():
    w = dataclasses.replace(user_workloads.full_batch(), loss=lambda out, y: out.sum() * math.nan)
    with pytest.raises(WorkloadError, match="loss at initialization is nan"):
        check("mine", w)


def test_the_bench_races_a_workload_beside_lab_problems_and_leaves_out_broken_ones(tmp_path, monkeypatch):
    """One line per broken workload (failing at its check, or raising inside training), the others
    race; a model torch.func cannot batch races member by member and says so."""
    out = tmp_path / "run"
    broken = ["user_workloads:wrong_train", "user_workloads:factory_raises", "no_such_package.workloads:mine"]
    args = ["bench", "--problem", "user_workloads:blobs", "--problem", "saddle", "--problem", "user_workloads:stateful",
            "--problem", "user_workloads:fails_in_training", *[a for b in broken for a in ("--problem", b)],
            "--optimizer", "SGD", "--optimizer", "Adam", "--budget", "2", "--seeds", "1", "--workers", "1",
            "--no-report", "--out", str(out)]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "250"})
    text = " ".join(result.output.split())
    assert result.exit_code == 0, result.output
    for name in broken:
        assert f"'{name}'" in text and f"{name}" not in json.loads((out / "meta.json").read_text())["problems"]
    assert text.count("left out of this bench") == len(broken) + 2  # + fails_in_training × (SGD, Adam)
    assert "user_workloads:fails_in_training/SGD: failed: RuntimeError: CUDA out of memory (simulated)" in text
    meta = json.loads((out / "meta.json").read_text())
    assert meta["problems"] == ["user_workloads:blobs", "saddle", "user_workloads:stateful",
                                "user_workloads:fails_in_training"]
    described = meta["problems_described"]["user_workloads:blobs"]
    assert described == {"challenge": "", "description": "three blobs, 2-16-3 MLP", "floor": 0.0,
                         "classification": True, "batch_size": 32, "fingerprint": described["fingerprint"]}
    assert re.fullmatch("[0-9a-f]{12}", described["fingerprint"])
    assert "user_workloads:blobs — challenge not stated" in text and "saddle — saddle points" in text
    assert "Traceback" not in result.output


def _bench_command(problem: str, out: pathlib.Path) -> tuple[list[str], dict[str, str]]:
    """`deepdescent bench` of SGD on a workload of tests/user_workloads.py in a new process (2 lrs, 1 seed)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), *sys.path])}
    return [sys.executable, "-m", "deepdescent.cli", "bench", "--problem", problem, "--optimizer", "SGD", "--budget",
            "2", "--seeds", "1", "--workers", "1", "--no-report", "--out", str(out)], env


def test_the_report_of_a_workload_run_imports_nothing_the_folder_names(tmp_path):
    """A run directory is often someone else's: its meta.json names a workload module planted in
    the folder, and `report` (run from inside it) must not import it."""
    out = tmp_path / "run"
    cmd, env = _bench_command("user_workloads:blobs", out)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    planted = out / "imported.txt"
    (out / "user_workloads.py").write_text(f"open({str(planted)!r}, 'w').write('imported')\n")
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-m", "deepdescent.cli", "report", "."], cwd=out, env=clean,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert not planted.exists()
    page = (out / "report.html").read_text()
    assert "user_workloads:blobs" in page and "three blobs, 2-16-3 MLP" in page


def test_a_workload_registered_under_the_entry_point_group_races_by_its_name(tmp_path, monkeypatch):
    """An installed package that registers `blobs3` under 'deepdescent.problems' (a dist-info on the path)."""
    info = tmp_path / "site" / "user_workloads-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: user-workloads\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[deepdescent.problems]\nblobs3 = user_workloads:blobs\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    prob = problems.problem("blobs3")
    assert prob.workload and prob.name == "blobs3" and prob.description == "three blobs, 2-16-3 MLP"
    assert problems.is_workload("blobs3") and not problems.is_workload("saddle")
    with pytest.raises(ValueError, match="'deepdescent.problems'"):
        problems.problem("blobs4")


def test_a_dataloader_or_a_dataset_is_read_once_into_tensors_in_its_own_order():
    """The lab draws its own seeded minibatches: a shuffling DataLoader is read through its dataset
    in index order (the same data in every process, so the same runs and fingerprint), its batch
    size taken; a map-style Dataset is stacked; an iterable of batches is read in its order."""
    w = check("mine", user_workloads.from_loader())
    x, y = w.train
    expected_x, expected_y = user_workloads._blobs(256, 0)
    assert w.batch_size == 32 and torch.equal(x, expected_x) and torch.equal(y, expected_y)
    batches = [(expected_x[i:i + 100], expected_y[i:i + 100]) for i in range(0, 256, 100)]
    assert torch.equal(check("mine", dataclasses.replace(w, train=iter(batches))).train[0], expected_x)
    assert torch.equal(w.test[0], user_workloads._blobs(128, 1)[0]) and w.test[1].dtype == torch.long
    tensors = torch.utils.data.TensorDataset(expected_x, expected_y)  # its tensors taken as they are
    assert check("mine", dataclasses.replace(w, train=tensors)).train[0] is expected_x


def _broken_batches():
    yield torch.zeros(2, 2), torch.zeros(2, dtype=torch.long)
    raise OSError("the shard is gone")


@pytest.mark.parametrize("train,message", [
    (iter([]), "train yields no examples"),
    ([1, 2, 3], r"train must be \(inputs, targets\)"),
    (iter([torch.zeros(3)]), "train yields Tensor; expected \\(inputs, targets\\) pairs"),
    (_broken_batches(), "iterating train raised OSError: the shard is gone"),
])
def test_a_loader_that_yields_nothing_or_no_pairs_is_named(train, message):
    """Each failure of a loader is one WorkloadError naming the workload (its own exception's type
    and first line when the user's iterator raises)."""
    w = dataclasses.replace(user_workloads.full_batch(), train=train)
    with pytest.raises(WorkloadError, match=message):
        check("mine", w)


def test_the_fingerprint_follows_the_data_the_model_and_the_loss():
    from deepdescent.lab.workload import fingerprint

    w = check("mine", user_workloads.blobs())
    assert fingerprint(w) == fingerprint(check("mine", user_workloads.blobs()))
    x, y = w.train
    nudged = x.clone()
    nudged[3, 1] += 1e-6
    assert fingerprint(dataclasses.replace(w, train=(nudged, y))) != fingerprint(w)
    assert fingerprint(dataclasses.replace(w, loss=torch.nn.functional.nll_loss)) != fingerprint(w)
    wider = dataclasses.replace(w, model=lambda: torch.nn.Sequential(torch.nn.Linear(2, 17), torch.nn.Tanh(),
                                                                     torch.nn.Linear(17, 3)))
    assert fingerprint(wider) != fingerprint(w)
    assert fingerprint(dataclasses.replace(w, batch_size=16)) != fingerprint(w)


def test_an_edited_workload_races_again_and_keeps_the_other_version_s_results(tmp_path):
    out = tmp_path / "run"
    cmd, env = _bench_command("user_workloads:edited", out)
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout + first.stderr
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)  # unchanged: nothing reruns
    assert "changed since" not in again.stdout and "1 of 1 races already stored" in " ".join(again.stdout.split())
    edited = subprocess.run(cmd, env={**env, "DEEPDESCENT_TEST_DATA_SEED": "1"}, capture_output=True, text=True,
                            timeout=600)
    assert edited.returncode == 0, edited.stdout + edited.stderr
    said = " ".join(edited.stdout.split())
    assert "user_workloads:edited changed since the results in" in said and "its races run again" in said
    from deepdescent.lab import storage

    names = storage.study_names(f"sqlite:///{out / 'results.db'}")
    versions = {n.rsplit("-w", 1)[1] for n in names if n.startswith("user_workloads:edited/SGD/grid/")}
    assert len(versions) == 2  # both versions' results stored, apart


def test_a_loader_is_read_no_further_than_the_lab_holds(monkeypatch):
    from deepdescent.lab import workload as wl

    monkeypatch.setattr(wl, "MATERIALIZED_MAX", 5)
    endless = ((torch.zeros(2, 2), torch.zeros(2, dtype=torch.long)) for _ in iter(int, 1))  # never ends
    with pytest.raises(WorkloadError, match="train yields more than 5 examples"):
        check("mine", dataclasses.replace(user_workloads.full_batch(), train=endless))


def test_a_workload_s_own_metric_is_recorded_by_both_engines_and_judged_in_its_direction():
    """metric=MAE (lower is better): every run records it at each point and on the whole held-out
    set (checked by hand), the stacked and the one-at-a-time engines alike, and the held-out target
    is set and reached in its direction."""
    from deepdescent.lab import engine, verdict

    prob, spec = problems.problem("user_workloads:with_metric"), optimizers.optimizer("Adam")
    one = engine.run_member(prob, spec, 0.01, 0, True)
    stacked = engine.run_vectorized(prob, spec, [0.01], [0], True)[0]
    assert one.metric_name == stacked.metric_name == "MAE" and one.metric_lower_is_better
    assert len(one.test_metric_curve) == len(one.train_loss) and one.test_metric_curve[-1] == one.test_metric
    assert stacked.test_metric_curve == pytest.approx(one.test_metric_curve, rel=1e-4)
    task = prob.build(0, True)  # the seeded model before any step
    with torch.no_grad():
        start = float((task.model(task.x_test) - task.y_test).abs().mean())
    assert one.test_metric_curve[0] == pytest.approx(start, rel=1e-6)
    race = {"Adam": {"grid": [one], "tuned": [one], "defaults": [one], "instruments": []}}
    metric, tgt = verdict.held_out_target(race, accuracy=False)
    assert metric == "MAE" and tgt == pytest.approx(one.test_metric * 1.05, rel=1e-6)
    assert verdict.time_to_held_out(one, "MAE", tgt) <= one.grad_equiv[-1]
    assert verdict.held_out("user_workloads:with_metric", race).startswith("Held-out target (MAE ≤ ")


def test_a_catalog_loads_a_workload_once_and_keeps_it_to_itself(monkeypatch):
    """The workloads one command loaded live in its Catalog: asked again, the catalog answers
    without calling the factory; another catalog (another command) loads its own; a description
    never replaces a loaded workload, and a catalog that only described one knows its recorded facts."""
    from deepdescent.lab.catalog import Catalog

    calls = []
    monkeypatch.setattr(user_workloads, "counted", lambda: calls.append(1) or user_workloads.blobs(), raising=False)
    first = Catalog()
    p = first.problem("user_workloads:counted")
    assert first.problem("user_workloads:counted") is p and len(calls) == 1
    assert first.describe("user_workloads:counted", {"floor": 9.0}) is p  # loaded: it says more
    assert Catalog().problem("user_workloads:counted") is not p and len(calls) == 2
    reader = Catalog()
    with pytest.raises(ValueError, match="neither loaded nor described"):
        reader.known("user_workloads:counted")
    reader.describe("user_workloads:counted", {**problems.description(p), "floor": 0.25})
    assert len(calls) == 2 and reader.floor("user_workloads:counted") == 0.25
    assert reader.classification("user_workloads:counted") is p.classification
    assert reader.batch_size("user_workloads:counted") == p.batch_size and reader.floor("saddle") == -1.0
