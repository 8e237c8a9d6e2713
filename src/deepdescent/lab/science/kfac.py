"""Experiment 9 — §8.6 at scale: K-FAC against SGD with momentum on the deep autoencoder (Martens &
Grosse 2015, Figs. 5–6: K-FAC reaches the training error momentum ends at in far fewer iterations).

The autoencoder, data, minibatches (of the same size, in the same order per seed) and budget of
experiment 1; momentum is experiment 1's classical momentum with Sutskever et al.'s schedule (its
runs are shared within a process). K-FAC (:class:`deepdescent.optim.KFAC`, defaults but the
learning rate: momentum 0.9, damping 1e-3, inverses every 10 steps, KL clip 1e-3) is charged one
gradient-equivalent per minibatch pass, as momentum: its factors come from the same forward and
backward pass. Both learning rates are tuned on seed 0's grid (extended while the best sits at an
edge), the other seeds run at the tuned rates. The claim is judged per seed: the
gradient-equivalents K-FAC needs to reach the error momentum ends at with the same seed, against
the gradient-equivalents momentum needs for it; and the final errors at equal budget. The seconds
each run took are recorded beside: the clock's answer to the same question.
"""

from __future__ import annotations

import functools
import math
import statistics
from typing import Any

from deepdescent import optim
from deepdescent.lab.science import autoencoder
from deepdescent.lab.science.experiment import Experiment, Paired, Summary, judged, num, seed_bar

#: K-FAC's learning-rate grid per scale (the loss is summed over pixels, as in experiment 1).
LRS = {"tiny": (1e-3, 1e-2), "cpu": (1e-3, 3e-3, 1e-2, 3e-2), "full": (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)}
METHODS = ("momentum", "K-FAC")


@functools.lru_cache(maxsize=16)
def kfac_run(scale: str, lr: float, device: str = "cpu", seed: int = 0) -> dict[str, Any]:
    return autoencoder.minibatch_run(scale, lr, lambda model: optim.KFAC(model, lr=lr), None, device, seed)


def _momentum(scale: str, device: str, lr: float, seed: int) -> dict[str, Any]:
    return autoencoder.first_order(scale, lr, autoencoder.MU_MAX, False, True, device, seed)


def run(scale: str, device: str = "cpu") -> dict[str, Any]:
    sizes = autoencoder.SIZES[scale]
    raw: dict[str, Any] = {"scale": scale, **sizes, "kfac_lrs": LRS[scale]}
    raw["runs"] = {"momentum": autoencoder.grid_runs(scale, autoencoder.MU_MAX, False, device=device),
                   "K-FAC": autoencoder.grid(LRS[scale], lambda lr: kfac_run(scale, lr, device))}
    at = {m: autoencoder.tuned(raw["runs"][m])["lr"] for m in METHODS}
    runners = {"momentum": _momentum, "K-FAC": lambda s, d, lr, seed: kfac_run(s, lr, d, seed)}
    raw["other_seeds"] = {m: [runners[m](scale, device, at[m], seed) for seed in range(1, sizes["seeds"])]
                          for m in METHODS}
    return raw


def _seeds(raw: dict[str, Any], method: str) -> list[dict[str, Any]]:
    """A method's runs per seed: seed 0's tuned run first."""
    return [autoencoder.tuned(raw["runs"][method]), *raw.get("other_seeds", {}).get(method, [])]


def reached(run: dict[str, Any], target: float) -> float:
    """The gradient-equivalents at which ``run``'s recorded error first is at or below ``target``
    (∞: never, or diverged)."""
    if run.get("diverged"):
        return math.inf
    return next((ge for ge, err in run["curve"] if num(err) <= target), math.inf)


