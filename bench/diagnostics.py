"""What the Monitor costs and delivers, in one run, as ratios measured side by side:

1. the default Monitor over 3,000 steps of the digits MLP, an 8×8 CNN and an LSTM (batch 32, SGD
   with momentum) against the plain loop (interleaved repeats, medians): slowdown, the Monitor's
   own overhead estimate, and how often each instrument measured; then where the difference of
   one run goes (the user's own steps, the Monitor's time, the warm-up);
2. one Hessian-vector product, ours (the kept gradient graph) against PyHessian's, and λmax to
   1e-3: our Lanczos (products, seconds) against PyHessian's power iteration (``pip install
   pyhessian==0.1``; skipped when absent);
3. B_simple from minibatches of m = 8 … 512 against its full-data value (digits MLP, fixed θ);
1c. the same loops at budgets 0.10–0.30: how much budget ≥ 10 measurements of each instrument take.

    python bench/diagnostics.py [--steps 3000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
import warnings

import torch
from torch import nn

from deepdescent import diagnostics as dg
from deepdescent import optim
from deepdescent.curvature.spectrum import hutchinson, lanczos
from deepdescent.diagnostics.instruments import StepContext
from deepdescent.lab.digits import load_digits


class LSTMNet(nn.Module):
    """The 8×8 image read row by row (8 steps of 8 pixels)."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn, self.out = nn.LSTM(8, 32, batch_first=True), nn.Linear(32, 10)

    def forward(self, x):
        h, _ = self.rnn(x.view(-1, 8, 8))
        return self.out(h[:, -1])


MODELS = {
    "digits MLP": lambda: nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10)),
    "8×8 CNN": lambda: nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
                                     nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(512, 10)),
    "LSTM": LSTMNet,
}
ce = nn.functional.cross_entropy


def train(make, data, steps, monitored, user_steps=None, budget=0.10):
    """Seconds for ``steps`` training steps (with the default Monitor when ``monitored``); the
    user's own step times (everything but ``monitor.step``) are appended to ``user_steps``."""
    torch.manual_seed(0)
    model = make()
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    monitor = dg.Monitor(model, ce, opt, budget=budget) if monitored else None
    g = torch.Generator().manual_seed(0)
    done, start = 0, time.perf_counter()
    while done < steps:
        for idx in torch.randperm(len(data.y_train), generator=g).split(32):
            if done == steps:
                break
            t0 = time.perf_counter()
            x, y = data.x_train[idx], data.y_train[idx]
            opt.zero_grad()
            loss = ce(model(x), y)
            loss.backward()
            t1 = time.perf_counter()
            if monitor is not None:
                monitor.step(x, y, loss)
            t2 = time.perf_counter()
            opt.step()
            if user_steps is not None:
                user_steps.append(t1 - t0 + time.perf_counter() - t2)
            done += 1
    seconds = time.perf_counter() - start
    if monitor is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the table says which instruments never measured
            monitor.close()
    return seconds, monitor


def schedule(data, steps, repeats):
    print(f"\n### 1. Default Monitor, {steps} steps\n")
    print("| model | params | plain (s) | Monitor (s) | ratio | ratio without the warm-up | own estimate | "
          "warm-up (s) | measured: cheap / ill-cond. / curvature / noise | one measurement (ms): ill-cond. / "
          "curvature / noise |\n|---|---|---|---|---|---|---|---|---|---|")
    for name, make in MODELS.items():
        plains, monitored, monitors = [], [], []
        for _ in range(repeats):  # interleaved: both see the same phases of a shared machine
            plains.append(train(make, data, steps, False)[0])
            seconds, monitor = train(make, data, steps, True)
            monitored.append(seconds)
            monitors.append(monitor)
        plain, full = statistics.median(plains), statistics.median(monitored)
        m = monitors[monitored.index(full)] if full in monitored else monitors[0]
        counts = " / ".join(str(m.measured.get(k, 0)) for k in ("cheap", "ill_conditioning", "curvature",
                                                                 "gradient_noise"))
        costs = " / ".join(f"{m.cost.get(k, float('nan')) * 1e3:.1f}" for k in ("ill_conditioning", "curvature",
                                                                             "gradient_noise"))
        params = sum(p.numel() for p in make().parameters())
        print(f"| {name} | {params} | {plain:.2f} | {full:.2f} | {full / plain:.3f} | "
              f"{(full - m.warmup_seconds) / plain:.3f} | {m.overhead:.3f} | {m.warmup_seconds:.2f} | {counts} | {costs} |",
              flush=True)


