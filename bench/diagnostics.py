"""Cost of the diagnostics: the cheap tier and the default Monitor against plain training, and
Lanczos with warm start. Ratios measured in the same run.

    python bench/diagnostics.py [--epochs 5]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from deepdescent import diagnostics as dg
from deepdescent import optim
from deepdescent.curvature.spectrum import lanczos
from deepdescent.diagnostics.instruments import StepContext
from deepdescent.lab.digits import load_digits


def models():
    torch.manual_seed(0)
    return {
        "digits MLP": lambda: nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 10)),
        "small CNN": lambda: nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
                                           nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Flatten(),
                                           nn.Linear(1024, 10)),
    }


def train(make, data, epochs, monitor_kind):
    torch.manual_seed(0)
    model = make()
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss_fn = nn.functional.cross_entropy
    monitor = None
    if monitor_kind == "cheap":
        monitor = dg.Monitor(model, loss_fn, opt, instruments=[dg.Cheap()])
    elif monitor_kind == "default":
        monitor = dg.Monitor(model, loss_fn, opt)
    g = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for _ in range(epochs):
        for idx in torch.randperm(len(data.y_train), generator=g).split(32):
            x, y = data.x_train[idx], data.y_train[idx]
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            if monitor is not None:
                monitor.step(x, y, loss)
            opt.step()
    seconds = time.perf_counter() - start
    return seconds, monitor


def warm_start(make, data):
    """HVPs until λmax is within 1e-3 of its converged value: cold start, then warm-started
    after 50 more SGD steps (the Monitor's situation)."""
    torch.manual_seed(0)
    model = make()
    loss_fn = nn.functional.cross_entropy
    x, y = data.x_train[:256], data.y_train[:256]
    ctx = StepContext(model, loss_fn, x, y, None, None, 0, "train", {})
    op, n, like = ctx.flat_hvp()
    reference = lanczos(op, n, k=80).lambda_max
    cold = next(k for k in range(2, 81) if abs(lanczos(op, n, k=k, generator=torch.Generator().manual_seed(0))
                                                .lambda_max - reference) <= 1e-3 * abs(reference))
    start = lanczos(op, n, k=80).vector
    opt = optim.SGD(model.parameters(), lr=0.05)
    for i in range(50):
        idx = torch.arange(i * 32, i * 32 + 32) % len(data.y_train)
        opt.zero_grad()
        loss_fn(model(data.x_train[idx]), data.y_train[idx]).backward()
        opt.step()
    ctx = StepContext(model, loss_fn, x, y, None, None, 0, "train", {})
    op, n, like = ctx.flat_hvp()
    reference = lanczos(op, n, k=80).lambda_max
    warm = next(k for k in range(2, 81) if abs(lanczos(op, n, k=k, start=start, generator=torch.Generator()
                                                       .manual_seed(0)).lambda_max - reference) <= 1e-3 * abs(reference))
    return cold, warm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(2)
    data = load_digits()
    print(f"torch {torch.__version__}, digits train set {len(data.y_train)}, batch 32, {args.epochs} epochs")
    print("\n| model | plain (s) | cheap tier (s) | ratio | default Monitor (s) | ratio | Monitor's own overhead | "
          "λmax HVPs cold | λmax HVPs warm |\n|---|---|---|---|---|---|---|---|---|")
    for name, make in models().items():
        plains, cheaps, fulls = [], [], []
        for _ in range(3):  # interleaved repeats; the median of each
            plains.append(train(make, data, args.epochs, None)[0])
            cheaps.append(train(make, data, args.epochs, "cheap")[0])
            seconds, mon = train(make, data, args.epochs, "default")
            fulls.append(seconds)
        plain, cheap, full = (sorted(v)[1] for v in (plains, cheaps, fulls))
        cold, warm = warm_start(make, data)
        print(f"| {name} | {plain:.2f} | {cheap:.2f} | {cheap / plain:.3f} | {full:.2f} | {full / plain:.3f} | "
              f"{mon.overhead:.3f} | {cold} | {warm} |")


if __name__ == "__main__":
    main()
