"""The §8.2 challenges measured along a race (issue 26 §3): λmax, λmin, gᵀHg and per-layer norms
against exact Hessians in float64; measuring never changes a run; the verdict's measured reasons
come from the numbers and say nothing where nothing was measured."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from deepdescent.lab import challenges, engine, optimizers, problems
from deepdescent.lab.verdict import measured


def _least_squares(seed: int = 0):
    """½-free least squares, mean((Xw − y)²): its Hessian is exactly 2XᵀX/n."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(40, 5, generator=g, dtype=torch.float64) * torch.tensor([3.0, 1.0, 0.5, 0.1, 0.01],
                                                                            dtype=torch.float64)
    y = torch.randn(40, 1, generator=g, dtype=torch.float64)
    model = nn.Linear(5, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.randn(1, 5, generator=g, dtype=torch.float64))
    return model, nn.functional.mse_loss, x, y


def test_the_spectrum_and_figure_8_1_match_the_exact_hessian():
    model, loss, x, y = _least_squares()
    m = challenges.measure(model, loss, x, y)
    h = 2 * x.T @ x / len(x)
    w = model.weight.detach().reshape(-1)
    grad = 2 * x.T @ (x @ w - y.reshape(-1)) / len(x)
    eig = torch.linalg.eigvalsh(h)
    assert m.lambda_max == pytest.approx(float(eig[-1]), rel=1e-6)
    assert m.lambda_min == pytest.approx(float(eig[0]), rel=1e-3, abs=1e-9)
    assert m.converged
    assert m.grad_norm == pytest.approx(float(grad.norm()), rel=1e-9)
    assert m.gTHg == pytest.approx(float(grad @ h @ grad), rel=1e-9)
    assert m.layers == pytest.approx([float(grad.norm())], rel=1e-9)


def test_a_saddle_is_measured_as_negative_curvature():
    """x² − y² + y⁴/4 at (1, 10⁻³): H = diag(2, −2 + 3y²)."""
    task = problems.problem("saddle").build(0, True)
    with torch.no_grad():
        next(task.model.parameters()).copy_(torch.tensor([1.0, 1e-3]))
    m = challenges.measure(task.model, task.loss, task.x_train[:challenges.EXAMPLES], task.y_train[:challenges.EXAMPLES])
    assert m.lambda_max == pytest.approx(2.0, rel=1e-4) and m.lambda_min == pytest.approx(-2.0 + 3e-6, rel=1e-4)
    no_spectrum = challenges.measure(task.model, task.loss, task.x_train, task.y_train, spectrum=False)
    assert math.isnan(no_spectrum.lambda_max) and not math.isnan(no_spectrum.grad_norm)


@pytest.mark.parametrize("optimizer,lr", [("SGD", 0.05), ("Newton", None)])
def test_measuring_never_changes_the_run(optimizer, lr):
    prob, spec = problems.problem("saddle"), optimizers.optimizer(optimizer)
    plain = engine.run_member(prob, spec, lr, 0, True)
    measured_run = engine.run_member(prob, spec, lr, 0, True, instruments=True)
    assert measured_run.train_loss == plain.train_loss and measured_run.grad_equiv == plain.grad_equiv
    points = len(measured_run.grad_equiv)
    for field in ("grad_norm", "gTHg", "lambda_max", "lambda_min", "lambda_converged", "layer_grad_norms", "grad_peak",
                  "noise_scale", "test_curve", "time_grad_norms"):
        assert len(getattr(measured_run, field)) == points, field
    lam, every = measured_run.lambda_max, challenges.SPECTRUM_EVERY
    assert all(math.isfinite(v) for v in lam[::every]) and math.isfinite(lam[-1])  # every 4th point, and the end
    assert all(math.isnan(v) for i, v in enumerate(lam[:-1]) if i % every)
    assert measured_run.layer_names == ["theta"] or len(measured_run.layer_names) == 1
    if spec.kind == "first":  # the minibatch gradients' peak between points (none before the first point)
        assert math.isnan(measured_run.grad_peak[0]) and all(v > 0 for v in measured_run.grad_peak[1:])
    else:
        assert all(math.isnan(v) for v in measured_run.grad_peak)


