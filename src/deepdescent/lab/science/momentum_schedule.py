"""Experiment 8 — the momentum schedule on the deep autoencoder (Sutskever et al. 2013).

Nesterov momentum with the schedule μ_t = min(1 − 2^(−1 − log₂(⌊t/P⌋ + 1)), μ_max) for μ_max =
0.9, 0.99 and 0.999, against a constant μ = 0.9 and SGD, on experiment 1's autoencoder, data and
budget (runs shared with it); each learning rate tuned on the same grid, extended while the best
sits at an edge.
"""

from __future__ import annotations

import statistics
from typing import Any

from deepdescent.lab.science import autoencoder as ae
from deepdescent.lab.science.experiment import Experiment, Paired, Summary, judged, outcome, seed_bar

CAPS = (0.9, 0.99, 0.999)
#: "Falls as μ_max grows": a higher cap's error below this many times the lower cap's, per seed pair.
TOLERANCE = 1.05
#: setting → (μ_max, Nesterov, the schedule's ramp)
SETTINGS = {"SGD": (0.0, False, True), "NAG μ = 0.9 constant": (0.9, True, False),
            **{f"NAG μ_max = {cap}": (cap, True, True) for cap in CAPS}}


def run(scale: str, device: str = "cpu") -> dict[str, Any]:
    runs = {k: ae.grid_runs(scale, mu, nesterov, ramp, device=device) for k, (mu, nesterov, ramp) in SETTINGS.items()}
    seeds = {k: ae.other_seeds(scale, runs[k], mu, nesterov, ramp, device)
             for k, (mu, nesterov, ramp) in SETTINGS.items()}
    return {"scale": scale, "budget": ae.SIZES[scale]["budget"], "period": ae.period(scale),
            "lrs": list(ae.SIZES[scale]["lrs"]), "runs": runs, "other_seeds": seeds}


def summarize(raw: dict[str, Any]) -> Summary:
    seeds = {k: ae.finals(raw, k) for k in raw["runs"]}
    err = {k: statistics.median(v) for k, v in seeds.items()}
    capped = [seeds[f"NAG μ_max = {c}"] for c in CAPS]
    steps = tuple(Paired(b, a, TOLERANCE) for a, b in zip(capped, capped[1:]))
    helps = Paired(tuple(map(min, *capped)), seeds["SGD"])
    schedule_helps = Paired(seeds["NAG μ_max = 0.9"], seeds["NAG μ = 0.9 constant"])
    ours = "; ".join(f"{k}: {ae.spread(v)}" for k, v in seeds.items())
    tests = "; ".join(f"μ_max {hi} against {lo}: {p.text()}" for lo, hi, p in zip(CAPS, CAPS[1:], steps))
    monotone = outcome(steps)
    return Summary(
        ours=f"{ours} (squared error per image, {raw['budget']} gradient-equivalents)",
        comparable=False,
        why=f"experiment 1's scaled CURVES; the schedule's period compressed from 250 to {raw['period']} updates so "
            "that every cap is reached within our budget",
        **judged({"the error falls as μ_max rises": steps, "NAG beats SGD": helps}, helps),
        explanation={"holds": "error falls as μ_max grows (within 5%)",
                     "fails": "error does not fall monotonically with μ_max (5% allowed)",
                     "inconclusive": "whether error falls as μ_max grows is inside the seeds' spread"}[monotone]
                    + ("; every schedule beats SGD" if all(Paired(c, seeds["SGD"]).outcome == "holds" for c in capped)
                       else "")
                    + {"holds": "; the ramp beats a constant μ = 0.9",
                       "fails": "; a constant μ = 0.9 beats the ramp to 0.9",
                       "inconclusive": "; a constant μ = 0.9 does as well as the ramp to 0.9"}[schedule_helps.outcome]
                    + f". Tests, paired on {len(seeds['SGD'])} shared seeds (lr tuned on seed 0): {tests}; best "
                      f"schedule < SGD: {helps.text()}",
        numbers=err)


def figure(raw: dict[str, Any], fig: Any) -> None:
    ax = fig.add_subplot(1, 1, 1)
    for k, rs in raw["runs"].items():
        r = ae.tuned(rs)
        xs, ys = zip(*r["curve"])
        line, = ax.plot(xs, ys, label=f"{k} (lr {r['lr']:g})")
        seed_bar(ax, raw["budget"] * (1 + 0.01 * list(raw["runs"]).index(k)), ae.finals(raw, k), line.get_color())
    ax.set(xlabel="gradient-equivalents (bars at the end: median and range over seeds)",
           ylabel="training squared error per image", yscale="log",
           title="Momentum schedule (Sutskever et al. 2013): seed 0's curves")
    ax.legend(fontsize=8)


EXPERIMENT = Experiment(
    key="momentum_schedule", title="Momentum schedule on the deep autoencoder",
    claim="Raising the momentum cap μ_max of the schedule lowers the autoencoder's training error (§8.3.2: α may "
          "grow over time)",
    source="Sutskever, Martens, Dahl & Hinton (2013), Table 1",
    published="CURVES: SGD 0.48 against NAG with μ_max = 0.999: 0.074",
    budget=lambda scale: f"{ae.SIZES[scale]['budget']} gradient-equivalents per run, 5 settings × "
                         f"{len(ae.SIZES[scale]['lrs'])} learning rates (seed 0), then "
                         f"{ae.SIZES[scale]['seeds'] - 1} more seeds at each tuned rate",
    run=run, summarize=summarize, figure=figure, seeded=True)
