"""Experiment 6 — linear interpolation from the initial to the trained parameters (Goodfellow,
Vinyals & Saxe 2015; §8.2.7).

Each of the lab's networks is trained with Adam from θ₀ to θ₁; the training loss is then evaluated
at θ(α) = (1 − α)θ₀ + αθ₁ for α on a grid of [0, 1]. The path is monotone when no point rises above
the one before by more than 0.1% of the loss drop (a bump of the path).
"""

from __future__ import annotations

from typing import Any

import torch

from deepdescent import optim
from deepdescent.lab import problems
from deepdescent.lab.science.experiment import Experiment, Summary, judged

SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(networks=("digits_mlp", "deep_linear"), epochs=2, points=11, seeds=2),
    "cpu": dict(networks=("digits_mlp", "digits_autoencoder", "mnist_cnn", "deep_linear", "adding"), epochs=20,
                points=41, seeds=3),
    "full": dict(networks=("digits_mlp", "digits_autoencoder", "mnist_cnn", "deep_linear", "adding"), epochs=100,
                 points=101, seeds=3),
}
#: A rise along the line above this fraction of the path's drop is a bump (the path is not monotone).
BUMP = 1e-3
LR = 1e-3  # Adam's default


def path(name: str, epochs: int, points: int, device: str, seed: int = 0) -> dict[str, Any]:
    task = problems.problem(name).build(seed, True).to(device)
    model = task.model
    start = [p.detach().clone() for p in model.parameters()]
    opt = optim.Adam(model.parameters(), lr=LR)
    n, b = len(task.x_train), task.batch_size
    order = torch.Generator().manual_seed(10_000 + seed)
    for _ in range(epochs):
        perm = torch.randperm(n, generator=order).to(device)
        for i in range(0, n - b + 1, b):
            idx = perm[i:i + b]
            opt.zero_grad()
            task.loss(model(task.x_train[idx]), task.y_train[idx]).backward()
            opt.step()
    end = [p.detach().clone() for p in model.parameters()]
    alphas = [i / (points - 1) for i in range(points)]
    losses = []
    with torch.no_grad():
        for a in alphas:
            for p, p0, p1 in zip(model.parameters(), start, end):
                p.copy_((1 - a) * p0 + a * p1)
            losses.append(float(task.loss(model(task.x_train), task.y_train)))
    return {"alpha": alphas, "loss": losses}


def run(scale: str, device: str = "cpu") -> dict[str, Any]:
    """Seed 0's paths (drawn), and the largest bump of the other seeds' (model, data order)."""
    s = SIZES[scale]
    return {"scale": scale, **s, "paths": {n: path(n, s["epochs"], s["points"], device) for n in s["networks"]},
            "other_seeds": {n: [largest_bump(path(n, s["epochs"], s["points"], device, seed)["loss"])
                          for seed in range(1, s["seeds"])] for n in s["networks"]}}


def largest_bump(losses: list[float]) -> float:
    """The largest rise between neighbouring points, relative to the path's total drop."""
    drop = max(losses[0] - losses[-1], 1e-12)
    return max(0.0, *(b - a for a, b in zip(losses, losses[1:]))) / drop


def summarize(raw: dict[str, Any]) -> Summary:
    bumps = {n: (largest_bump(p["loss"]), *raw.get("other_seeds", {}).get(n, [])) for n, p in raw["paths"].items()}
    monotone = [n for n, v in bumps.items() if max(v) <= BUMP]
    seeds = len(next(iter(bumps.values())))
    return Summary(
        ours=f"{len(monotone)} of {len(bumps)} networks monotone in all {seeds} seeds; largest bump over seeds "
             "(fraction of the drop): " + ", ".join(f"{n} {max(v):.2g}" for n, v in bumps.items()),
        comparable=False,
        why="the lab's small networks trained briefly with Adam (Goodfellow et al.: MNIST/CIFAR maxout, "
            "convolutional and recurrent networks trained to convergence)",
        **judged({f"{n}: the path is monotone": tuple(b <= BUMP for b in v) for n, v in bumps.items()},
                 len(monotone) > 0),
        explanation=("every path falls monotonically" if len(monotone) == len(bumps) else
                     f"not monotone: {', '.join(n for n in bumps if n not in monotone)}"),
        numbers={f"{n}_bump": v[0] for n, v in bumps.items()})


def figure(raw: dict[str, Any], fig: Any) -> None:
    ax = fig.add_subplot(1, 1, 1)
    for n, p in raw["paths"].items():
        lo, hi = min(p["loss"]), max(p["loss"])
        ax.plot(p["alpha"], [(v - lo) / max(hi - lo, 1e-12) for v in p["loss"]], label=n)
    ax.set(xlabel="α (θ = (1 − α)θ₀ + αθ₁)", ylabel="training loss, scaled to [0, 1]",
           title="Loss along the straight line from initialization to solution")
    ax.legend()


EXPERIMENT = Experiment(
    key="interpolation", title="Linear interpolation from initialization to solution",
    claim="The loss along the straight line from the initial to the final parameters falls monotonically: the "
          "path training takes is more complicated than it needs to be (§8.2.7)",
    source="Goodfellow, Vinyals & Saxe (2015)",
    published="monotone along the line for the networks studied (no bump on the path)",
    budget=lambda scale: f"{SIZES[scale]['epochs']} epochs of Adam per network, {len(SIZES[scale]['networks'])} "
                         f"networks, {SIZES[scale]['points']} points on the line, {SIZES[scale]['seeds']} seeds "
                         "(a network's path counts as monotone only when it is so in every seed)",
    run=run, summarize=summarize, figure=figure, seeded=True)