def summarize(raw: dict[str, Any]) -> Summary:
    runs = {m: _seeds(raw, m) for m in METHODS}
    finals = {m: tuple(num(r["final"]) for r in runs[m]) for m in METHODS}
    targets = finals["momentum"]  # per seed: the error momentum ends at
    to_target = {m: tuple(reached(r, t) for r, t in zip(runs[m], targets)) for m in METHODS}
    fewer = Paired(to_target["K-FAC"], to_target["momentum"])
    lower = Paired(finals["K-FAC"], finals["momentum"])
    seconds = {m: statistics.median(num(r.get("seconds")) for r in runs[m]) for m in METHODS}
    err = {m: statistics.median(v) for m, v in finals.items()}
    ge = {m: statistics.median(v) for m, v in to_target.items()}
    clock = seconds["K-FAC"] / seconds["momentum"]
    ours = (f"to momentum's final error: K-FAC {ge['K-FAC']:.3g} gradient-equivalents, momentum {ge['momentum']:.3g} "
            f"(medians over {len(targets)} seeds); final errors K-FAC {err['K-FAC']:.3g}, momentum "
            f"{err['momentum']:.3g} at {raw['budget']} gradient-equivalents; K-FAC's run took {clock:.2f}× "
            f"momentum's seconds")
    in_time = ge["K-FAC"] * clock if math.isfinite(ge["K-FAC"]) else math.inf
    explanation = (f"Paired on {len(targets)} shared seeds (lr tuned on seed 0: K-FAC "
                   f"{runs['K-FAC'][0]['lr']:g}, momentum {runs['momentum'][0]['lr']:g}): gradient-equivalents "
                   f"to momentum's error, K-FAC/momentum: {fewer.text()}; final error at equal budget, "
                   f"K-FAC/momentum: {lower.text()}. On the clock K-FAC's step costs {clock:.2f}× momentum's, so "
                   + (f"it reaches the target in about {in_time / ge['momentum']:.2g}× momentum's time."
                      if math.isfinite(in_time) and ge["momentum"] > 0 else "it does not reach the target."))
    return Summary(
        ours=ours, comparable=False,
        why=f"{raw['side']}×{raw['side']} generated CURVES images, {raw['n']:,} cases, layers "
            f"{'-'.join(map(str, raw['layers']))} and {raw['budget']} gradient-equivalents (published: 28×28 "
            "CURVES, 20,000 cases, 784-400-200-100-50-25-6, far longer runs, K-FAC with its own adaptive damping "
            "and momentum, the true Fisher)",
        **judged({"K-FAC reaches momentum's final error in fewer gradient-equivalents": fewer,
                  "K-FAC's error below momentum's at equal budget": lower}, lower),
        explanation=explanation,
        numbers={"K-FAC_error": err["K-FAC"], "momentum_error": err["momentum"], "K-FAC_ge_to_target": ge["K-FAC"],
                 "momentum_ge_to_target": ge["momentum"], "clock_ratio": clock})


def figure(raw: dict[str, Any], fig: Any) -> None:
    ax = fig.add_subplot(1, 1, 1)
    for i, m in enumerate(METHODS):
        r = autoencoder.tuned(raw["runs"][m])
        xs, ys = zip(*r["curve"])
        label = f"{m} (lr {r['lr']:g}, {num(r.get('seconds')):.1f} s)"
        line, = ax.plot(xs, ys, label=label, lw=2 if m == "K-FAC" else 1.3)
        seed_bar(ax, raw["budget"] * (1 + 0.01 * i), tuple(num(s["final"]) for s in _seeds(raw, m)), line.get_color())
    ax.set(xlabel="gradient-equivalents (bars at the end: median and range over seeds)",
           ylabel="training squared error per image", yscale="log",
           title=f"K-FAC against momentum on the deep autoencoder ({raw['side']}×{raw['side']}): seed 0's curves")
    ax.legend()


EXPERIMENT = Experiment(
    key="kfac", title="§8.6 at scale: K-FAC vs momentum on the deep autoencoder",
    claim="K-FAC reaches the deep autoencoder's training error in fewer gradient-equivalents than SGD with momentum",
    source="Martens & Grosse (2015), Figures 5 and 6",
    published="CURVES: K-FAC reaches momentum's (Sutskever et al. 2013) error in a fraction of its iterations",
    budget=lambda scale: f"{autoencoder.SIZES[scale]['budget']} gradient-equivalents per method, "
                         f"{len(LRS[scale])} learning rates for K-FAC and {len(autoencoder.SIZES[scale]['lrs'])} for "
                         f"momentum (seed 0), then {autoencoder.SIZES[scale]['seeds'] - 1} more seeds at each "
                         "tuned rate",
    run=run, summarize=summarize, figure=figure, seeded=True)
