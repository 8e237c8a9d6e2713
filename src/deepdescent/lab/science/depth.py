"""Experiment 2 — depth and initialization (Saxe, McClelland & Ganguli 2013).

The lab's deep linear network (16 units per layer, a random linear teacher) at several depths,
initialized with random orthogonal matrices or Glorot's normalized uniform (8.23); full-batch
gradient descent (Algorithm 8.1 on the whole training set), the learning rate tuned per depth and
scheme on a grid. Measured: epochs until the training error reaches 5% of the teacher's output
variance (∞: not within the budget).
"""

from __future__ import annotations

import math
from typing import Any

from deepdescent import optim
from deepdescent.lab import problems
from deepdescent.lab.science.experiment import Experiment, Paired, Summary, judged, seed_bar

SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(depths=(2, 8), epochs=150, lrs=(0.1, 0.3), seeds=2),
    "cpu": dict(depths=(2, 8, 32, 100), epochs=1000, lrs=(0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0), seeds=3),
    "full": dict(depths=(2, 8, 32, 64, 100), epochs=5000, lrs=(0.001, 0.003, 0.01, 0.03, 0.1), seeds=5),
}
#: Growth of the epochs from the shallowest to the deepest network: "independent of depth" when
#: orthogonal's stays under FLAT×, "grows" when Glorot's exceeds FASTER× orthogonal's (per seed).
FLAT, FASTER = 3.0, 2.0
SCHEMES = ("orthogonal", "normalized")
TARGET = 0.05  # of the teacher's output variance


def epochs_to_target(depth: int, scheme: str, lr: float, epochs: int, device: str, seed: int = 0) -> dict[str, Any]:
    task = problems.deep_linear(seed, True, depth=depth, scheme=scheme).to(device)
    x, y = task.x_train, task.y_train
    target = TARGET * float(y.square().mean())
    opt = optim.SGD(task.model.parameters(), lr=lr)
    curve = []
    for epoch in range(epochs + 1):
        loss = task.loss(task.model(x), y)
        value = float(loss.detach())
        curve.append(value)
        if value <= target:
            return {"lr": lr, "epochs": epoch, "curve": _thin(curve)}
        if not math.isfinite(value) or value > 1e6 * curve[0] or epoch == epochs:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {"lr": lr, "epochs": None, "curve": _thin(curve)}


