"""Optimizers from elsewhere in the lab (issue 13, §3): an import path or an entry point races
under the same protocol as the book's methods, member by member; closure optimizers like L-BFGS."""

from __future__ import annotations

import json
import math
import pathlib
import sys

import pytest
from typer.testing import CliRunner

from deepdescent.cli import app
from deepdescent.lab import engine, optimizers, problems, protocol, study

TESTS = pathlib.Path(__file__).resolve().parent


def test_an_import_path_with_hyperparameters_is_a_canonical_name():
    spec = optimizers.optimizer("user_optim:SignSGD(momentum=0.5, lr=0.02)")
    assert spec.name == "user_optim:SignSGD(lr=0.02, momentum=0.5)" and spec.default_lr == 0.02
    assert spec.kind == "first" and spec.foreign and not spec.in_book and spec.algorithm is None
    opt = spec.make([__import__("torch").nn.Parameter(__import__("torch").zeros(2))], 0.3)
    assert opt.param_groups[0]["lr"] == 0.3 and opt.param_groups[0]["momentum"] == 0.5
    assert optimizers.optimizer("user_optim:ClosureOnly").kind == "second"
    assert optimizers.optimizer("torch.optim.LBFGS").kind == "second"


@pytest.mark.parametrize("name,message", [
    ("user_optim:SignSGD(beta=1)", "has no hyperparameter beta; its hyperparameters: lr, momentum"),
    ("user_optim:Nope", "cannot import optimizer"),
    ("torch.nn.Linear", "not a torch.optim.Optimizer subclass"),
    ("user_optim:SignSGD(lr=)", "NAME=VALUE"),
    ("Adamm", "unknown optimizer 'Adamm'"),
])
def test_a_bad_optimizer_name_says_what_is_wrong(name, message):
    with pytest.raises(ValueError, match=message):
        optimizers.optimizer(name)


def test_a_foreign_optimizer_runs_the_same_protocol_member_by_member():
    """Same budget, same record points, same grid as Adam on the same problem."""
    prob, proto = problems.problem("saddle"), protocol.Protocol(budget=2, seeds=1)
    ours = engine.run_member(prob, optimizers.optimizer("Adam"), 0.01, 0, True)
    theirs = engine.run_member(prob, optimizers.optimizer("user_optim:SignSGD"), 0.01, 0, True)
    assert theirs.grad_equiv == ours.grad_equiv and theirs.budget == ours.budget
    assert theirs.train_loss[-1] < theirs.train_loss[0]
    closure = engine.run_member(prob, optimizers.optimizer("user_optim:ClosureOnly"), None, 0, True)
    assert closure.grad_equiv[-1] == pytest.approx(closure.budget)  # one gradient-equivalent per closure call
    assert closure.train_loss[-1] < closure.train_loss[0]
    assert study.run_race(prob, optimizers.optimizer("user_optim:SignSGD"), proto, "sqlite://")["tuned"]


@pytest.fixture
def entry_point(tmp_path, monkeypatch):
    """An installed package that registers SignSGD under 'deepdescent.optimizers' (a dist-info on the path)."""
    info = tmp_path / "site" / "user_optimizers-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: user-optimizers\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[deepdescent.optimizers]\nSignDescent = user_optim:SignSGD\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path / 'site'}:{TESTS}")
    return "SignDescent"


def test_bench_races_a_user_class_by_import_path_and_by_entry_point(entry_point, tmp_path):
    runner = CliRunner()
    listed = runner.invoke(app, ["list"], terminal_width=120)
    assert listed.exit_code == 0 and "SignDescent" in listed.output and "user_optim:SignSGD" in listed.output
    out = tmp_path / "run"
    result = runner.invoke(app, ["bench", "--problem", "saddle", "--optimizer", "Adam", "--optimizer",
                                 "user_optim:SignSGD", "--hparam", "user_optim:SignSGD@momentum=0.5", "--lr-center", "0.02",
                                 "--optimizer", entry_point, "--budget", "2", "--seeds", "1", "--workers", "2",
                                 "--out", str(out)], terminal_width=100)
    assert result.exit_code == 0, result.output
    assert "SignSGD(…) †" in result.output and "SignDescent(…) †" in result.output
    meta = json.loads((out / "meta.json").read_text())
    assert meta["optimizers"] == ["Adam", "user_optim:SignSGD(lr=0.02, momentum=0.5)", "SignDescent(lr=0.02)"]
    page = (out / "report.html").read_text()
    assert "Not methods of chapter 8" in page and "user_optim:SignSGD(lr=0.02, momentum=0.5)" in page
    assert "SignDescent(lr=0.02)" in page and "Adam" in page
    rebuilt = runner.invoke(app, ["report", str(out)])
    assert rebuilt.exit_code == 0, rebuilt.output