def _run(name: str, lr, losses, *, lam_max, lam_min, norms, peaks=None, layers=None, names=None):
    n = len(losses)
    return engine.RunResult(name, lr, 0, budget=float(n - 1), steps=list(range(n)), grad_equiv=[float(i) for i in range(n)],
                            train_loss=list(losses), grad_norm=list(norms), gTHg=[1.0] * n, lambda_max=list(lam_max),
                            lambda_min=list(lam_min), lambda_converged=[True] * n,
                            layer_grad_norms=layers or [[1.0]] * n, layer_names=names or ["w.weight"],
                            grad_peak=list(peaks or [math.nan] * n))


def _race(**runs):
    return {name: {"grid": [r], "tuned": [r], "defaults": [r], "instruments": [r]} for name, r in runs.items()}


def test_the_measured_reasons_name_a_saddle_the_stability_limit_a_cliff_and_layer_spread():
    sgd = _run("SGD", 0.9, [3, 2, 1], lam_max=[2.0, 2.1, 2.2], lam_min=[-1, -1, 0.5], norms=[1, 1, 1],
               peaks=[math.nan, 40.0, 1.0], layers=[[1e-4, 1.0], [1, 1], [1, 1]], names=["0.weight", "2.weight"])
    newton = _run("Newton", None, [3, 3, 3], lam_max=[2, 2, 2], lam_min=[-2, -2, -2], norms=[1, 1e-3, 0.0])
    said = " | ".join(measured("saddle", _race(SGD=sgd, Newton=newton)))
    assert "SGD's tuned lr 0.9 × λmax gives lr·λmax = 1.8 at the start and at most 2 along the run" in said
    assert "Newton ends at a saddle point (§8.2.3): ‖g‖ = 0, λmin = -2 < 0" in said
    assert "SGD met minibatch gradients 40× the norm expected there" in said
    assert "the weight gradients span a factor 1e+04 (0.weight: 0.0001, 2.weight: 1)" in said
    assert "SGD ends" not in said  # its λmin ends positive: no saddle claimed


def test_nothing_measured_says_nothing_and_no_saddle_is_claimed_without_evidence():
    """Flat curvature (|λmin| < 1% of λmax), an unconverged λmin, or a gradient still large: no saddle."""
    plain = _run("SGD", 0.1, [3, 2, 1], lam_max=[1, 1, 1], lam_min=[0, 0, 0], norms=[1, 1, 1])
    unmeasured = {"SGD": {**_race(SGD=plain)["SGD"], "instruments": []}}
    assert measured("saddle", unmeasured) == []
    flat = _run("Newton", None, [3, 3, 3], lam_max=[1, 1, 1], lam_min=[0, 0, -5e-3], norms=[1, 0, 0])
    moving = _run("BFGS", None, [3, 3, 3], lam_max=[1, 1, 1], lam_min=[-1, -1, -1], norms=[1, 0.5, 0.01])
    unsure = _run("CG", None, [3, 3, 3], lam_max=[1, 1, 1], lam_min=[-1, -1, -1], norms=[1, 0, 0])
    unsure.lambda_converged[-1] = False
    said = measured("saddle", _race(Newton=flat, BFGS=moving, CG=unsure))
    assert not any("at a saddle point (§8.2.3): ‖g‖" in s for s in said)
    assert said[-1] == "Not as the chapter says: no measured run ends at a saddle point (§8.2.3)"


# ------------------------------------------------------------------ the noise scale (B_simple)
def _regression(n: int = 512, noise: float = 2.0):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n, 4, generator=g, dtype=torch.float64)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [0.0]], dtype=torch.float64) + noise * torch.randn(n, 1, generator=g,
                                                                                                   dtype=torch.float64)
    model = nn.Linear(4, 1, bias=False).double()
    with torch.no_grad():
        model.weight.zero_()
    return model, x, y


def _per_example_grads(model, x, y):
    """∇ of (xᵀw − y)² for every example, in closed form: 2(xᵀw − y)x."""
    with torch.no_grad():
        return 2 * (model(x) - y) * x