def user_steps(data, steps):
    """Where a whole run's difference goes: the user's own steps with and without the Monitor
    (medians and sums), the Monitor's time, and what is left (the step-0 warm-up, by design)."""
    print(f"\n### 1b. The user's steps with and without the Monitor ({steps} steps, one run each)\n")
    print("| model | median step, plain (ms) | median step, monitored (ms) | Σ steps plain (s) | Σ steps monitored (s) "
          "| Monitor's time (s) | run − steps − Monitor (s) | warm-up (s) |\n|---|---|---|---|---|---|---|---|")
    for name, make in MODELS.items():
        plain, monitored = [], []
        train(make, data, steps, False, plain)
        seconds, m = train(make, data, steps, True, monitored)
        rest = seconds - sum(monitored) - m.monitor_seconds
        print(f"| {name} | {statistics.median(plain) * 1e3:.3f} | {statistics.median(monitored) * 1e3:.3f} | "
              f"{sum(plain):.2f} | {sum(monitored):.2f} | {m.monitor_seconds:.2f} | {rest:.2f} | "
              f"{m.warmup_seconds:.2f} |", flush=True)


def budgets(data, steps, repeats):
    """The budget at which the default instruments measure ≥ 10 times each, and what it costs."""
    print(f"\n### 1c. Larger budgets ({steps} steps, {repeats} interleaved repeats, medians)\n")
    print("| model | budget | ratio | own estimate | measured: cheap / ill-cond. / curvature / noise |"
          "\n|---|---|---|---|---|")
    for name, make in MODELS.items():
        for budget in (0.10, 0.15, 0.20, 0.30):
            plains, runs = [], []
            for _ in range(repeats):
                plains.append(train(make, data, steps, False)[0])
                runs.append(train(make, data, steps, True, budget=budget))
            seconds = statistics.median(s for s, _ in runs)
            m = next(m for s, m in runs if s == seconds)
            counts = " / ".join(str(m.measured.get(k, 0)) for k in ("cheap", "ill_conditioning", "curvature",
                                                                     "gradient_noise"))
            print(f"| {name} | {budget:.2f} | {seconds / statistics.median(plains):.3f} | {m.overhead:.3f} | "
                  f"{counts} |", flush=True)


def _timed(f, repeats=50):
    f()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def products(data):
    try:
        from pyhessian import hessian as PyHessian
        from pyhessian.utils import hessian_vector_product
    except ImportError:
        print("\n(PyHessian not installed: `pip install pyhessian==0.1` for the side-by-side products)")
        return
    print("\n### 2. Hessian-vector products and λmax (256 examples, side by side)\n")
    print("| model | one product, ours (ms) | PyHessian (ms) | ratio | λmax to 1e-3: our products, from g "
          "(random) | our time (ms) | PyHessian products | PyHessian time (ms) | time ratio |"
          "\n|---|---|---|---|---|---|---|---|---|")
    x, y = data.x_train[:256], data.y_train[:256]
    for name, make in MODELS.items():
        torch.manual_seed(0)
        model = make()
        ctx = StepContext(model, ce, x, y, None, None, 0, "eval", {})
        op, n, like = ctx.flat_hvp()
        g = torch.cat([t.flatten() for t in ctx.hessian()[1].values()])
        g = g / g.norm()  # the Curvature instrument's first start
        v = torch.randn(n)
        ours = _timed(lambda: op(v))
        ph = PyHessian(model, ce, data=(x, y), cuda=False)
        vs = [torch.randn_like(p) for p in ph.params]
        theirs = _timed(lambda: hessian_vector_product(ph.gradsH, ph.params, vs))
        reference = lanczos(op, n, k=min(n, 100), dtype=like.dtype).lambda_max
        def products(start):
            return next(k for k in range(2, 101) if abs(lanczos(op, n, k=k, start=start, generator=torch.Generator()
                                                                .manual_seed(0)).lambda_max - reference)
                        <= 1e-3 * abs(reference))
        k, k_random = products(g), products(None)
        lanczos_time = _timed(lambda: lanczos(op, n, k=k, start=g, generator=torch.Generator().manual_seed(0)), 10)
        calls = []

        def counted(g, p, v, calls=calls):
            calls.append(1)
            return hessian_vector_product(g, p, v)
        module = sys.modules["pyhessian.hessian"]  # (the package exports a class of the same name)
        original, module.hessian_vector_product = module.hessian_vector_product, counted
        try:
            torch.manual_seed(0)
            t = time.perf_counter()
            power = ph.eigenvalues(maxIter=200, tol=1e-3)[0][0]
            power_time = time.perf_counter() - t
        finally:
            module.hessian_vector_product = original
        error = abs(power - reference) / abs(reference)
        print(f"| {name} | {ours * 1e3:.3f} | {theirs * 1e3:.3f} | {ours / theirs:.2f} | {k} ({k_random}) | "
              f"{lanczos_time * 1e3:.1f} | "
              f"{len(calls)} (error {error:.0e}) | {power_time * 1e3:.1f} | {lanczos_time / power_time:.2f} |", flush=True)


