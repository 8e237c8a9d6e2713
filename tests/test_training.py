"""Training strategies: samplers, batch growth, schedules, clipping, averaging, early stopping,
delta-bar-delta, curriculum."""

from __future__ import annotations

import math
import os

import pytest
import torch
from scipy import stats
from torch import nn

from deepdescent import optim, schedules
from deepdescent import training as T

# ---------------------------------------------------------------- samplers (§8.1.3)


@pytest.mark.parametrize("make", [lambda: T.ShuffleOnce(100, seed=1), lambda: T.Reshuffle(100, seed=1),
                                  lambda: T.Sequential(100)])
def test_each_epoch_is_a_permutation(make):
    s = make()
    for _ in range(3):
        assert sorted(s) == list(range(100))


def test_shuffle_once_reuses_its_order_and_reshuffle_does_not():
    once, re = T.ShuffleOnce(50, seed=3), T.Reshuffle(50, seed=3)
    assert list(once) == list(once) != list(range(50))
    assert list(re) != list(re)


def test_with_replacement_frequencies_pass_chi_square():
    s = T.WithReplacement(10, num_samples=20_000, seed=0)
    counts = torch.bincount(torch.tensor(list(s)), minlength=10)
    assert stats.chisquare(counts.numpy()).pvalue > 0.001


def test_stream_never_repeats_and_refuses_a_second_pass():
    s = T.Stream(30, seed=0)
    first = list(s)
    assert sorted(first) == list(range(30)) and len(s) == 0
    with pytest.raises(RuntimeError, match="exhausted"):
        list(s)


def test_samplers_work_with_a_dataloader():
    data = torch.utils.data.TensorDataset(torch.arange(10.0))
    loader = torch.utils.data.DataLoader(data, batch_size=4, sampler=T.ShuffleOnce(data, seed=0))
    assert sorted(torch.cat([b[0] for b in loader]).tolist()) == list(map(float, range(10)))


def test_growing_batch_sampler_and_linear_lr_rule():
    p = nn.Parameter(torch.zeros(1))
    opt = optim.SGD([p], lr=0.1)
    s = T.GrowingBatchSampler(T.Sequential(64), [(0, 8), (2, 32)], optimizer=opt, lr_rule="linear")
    sizes = [[len(b) for b in s] for _ in range(3)]
    assert sizes == [[8] * 8, [8] * 8, [32, 32]]
    assert opt.param_groups[0]["lr"] == pytest.approx(0.4)


@pytest.mark.parametrize("n", [0, -3, 2.5])
def test_sampler_bad_size(n):
    with pytest.raises(ValueError, match="number of examples"):
        T.ShuffleOnce(n)


@pytest.mark.parametrize("make,match", [
    (lambda: T.ShuffleOnce("10"), "data_source='10'.*not a string"),
    (lambda: T.Reshuffle(b"10"), "data_source=b'10'"),
    (lambda: T.ShuffleOnce(10, seed="1"), "seed='1'"),
    (lambda: T.ShuffleOnce(10, seed=1.5), "seed=1.5"),
    (lambda: T.WithReplacement(10, seed=True), "seed=True"),
    (lambda: T.Reshuffle(10, seed=None), "seed=None: must be an integer$"),
    (lambda: T.Stream(10, seed="x"), "seed='x'"),
])
def test_samplers_refuse_wrong_types(make, match):
    with pytest.raises(TypeError, match=match):
        make()


def test_samplers_take_numpy_integers():
    import numpy as np

    assert T.ShuffleOnce(np.int64(5), seed=np.int32(1)).order == T.ShuffleOnce(5, seed=1).order
    with pytest.raises(ValueError, match="epoch=-1"):
        T.Reshuffle(5).set_epoch(-1)


def test_growing_batch_bad_schedule():
    with pytest.raises(ValueError, match="starting at epoch 0"):
        T.GrowingBatchSampler(T.Sequential(4), [(1, 2)])
    with pytest.raises(ValueError, match="needs the optimizer"):
        T.GrowingBatchSampler(T.Sequential(4), [(0, 2)], lr_rule="sqrt")

