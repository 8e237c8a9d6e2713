"""Experiment 8 — the momentum schedule on the deep autoencoder (Sutskever et al. 2013).

Nesterov momentum with the schedule μ_t = min(1 − 2^(−1 − log₂(⌊t/P⌋ + 1)), μ_max) for μ_max =
0.9, 0.99 and 0.999, against a constant μ = 0.9 and SGD, on experiment 1's autoencoder, data and
budget (runs shared with it); each learning rate tuned on the same grid, extended while the best
sits at an edge.
"""

from __future__ import annotations

from typing import Any

from deepdescent.lab.science import autoencoder as ae
from deepdescent.lab.science.experiment import Experiment, Summary, judged, num

CAPS = (0.9, 0.99, 0.999)
#: "Falls as μ_max grows" allows a 5% rise between neighbouring caps: one seed per run.
TOLERANCE = 1.05


def run(scale: str, device: str = "cpu") -> dict[str, Any]:
    runs = {"SGD": ae.grid_runs(scale, 0.0, False, device=device),
            "NAG μ = 0.9 constant": ae.grid_runs(scale, 0.9, True, False, device=device)}
    for cap in CAPS:
        runs[f"NAG μ_max = {cap}"] = ae.grid_runs(scale, cap, True, device=device)
    return {"scale": scale, "budget": ae.SIZES[scale]["budget"], "period": ae.period(scale),
            "lrs": list(ae.SIZES[scale]["lrs"]), "runs": runs}


def summarize(raw: dict[str, Any]) -> Summary:
    err = {k: num(ae.tuned(rs)["final"]) for k, rs in raw["runs"].items()}
    capped = [err[f"NAG μ_max = {c}"] for c in CAPS]
    monotone = all(b <= TOLERANCE * a for a, b in zip(capped, capped[1:]))
    helps = min(capped) < err["SGD"]
    schedule_helps = err["NAG μ_max = 0.9"] <= err["NAG μ = 0.9 constant"]
    ours = "; ".join(f"{k}: {v:.3g}" for k, v in err.items())
    return Summary(
        ours=f"{ours} (squared error per image, {raw['budget']} gradient-equivalents)",
        comparable=False,
        why=f"experiment 1's scaled CURVES; the schedule's period compressed from 250 to {raw['period']} updates so "
            "that every cap is reached within our budget",
        **judged({"the error falls as μ_max rises": monotone, "NAG beats SGD": helps}, helps),
        explanation=("error falls as μ_max grows (within 5%)" if monotone else
                     "error does not fall monotonically with μ_max (5% allowed)")
                    + ("; every schedule beats SGD" if all(c < err["SGD"] for c in capped) else "")
                    + ("; the ramp beats a constant μ = 0.9" if schedule_helps else
                       "; a constant μ = 0.9 does as well as the ramp to 0.9"),
        numbers=err)


def figure(raw: dict[str, Any], fig: Any) -> None:
    ax = fig.add_subplot(1, 1, 1)
    for k, rs in raw["runs"].items():
        r = ae.tuned(rs)
        xs, ys = zip(*r["curve"])
        ax.plot(xs, ys, label=f"{k} (lr {r['lr']:g})")
    ax.set(xlabel="gradient-equivalents", ylabel="training squared error per image", yscale="log",
           title="Momentum schedule (Sutskever et al. 2013)")
    ax.legend(fontsize=8)


EXPERIMENT = Experiment(
    key="momentum_schedule", title="Momentum schedule on the deep autoencoder",
    claim="Raising the momentum cap μ_max of the schedule lowers the autoencoder's training error (§8.3.2: α may "
          "grow over time)",
    source="Sutskever, Martens, Dahl & Hinton (2013), Table 1",
    published="CURVES: SGD 0.48 against NAG with μ_max = 0.999: 0.074",
    budget=lambda scale: f"{ae.SIZES[scale]['budget']} gradient-equivalents per run, 5 settings × "
                         f"{len(ae.SIZES[scale]['lrs'])} learning rates",
    run=run, summarize=summarize, figure=figure)