def warm_start(data):
    """The Monitor's situation: products until λmax is within 1e-3 of its converged value, from a
    random start and from the previous measurement's Ritz vector 50 SGD steps earlier; and from a
    random start after 200 steps (initialization, in section 2, is the hardest case)."""
    print("\n### 2b. λmax to 1e-3 with the Monitor's warm start (256 examples, 50 SGD steps apart)\n")
    print("| model | products, cold (step 50) | products, warm (step 50) | products, cold (step 200) |"
          "\n|---|---|---|---|")
    x, y = data.x_train[:256], data.y_train[:256]

    def products(op, n, start):
        reference = lanczos(op, n, k=min(n, 100)).lambda_max
        return next(k for k in range(2, 101) if abs(lanczos(op, n, k=k, start=start, generator=torch.Generator()
                                                            .manual_seed(0)).lambda_max - reference)
                    <= 1e-3 * abs(reference))
    for name, make in MODELS.items():
        torch.manual_seed(0)
        model = make()
        op, n, _ = StepContext(model, ce, x, y, None, None, 0, "eval", {}).flat_hvp()
        previous = lanczos(op, n, k=min(n, 100)).vector
        opt = optim.SGD(model.parameters(), lr=0.05)
        row = []
        for i in range(200):
            idx = torch.arange(i * 32, i * 32 + 32) % len(data.y_train)
            opt.zero_grad()
            ce(model(data.x_train[idx]), data.y_train[idx]).backward()
            opt.step()
            if i + 1 in (50, 200):
                op, n, _ = StepContext(model, ce, x, y, None, None, 0, "eval", {}).flat_hvp()
                row += [products(op, n, None)] + ([products(op, n, previous)] if i + 1 == 50 else [])
        print(f"| {name} | {' | '.join(map(str, row))} |", flush=True)


def deflated_trace(data):
    """Hutchinson's spread per probe on the minibatch Hessian (batch 32), plain and deflated by the
    Curvature instrument's Lanczos basis (10 products), at initialization and after 400 steps."""
    print("\n### 2c. tr H: the spread of one probe, plain and deflated by the Lanczos basis (batch 32, 200 probes)\n")
    print("| model | step | tr H (plain) | tr H (deflated) | sd, plain | sd, deflated | ratio |\n|---|---|---|---|---|---|---|")
    for name, make in MODELS.items():
        torch.manual_seed(0)
        model = make()
        opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        for i in range(401):
            idx = torch.arange(i * 32, i * 32 + 32) % len(data.y_train)
            x, y = data.x_train[idx], data.y_train[idx]
            if i in (0, 400):
                ctx = StepContext(model, ce, x, y, None, None, 0, "eval", {})
                op, n, _ = ctx.flat_hvp()
                r = lanczos(op, n, k=10, generator=torch.Generator().manual_seed(0))
                (t0, s0), (t1, s1) = [
                    (t.trace, t.stderr * math.sqrt(200)) for t in (
                        hutchinson(op, n, samples=200, generator=torch.Generator().manual_seed(1),
                                   batched=ctx.flat_hvp_many(), deflation=deflation) for deflation in (None, r))]
                print(f"| {name} | {i} | {t0:.2f} | {t1:.2f} | {s0:.2f} | {s1:.2f} | {s0 / s1:.1f} |", flush=True)
            opt.zero_grad()
            ce(model(x), y).backward()
            opt.step()


def noise_scale(data):
    print("\n### 3. B_simple against the full-data value (digits MLP, θ after 200 SGD steps)\n")
    torch.manual_seed(0)
    x, y = torch.cat([data.x_train, data.x_test]), torch.cat([data.y_train, data.y_test])
    model = MODELS["digits MLP"]()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(200):
        idx = torch.randint(0, len(y), (32,))
        opt.zero_grad()
        ce(model(x[idx]), y[idx]).backward()
        opt.step()
    g = dg.per_example_gradients(StepContext(model, ce, x, y, None, None, 0, "train", {})).double()
    mean = g.mean(0)
    full = float(((g - mean) ** 2).sum() / len(g)) / float(mean @ mean)
    print(f"full data: B_simple = {full:.1f}\n\n| m | minibatches | B_simple (ours) | ratio | tr Σ_B / ‖ḡ_B‖² "
          "(biased, median) |\n|---|---|---|---|---|")
    gen = torch.Generator().manual_seed(0)
    for m, draws in ((8, 60000), (32, 8000), (128, 1500), (512, 300)):
        noise = dg.GradientNoise(beta=None)
        biased = []
        for idx in torch.randint(0, len(g), (draws, m), generator=gen):
            values = noise.statistics(g[idx])
            biased.append(values["trace_cov"] / values["grad_norm"] ** 2)
        print(f"| {m} | {draws} | {values['b_simple']:.1f} | {values['b_simple'] / full:.3f} | "
              f"{statistics.median(biased):.1f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(2)
    data = load_digits()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    schedule(data, args.steps, args.repeats)
    user_steps(data, args.steps)
    budgets(data, args.steps, args.repeats)
    products(data)
    warm_start(data)
    deflated_trace(data)
    noise_scale(data)


if __name__ == "__main__":
    main()