def test_the_noise_scale_is_mcCandlish_s_two_batch_estimator_and_unbiased_in_the_mean():
    """B_simple = tr(Σ)/‖G‖² from the chunk gradients, checked against the same estimator written
    out from closed-form per-example gradients; averaged over shuffles of the data it is within
    15% of the exact tr(Σ)/‖G‖² of all examples."""
    model, x, y = _regression()
    loss = nn.functional.mse_loss
    per = _per_example_grads(model, x, y)
    chunks = per.view(challenges.CHUNKS, -1, 4).mean(1)  # the gradient of each chunk
    b, big = len(x) // challenges.CHUNKS, len(x)
    g_small = chunks.square().sum(1).mean()
    g_big = chunks.mean(0).square().sum()
    signal = (big * g_big - b * g_small) / (big - b)
    trace = (g_small - g_big) / (1 / b - 1 / big)
    assert challenges.noise_scale(model, loss, x, y) == pytest.approx(float(trace / signal), rel=1e-9)

    exact = float((per - per.mean(0)).square().sum(1).mean() / per.mean(0).square().sum())
    g = torch.Generator().manual_seed(0)
    estimates = []
    for _ in range(40):
        perm = torch.randperm(len(x), generator=g)
        estimates.append(challenges.noise_scale(model, loss, x[perm], y[perm]))
    assert sum(estimates) / len(estimates) == pytest.approx(exact, rel=0.15)


def test_no_noise_scale_from_too_few_examples_or_without_signal():
    model, x, y = _regression()
    assert math.isnan(challenges.noise_scale(model, nn.functional.mse_loss, x[:15], y[:15]))  # chunks of 1
    with torch.no_grad():  # at the least-squares solution G = 0 and the estimate of ‖G‖² is not positive
        model.weight.copy_(torch.linalg.lstsq(x, y).solution.T)
    assert math.isnan(challenges.noise_scale(model, nn.functional.mse_loss, x, y))


def test_measuring_a_batch_norm_model_leaves_its_running_statistics_as_they_were():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))
    before = [b.clone() for b in model.buffers()]
    challenges.measure(model, nn.functional.mse_loss, torch.randn(64, 3), torch.randn(64, 1))
    assert all(torch.equal(a, b) for a, b in zip(before, model.buffers()))


def test_the_noise_sentence_compares_b_simple_with_the_minibatch():
    from deepdescent.lab import verdict

    run = _run("SGD", 0.1, [3, 2, 1], lam_max=[1, 1, 1], lam_min=[0, 0, 0], norms=[1, 1, 1])
    run.noise_scale = [900.0, math.nan, 2000.0]
    assert "≈ 9e+02 examples at the start, 2e+03 at the end" in verdict._noise("SGD", run, 32)
    assert "far above the minibatch of 32" in verdict._noise("SGD", run, 32)
    assert "well below the minibatch of 10000" in verdict._noise("SGD", run, 10_000)
    assert "comparable to the minibatch of 1000" in verdict._noise("SGD", run, 1000)
    run.noise_scale = [math.nan] * 3
    assert verdict._noise("SGD", run, 32) is None


