"""Experiment 7 — DeepOBS ``quadratic_deep`` (Schneider, Balles & Hennig 2019) and its published
tuned learning rates.

The problem is DeepOBS's exactly (:func:`deepdescent.lab.problems.deepobs_quadratic`: the same
eigenvalues, rotation and data from the same seeds; θ₀ = 1), run with DeepOBS's protocol: minibatches
of 128 reshuffled each epoch, the last incomplete one dropped, 100 epochs, learning rates on the grid
10^(−5 + 0.2k), k = 0…35. Each optimizer's learning rate is the one with the lowest final test loss.
DeepOBS's momentum baseline's μ is not restated here: μ = 0.9 and μ = 0.99 are both run.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from deepdescent import optim
from deepdescent.lab import problems
from deepdescent.lab.science.experiment import Experiment, Summary, judged

SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(epochs=3, grid=(-2.6, -1.8, -1.4), seeds=1),
    "cpu": dict(epochs=100, grid=tuple(round(-5 + 0.2 * k, 1) for k in range(36)), seeds=3),
    "full": dict(epochs=100, grid=tuple(round(-5 + 0.2 * k, 1) for k in range(36)), seeds=3),
}
PUBLISHED = {"SGD": 0.0158, "Momentum": 0.00251, "Adam": 0.0398}
OPTIMIZERS = {"SGD": lambda p, lr: optim.SGD(p, lr=lr),
              "Momentum μ=0.9": lambda p, lr: optim.SGD(p, lr=lr, momentum=0.9),
              "Momentum μ=0.99": lambda p, lr: optim.SGD(p, lr=lr, momentum=0.99),
              "Adam": lambda p, lr: optim.Adam(p, lr=lr)}
BATCH = 128


def train(name: str, lr: float, epochs: int, seed: int) -> dict[str, float]:
    """Final training and test loss of one run (∞ when it diverged)."""
    hess, x_train, x_test = problems.deepobs_quadratic()
    loss = problems.QuadraticLoss(hess)
    theta = torch.ones(100, requires_grad=True)
    opt = OPTIMIZERS[name]([theta], lr)
    order = torch.Generator().manual_seed(10_000 + seed)
    n = len(x_train)
    for _ in range(epochs):
        perm = torch.randperm(n, generator=order)
        for i in range(0, n - BATCH + 1, BATCH):  # drop_last, as DeepOBS's loader
            xb = x_train[perm[i:i + BATCH]]
            opt.zero_grad()
            value = loss(theta.expand(len(xb), -1), xb)
            if not math.isfinite(float(value.detach())) or float(value.detach()) > 1e8:
                return {"train": math.inf, "test": math.inf}
            value.backward()
            opt.step()
    with torch.no_grad():
        return {"train": float(loss(theta.expand(n, -1), x_train)), "test": float(loss(theta.expand(n, -1), x_test))}


def run(scale: str, device: str = "cpu") -> dict[str, Any]:
    s = SIZES[scale]
    runs = {name: {str(e): [train(name, 10.0**e, s["epochs"], seed) for seed in range(s["seeds"])] for e in s["grid"]}
            for name in OPTIMIZERS}
    return {"scale": scale, **s, "runs": runs}


def _mean_test(seeds: list[dict[str, float]]) -> float:
    values = [r["test"] if r["test"] is not None else math.inf for r in seeds]
    return sum(values) / len(values)


def tuned(raw: dict[str, Any], name: str) -> tuple[float, float]:
    """(learning rate, mean final test loss) of the grid point with the lowest mean test loss."""
    exp, seeds = min(raw["runs"][name].items(), key=lambda kv: _mean_test(kv[1]))
    return 10.0 ** float(exp), _mean_test(seeds)


def summarize(raw: dict[str, Any]) -> Summary:
    best = {name: tuned(raw, name) for name in raw["runs"]}
    steps = {}
    for name, (lr, _) in best.items():
        ref = PUBLISHED["Momentum" if name.startswith("Momentum") else name]
        steps[name] = round(abs(math.log10(lr / ref)) / 0.2)  # grid steps between ours and the published rate
    momentum = min((k for k in steps if k.startswith("Momentum")), key=steps.get)
    matched = [steps["SGD"], steps[momentum], steps["Adam"]]
    protocol = raw["epochs"] == 100 and len(raw["grid"]) == 36
    return Summary(
        ours="; ".join(f"{n}: lr {lr:.3g}, test loss {loss:.4g}" for n, (lr, loss) in best.items()),
        comparable=protocol,
        why=("" if protocol else f"only {raw['epochs']} epochs and {len(raw['grid'])} grid points (the tiny scale); ")
            + "the same problem (eigenvalues, rotation, data from DeepOBS's seeds), batch size, epochs and learning-rate "
            f"grid; {raw['seeds']} seed(s) per grid point, the rate chosen by their mean test loss (a whole grid "
            "step is the test's resolution), and the momentum baseline's μ taken as the closer of 0.9/0.99 "
            f"({momentum})",
        **judged({"every tuned rate within one grid step of the published one": max(matched) <= 1}, max(matched) <= 2),
        explanation="grid steps (factor 10^0.2 each) between our tuned rate and DeepOBS's: "
                    + ", ".join(f"{n} {steps[n]}" for n in steps),
        numbers={f"{n}_lr": lr for n, (lr, _) in best.items()} | {f"{n}_test": v for n, (_, v) in best.items()})


def figure(raw: dict[str, Any], fig: Any) -> None:
    ax = fig.add_subplot(1, 1, 1)
    for i, name in enumerate(raw["runs"]):
        lrs = [10.0 ** float(e) for e in raw["runs"][name]]
        losses = [_mean_test(v) for v in raw["runs"][name].values()]
        ax.plot(lrs, [v if math.isfinite(v) else math.nan for v in losses], "o-", ms=3, label=name, color=f"C{i}")
        ref = PUBLISHED["Momentum" if name.startswith("Momentum") else name]
        ax.axvline(ref, color=f"C{i}", ls=":", lw=1)
    ax.set(xscale="log", yscale="log", xlabel="learning rate", ylabel="final test loss",
           title="quadratic_deep: final test loss against the learning rate (dotted: DeepOBS's tuned rates)")
    ax.legend()


EXPERIMENT = Experiment(
    key="deepobs", title="DeepOBS quadratic_deep",
    claim="On DeepOBS's noisy quadratic with a deep-learning-like spectrum, the tuned learning rates of SGD, momentum "
          "and Adam are DeepOBS's published ones (§8.2.1: ill-conditioning sets the usable step)",
    source="Schneider, Balles & Hennig (2019), DeepOBS baselines",
    published="tuned learning rates: SGD 0.0158, momentum 0.00251, Adam 0.0398",
    budget=lambda scale: f"{SIZES[scale]['epochs']} epochs × {len(SIZES[scale]['grid'])} learning rates × "
                         f"{len(OPTIMIZERS)} optimizers, {SIZES[scale]['seeds']} seed(s)",
    run=run, summarize=summarize, figure=figure)