@pytest.mark.parametrize("args,message", [
    (["--optimizer", "Adam", "--hparam", "momentum=0.5"], "apply to optimizers given by import path"),
    (["--optimizer", "user_optim:SignSGD", "--hparam", "momentum"], "expected NAME=VALUE"),
    (["--optimizer", "user_optim:SignSGD", "--hparam", "other@momentum=1"], "is not one of the import-path"),
    (["--optimizer", "user_optim:SignSGD", "--hparam", "beta=1"], "has no hyperparameter beta"),
    (["--optimizer", "Adam", "--budget", "100000000"], "less than or equal to 200"),
    (["--optimizer", "Adam", "--seeds", "100000000"], "less than or equal to 100"),
    (["--optimizer", "user_optim:SignSGD", "--lr-center", "1e308"], "1e+308 is not in (0, 1e+06]"),
    (["--optimizer", "user_optim:SignSGD", "--lr-center", "0"], "0.0 is not in (0, 1e+06]"),
    (["--optimizer", "user_optim:SignSGD", "--lr-center", "nan"], "nan is not in (0, 1e+06]"),
])
def test_bad_hparams_are_refused_before_anything_runs(args, message, tmp_path):
    result = CliRunner().invoke(app, ["bench", "--problem", "saddle", *args, "--out", str(tmp_path / "r")],
                                terminal_width=200)
    flat = " ".join(result.output.replace("│", " ").split())  # the error panel wraps its lines
    assert result.exit_code == 2 and message in flat
    assert not (tmp_path / "r").exists()


def test_schedule_free_is_evaluated_at_its_averaged_point():
    """Schedule-Free's eval() point is what the lab records (the engine switches modes around
    every evaluation), so its runs are comparable with the others'."""
    pytest.importorskip("schedulefree")
    spec = optimizers.optimizer("schedulefree.AdamWScheduleFree")
    run = engine.run_member(problems.problem("saddle"), spec, spec.default_lr, 0, True)
    assert not run.diverged and math.isfinite(run.test_loss) and run.train_loss[-1] < run.train_loss[0]
    assert "schedulefree" in sys.modules


def test_an_optimizer_with_train_and_eval_modes_is_stepped_in_train_and_evaluated_in_eval():
    import user_optim

    user_optim.WithModes.log.clear()
    run = engine.run_member(problems.problem("saddle"), optimizers.optimizer("user_optim:WithModes"), 0.01, 0, True)
    log = user_optim.WithModes.log
    assert not run.diverged and log[0] == "train"
    assert log.count("eval") == len(run.steps) + 1  # every record point, and the test evaluation
    assert all(a != b for a, b in zip(log, log[1:]))  # each evaluation returns to training mode


