"""Instruments for the §8.2 challenges, checked against independent computations."""

from __future__ import annotations

import json
import re
import math
import statistics
import warnings

import pytest
import torch
from torch import nn

from deepdescent import diagnostics as dg
from deepdescent.curvature.spectrum import hutchinson, lanczos, slq
from deepdescent.curvature.vectors import flat
from deepdescent.diagnostics.instruments import StepContext

D = torch.float64


def _ctx(model, loss_fn, x, y, optimizer=None, mode="train"):
    state = {"initial_params": [p.detach().clone() for p in model.parameters()]}
    return StepContext(model, loss_fn, x, y, None, optimizer, 0, mode, state)


def _exact_hessian(model, loss_fn, x, y):
    names = [n for n, _ in model.named_parameters()]
    params = list(model.parameters())

    def f(vec):
        chunks = vec.split([p.numel() for p in params])
        return loss_fn(torch.func.functional_call(model, {n: c.view(p.shape) for n, c, p in zip(names, chunks, params)},
                                                  (x,)), y)

    return torch.autograd.functional.hessian(f, flat([p.detach() for p in params]))


def ce(out, y):
    return nn.functional.cross_entropy(out, y)


def _models():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    cnn = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(2 * 3 * 3, 3)).double()
    rnn_model = RNNClassifier().double()
    return {"mlp": (mlp, torch.randn(10, 4, dtype=D)), "cnn": (cnn, torch.randn(10, 1, 5, 5, dtype=D)),
            "rnn": (rnn_model, torch.randn(10, 5, 2, dtype=D))}


class RNNClassifier(nn.Module):
    def __init__(self, cell=nn.RNN):
        super().__init__()
        torch.manual_seed(0)
        self.rnn = cell(2, 4, batch_first=True)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.rnn(x)[0][:, -1])


@pytest.mark.parametrize("name", ["mlp", "cnn", "rnn"])
def test_lanczos_extremes_and_hutchinson_trace_against_eigvalsh(name):
    model, x = _models()[name]
    y = torch.randint(0, 3, (10,))
    h = _exact_hessian(model, ce, x, y)
    eig = torch.linalg.eigvalsh(h)
    ctx = _ctx(model, ce, x, y)
    op, n, _ = ctx.flat_hvp()
    r = lanczos(op, n, k=min(n, 60), dtype=D, generator=torch.Generator().manual_seed(0))
    assert r.converged
    assert r.lambda_max == pytest.approx(eig[-1].item(), rel=1e-3)
    assert r.lambda_min == pytest.approx(eig[0].item(), rel=1e-3, abs=1e-3 * eig.abs().max().item())
    t = hutchinson(op, n, samples=60, dtype=D, generator=torch.Generator().manual_seed(1))
    assert abs(t.trace - eig.sum().item()) <= 3 * t.stderr + 1e-9
    z = torch.randn(7, n, dtype=D)
    many = ctx.flat_hvp_many()  # all probes in one vmapped pass (one by one where autograd cannot batch)
    torch.testing.assert_close(many(z), z @ h, rtol=1e-10, atol=1e-12)
    batched = hutchinson(op, n, samples=60, dtype=D, generator=torch.Generator().manual_seed(1), batched=many)
    assert batched.trace == pytest.approx(t.trace, rel=1e-12) and batched.stderr == pytest.approx(t.stderr, rel=1e-9)
    density = slq(op, n, k=min(n, 30), runs=2, dtype=D, generator=torch.Generator().manual_seed(2))
    assert density.weights.sum().item() == pytest.approx(1.0)
    assert density.nodes.max().item() <= eig[-1].item() + 1e-6


def test_each_end_of_the_spectrum_has_its_own_convergence_flag():
    """An isolated top eigenvalue converges in a few products while the bottom of a dense spectrum
    does not: λmax is flagged converged (and is within tol), λmin is not (and is not), and the
    Curvature instrument reports both flags."""
    n = 400
    q, _ = torch.linalg.qr(torch.randn(n, n, dtype=D, generator=torch.Generator().manual_seed(0)))
    eig = torch.cat([torch.linspace(-1.0, 1.0, n - 1, dtype=D), torch.tensor([20.0], dtype=D)])
    h = (q * eig) @ q.T
    r = lanczos(lambda v: h @ v, n, k=8, dtype=D, generator=torch.Generator().manual_seed(1))
    assert r.converged_max and not r.converged_min and not r.converged
    assert abs(r.lambda_max - 20.0) <= 1e-3 * 20 and abs(r.lambda_min + 1.0) > 1e-3 * 20
    full = lanczos(lambda v: h @ v, n, k=n, dtype=D, generator=torch.Generator().manual_seed(1))
    assert full.converged_max and full.converged_min and full.converged
    model, x = _models()["mlp"]
    values = dg.Curvature(trace_samples=0).measure(_ctx(model, ce, x, torch.randint(0, 3, (10,))))
    assert values["converged"] == (values["converged_max"] and values["converged_min"])


