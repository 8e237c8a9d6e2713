"""K-FAC and Shampoo against Adam: the cost of a training step on real layer shapes.

For each model (the lab's digits MLP, and the three built-in workloads at their CPU size: a ResNet,
a character Transformer, an LSTM) the same minibatches are trained by three copies of the model,
one per optimizer, stepped in turn (so that a slow phase of a shared machine hits all three).
Times are per training step (forward + backward + step) and per ``step()`` alone, medians over
``--steps`` steps after a warm-up; the steps cover whole cadences of K-FAC's inverses (every 10
steps) and Shampoo's roots (every 10), so their amortized cost is in the medians' spread and in
the means printed beside them. Ratios are to Adam's (> 1: slower than Adam).

    python bench/preconditioners.py [--threads 2] [--steps 40]
"""

from __future__ import annotations

import argparse
import copy
import datetime
import platform
import statistics
import time

import torch

from deepdescent import optim
from deepdescent.lab.problems import problem

MODELS = ["digits_mlp", "resnet_mnist", "char_transformer", "lstm_rows"]
OPTIMIZERS = {
    "Adam": lambda m: optim.Adam(m.parameters(), lr=1e-3),
    "K-FAC": lambda m: optim.KFAC(m, lr=1e-3),
    "Shampoo": lambda m: optim.Shampoo(m.parameters(), lr=1e-3),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--models", nargs="+", default=MODELS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# {platform.processor() or platform.machine()}, {args.threads} threads, "
          f"{datetime.date.today()}, torch {torch.__version__}")
    print("| model | parameters | tensors | optimizer | train step ms (mean) | ratio to Adam | step() ms (mean) |"
          " step() ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.models:
        task = problem(name).build(0, True)
        models = {k: copy.deepcopy(task.model) for k in OPTIMIZERS}
        opts = {k: make(models[k]) for k, make in OPTIMIZERS.items()}
        times: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in OPTIMIZERS}
        gen = torch.Generator().manual_seed(0)
        for i in range(args.steps + 10):
            idx = torch.randint(len(task.x_train), (task.batch_size,), generator=gen)
            x, y = task.x_train[idx], task.y_train[idx]
            for k, opt in opts.items():
                model = models[k]
                t0 = time.perf_counter()
                opt.zero_grad()
                task.loss(model(x), y).backward()
                t1 = time.perf_counter()
                opt.step()
                t2 = time.perf_counter()
                if i >= 10:  # warm-up: the first cadence (factors, first roots) and the allocator
                    times[k][0].append(t2 - t0)
                    times[k][1].append(t2 - t1)
        n = sum(p.numel() for p in task.model.parameters())
        tensors = sum(1 for _ in task.model.parameters())
        base_train, base_step = (statistics.median(times["Adam"][j]) for j in (0, 1))
        for k, (train, step) in times.items():
            mt, ms = statistics.median(train), statistics.median(step)
            print(f"| {name} | {n:,} | {tensors} | {k} | {mt * 1e3:.2f} ({statistics.mean(train) * 1e3:.2f}) | "
                  f"{mt / base_train:.2f} | {ms * 1e3:.2f} ({statistics.mean(step) * 1e3:.2f}) | "
                  f"{ms / base_step:.1f} |", flush=True)


if __name__ == "__main__":
    main()