def test_report_never_imports_what_a_run_directory_names(tmp_path, monkeypatch):
    """A run directory is often someone else's: `report` reads the stored names and results and
    imports nothing they name — not a module on the path, not one planted in the directory."""
    out = tmp_path / "run"
    runner = CliRunner()
    result = runner.invoke(app, ["bench", "--problem", "saddle", "--optimizer", "Adam", "--optimizer",
                                 "user_optim:SignSGD", "--lr-center", "0.02", "--budget", "2", "--seeds", "1",
                                 "--out", str(out)], terminal_width=100)
    assert result.exit_code == 0, result.output
    witness = tmp_path / "imported"
    for folder in (tmp_path / "lib", out):  # a module on sys.path, and one planted in the run directory
        folder.mkdir(exist_ok=True)
        (folder / "planted_mod.py").write_text(f"open({str(witness)!r}, 'a').write('x')\nimport torch\n"
                                              "class Opt(torch.optim.SGD):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path / "lib"))
    monkeypatch.chdir(out)
    monkeypatch.syspath_prepend(".")  # as `cd DIR && python -m deepdescent.cli report .` runs
    meta = json.loads((out / "meta.json").read_text())
    meta["optimizers"] += ["planted_mod:Opt", "planted_mod.Opt(lr=0.1)", "this.x"]
    meta["described"]["planted_mod:Opt"] = {"book": "planted_mod", "default_lr": 0.1, "kind": "first", "note": "",
                                            "in_book": False, "foreign": True}
    (out / "meta.json").write_text(json.dumps(meta))
    rebuilt = runner.invoke(app, ["report", "."])
    assert rebuilt.exit_code == 0, rebuilt.output
    assert not witness.exists() and "planted_mod" not in sys.modules and "this" not in sys.modules
    page = (out / "report.html").read_text()
    assert "user_optim:SignSGD(lr=0.02)" in page and "Adam" in page


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "run"
    result = CliRunner().invoke(app, ["bench", "--problem", "saddle", "--optimizer", "Adam", "--budget", "2",
                                      "--seeds", "1", "--no-report", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.parametrize("edit,message", [
    (lambda m: [m], "it holds a list, not an object"),
    (lambda m: {**m, "protocol": 4}, "'protocol' must be a string"),
    (lambda m: {**m, "protocol": "v6-quick"}, "is not one bench writes"),
    (lambda m: {**m, "problems": "saddle"}, "'problems' must be a list of names"),
    (lambda m: {**m, "problems": ["no_such_problem"]}, "problem 'no_such_problem'"),
    (lambda m: {**m, "optimizers": [1, 2]}, "'optimizers' must be a list of names"),
    (lambda m: {**m, "database": "../../elsewhere.db"}, "'database' must be a file name in the run directory"),
    (lambda m: {k: v for k, v in m.items() if k not in ("database", "storage")}, "neither 'database' nor"),
    (lambda m: {**m, "suite": "science", "experiments": ["../x"], "scale": "cpu"}, "experiments ['../x']"),
    (lambda m: {**m, "described": ["not", "a", "mapping"]}, None),  # ignored: the names describe themselves
])
def test_a_hand_edited_meta_json_gives_one_line_naming_the_field(finished_run, tmp_path, edit, message):
    """meta.json of a real run, edited by hand: `report` names the wrong field and what is valid, in
    one message, without a traceback (a field it can do without is ignored)."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    meta = json.loads((out / "meta.json").read_text())
    (out / "meta.json").write_text(json.dumps(edit(meta)))
    result = CliRunner().invoke(app, ["report", str(out)], terminal_width=300)
    flat = " ".join(result.output.replace("│", " ").split())
    assert "Traceback" not in result.output and not isinstance(result.exception, (KeyError, TypeError, AttributeError))
    if message is None:
        assert result.exit_code == 0, result.output
    else:
        assert result.exit_code == 2 and message in flat, result.output


def test_a_meta_json_that_is_not_text_is_called_corrupt(finished_run, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    (out / "meta.json").write_bytes(b"\xff\xfe\x00garbage")
    result = CliRunner().invoke(app, ["report", str(out)], terminal_width=300)
    assert result.exit_code == 2 and "is corrupt" in " ".join(result.output.replace("│", " ").split()), result.output


@pytest.mark.parametrize("where", ["figure", "page"])
def test_a_full_disk_while_writing_the_report_says_the_results_are_stored(finished_run, tmp_path, monkeypatch,
                                                                         where):
    """The disk fills while `report` writes a figure or the page: one line saying the results are
    stored and how to write the report later; the previous report.html is left whole."""
    import errno
    import shutil

    import matplotlib.figure

    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    assert CliRunner().invoke(app, ["report", str(out)]).exit_code == 0
    before = (out / "report.html").read_bytes()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    if where == "figure":
        monkeypatch.setattr(matplotlib.figure.Figure, "savefig", full)
    else:
        monkeypatch.setattr(pathlib.Path, "write_text", full)
    result = CliRunner().invoke(app, ["report", str(out)])
    lines = [line for line in result.output.splitlines() if line.strip()]
    flat = " ".join(result.output.split())
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert lines[-1].startswith("error:") and "No space left on device" in flat and "results are stored" in flat
    assert (out / "report.html").read_bytes() == before
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