def test_warm_start_reaches_lambda_max_in_fewer_products():
    model, x = _models()["mlp"]
    y = torch.randint(0, 3, (10,))
    instrument = dg.Curvature(k=8, trace_samples=0)
    ctx = _ctx(model, ce, x, y)
    eig = torch.linalg.eigvalsh(_exact_hessian(model, ce, x, y))
    errors = []
    for _ in range(4):
        v = instrument.measure(ctx)
        errors.append(abs(v["lambda_max"] - eig[-1].item()) / eig[-1].item())
    assert errors[-1] < 1e-3 and errors[-1] <= errors[0]


class Quadratic(nn.Module):
    """J(θ) = ½(θ − c)ᵀA(θ − c) through the Monitor's (model, loss_fn) interface."""

    def __init__(self, a, c):
        super().__init__()
        self.theta = nn.Parameter(torch.zeros(len(c), dtype=D))
        self.a, self.c = a, c

    def forward(self, x):
        return self.theta.unsqueeze(0).expand(len(x), -1)


def test_hutchinson_deflated_by_a_lanczos_basis_is_unbiased_and_tighter():
    """A Hessian-like spectrum (five outliers over a bulk): probes projected off a Lanczos run's
    basis, plus that basis's exact share tr T, estimate tr H without bias (the mean of 400
    estimates within 3 standard errors of the exact trace) and with a far smaller spread."""
    n = 300
    q, _ = torch.linalg.qr(torch.randn(n, n, dtype=D, generator=torch.Generator().manual_seed(0)))
    eig = torch.cat([torch.rand(n - 5, dtype=D, generator=torch.Generator().manual_seed(1)) * 0.2 - 0.05,
                     torch.tensor([40.0, 30.0, 25.0, 20.0, -10.0], dtype=D)])
    h = (q * eig) @ q.T
    op = lambda v: h @ v  # noqa: E731
    r = lanczos(op, n, k=12, dtype=D, generator=torch.Generator().manual_seed(2))
    gen = torch.Generator().manual_seed(3)
    plain = [hutchinson(op, n, samples=5, dtype=D, generator=gen) for _ in range(400)]
    deflated = [hutchinson(op, n, samples=5, dtype=D, generator=gen, deflation=r) for _ in range(400)]
    exact = eig.sum().item()
    values = torch.tensor([t.trace for t in deflated], dtype=D)
    assert abs(values.mean().item() - exact) <= 3 * values.std().item() / 20
    assert abs(deflated[0].trace - exact) <= 4 * deflated[0].stderr
    spread_plain = torch.tensor([t.trace for t in plain], dtype=D).std().item()
    assert values.std().item() < spread_plain / 5
    assert statistics.median(t.stderr for t in deflated) < statistics.median(t.stderr for t in plain) / 5
    c = torch.randn(n, dtype=D, generator=torch.Generator().manual_seed(4))  # the Curvature instrument deflates

    def loss_fn(out, _):
        d = out[0] - c
        return 0.5 * d @ h @ d
    stderrs = [dg.Curvature(k=12, seed=s).measure(_ctx(Quadratic(h, c), loss_fn, torch.zeros(1, 1), torch.zeros(1)))
               ["trace_stderr"] for s in range(20)]
    assert statistics.median(stderrs) < statistics.median(t.stderr for t in plain) / 5


def test_the_first_curvature_measurement_starts_from_the_gradient():
    """J(θ) = ½(θ − c)ᵀA(θ − c) at θ = 0 with c along A's top eigenvector: g = −Ac is that
    eigenvector, so two products starting from g give λmax (two from a random start do not)."""
    n = 50
    q, _ = torch.linalg.qr(torch.randn(n, n, dtype=D, generator=torch.Generator().manual_seed(0)))
    eig = torch.linspace(0.1, 1.0, n, dtype=D)
    eig[-1] = 3.0
    a = (q * eig) @ q.T
    c = q[:, -1].clone()
    model = Quadratic(a, c)

    def loss_fn(out, _):
        d = out[0] - c
        return 0.5 * d @ a @ d
    values = dg.Curvature(k=2, trace_samples=0).measure(_ctx(model, loss_fn, torch.zeros(1, 1), torch.zeros(1)))
    assert values["lambda_max"] == pytest.approx(3.0, rel=1e-3)
    cold = lanczos(lambda v: a @ v, n, k=2, dtype=D, generator=torch.Generator().manual_seed(0))
    assert abs(cold.lambda_max - 3.0) > 1e-2  # what a random start gives in as many products


