"""Instruments for the §8.2 challenges, checked against independent computations."""

from __future__ import annotations

import json
import math
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
    density = slq(op, n, k=min(n, 30), runs=2, dtype=D, generator=torch.Generator().manual_seed(2))
    assert density.weights.sum().item() == pytest.approx(1.0)
    assert density.nodes.max().item() <= eig[-1].item() + 1e-6


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
    assert v["trace_cov"] == pytest.approx((s ** 2).sum().item(), rel=0.03)
    assert v["b_simple"] == pytest.approx(expected, rel=0.05)
    assert v["grad_stderr"] == pytest.approx(math.sqrt((s ** 2).sum().item() / 20000), rel=0.03)


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
    assert (tmp_path / "dash.png").stat().st_size > 10_000 and len(fig.axes) >= 6


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
    assert {r["instrument"] for r in records} <= {"cheap", "monitor"}


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
    bad.write_text('{"step": 1}\n{not json\n')
    with pytest.raises(ValueError, match="line 2.*corrupt"):
        dg.read_jsonl(bad)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dg.plot([], tmp_path / "empty.png")  # an empty log draws empty panels, no crash
