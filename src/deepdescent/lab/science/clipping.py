"""Experiment 3 — cliffs and gradient clipping (Pascanu, Mikolov & Bengio 2013; §8.2.4, §10.11.1).

SGD with and without norm clipping (g ← g·v/‖g‖ when ‖g‖ > v, v = 1) over seeds and learning rates,
on the lab's cliff (the one-unit RNN of Pascanu et al., 50 steps, started on the cliff) and on the
adding problem (an RNN of 32 units, T = 20). A run succeeds when its final training loss is under
the problem's threshold; a run diverges when its loss becomes non-finite. The claim is judged at the
learning rates above plain SGD's best: does clipping solve runs there that plain SGD loses?
"""

from __future__ import annotations

import math
from typing import Any

import torch

from deepdescent import optim, training
from deepdescent.lab import problems
from deepdescent.lab.science.experiment import Experiment, Paired, Summary, judged, num, outcome

SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(seeds=2, cliff_epochs=5, adding_epochs=1, cliff_lrs=(0.1, 1.0), adding_lrs=(0.1, 1.0)),
    "cpu": dict(seeds=8, cliff_epochs=20, adding_epochs=30, cliff_lrs=(0.01, 0.1, 1.0, 3.0),
                adding_lrs=(0.1, 0.5, 1.0)),
    "full": dict(seeds=20, cliff_epochs=50, adding_epochs=300, cliff_lrs=(0.01, 0.1, 1.0, 3.0),
                 adding_lrs=(0.01, 0.1, 0.5, 1.0)),
}
THRESHOLD = 1.0  # norm clipping's v
#: Success thresholds on the final training loss: the cliff's target is reached to within 0.03; the
#: adding problem is solved well below chance (predicting 1: MSE ≈ 1/6).
SUCCESS = {"cliff": 1e-3, "adding": 0.05}


def train(problem: str, lr: float, clip: bool, seed: int, epochs: int, device: str) -> float:
    """Final training loss of one SGD run (math.inf when it diverged)."""
    task = problems.problem(problem).build(seed, True).to(device)
    model = task.model
    opt = optim.SGD(model.parameters(), lr=lr)
    step = training.Clipped(opt, THRESHOLD) if clip else opt
    n, b = len(task.x_train), task.batch_size
    order = torch.Generator().manual_seed(10_000 + seed)
    for _ in range(epochs):
        perm = torch.randperm(n, generator=order).to(device)
        for i in range(0, n - b + 1, b):
            idx = perm[i:i + b]
            step.zero_grad()
            loss = task.loss(model(task.x_train[idx]), task.y_train[idx])
            if not math.isfinite(float(loss.detach())):
                return math.inf
            loss.backward()
            step.step()
    with torch.no_grad():
        final = float(task.loss(model(task.x_train), task.y_train))
    return final if math.isfinite(final) else math.inf


def run(scale: str, device: str = "cpu") -> dict[str, Any]:
    s = SIZES[scale]
    runs: dict[str, Any] = {}
    for problem in ("cliff", "adding"):
        runs[problem] = {("clipped" if clip else "plain"): {
            str(lr): [train(problem, lr, clip, seed, s[f"{problem}_epochs"], device) for seed in range(s["seeds"])]
            for lr in s[f"{problem}_lrs"]} for clip in (False, True)}
    return {"scale": scale, **s, "success": SUCCESS, "runs": runs}


def rates(raw: dict[str, Any], problem: str, kind: str, lrs: list[str] | None = None) -> tuple[float, float]:
    """(success rate, divergence rate) over the seeds of ``lrs`` (default: every learning rate)."""
    runs = raw["runs"][problem][kind]
    finals = [num(v) for lr in (lrs or list(runs)) for v in runs[lr]]
    ok = sum(v < raw["success"][problem] for v in finals)
    bad = sum(not math.isfinite(v) for v in finals)
    return ok / len(finals), bad / len(finals)


def per_seed(raw: dict[str, Any], problem: str, kind: str,
             lrs: list[str] | None = None) -> tuple[list[float], list[float]]:
    """(success rates, divergence rates) of each seed over ``lrs`` (default: every learning rate)."""
    runs = raw["runs"][problem][kind]
    chosen = lrs or list(runs)
    finals = [[num(runs[lr][seed]) for lr in chosen] for seed in range(len(runs[chosen[0]]))]
    return ([sum(v < raw["success"][problem] for v in f) / len(f) for f in finals],
            [sum(not math.isfinite(v) for v in f) / len(f) for f in finals])