# ---------------------------------------------------------------- schedules (§8.3)


def _lrs(sched_factory, n=30, lr=1.0):
    opt = optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)
    sched = sched_factory(opt)
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_inverse_time_decay_values_and_convergence_conditions():
    lrs = _lrs(lambda o: schedules.InverseTimeDecay(o, tau=10, power=1.0))
    assert lrs == pytest.approx([1 / (1 + k / 10) for k in range(30)])
    # Σε diverges (harmonic), Σε² converges: partial sums over a long horizon behave accordingly
    k = torch.arange(1, 10**6, dtype=torch.float64)
    eps = 1 / (1 + k / 10)
    assert eps.sum() > 100 and (eps**2).sum() < 20


def test_step_decay_values():
    assert _lrs(lambda o: schedules.StepDecay(o, 10, 0.5)) == pytest.approx([0.5 ** (k // 10) for k in range(30)])


def test_momentum_schedule_follows_sutskever_formula():
    opt = optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.5)
    ms = schedules.MomentumSchedule(opt, max_momentum=0.9, period=2)
    seen = []
    for _ in range(40):
        seen.append(opt.param_groups[0]["momentum"])
        ms.step()
    expected = [min(1 - 2 ** (-1 - math.log2(t // 2 + 1)), 0.9) for t in range(40)]
    assert seen == pytest.approx(expected)
    assert seen[0] == 0.5 and seen[2] == 0.75 and seen[-1] == 0.9


def test_momentum_schedule_drives_adam_beta1():
    opt = optim.Adam([nn.Parameter(torch.zeros(1))])
    schedules.MomentumSchedule(opt, period=1).step()
    assert opt.param_groups[0]["betas"] == (0.75, 0.999)


@pytest.mark.parametrize("factory,message", [
    (lambda o: schedules.InverseTimeDecay(o, tau=0), "tau=0"),
    (lambda o: schedules.InverseTimeDecay(o, tau=1, power=0.5), "power=0.5"),
    (lambda o: schedules.StepDecay(o, 0), "step_size=0"),
    (lambda o: schedules.StepDecay(o, 2, gamma=1.5), "gamma=1.5"),
    (lambda o: schedules.MomentumSchedule(o, max_momentum=1.0), "max_momentum=1.0"),
    (lambda o: schedules.MomentumSchedule(o, period=0), "period=0"),
])
def test_schedule_bad_arguments(factory, message):
    with pytest.raises(ValueError, match=message):
        factory(optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.5))

# ---------------------------------------------------------------- clipping (§8.2.4)


def _with_grads(seed=0, scale=10.0):
    torch.manual_seed(seed)
    ps = [nn.Parameter(torch.randn(s)) for s in [(3, 4), (5,), ()]]
    for p in ps:
        p.grad = torch.randn(p.shape, dtype=p.dtype) * scale
    return ps


def _flat(ps):
    return torch.cat([p.grad.flatten() for p in ps])


def test_clip_by_norm_keeps_direction_and_bounds_norm():
    ps = _with_grads()
    before = _flat(ps).clone()
    norm = T.clip_grad_norm_(ps, 1.5)
    after = _flat(ps)
    assert norm.item() == pytest.approx(before.norm().item())
    assert after.norm().item() <= 1.5 * (1 + 1e-6)
    torch.testing.assert_close(after / after.norm(), before / before.norm())


def test_clip_by_norm_is_a_no_op_below_threshold():
    ps = _with_grads(scale=0.01)
    before = _flat(ps).clone()
    T.clip_grad_norm_(ps, 100.0)
    assert torch.equal(_flat(ps), before)


def test_clip_by_value_and_per_tensor():
    ps = _with_grads()
    T.clip_grad_value_(ps, 0.5)
    assert _flat(ps).abs().max().item() <= 0.5
    ps = _with_grads()
    norms = T.clip_grad_norm_per_tensor_(ps, 1.0)
    assert len(norms) == 3 and all(p.grad.norm().item() <= 1 + 1e-6 for p in ps)


def test_clipping_leaves_nonfinite_gradients_for_the_optimizer_to_skip():
    ps = _with_grads()
    ps[1].grad[2] = float("inf")
    finite_before = ps[0].grad.clone()
    norm = T.clip_grad_norm_(ps, 1.0)
    assert not torch.isfinite(norm) and torch.equal(ps[0].grad, finite_before)
    opt = optim.SGD(ps, lr=0.1)
    values = [p.detach().clone() for p in ps]
    opt.step()
    assert opt.skipped_steps == 1 and all(torch.equal(v, p) for v, p in zip(values, ps))


def test_clipped_wrapper_with_scheduler_closure_and_state_dict():
    ps = _with_grads()
    opt = T.Clipped(optim.SGD(ps, lr=1.0), threshold=1.0)
    sched = schedules.LinearDecay(opt, tau=10)
    before = [p.detach().clone() for p in ps]

    def closure():
        for p in ps:
            p.grad = torch.full_like(p, 10.0)
        return 0.0

    opt.step(closure)
    sched.step()
    step = torch.cat([(b - p.detach()).flatten() for b, p in zip(before, ps)])
    assert step.norm().item() == pytest.approx(1.0, rel=1e-5)  # lr 1 × clipped norm 1
    assert opt.clipped == 1 and opt.optimizer.param_groups[0]["lr"] < 1.0
    assert "deepdescent" in opt.state_dict()


@pytest.mark.parametrize("call,message", [
    (lambda ps: T.clip_grad_norm_(ps, 0.0), "max_norm=0.0"),
    (lambda ps: T.clip_grad_value_(ps, -1), "max_value=-1"),
    (lambda ps: T.Clipped(optim.SGD(ps, lr=0.1), 1.0, mode="l1"), "mode='l1'"),
    (lambda ps: T.clip_grad_norm_(ps, math.inf), "max_norm=inf"),
])
def test_clipping_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call(_with_grads())

# ---------------------------------------------------------------- Polyak averaging (§8.7.3)


def _iterates(model, n=20, seed=0):
    torch.manual_seed(seed)
    seq = []
    for _ in range(n):
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn_like(p))
        seq.append([p.detach().clone().double() for p in model.parameters()])
        yield seq


def test_arithmetic_average_is_the_running_mean():
    model = nn.Linear(4, 3)
    avg = T.PolyakAverage(model)
    for seq in _iterates(model):
        avg.update()
        mean = [torch.stack([s[i] for s in seq]).mean(0) for i in range(2)]
        for a, m in zip(avg.average, mean):
            torch.testing.assert_close(a.double(), m, atol=1e-6, rtol=1e-6)


def test_exponential_average_matches_eq_8_39_and_alpha_zero_is_the_iterate():
    model = nn.Linear(4, 3)
    avg, last = T.PolyakAverage(model, "exponential", alpha=0.9), T.PolyakAverage(model, "exponential", alpha=0.0)
    ref = None
    for seq in _iterates(model):
        avg.update()
        last.update()
        ref = seq[-1] if ref is None else [0.9 * r + 0.1 * s for r, s in zip(ref, seq[-1])]
        for a, r in zip(avg.average, ref):
            torch.testing.assert_close(a.double(), r, atol=1e-6, rtol=1e-6)
        for a, p in zip(last.average, model.parameters()):
            assert torch.equal(a, p)


def test_swapped_evaluates_the_average_and_restores_exactly():
    model = nn.Linear(4, 3)
    avg = T.PolyakAverage(model)
    for _ in _iterates(model, 5):
        avg.update()
    current = [p.detach().clone() for p in model.parameters()]
    with avg.swapped():
        assert all(torch.equal(p, a) for p, a in zip(model.parameters(), avg.average))
    assert all(torch.equal(p, c) for p, c in zip(model.parameters(), current))


def test_averaging_bad_input():
    with pytest.raises(ValueError, match="alpha=1.0"):
        T.PolyakAverage(nn.Linear(2, 2), "exponential", alpha=1.0)
    with pytest.raises(RuntimeError, match="call update"):
        with T.PolyakAverage(nn.Linear(2, 2)).swapped():
            pass

# ---------------------------------------------------------------- early stopping


def test_early_stopping_patience_restore_and_atomic_checkpoint(tmp_path):
    model = nn.Linear(2, 1)
    stopper = T.EarlyStopping(model, patience=2, min_delta=0.01, checkpoint=tmp_path / "best.pt")
    metrics = [1.0, 0.8, 0.795, 0.9, 0.85]  # best at step 1; 0.795 is not better by min_delta
    best_weight = None
    stops = []
    for k, m in enumerate(metrics):
        with torch.no_grad():
            model.weight.fill_(k)
        if k == 1:
            best_weight = model.weight.detach().clone()
        stops.append(stopper.step(m))
    assert stops == [False, False, False, False, True]
    assert stopper.best == 0.8 and stopper.best_step == 1
    assert torch.equal(model.weight, best_weight)
    saved = torch.load(tmp_path / "best.pt", weights_only=True)
    assert torch.equal(saved["model"]["weight"], best_weight) and saved["metric"] == 0.8
    assert [p.name for p in tmp_path.iterdir()] == ["best.pt"]  # no temporary files left


def test_early_stopping_max_mode_and_nan():
    stopper = T.EarlyStopping(nn.Linear(1, 1), mode="max", patience=0)
    assert not stopper.step(0.5)
    assert stopper.step(float("nan"))  # NaN never improves


def test_early_stopping_removes_stale_temporaries_and_fsyncs_the_folder(tmp_path, monkeypatch):
    stale = tmp_path / ".best.pt.abc123.tmp"  # what a run killed mid-write leaves
    stale.write_bytes(b"half")
    other = tmp_path / ".other.pt.x.tmp"  # another file's temporary is not ours to remove
    other.write_bytes(b"x")
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.path.isdir(f"/proc/self/fd/{fd}")) or real_fsync(fd))
    stopper = T.EarlyStopping(nn.Linear(1, 1), checkpoint=tmp_path / "best.pt")
    assert not stale.exists() and other.exists()
    stopper.step(1.0)
    assert synced == [False, True]  # the file, then its folder after the rename


def test_early_stopping_with_only_nan_metrics_says_so():
    model = nn.Linear(1, 1)
    before = model.weight.detach().clone()
    stopper = T.EarlyStopping(model, patience=1)
    assert not stopper.step(float("nan"))
    with pytest.warns(RuntimeWarning, match="all 2 metrics were NaN"):
        assert stopper.step(torch.tensor(float("nan")))
    assert torch.equal(model.weight.detach(), before)
    with pytest.raises(RuntimeError, match="all 2 metrics were NaN"):
        stopper.restore()


@pytest.mark.parametrize("change,match", [
    ({"steps": -1}, "steps=-1"), ({"bad_steps": 1.5}, "bad_steps=1.5"), ({"best": "low"}, "best='low'"),
    ({"best": float("nan")}, "best=nan"), ({"stopped": 1}, "stopped=1"), ({"best_state": {"w": 1}}, "best_state"),
    ({"best_state": {"weight": torch.zeros(3), "bias": torch.zeros(1)}}, r"best_state\['weight'\]"),
])
def test_early_stopping_load_state_dict_is_checked_and_atomic(change, match):
    model = nn.Linear(1, 1)
    stopper = T.EarlyStopping(model, patience=3)
    for m in (1.0, 0.5, 0.7):
        stopper.step(m)
    good = stopper.state_dict()
    fresh = T.EarlyStopping(model, patience=3)
    before = fresh.state_dict()
    with pytest.raises(ValueError, match=match):
        fresh.load_state_dict({**good, **change})
    assert fresh.state_dict() == before  # nothing applied
    fresh.load_state_dict(good)
    assert {k: v for k, v in fresh.state_dict().items() if k != "best_state"} == \
        {k: v for k, v in good.items() if k != "best_state"}


def test_early_stopping_bad_input(tmp_path):
    with pytest.raises(ValueError, match="mode='avg'"):
        T.EarlyStopping(nn.Linear(1, 1), mode="avg")
    with pytest.raises(ValueError, match="patience=-1"):
        T.EarlyStopping(nn.Linear(1, 1), patience=-1)
    with pytest.raises(ValueError, match="does not exist"):
        T.EarlyStopping(nn.Linear(1, 1), checkpoint=tmp_path / "missing" / "best.pt")

# ---------------------------------------------------------------- delta-bar-delta (§8.5)


def test_delta_bar_delta_matches_float64_transcription():
    torch.manual_seed(0)
    a = torch.rand(6, dtype=torch.float64) + 0.5
    p = nn.Parameter(torch.randn(6, dtype=torch.float64))
    w = p.detach().clone()
    opt = optim.DeltaBarDelta([p], lr=0.05, kappa=0.01, phi=0.3, theta=0.6)
    eps, bar = torch.full((6,), 0.05, dtype=torch.float64), torch.zeros(6, dtype=torch.float64)
    for _ in range(40):
        p.grad = a * p.detach() ** 3 - 1.0
        opt.step()
        g = a * w**3 - 1.0
        for i in range(6):  # the rule, one component at a time
            if bar[i] * g[i] > 0:
                eps[i] += 0.01
            elif bar[i] * g[i] < 0:
                eps[i] *= 0.7
        bar = 0.4 * g + 0.6 * bar
        w = w - eps * g
    torch.testing.assert_close(p.detach(), w)
    torch.testing.assert_close(opt.state[p]["rates"], eps)


def test_delta_bar_delta_rates_grow_while_sign_holds_and_shrink_on_flip():
    p = nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt = optim.DeltaBarDelta([p], lr=0.1, kappa=0.05, phi=0.5)
    for _ in range(4):
        p.grad = torch.ones(1, dtype=torch.float64)
        opt.step()
    assert opt.state[p]["rates"].item() == pytest.approx(0.1 + 3 * 0.05)  # first step has δ̄ = 0
    p.grad = -torch.ones(1, dtype=torch.float64)
    opt.step()
    assert opt.state[p]["rates"].item() == pytest.approx(0.25 * 0.5)

# ---------------------------------------------------------------- curriculum (§8.7.6)


def test_curriculum_orders_easy_to_hard_with_pacing():
    difficulty = torch.tensor([5.0, 1.0, 3.0, 2.0, 4.0, 0.0])
    assert list(T.Curriculum(difficulty)) == [5, 1, 3, 2, 4, 0]
    paced = T.Curriculum(difficulty, start=0.5, ramp_epochs=2, order="shuffled")
    first, second, third = list(paced), list(paced), list(paced)
    assert sorted(first) == [1, 3, 5] and len(second) == 4 and sorted(third) == list(range(6))


def test_stochastic_curriculum_share_of_hard_examples_rises():
    difficulty = torch.arange(1000.0)
    s = T.StochasticCurriculum(difficulty, hard_start=0.1, hard_end=0.7, ramp_epochs=3, num_samples=5000)
    shares = [sum(i >= 500 for i in s) / 5000 for _ in range(4)]
    for share, expected in zip(shares, [0.1, 0.3, 0.5, 0.7]):
        assert abs(share - expected) < 0.03  # binomial sd ≈ 0.007


def test_curriculum_bad_input():
    with pytest.raises(ValueError, match="finite"):
        T.Curriculum([1.0, float("nan")])
    with pytest.raises(ValueError, match="start=0"):
        T.Curriculum([1.0, 2.0], start=0.0)
    with pytest.raises(ValueError, match="hard_end=1.5"):
        T.StochasticCurriculum([1.0, 2.0, 3.0], hard_end=1.5)
    with pytest.raises(ValueError, match="empty"):
        T.StochasticCurriculum([1.0, 1.0, 1.0])