def test_the_chapter_s_account_is_checked_against_the_records_and_a_changed_record_changes_the_answer():
    """Each quick problem's challenge: the measured reasons say whether the records agree with the
    chapter's account; change the one record that decides it and the answer turns."""
    def account(problem, race):
        return [s for s in measured(problem, race) if "chapter" in s]

    sgd = _run("SGD", 0.5, [3, 2, 1], lam_max=[1.0, 3.0, 3.9], lam_min=[0, 0, 0], norms=[1, 1, 1])
    assert account("quadratic_deep", _race(SGD=sgd))[0].startswith(
        "As the chapter says (ill-conditioning, §8.2.1): SGD's tuned step reaches lr·λmax = 1.9")
    sgd.lambda_max[1:] = [0.8, 0.8]
    assert account("quadratic_deep", _race(SGD=sgd))[0].startswith("Not as the chapter says: SGD's tuned step stays "
                                                                   "at lr·λmax ≤ 0.5, well under")

    newton = _run("Newton", None, [3, 3, 3], lam_max=[2, 2, 2], lam_min=[-2, -2, -2], norms=[1, 1e-3, 0.0])
    adagrad = _run("AdaGrad", 0.1, [3, 2, -1], lam_max=[2, 2, 2], lam_min=[-2, 1, 1], norms=[1, 1, 1])
    race = _race(AdaGrad=adagrad, Newton=newton)
    assert account("saddle", race) == ["As the chapter says (§8.2.3): Newton ends at a saddle point, AdaGrad does not"]
    newton.grad_norm[-1] = 0.5  # still moving: no saddle
    assert account("saddle", race) == ["Not as the chapter says: no measured run ends at a saddle point (§8.2.3)"]

    spiky = _run("SGD", 0.1, [3, 2, 1], lam_max=[1, 1, 1], lam_min=[0, 0, 0], norms=[1, 1, 1],
                 peaks=[math.nan, 30.0, 1.0])
    assert account("cliff", _race(SGD=spiky)) == ["As the chapter says (§8.2.4): 1 of the 1 measured methods met "
                                                  "gradient spikes"]
    spiky.noise_scale = [0.0, 32 * 99.0, 0.0]  # the peak is what a noisy minibatch gradient of 32 gives
    assert account("cliff", _race(SGD=spiky))[0].startswith("Not as the chapter says: no measured run met")

    even = _run("SGD", 0.1, [3, 2, 1], lam_max=[1, 1, 1], lam_min=[0, 0, 0], norms=[1, 1, 1],
                layers=[[1.0, 2.0]] * 3, names=["0.weight", "1.weight"])
    assert account("deep_linear", _race(SGD=even))[0].startswith("Not as the chapter says, at this initialization")
    even.layer_grad_norms[0] = [1e-5, 2.0]
    assert account("deep_linear", _race(SGD=even))[0].startswith("As the chapter says (§8.2.5)")
    assert "is not measured here" in account("adding", _race(SGD=even))[0]  # no time steps recorded
    even.time_grad_norms = [[1e-5, 1e-3, 1.0], [0.5, 0.8, 1.0]]
    assert account("adding", _race(SGD=even)) == [
        "As the chapter says (§8.2.5): at initialization the gradient reaching the first of the 3 time steps is "
        "1e-05× the last one's: it vanishes through the recurrence; at the end of SGD's run 0.5×"]
    even.time_grad_norms[0][0] = 0.2
    assert account("adding", _race(SGD=even))[0].startswith("Not as the chapter says at this length: at "
                                                            "initialization the first of the 3 time steps still gets 0.2×")
    assert account("digits_mlp", _race(SGD=even)) == []  # a baseline: no account to check


def test_the_gradient_through_time_matches_a_linear_recurrence():
    """A one-unit tanh RNN with recurrent weight λ at inputs of 10⁻⁶ (tanh is the identity there to
    first order, so h_t = λh_{t−1} + x_t): ‖∂L/∂h_t‖ ∝ λ^(T−t) for a loss on the last state."""
    torch.manual_seed(0)
    rnn = nn.RNN(1, 1, batch_first=True, bias=False).double()
    lam = 0.5
    with torch.no_grad():
        rnn.weight_hh_l0.fill_(lam)
        rnn.weight_ih_l0.fill_(1.0)

    class Last(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = rnn

        def forward(self, x):
            return self.rnn(x)[0][:, -1]

    x = 1e-6 * torch.ones(4, 6, 1, dtype=torch.float64)
    norms = challenges.time_steps(Last(), lambda out, y: (out * y).sum(), x, torch.ones(4, 1, dtype=torch.float64))
    assert [n / norms[-1] for n in norms] == pytest.approx([lam ** (5 - t) for t in range(6)], rel=1e-6)
    assert challenges.time_steps(nn.Linear(2, 2), nn.functional.mse_loss, torch.zeros(3, 2), torch.zeros(3, 2)) is None


def test_the_verdict_gives_the_family_template_only_where_nothing_was_measured():
    from deepdescent.lab.verdict import FAMILY_WHY, verdict

    sgd = _run("SGD", 0.5, [3, 2, 1], lam_max=[1.0, 3.0, 3.9], lam_min=[0, 0, 0], norms=[1, 1, 1])
    measured_text = verdict("quadratic_deep", _race(SGD=sgd))[1]
    assert "SGD wins" in measured_text and FAMILY_WHY["sgd"] not in measured_text
    unmeasured = {"SGD": {**_race(SGD=sgd)["SGD"], "instruments": []}}
    assert verdict("quadratic_deep", unmeasured)[1].endswith(
        f"The chapter's account (nothing measured here): {FAMILY_WHY['sgd']}.")
