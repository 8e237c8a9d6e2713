"""The built-in workloads (issue 26 §2): a ResNet with batch norm, a character Transformer and an
LSTM, each written against the public Workload protocol, at a cpu and a full size; they race in
``--suite workloads``; evaluation is in the model's inference mode; held-out curves are recorded."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from deepdescent.lab import engine, optimizers, problems, protocol, suites, workloads
from deepdescent.lab.workload import Workload, check


@pytest.mark.parametrize("name", list(workloads.BUILTIN))
def test_each_builtin_workload_is_a_public_workload_at_both_sizes(name):
    module = workloads.BUILTIN[name]
    small = check(name, module.workload("cpu"))
    assert isinstance(small, Workload) and small.classification and small.test is not None
    x, y = small.train
    assert len(x) == len(y) and len(small.test[0]) > 0
    torch.manual_seed(0)
    model = small.model()
    with torch.no_grad():
        out = model(x[:3])
    assert out.shape[0] == 3 and math.isfinite(float(small.loss(out, y[:3])))
    big = module.workload("full").model()
    assert sum(p.numel() for p in big.parameters()) > 10 * sum(p.numel() for p in model.parameters())
    p = problems.problem(name)
    assert p.suites == ("workloads",) and p.challenge == module.CHALLENGE and p.description == module.DESCRIPTION


def test_the_workloads_suite_takes_the_full_sizes_on_a_gpu_and_a_wrong_size_is_named():
    chosen = suites.suite("workloads")
    assert chosen.problems("cpu") == list(workloads.BUILTIN)
    assert chosen.problems("cuda") == [f"{n}:size=full" for n in workloads.BUILTIN]
    assert problems.problem("lstm_rows:size=full").name == "lstm_rows:size=full"
    with pytest.raises(ValueError, match="lstm_rows.*size='huge'.*valid: cpu, full"):
        problems.problem("lstm_rows:size=huge")
    assert chosen.optimizers() == suites.WORKLOAD_OPTIMIZERS and chosen.small and (chosen.budget, chosen.seeds) == (6, 2)
    assert protocol.Protocol(suite="workloads").quick and not protocol.Protocol(suite="full").quick


def test_a_batch_norm_model_is_evaluated_in_inference_mode_and_trains_in_training_mode():
    """The ResNet races member by member (batch norm updates buffers in place); its recorded
    training loss is the eval-mode loss of the trained model, and the model trains in training mode."""
    prob, spec = problems.problem("resnet_mnist"), optimizers.optimizer("Adam")
    with pytest.raises(engine.NotVectorizable, match="cannot batch resnet_mnist"):
        engine.run_vectorized(prob, spec, [1e-3], [0], True, budget=0.05)
    run = engine.run_member(prob, spec, 1e-3, 0, True, budget=0.05)
    task = dataclasses.replace(prob.build(0, True), budget=0.05)  # the seeded model, as the engine builds it
    model = task.model
    opt = spec.make(model.parameters(), 1e-3)
    order = engine._order(len(task.x_train), 0)
    for step in range(task.steps):
        idx = engine._batch_indices(order, step, task.batch_size)
        opt.zero_grad()
        task.loss(model(task.x_train[idx]), task.y_train[idx]).backward()
        opt.step()
    assert model.training
    model.eval()
    with torch.no_grad():
        expected = float(task.loss(model(task.x_train[:task.eval_examples]), task.y_train[:task.eval_examples]))
        held = model(task.x_test[:task.eval_examples])
    assert run.train_loss[-1] == pytest.approx(expected, rel=1e-5)
    assert run.test_curve[-1] == pytest.approx(float(task.loss(held, task.y_test[:task.eval_examples])), rel=1e-5)
    assert len(run.test_curve) == len(run.test_accuracy_curve) == len(run.train_loss)


def test_held_out_curves_are_recorded_alike_by_both_engines():
    prob, spec = problems.problem("digits_mlp"), optimizers.optimizer("Momentum")
    stacked = engine.run_vectorized(prob, spec, [0.1], [0], True, budget=2)[0]
    single = engine.run_member(prob, spec, 0.1, 0, True, budget=2)
    assert len(stacked.test_curve) == len(stacked.train_loss) == len(single.test_curve)
    assert stacked.test_curve == pytest.approx(single.test_curve, rel=1e-4)
    assert stacked.test_accuracy_curve == pytest.approx(single.test_accuracy_curve, abs=2e-3)
    assert single.test_curve[-1] == pytest.approx(single.test_loss, rel=1e-6)  # 450 test digits: all evaluated
    assert single.test_accuracy_curve[-1] == pytest.approx(single.test_accuracy, abs=1e-9)


def test_the_workloads_suite_races_and_reports_each_workload(tmp_path, caplog):
    """``bench --suite workloads`` (one optimizer, one learning rate, one seed: the path, not the
    verdict): every workload gets its verdict, its held-out target and its measured panels."""
    from typer.testing import CliRunner

    from deepdescent.cli import app

    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["bench", "--suite", "workloads", "--optimizer", "Adam", "--budget", "1",
                                      "--seeds", "1", "--workers", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    page = (out / "report.html").read_text()
    for name in workloads.BUILTIN:
        assert f"<li><b>{name}</b>: Adam wins" in page
        assert (out / "figures" / f"{name}_spectrum.png").is_file() and (out / "figures" / f"{name}_instruments.png").is_file()
    assert page.count("Held-out target (accuracy ≥") == len(workloads.BUILTIN)
    assert "Which optimizer?" in page
    said = caplog.text
    assert "Adam on resnet_mnist runs member by member: torch.func cannot batch" in said
    assert "char_transformer races member by member (its workload says stack=False)" in said