def test_ill_conditioning_quantities_are_exact_on_a_quadratic():
    torch.manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=D))
    a = (q * torch.logspace(0, 3, 6, dtype=D)) @ q.T
    c = torch.randn(6, dtype=D)
    model = Quadratic(a, c)

    def loss_fn(out, _):
        d = out[0] - c
        return 0.5 * d @ a @ d

    eps = 0.003
    opt = torch.optim.SGD(model.parameters(), lr=eps)
    v = dg.IllConditioning().measure(_ctx(model, loss_fn, torch.zeros(1, 1), torch.zeros(1), opt))
    theta = model.theta.detach()
    g = a @ (theta - c)
    j = lambda t: 0.5 * (t - c) @ a @ (t - c)  # noqa: E731
    actual_change = (j(theta - eps * g) - j(theta)).item()
    assert v["predicted_change"] == pytest.approx(actual_change, rel=1e-10)
    assert v["gTHg"] == pytest.approx((g @ a @ g).item(), rel=1e-10)
    assert v["ratio"] == pytest.approx((0.5 * eps * g @ a @ g / (g @ g)).item(), rel=1e-10)


def test_per_example_gradients_match_a_loop_and_b_simple_matches_known_covariance():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    x, y = torch.randn(7, 3, dtype=D), torch.randn(7, 2, dtype=D)

    def loss_fn(out, t):
        return ((out - t) ** 2).sum(1).mean()

    ctx = _ctx(model, loss_fn, x, y)
    got = dg.per_example_gradients(ctx)
    for i in range(7):
        model.zero_grad()
        loss_fn(model(x[i:i + 1]), y[i:i + 1]).backward()
        torch.testing.assert_close(got[i], flat([p.grad for p in model.parameters()]))

    # ℓᵢ(θ) = ½‖θ − xᵢ‖², xᵢ ~ N(μ, diag s²): gᵢ = θ − xᵢ, Σ = diag s², G = θ − μ
    s = torch.tensor([0.5, 1.0, 2.0], dtype=D)
    mu = torch.tensor([1.0, -1.0, 0.5], dtype=D)
    data = mu + s * torch.randn(20000, 3, dtype=D)

    class Point(nn.Module):
        def __init__(self):
            super().__init__()
            self.theta = nn.Parameter(torch.zeros(3, dtype=D))

        def forward(self, inp):
            return self.theta - inp

    def half_sq(out, _):
        return 0.5 * (out ** 2).sum(-1).mean()

    v = dg.GradientNoise().measure(_ctx(Point(), half_sq, data, torch.zeros(20000, dtype=D)))
    expected = (s ** 2).sum().item() / (mu @ mu).item()
    # the batch-size tests: gᵢ = G + εᵢ, εᵢ ~ N(0, Σ), G = −μ at θ = 0
    g2, tr, gsg = (mu @ mu).item(), (s ** 2).sum().item(), (mu * s ** 2 * mu).sum().item()
    assert v["norm_test"] == pytest.approx(tr / (20000 * g2), rel=0.05)
    assert v["inner_product_test"] == pytest.approx(gsg / (20000 * g2 ** 2), rel=0.05)
    assert v["orthogonality_test"] == pytest.approx((tr - gsg / g2) / (20000 * g2), rel=0.05)
    assert sum(v["histogram"]["counts"]) == 20000 * 3 and v["histogram"]["edges"][0] == -v["histogram"]["edges"][-1]
    assert v["trace_cov"] == pytest.approx((s ** 2).sum().item(), rel=0.03)
    assert v["b_simple"] == pytest.approx(expected, rel=0.05)
    assert v["grad_stderr"] == pytest.approx(math.sqrt((s ** 2).sum().item() / 20000), rel=0.03)


@pytest.fixture(scope="module")
def digits_population():
    """Per-example gradients of a digits MLP (64-32-10, 200 SGD steps in) over all 1,797 images,
    and the full-data B_simple = tr Σ / ‖G‖² (Σ the population covariance)."""
    from deepdescent.lab.digits import load_digits

    torch.manual_seed(0)
    d = load_digits()
    x, y = torch.cat([d.x_train, d.x_test]), torch.cat([d.y_train, d.y_test])
    model = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(200):
        idx = torch.randint(0, len(y), (32,))
        opt.zero_grad()
        ce(model(x[idx]), y[idx]).backward()
        opt.step()
    g = dg.per_example_gradients(_ctx(model, ce, x, y)).double()
    mean = g.mean(0)
    return g, float(((g - mean) ** 2).sum() / len(g)) / float(mean @ mean)


@pytest.mark.parametrize(("m", "draws", "sampling"), [(8, 30000, "with"), (32, 4000, "with"), (128, 750, "epochs"),
                                                      (512, 150, "with"), (512, 150, "epochs")])