def _thin(curve: list[float], points: int = 50) -> list[float]:
    """At most ``points`` evenly spaced values of a loss curve, the last included (what is stored)."""
    step = max(1, -(-len(curve) // points))
    return curve[::step] + ([curve[-1]] if (len(curve) - 1) % step else [])


def run(scale: str, device: str = "cpu") -> dict[str, Any]:
    """Seed 0 over the learning-rate grid; the other seeds (network and teacher) at its tuned rate."""
    s = SIZES[scale]
    runs = {scheme: {str(d): [epochs_to_target(d, scheme, lr, s["epochs"], device) for lr in s["lrs"]]
                     for d in s["depths"]} for scheme in SCHEMES}
    seeds = {scheme: {d: [{k: r[k] for k in ("lr", "epochs")} for r in (
        epochs_to_target(int(d), scheme, _tuned_lr(grid), s["epochs"], device, seed) for seed in range(1, s["seeds"]))]
        for d, grid in by_depth.items()} for scheme, by_depth in runs.items()}
    return {"scale": scale, **s, "target": TARGET, "runs": runs, "other_seeds": seeds}


def _tuned_lr(runs: list[dict[str, Any]]) -> float:
    """The grid's learning rate with the fewest epochs (the largest where none reached the target)."""
    reached = [r for r in runs if r["epochs"] is not None]
    return min(reached, key=lambda r: r["epochs"])["lr"] if reached else max(r["lr"] for r in runs)


def per_seed(raw: dict[str, Any], scheme: str, depth: str) -> tuple[float, ...]:
    """Epochs to the target per seed: seed 0's best over the grid, then the other seeds' at its rate."""
    others = raw.get("other_seeds", {}).get(scheme, {}).get(depth, [])
    return (best(raw["runs"][scheme][depth]), *(math.inf if r["epochs"] is None else r["epochs"] for r in others))


def best(runs: list[dict[str, Any]]) -> float:
    """Fewest epochs to the target over the learning-rate grid (∞ if none reached it)."""
    return min((r["epochs"] for r in runs if r["epochs"] is not None), default=math.inf)


def summarize(raw: dict[str, Any]) -> Summary:
    depths = [str(d) for d in raw["depths"]]
    table = {scheme: {d: best(raw["runs"][scheme][d]) for d in depths} for scheme in SCHEMES}
    lo, hi = depths[0], depths[-1]

    def growth(scheme: str) -> float:
        a, b = table[scheme][lo], table[scheme][hi]
        return b / a if math.isfinite(b) and a > 0 else math.inf

    ortho, glorot = growth("orthogonal"), growth("normalized")
    fmt = {scheme: ", ".join(f"{d}: {'never' if math.isinf(v) else int(v)}" for d, v in row.items())
           for scheme, row in table.items()}
    epochs = {scheme: (per_seed(raw, scheme, lo), per_seed(raw, scheme, hi)) for scheme in SCHEMES}

    def grown(scheme: str) -> tuple[float, ...]:  # per seed, deepest / shallowest
        return tuple(b / a if a > 0 else math.inf for a, b in zip(*epochs[scheme]))
    flat = Paired(epochs["orthogonal"][1], epochs["orthogonal"][0], FLAT)  # a 50× deeper network within 3×
    faster = Paired(grown("orthogonal"), grown("normalized"), 1 / FASTER)
    slower = Paired(grown("orthogonal"), grown("normalized"))
    return Summary(
        ours=f"epochs to the target by depth — orthogonal: {fmt['orthogonal']}; Glorot: {fmt['normalized']} "
             f"(seed 0, budget {raw['epochs']} epochs)",
        comparable=False,
        why="the lab's 16-unit deep linear network on a random linear teacher (Saxe et al.: a 1000-unit-wide MNIST "
            "network); full-batch gradient descent",
        **judged({f"orthogonal: epochs grow < {FLAT:g}× with depth": flat,
                  f"Glorot's grow > {FASTER:g}× orthogonal's": faster}, slower),
        explanation=f"from depth {lo} to {hi} the epochs grow {ortho:.3g}× with orthogonal initialization and "
                    f"{glorot:.3g}× with Glorot's (seed 0). Tests, paired on {len(epochs['orthogonal'][0])} seeds "
                    f"(lr tuned on seed 0): orthogonal depth {hi} against {lo}: {flat.text()}; orthogonal's growth "
                    f"against Glorot's: {faster.text()}",
        numbers={f"{scheme}_{d}": v for scheme, row in table.items() for d, v in row.items()})


def figure(raw: dict[str, Any], fig: Any) -> None:
    ax = fig.add_subplot(1, 1, 1)
    for scheme, label in zip(SCHEMES, ("orthogonal", "Glorot (normalized)")):
        ds = [int(d) for d in raw["runs"][scheme]]
        es = [best(raw["runs"][scheme][d]) for d in raw["runs"][scheme]]
        line, = ax.plot(ds, [e if math.isfinite(e) else raw["epochs"] for e in es], "o-", label=label)
        for d, e in zip(ds, es):
            seed_bar(ax, d, per_seed(raw, scheme, str(d)), line.get_color())
            if not math.isfinite(e):
                ax.annotate("never", (d, raw["epochs"]), textcoords="offset points", xytext=(0, 5), ha="center")
    ax.set(xlabel="depth (layers)", ylabel="epochs to the target (seed 0's tuned lr; bars: range over seeds)",
           xscale="log", yscale="log", title="Deep linear network: training time against depth")
    ax.legend()


EXPERIMENT = Experiment(
    key="depth", title="Depth and initialization",
    claim="With random orthogonal initialization a deep linear network trains in a number of epochs independent of "
          "depth; with scaled random initialization the time grows with depth (§8.4)",
    source="Saxe, McClelland & Ganguli (2013)",
    published="orthogonal: learning time independent of depth (up to 100 layers); scaled Gaussian: grows with depth",
    budget=lambda scale: f"at most {SIZES[scale]['epochs']} full-batch epochs per run, depths "
                         f"{', '.join(map(str, SIZES[scale]['depths']))}, {len(SIZES[scale]['lrs'])} learning rates "
                         f"(seed 0), then {SIZES[scale]['seeds'] - 1} more seeds at each tuned rate",
    run=run, summarize=summarize, figure=figure, seeded=True)