def cliff_rates(raw: dict[str, Any], problem: str) -> list[str]:
    """The learning rates above plain SGD's best (its highest success rate, the smallest such rate on
    a tie): where steps are large enough for the cliffs to bite."""
    plain = raw["runs"][problem]["plain"]
    best = max(plain, key=lambda lr: (rates(raw, problem, "plain", [lr])[0], -float(lr)))
    return [lr for lr in plain if float(lr) > float(best)]


def summarize(raw: dict[str, Any]) -> Summary:
    cells, found, tests = [], {}, []
    for problem in raw["runs"]:
        (sp, dp), (sc, dc) = rates(raw, problem, "plain"), rates(raw, problem, "clipped")
        steep = cliff_rates(raw, problem)
        cells.append(f"{problem}: success {sp:.0%} plain vs {sc:.0%} clipped, diverged {dp:.0%} vs {dc:.0%}")
        if steep:
            (hp, _), (hc, _) = rates(raw, problem, "plain", steep), rates(raw, problem, "clipped", steep)
            cells[-1] += f"; at lr {', '.join(steep)} success {hp:.0%} vs {hc:.0%}"
            cuts = Paired(per_seed(raw, problem, "clipped")[1], per_seed(raw, problem, "plain")[1], 0.0, linear=True)
            solves = Paired(per_seed(raw, problem, "plain", steep)[0], per_seed(raw, problem, "clipped", steep)[0],
                            0.0, linear=True)
            tests.append(f"{problem}: clipped − plain divergence {cuts.text()}; plain − clipped success at lr "
                         f"{', '.join(steep)} {solves.text()}")
            found[problem] = (cuts, solves, f"clipping cuts divergence {dp:.0%} → {dc:.0%}" + (
                f" and solves {hc:.0%} of the runs at lr {', '.join(steep)} (plain: {hp:.0%})" if hc > hp else
                f" but solves no more runs at lr {', '.join(steep)} ({hc:.0%}, plain {hp:.0%})"))
        else:
            found[problem] = (False, False, "no learning rate above plain SGD's best was tried")
    return Summary(
        ours="; ".join(cells) + f" (SGD, {raw['seeds']} seeds × {len(raw['cliff_lrs'])}/{len(raw['adding_lrs'])} "
                                "learning rates)",
        comparable=False,
        why="the lab's one-unit cliff RNN and a 32-unit adding-problem RNN at T = 20 trained briefly "
            "(Pascanu et al.: longer sequences, many more updates)",
        **judged({**{f"{p}: clipping cuts divergence": d for p, (d, _, _) in found.items()},
                  **{f"{p}: clipping solves more runs at steep rates": ok for p, (_, ok, _) in found.items()}},
                 any(outcome(d) == "holds" for d, _, _ in found.values())),
        explanation="; ".join(f"{p}: {text}" for p, (_, _, text) in found.items())
                    + (f". Tests, per seed over the learning rates, paired on {raw['seeds']} seeds: " + "; ".join(tests)
                       if tests else ""),
        numbers={f"{p}_{k}_success": rates(raw, p, k)[0] for p in raw["runs"] for k in ("plain", "clipped")})


def figure(raw: dict[str, Any], fig: Any) -> None:
    for i, problem in enumerate(raw["runs"]):
        ax = fig.add_subplot(1, 2, i + 1)
        for kind, marker in (("plain", "o"), ("clipped", "s")):
            lrs = [float(lr) for lr in raw["runs"][problem][kind]]
            ok = [sum(num(v) < raw["success"][problem] for v in seeds) / len(seeds)
                  for seeds in raw["runs"][problem][kind].values()]
            ax.plot(lrs, ok, marker + "-", label=f"SGD {kind}")
        ax.set(xscale="log", xlabel="learning rate", ylabel="success rate over seeds", ylim=(-0.05, 1.05),
               title=f"{problem} (success: loss < {raw['success'][problem]:g})")
        ax.legend()


EXPERIMENT = Experiment(
    key="clipping", title="Cliffs and gradient clipping",
    claim="Norm clipping keeps SGD from being thrown off cliffs, so training succeeds at learning rates where "
          "plain SGD fails (§8.2.4, §10.11.1)",
    source="Pascanu, Mikolov & Bengio (2013)",
    published="SGD with norm clipping solves more runs than plain SGD (qualitative; the book's cliff figure)",
    budget=lambda scale: f"{SIZES[scale]['cliff_epochs']}/{SIZES[scale]['adding_epochs']} epochs per run "
                         f"(cliff/adding), {SIZES[scale]['seeds']} seeds per learning rate",
    run=run, summarize=summarize, figure=figure)