def test_b_simple_is_not_capped_by_the_batch_size(digits_population, m, draws, sampling):
    """McCandlish et al. (2018, App. A): averaged over minibatches, B_simple comes within 10% of the
    full-data value (≈ 194 here) at every batch size — tr Σ / ‖ḡ‖² would tend to 1/(1/B + 1/m),
    7.7 at m = 8. Minibatches drawn with replacement, or an epoch's shuffle told the data set size."""
    g, full = digits_population
    n = len(g)
    gen = torch.Generator().manual_seed(m)
    if sampling == "with":
        batches = torch.randint(0, n, (draws, m), generator=gen)
    else:
        per_epoch = n // m
        batches = torch.cat([torch.randperm(n, generator=gen)[:per_epoch * m].view(per_epoch, m)
                             for _ in range(draws // per_epoch + 1)])[:draws]
    noise = dg.GradientNoise(beta=None, dataset_size=n if sampling == "epochs" else None)
    for idx in batches:
        values = noise.statistics(g[idx])
    assert values["measurements"] == draws
    assert values["b_simple"] == pytest.approx(full, rel=0.10)


@pytest.mark.parametrize("cell", [nn.RNN, nn.GRU, nn.LSTM])
def test_per_step_gradients_match_autograd_on_the_unrolled_rnn(cell):
    model = RNNClassifier(cell).double()
    x, y = torch.randn(3, 6, 2, dtype=D), torch.randint(0, 3, (3,))
    v = dg.Recurrent().measure(_ctx(model, ce, x, y))["grad_norm_per_step"]["call0"]
    # independent: run the fused module one step at a time, keeping each h_t, and backprop
    rnn = model.rnn
    state = None
    pairs = []  # h_t appears twice per call: as the output (to the loss) and as the state (to t + 1)
    for t in range(6):
        out, state = rnn(x[:, t:t + 1], state)
        h = state[0] if isinstance(state, tuple) else state
        out.retain_grad()
        h.retain_grad()
        pairs.append((out, h))
    ce(model.head(out[:, -1]), y).backward()
    expected = []
    for out, h in pairs:
        total = (out.grad[:, 0] if out.grad is not None else 0) + (h.grad[0] if h.grad is not None else 0)
        expected.append(total.norm(dim=1).mean().item())
    assert v == pytest.approx(expected, rel=1e-8)


def test_linear_rnn_gradients_scale_like_lambda_power():
    """h_t = W h_{t−1} + x_t with W = λ·Q (Q orthogonal), loss on h_T: ‖∂L/∂h_t‖ = λ^(T−t)‖∂L/∂h_T‖."""
    torch.manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(5, 5, dtype=D))

    class LinearRNN(nn.Module):
        def __init__(self, lam):
            super().__init__()
            self.w = nn.Parameter(lam * q)

        def forward(self, x):
            h = torch.zeros(x.shape[0], 5, dtype=D)
            for t in range(x.shape[1]):
                h = dg.mark_hidden(h @ self.w.T + x[:, t])
            return h

    for lam in (0.8, 1.25):
        model = LinearRNN(lam)
        x = torch.randn(4, 12, 5, dtype=D)
        norms = dg.Recurrent().measure(_ctx(model, lambda out, t: (out * t).sum(), x, torch.ones(4, 5, dtype=D)))
        norms = norms["grad_norm_per_step"]["call0"]
        ratios = [norms[t] / norms[-1] for t in range(12)]
        assert ratios == pytest.approx([lam ** (11 - t) for t in range(12)], rel=1e-9)


def _train_with_monitor(model, monitor, steps=30, x=None, y=None):
    opt = monitor.optimizer
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        xb = torch.randn(16, 4, generator=gen) if x is None else x
        yb = torch.randint(0, 3, (16,), generator=gen) if y is None else y
        opt.zero_grad()
        loss = ce(model(xb), yb)
        loss.backward()
        monitor.step(xb, yb, loss)
        opt.step()
    monitor.close()


def test_monitor_writes_jsonl_and_a_failing_instrument_warns_once(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    log = tmp_path / "diag.jsonl"
    monitor = dg.Monitor(model, ce, opt, instruments=[c() for c in dg.ALL], log=str(log), budget=1e6,
                         every={"cheap": 1, "curvature": 10, "recurrent": 5, "spectrum": 20, "interpolation": 20,
                                "slice2d": 20, "gradient_noise": 10, "ill_conditioning": 5})
    bn_before = model[1].running_mean.clone()
    with pytest.warns(RuntimeWarning, match="cannot be computed") as caught:
        _train_with_monitor(model, monitor)
    messages = [str(w.message) for w in caught]
    assert sum("recurrent" in m and "no RNN" in m for m in messages) == 1
    assert sum("gradient_noise" in m and "train-mode BatchNorm" in m for m in messages) == 1
    records = [json.loads(line) for line in log.read_text().splitlines()]
    seen = {r["instrument"] for r in records}
    assert {"cheap", "ill_conditioning", "curvature", "spectrum", "interpolation", "slice2d", "monitor"} <= seen
    assert not {"recurrent", "gradient_noise"} & seen
    for r in records:
        assert set(r) == {"step", "instrument", "time", "seconds", "values"}
    assert records[-1]["values"]["disabled"].keys() == {"recurrent", "gradient_noise"}
    # the instruments' own forward passes never moved BatchNorm's running statistics: only the 30
    # training forward passes did (compare with a replay without the monitor)
    torch.manual_seed(0)
    replay = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 3))
    ropt = torch.optim.SGD(replay.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(0)
    for _ in range(30):
        xb, yb = torch.randn(16, 4, generator=gen), torch.randint(0, 3, (16,), generator=gen)
        ropt.zero_grad()
        ce(replay(xb), yb).backward()
        ropt.step()
    torch.testing.assert_close(model[1].running_mean, replay[1].running_mean)
    assert not torch.equal(bn_before, model[1].running_mean)
    fig = dg.plot(log, tmp_path / "dash.png")
    assert (tmp_path / "dash.png").stat().st_size > 10_000
    panels = {ax.get_title(): ax for ax in fig.axes[:9]}
    why = {title: " ".join(t.get_text() for t in ax.texts) for title, ax in panels.items()}
    failed = [t for t in panels if "gradient noise" in t or "per-time-step" in t]
    assert len(failed) == 2 and all(why[t].startswith("failed, dropped") for t in failed), why
    for title, ax in panels.items():  # every other instrument is drawn: λmin, tr H, SLQ, the 2-D slice, …
        if title not in failed:
            assert not why[title] and (ax.lines or ax.collections or ax.images), title


def test_budget_postpones_expensive_instruments():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    monitor = dg.Monitor(model, ce, torch.optim.SGD(model.parameters(), lr=0.1), budget=1e-12,
                         every={"curvature": 1, "ill_conditioning": 1, "gradient_noise": 1})
    records = []
    opt = monitor.optimizer
    for _ in range(10):
        x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
        opt.zero_grad()
        loss = ce(model(x), y)
        loss.backward()
        records += monitor.step(x, y, loss)
        opt.step()
    # step 0 measures each once, charged (torch.func's start-up is not); then none fits
    assert {r["instrument"] for r in records if r["step"] > 0} <= {"cheap", "monitor"}
    assert {r["instrument"] for r in records if r["step"] == 0} >= {"ill_conditioning", "curvature", "gradient_noise"}
    assert monitor.spent["expensive"] > 0 and monitor.overhead > 0  # charged
    assert {k: monitor.measured[k] for k in ("ill_conditioning", "curvature", "gradient_noise")} == dict.fromkeys(
        ("ill_conditioning", "curvature", "gradient_noise"), 1)
    assert monitor.postponed == {"cheap": 0, "ill_conditioning": 9, "curvature": 9, "gradient_noise": 9}


class _Clock:
    """A fake perf_counter: the test's training step and instruments move it, nothing else."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now


class _Costly(dg.Instrument):
    def __init__(self, clock, name, cost, every, tier="expensive"):
        self.clock, self.name, self.cost, self.every, self.tier, self.gradients = clock, name, cost, every, tier, cost

    def measure(self, ctx):
        self.clock.now += self.cost
        return {"x": 1.0}


def _fake_run(monkeypatch, instruments, steps, *, budget=0.10, after=0.0):
    """``steps`` training steps of 1 s each (``after`` s more right after a measurement), on the fake clock."""
    from deepdescent.diagnostics import monitor as monitor_module

    clock = instruments[0].clock
    monkeypatch.setattr(monitor_module, "time", clock)
    model = nn.Linear(2, 1)
    monitor = dg.Monitor(model, ce, instruments=instruments, budget=budget)
    x, y = torch.zeros(2, 2), torch.zeros(2)
    measured_before = False
    for _ in range(steps):
        clock.now += 1.0 + (after if measured_before else 0.0)
        measured_before = bool(monitor.step(x, y, 0.0))
    return monitor, clock


def test_expensive_instruments_take_turns_within_the_budget(monkeypatch):
    """A cheap tier that would fill the budget and a frequent small instrument no longer starve a
    costly one: postponed instruments retry every step, the one waiting longest first; all are
    measured, the cheap tier within its own allowance, and the whole stays within the budget."""
    clock = _Clock()
    cheap = _Costly(clock, "cheap", 0.05, 1, tier="cheap")  # 5% of every step if it ran at each
    small, big = _Costly(clock, "small", 2.0, 5), _Costly(clock, "big", 20.0, 50)
    monitor, clock = _fake_run(monkeypatch, [cheap, small, big], 3000)
    assert monitor.measured["big"] >= 5 and abs(monitor.measured["small"] - monitor.measured["big"]) <= 1
    assert monitor.postponed["big"] > 0 and monitor.postponed["small"] > 0
    assert monitor.spent["cheap"] <= dg.monitor.CHEAP_SHARE * 0.10 * 3000
    assert monitor.overhead <= 0.10
    # the overhead is what the loop paid: wall time over the plain loop (warm-up aside), from the
    # first call on (the step before it is not seen)
    assert monitor.overhead == pytest.approx((clock.now - monitor.warmup_seconds - 3000) / 2999, rel=1e-9)


def test_overhead_counts_the_slowdown_after_a_measurement(monkeypatch):
    """Steps right after a measurement run slower (evicted caches): the Monitor's overhead is the
    loop's wall time over the plain loop, not only the time inside its own calls."""
    clock = _Clock()
    monitor, clock = _fake_run(monkeypatch, [_Costly(clock, "cheap", 0.01, 10, tier="cheap")], 1000, after=0.5)
    assert monitor.overhead == pytest.approx((clock.now - 1000) / 999, rel=1e-9)
    assert monitor.overhead > 0.05  # 99 measured steps × (0.01 + 0.5) s over 1000 s


def test_torch_func_start_up_is_not_charged_but_step_0_is(monkeypatch):
    """The first Monitor of a process pays torch.func's start-up (here 100 s on the fake clock):
    reported as warmup_seconds, outside the overhead; step 0's measurement itself is charged."""
    from deepdescent.diagnostics import monitor as monitor_module

    clock = _Clock()

    def start_up():
        clock.now += 100.0
        return 100.0
    monkeypatch.setattr(monitor_module, "_warm_up_torch_func", start_up)
    monitor, clock = _fake_run(monkeypatch, [_Costly(clock, "big", 20.0, 10_000)], 1000)
    assert monitor.warmup_seconds == 100.0 and monitor.measured["big"] == 1
    assert monitor.spent["expensive"] == 20.0
    assert monitor.overhead == pytest.approx(20.0 / 999, rel=1e-9)


def test_close_says_which_instruments_never_measured(monkeypatch, tmp_path):
    clock = _Clock()
    never = _Costly(clock, "never", 1e6, 10)
    monitor, _ = _fake_run(monkeypatch, [_Costly(clock, "cheap", 0.01, 10, tier="cheap"), never], 50)
    with pytest.warns(RuntimeWarning, match=r"never measured after step 0: never \(waited 40 steps, still waiting\)"):
        monitor.close()


def test_tensorboard_sink_writes_events(tmp_path):
    pytest.importorskip("tensorboard")
    sink = dg.TensorBoardSink(tmp_path / "tb")
    sink.write({"step": 3, "instrument": "cheap", "values": {"loss": 1.5, "layer_grad_norms": {"a": 2.0},
                                                               "spike": False}})
    sink.close()
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_bad_input(tmp_path):
    model = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="budget=0"):
        dg.Monitor(model, ce, budget=0)
    with pytest.raises(ValueError, match="unknown instruments"):
        dg.Monitor(model, ce, every={"curvatur": 3})
    with pytest.raises(FileNotFoundError, match="no log"):
        dg.read_jsonl(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"step": 1, "instrument": "cheap", "values": {}}\n{not json\n')
    with pytest.raises(ValueError, match="line 2.*corrupt"):
        dg.read_jsonl(bad)
    for line, message in (('{"step": 1}', "line 1: 'instrument' must be a string"), ('[1, 2]', "line 1 is a JSON list"),
                          ('{"step": "9", "instrument": "cheap", "values": {}}', "'step' must be an integer"),
                          ('{"step": 1, "instrument": "cheap", "values": 3}', "'values' must be an object")):
        bad.write_text(line + "\n")  # another program's log: named, never a bare KeyError
        with pytest.raises(ValueError, match=re.escape(message)):
            dg.read_jsonl(bad)
        with pytest.raises(ValueError, match="records\\[0\\]"):
            dg.plot([json.loads(line)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dg.plot([], tmp_path / "empty.png")  # an empty log draws empty panels, no crash
    waiting = {"step": 9, "instrument": "monitor", "values": {"measured": {"curvature": 0}, "postponed": {"curvature": 7},
                                                            "disabled": {}}}
    texts = {ax.get_title(): " ".join(t.get_text() for t in ax.texts) for ax in dg.plot([waiting]).axes[:9]}
    assert "waited 7 steps for budget" in texts["§8.2.3 Hessian extreme eigenvalues (Lanczos)"]
    assert "not enabled" in texts["§8.2.3 Hessian spectral density (SLQ)"]


def test_dropout_measurements_see_one_fixed_operator():
    """In train mode a measurement's passes share one set of dropout masks: H v is the exact
    Hessian of the loss under the masks of the measurement's seed, symmetric, the same every time."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Dropout(0.5), nn.Linear(6, 3)).double()
    x, y = torch.randn(16, 5, dtype=D), torch.randint(0, 3, (16,))
    ctx = StepContext(model, ce, x, y, None, None, 0, "train", {}, seed=7)
    op, n, _ = ctx.flat_hvp()
    names, params = [nm for nm, _ in model.named_parameters()], list(model.parameters())

    def under_seed_7(vec):
        torch.manual_seed(7)
        chunks = vec.split([p.numel() for p in params])
        return ce(torch.func.functional_call(model, {nm: c.view(p.shape) for nm, c, p in zip(names, chunks, params)},
                                             (x,)), y)
    hessian = torch.autograd.functional.hessian(under_seed_7, flat([p.detach() for p in params]))
    u, v = torch.randn(n, dtype=D), torch.randn(n, dtype=D)
    torch.testing.assert_close(op(v), hessian @ v, rtol=1e-10, atol=1e-12)
    assert torch.equal(op(u), op(u))
    assert float(u @ op(v)) == pytest.approx(float(v @ op(u)), rel=1e-10)
    r = lanczos(op, n, k=n, tol=1e-6, dtype=D)
    assert r.converged


def test_update_size_is_the_last_steps_update():
    """The cheap tier's update size at step t is ‖θ_t − θ_{t−1}‖ (θ_{t−1} kept at the step before
    a planned cheap measurement), and a snapshot that is not from the step before is never used."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    monitor = dg.Monitor(model, ce, opt, instruments=[dg.Cheap()], every={"cheap": 4}, budget=1e6)
    thetas, records = [], []
    for _ in range(30):
        x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
        opt.zero_grad()
        loss = ce(model(x), y)
        loss.backward()
        thetas.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
        records += monitor.step(x, y, loss)
        opt.step()
    assert [r["step"] for r in records] == list(range(4, 30, 4))
    for r in records:
        t = r["step"]
        assert r["values"]["update_norm"] == pytest.approx(float((thetas[t] - thetas[t - 1]).norm()), rel=1e-5)
    monitor.state["previous_step"] = 26  # a stale snapshot (as when a planned measurement was skipped)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    values = dg.Cheap().measure(dg.StepContext(model, ce, x, y, 0.0, opt, 28, "train", monitor.state))
    assert "update_norm" not in values


def test_the_monitor_leaves_the_training_random_stream_alone():
    """Measurements draw dropout masks from a state of their own: a dropout model trains to the
    same parameters with and without a Monitor measuring at every step."""
    def train(monitored):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Dropout(0.3), nn.Linear(8, 3))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        monitor = dg.Monitor(model, ce, opt, budget=1e6, every={"cheap": 1, "curvature": 2, "ill_conditioning": 1,
                                                                "gradient_noise": 3}) if monitored else None
        for _ in range(12):
            x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
            opt.zero_grad()
            loss = ce(model(x), y)
            loss.backward()
            if monitor:
                monitor.step(x, y, loss)
            opt.step()
        if monitor:
            assert all(k > 0 for k in monitor.measured.values())
        return [p.detach().clone() for p in model.parameters()]
    for a, b in zip(train(False), train(True)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["mlp", "cnn", "rnn"])
def test_exact_diagonal_and_top_eigenpairs_against_the_exact_hessian(name):
    """For small models: diag(H) and tr H exactly (one product per parameter, batched), each layer's
    trace, and the top-k eigenpairs by Lanczos — against the Hessian built by autograd."""
    from deepdescent.curvature.spectrum import hessian_diagonal, top_eigenpairs

    model, x = _models()[name]
    y = torch.randint(0, 3, (10,), generator=torch.Generator().manual_seed(3))
    h = _exact_hessian(model, ce, x, y)
    eig, vecs = torch.linalg.eigh(h)
    ctx = _ctx(model, ce, x, y)
    op, n, _ = ctx.flat_hvp()
    torch.testing.assert_close(hessian_diagonal(op, n, batched=ctx.flat_hvp_many(), chunk=7, dtype=D), h.diagonal(),
                               rtol=1e-10, atol=1e-12)
    values = dg.Curvature(exact=True, top=3).measure(ctx)
    assert values["trace"] == pytest.approx(h.trace().item(), rel=1e-10)
    sizes = [p.numel() for p in model.parameters()]
    per_layer = [d.sum().item() for d in h.diagonal().split(sizes)]
    assert list(values["layer_traces"].values()) == pytest.approx(per_layer, rel=1e-9, abs=1e-12)
    pairs = top_eigenpairs(op, n, 3, steps=n, dtype=D, generator=torch.Generator().manual_seed(0))
    assert pairs.converged
    torch.testing.assert_close(pairs.values, eig[-3:].flip(0), rtol=1e-8, atol=1e-10)
    for j in range(3):  # eigenvectors up to sign (the top three are simple here)
        assert abs(float(pairs.vectors[:, j] @ vecs[:, -1 - j])) == pytest.approx(1.0, abs=1e-6)
    assert values["top_eigenvalues"] == pytest.approx(eig[-3:].flip(0).tolist(), rel=1e-3)


def test_the_dashboard_rings_the_eigenvalues_that_did_not_converge():
    curvature = [{"step": s, "instrument": "curvature",
                  "values": {"lambda_max": 2.0 + s, "lambda_min": -0.5 * s, "converged_max": True,
                             "converged_min": s != 2}} for s in (1, 2, 3)]
    panel = next(ax for ax in dg.plot(curvature).axes if ax.get_title().startswith("§8.2.3 Hessian extreme"))
    rings = [c for c in panel.collections if c.get_label() == "not converged"]
    assert len(rings) == 1 and rings[0].get_offsets().tolist() == [[2.0, -1.0]]


def test_the_dashboard_draws_histograms_batch_size_tests_and_the_schedule():
    """The last row: the histogram of the last gradient-noise record (one bar per bin, heights from
    the log), the three batch-size statistics over steps, and measured/waited per instrument."""
    noise = [{"step": s, "instrument": "gradient_noise",
              "values": {"b_simple": 10.0 + s, "snr": 2.0, "norm_test": 0.1 * s, "inner_product_test": 0.2 * s,
                         "orthogonality_test": 0.3 * s,
                         "histogram": {"edges": [-2.0, -1.0, 0.0, 1.0, 2.0], "counts": [1.0, 5.0 + s, 7.0, 2.0]}}}
             for s in (1, 2)]
    monitor = {"step": 2, "instrument": "monitor",
               "values": {"measured": {"gradient_noise": 2, "curvature": 0}, "postponed": {"curvature": 5},
                          "disabled": {}}}
    axes = dg.plot([*noise, monitor]).axes
    hist = next(ax for ax in axes if ax.get_title().startswith("per-example gradient elements"))
    assert [p.get_height() for p in hist.patches] == [1.0, 7.0, 7.0, 2.0]  # the last record's counts
    tests = next(ax for ax in axes if ax.get_title().startswith("§8.1.3 batch-size tests"))
    lines = [float(v) for line in tests.get_lines() for v in line.get_ydata()]
    assert lines == pytest.approx([0.1, 0.2, 0.2, 0.4, 0.3, 0.6])
    schedule = next(ax for ax in axes if ax.get_title().startswith("the Monitor's schedule"))
    bars = {c.get_label(): [p.get_width() for p in c.patches] for c in schedule.containers}
    assert bars == {"measurements": [2, 0], "steps waited for budget": [0, 5]}
    assert [t.get_text() for t in schedule.get_yticklabels()] == ["gradient_noise", "curvature"]


def test_the_instruments_measure_on_a_fixed_batch_of_their_own_and_close_says_what_the_budget_buys(caplog):
    """measure_examples=6: every expensive measurement is taken on the first 6 examples of the first
    batch (gᵀHg checked against the exact Hessian there, at a later step with other minibatches);
    close() says what one measurement costs in training steps and how many the budget buys."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = dg.Monitor(model, ce, opt, instruments=[dg.IllConditioning()], every={"ill_conditioning": 7},
                         budget=1e6, measure_examples=6)
    gen = torch.Generator().manual_seed(0)
    first, records = None, []
    for _ in range(15):
        xb, yb = torch.randn(16, 4, generator=gen, dtype=D), torch.randint(0, 3, (16,), generator=gen)
        first = first or (xb[:6].clone(), yb[:6].clone())
        opt.zero_grad()
        loss = ce(model(xb), yb)
        loss.backward()
        got = monitor.step(xb, yb, loss)
        if any(r["instrument"] == "ill_conditioning" and r["step"] == 14 for r in got):
            h = _exact_hessian(model, ce, *first)
            params = [p for p in model.parameters()]
            g = flat(torch.autograd.grad(ce(model(first[0]), first[1]), params))
            records.append((next(r for r in got if r["instrument"] == "ill_conditioning")["values"]["gTHg"],
                            float(g @ h @ g)))
        opt.step()
    assert records and records[0][0] == pytest.approx(records[0][1], rel=1e-9)
    with caplog.at_level("INFO", logger="deepdescent.diagnostics"):
        afford = monitor.close()
    cost = afford["ill_conditioning"]
    assert cost["step_equivalents"] > 0
    assert cost["measurements"] == pytest.approx(0.8 * 0.85 * 1e6 * 15 / cost["step_equivalents"])
    assert "ill_conditioning" in caplog.text and "measurements" in caplog.text
    with pytest.raises(ValueError, match="measure_examples=0"):
        dg.Monitor(model, ce, opt, measure_examples=0)
