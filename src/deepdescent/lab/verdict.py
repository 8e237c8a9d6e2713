"""The numbers a race is judged by: targets, seeds reaching them, leaderboards, the performance
profile and each problem's verdict. Pure functions of the stored runs (no clock, no training).

* **Target** (AlgoPerf style): the best median final training loss among the minibatch first-order
  methods (tuned), plus 5% of its distance to the problem's floor (0, or the loss's known
  infimum: the noisy quadratic's irreducible loss, the saddle problem's minimum −1).
* **Reaching it**: a seed reaches the target when its loss at the end of the budget is at or below
  it; its time to target is the first recorded point from which the loss stays at or below it (a
  run that touched the target and bounced off has not reached it). A row reports how many seeds
  reached it (2/3) and the median time among those that did (the lower median: a recorded value).
* **Ranking**: seeds reaching the target first, then time, then final loss.
* **Performance profile** (Dolan & Moré 2002): a problem counts as solved by an optimizer when at
  least half of its seeds reach the target; an optimizer that did not (or could not) run on a
  problem has failed it.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass

from deepdescent.lab import challenges, engine
from deepdescent.lab.catalog import Catalog

Results = dict[str, dict[str, dict[str, list[engine.RunResult]]]]  # problem → optimizer → track → runs
Race = dict[str, dict[str, list[engine.RunResult]]]  # optimizer → track → runs


@dataclass
class Row:
    optimizer: str
    best_lr: float | None
    lr_interior: bool | None  # the tuned lr lies strictly inside its grid; None: nothing was tuned
    grid_points: int
    final: float  # median over seeds of the loss when the budget was spent
    defaults_final: float
    test_loss: float
    test_accuracy: float | None
    reached: int  # seeds whose final loss is at or below the target
    seeds: int
    ge_to_target: float  # median (lower) epochs to the target among the seeds that reached it
    diverged: int  # diverged runs of the whole grid
    truncated: int  # tuned runs cut by an explicit time limit
    line_search_failures: float | None  # median over seeds; None for methods without a line search

    @property
    def solved(self) -> bool:
        return 2 * self.reached >= self.seeds and self.reached > 0


def median(values: Iterable[float | None]) -> float:
    finite = [v for v in values if v is not None]
    return statistics.median(finite) if finite else math.nan


def time_to_target(run: engine.RunResult, target: float) -> float:
    """Epochs (gradient-equivalents) from which the run's loss stays at or below ``target`` up to
    the end of its budget; +∞ when it does not end there."""
    n = run.within_budget()
    if run.diverged or n == 0 or not run.train_loss[n - 1] <= target:
        return math.inf
    i = n - 1
    while i > 0 and run.train_loss[i - 1] <= target:
        i -= 1
    return run.grad_equiv[i]


def target(results: Race, floor: float = 0.0, catalog: Catalog | None = None) -> float:
    """The best baseline's median final training loss (tuned track) plus 5% of its distance to the
    problem's ``floor`` (0, or the loss's known infimum). The baselines are the minibatch
    first-order methods; every method's time to that target is reported, the second-order ones
    included."""
    catalog = catalog or Catalog()
    baselines = [t for n, t in results.items() if catalog.kind(n) == "first"] or list(results.values())
    best = min(median(r.final_train_loss for r in tracks["tuned"]) for tracks in baselines)
    return best + 0.05 * abs(best - floor) + 1e-8 + 1e-6 * abs(floor)


def _tuning(tracks: dict[str, list[engine.RunResult]]) -> tuple[float | None, bool | None, int]:
    best = tracks["tuned"][0].lr
    lrs = sorted({r.lr for r in tracks["grid"] if r.lr is not None})
    if best is None or len(lrs) < 2:
        return best, None, len(lrs)
    return best, lrs[0] < best < lrs[-1], len(lrs)


def row(name: str, tracks: dict[str, list[engine.RunResult]], tgt: float, catalog: Catalog | None = None) -> Row:
    tuned = tracks["tuned"]
    times = [time_to_target(r, tgt) for r in tuned]
    reached = [t for t in times if math.isfinite(t)]
    best, interior, points = _tuning(tracks)
    return Row(
        name, best, interior, points, median(r.final_train_loss for r in tuned),
        median(r.final_train_loss for r in tracks["defaults"]), median(r.test_loss for r in tuned),
        median(r.test_accuracy for r in tuned) if tuned[0].test_accuracy is not None else None,
        len(reached), len(tuned), statistics.median_low(reached) if reached else math.inf,
        sum(r.diverged for r in tracks["grid"]), sum(r.truncated for r in tuned),
        median(r.line_search_failures for r in tuned) if (catalog or Catalog()).kind(name) == "second" else None,
    )


def leaderboard(results: Race, floor: float = 0.0, catalog: Catalog | None = None) -> tuple[float, list[Row]]:
    tgt = target(results, floor, catalog)
    rows = [row(name, tracks, tgt, catalog) for name, tracks in results.items()]
    rows.sort(key=lambda r: (-r.reached / r.seeds, r.ge_to_target, r.final))
    return tgt, rows


# ------------------------------------------------------------------------------ held-out target
def _curve(run: engine.RunResult, metric: str) -> tuple[list[float] | None, bool]:
    """The run's held-out curve of ``metric`` ("accuracy", "loss", or a workload's own metric by
    its name) and whether higher is better."""
    if metric == "accuracy":
        return run.test_accuracy_curve, True
    if metric == "loss":
        return run.test_curve, False
    return run.test_metric_curve, not run.metric_lower_is_better


def _held_out_final(run: engine.RunResult, metric: str) -> float:
    curve, _ = _curve(run, metric)
    n = min(run.within_budget(), len(curve or []))
    return math.nan if run.diverged or not n else curve[n - 1]  # type: ignore[index]


def held_out_target(race: Race, accuracy: bool, catalog: Catalog | None = None) -> tuple[str, float] | None:
    """AlgoPerf's validation target, set like the training one, on the workload's own metric where
    it has one, else accuracy (``accuracy``: classifiers), else the held-out loss: the best
    first-order method's median final value, less 5% of its distance to 1 (accuracy) or of its
    size (the others), in the metric's worse direction; (metric, target), None where the runs
    recorded no held-out curve."""
    catalog = catalog or Catalog()
    first = [tracks["tuned"] for n, tracks in race.items() if catalog.kind(n) == "first"]
    own = {r.metric_name for tuned in first for r in tuned}
    if len(own) == 1 and None not in own:
        metric = own.pop()
    else:
        metric = "accuracy" if accuracy else "loss"
    finals = [median(_held_out_final(r, metric) for r in tuned) for tuned in first
              if all(_curve(r, metric)[0] for r in tuned)]
    finals = [f for f in finals if math.isfinite(f)]
    if not finals:
        return None
    higher = _curve(first[0][0], metric)[1]
    best = max(finals) if higher else min(finals)
    slack = 0.05 * ((1 - best) if metric == "accuracy" else abs(best)) + 1e-9
    return metric, best - slack if higher else best + slack


def time_to_held_out(run: engine.RunResult, metric: str, tgt: float) -> float:
    """Epochs to the first recorded point whose held-out metric meets the target (AlgoPerf: the
    first evaluation that reaches it); +∞ when none within the budget does."""
    curve, higher = _curve(run, metric)
    if run.diverged or not curve:
        return math.inf
    for ge, value in zip(run.grad_equiv[:run.within_budget()], curve):
        if (value >= tgt) if higher else (value <= tgt):
            return ge
    return math.inf


#: Optimizers named in the held-out sentence (the fastest; the rest are counted).
HELD_OUT_SHOWN = 4


def held_out(problem: str, race: Race, catalog: Catalog | None = None) -> str | None:
    """A sentence: the held-out target and who reaches it first (None without held-out curves, or
    where the held-out data are the training data: every curve equals the training loss's)."""
    catalog = catalog or Catalog()
    found = held_out_target(race, catalog.classification(problem), catalog)
    runs = [r for tracks in race.values() for r in tracks["tuned"]]
    if found is None or all(r.test_curve == r.train_loss for r in runs if r.test_curve):
        return None
    metric, tgt = found
    stats = {}
    for n, tracks in race.items():
        times = [time_to_held_out(r, metric, tgt) for r in tracks["tuned"]]
        hit = [t for t in times if math.isfinite(t)]
        stats[n] = (len(hit), len(times), statistics.median_low(hit) if hit else math.inf)
    order = sorted(stats, key=lambda n: (-stats[n][0] / stats[n][1], stats[n][2]))
    shown = f"{100 * tgt:.1f}%" if metric == "accuracy" else f"{tgt:.4g}"
    parts = [f"{n} {k}/{m} seeds, {_epochs(t)}" for n in order[:HELD_OUT_SHOWN] for k, m, t in [stats[n]]]
    rest = order[HELD_OUT_SHOWN:]
    if rest:
        parts.append(f"{sum(stats[n][0] > 0 for n in rest)} of the other {len(rest)} reach it")
    higher = _curve(runs[0], metric)[1]
    return (f"Held-out target ({metric} {'≥' if higher else '≤'} {shown}, first reached): " + "; ".join(parts))


def seconds_to(run: engine.RunResult, epochs: float) -> float:
    """The wall time ``run`` took for its first ``epochs`` gradient-equivalents, at its average pace
    (its stored seconds over the gradient-equivalents it spent); NaN without a time."""
    n = run.within_budget()
    spent = run.grad_equiv[n - 1] if n else 0.0
    if not (math.isfinite(run.seconds) and spent > 0):
        return math.nan
    return run.seconds * epochs / spent


def clock(problem: str, race: Race, catalog: Catalog | None = None) -> str | None:
    """A sentence: the same race on the clock — the seconds to the training target of the methods
    trained member by member (second-order methods, K-FAC and Shampoo, classes from elsewhere), at
    each tuned run's pace on this machine. Information, never ranked: vectorized members share
    their batch's time, so they are left out (and named). None when fewer than two methods ran
    member by member."""
    tgt, _ = board(problem, race, catalog)
    alone = {n: t for n, t in race.items() if not any(r.vectorized for r in t["tuned"])}
    if len(alone) < 2:
        return None
    times = {}
    for name, tracks in alone.items():
        seconds = [seconds_to(r, t) for r in tracks["tuned"] for t in [time_to_target(r, tgt)] if math.isfinite(t)]
        seconds = [x for x in seconds if math.isfinite(x)]
        if 2 * len(seconds) >= len(tracks["tuned"]) and seconds:
            times[name] = statistics.median_low(seconds)
    reached = sorted(times, key=times.get)
    parts = [f"{n} {_seconds(times[n])}" for n in reached]
    missed = [n for n in alone if n not in times]
    text = "On the clock (member by member, this machine's seconds, not ranked): to the target " + (
        "; ".join(parts) if parts else "none")
    if missed:
        text += f"; not reached by most seeds: {', '.join(missed)}"
    stacked = [n for n in race if n not in alone]
    if stacked:
        text += f" ({', '.join(stacked)} trained stacked: their seconds are shared, left out)"
    return text


def _seconds(x: float) -> str:
    return f"{x:.2g} s" if x < 10 else f"{x:.0f} s"


def board(problem: str, race: Race, catalog: Catalog | None = None) -> tuple[float, list[Row]]:
    """The leaderboard of a problem (its target relative to the problem's floor)."""
    catalog = catalog or Catalog()
    return leaderboard(race, catalog.floor(problem), catalog)


def performance_profile(all_results: Results, catalog: Catalog | None = None) -> dict[str, list[float]]:
    """Per optimizer and problem (every problem of the run, in order): its epochs to the target
    divided by the best optimizer's; +∞ where it did not solve the problem or did not run on it."""
    names = list(dict.fromkeys(n for race in all_results.values() for n in race))
    ratios: dict[str, list[float]] = {n: [] for n in names}
    for problem, race in all_results.items():
        _, rows = board(problem, race, catalog)
        times = {r.optimizer: r.ge_to_target if r.solved else math.inf for r in rows}
        best = min(times.values(), default=math.inf)
        for n in names:
            ratios[n].append(_ratio(times.get(n, math.inf), best))
    return ratios


def _ratio(t: float, best: float) -> float:
    if not math.isfinite(t):
        return math.inf
    if best == 0:  # solved at the first point (the start already met the target)
        return 1.0 if t == 0 else math.inf
    return t / best


# ------------------------------------------------------------------------------------- verdicts
#: What the chapter says each challenge does to optimization.
CHALLENGE_WHY = {
    "ill-conditioning": "ill-conditioning (§8.2.1): the step size is capped by the largest curvature, so progress "
                        "along low-curvature directions is slow",
    "ill-conditioning, plateaus": "ill-conditioning and plateaus (§8.2.1, §8.2.3): small gradients over long flat "
                                  "stretches, large curvature elsewhere",
    "saddle points": "saddle points (§8.2.3): the gradient vanishes at the saddle; gradient methods escape along "
                     "the negative curvature, Newton's method is drawn to it",
    "cliffs": "cliffs (§8.2.4): one step on the cliff face can throw the parameters far away",
    "long-term dependencies": "long-term dependencies (§8.2.5): repeated multiplication by the same weights makes "
                              "gradients vanish or explode",
    "vanishing/exploding gradients": "vanishing and exploding gradients (§8.2.5, §8.4): in a deep product of "
                                     "matrices the gradient's scale depends on the depth and the initialization",
    "none (baseline)": "no particular challenge (a baseline)",
    "none (convex)": "a convex problem (a baseline)",
}

#: The chapter's account of why a family of methods helps.
FAMILY_WHY = {
    "sgd": "the plain gradient step (Alg. 8.1) needs nothing more here",
    "momentum": "momentum accumulates past gradients and moves faster along directions of consistent, low "
                "curvature (§8.3.2)",
    "adaptive": "per-parameter learning rates scaled by the accumulated squared gradients even out directions of "
                "different curvature (§8.5)",
    "second": "curvature information (or line searches along conjugate / quasi-Newton directions) scales each "
              "step to the local geometry (§8.6)",
}


def family(name: str, catalog: Catalog | None = None) -> str:
    spec = (catalog or Catalog()).spec(name)
    if spec is None:
        return "adaptive"
    return "sgd" if name == "SGD" else spec.family


def apart(tgt: float, values: Iterable[float]) -> int:
    """Significant digits (4 to 10) at which every finite value that differs from the target
    also reads differently from it: a final loss 2e-5 above T = −1 never shows as "−1"."""
    others = [v for v in values if v is not None and math.isfinite(v) and v != tgt]
    digits = 4
    while digits < 10 and any(f"{v:.{digits}g}" == f"{tgt:.{digits}g}" for v in others):
        digits += 1
    return digits


def finals(rows: list[Row]) -> list[float]:
    return [r.final for r in rows]


def _epochs(t: float) -> str:
    return f"{t:.3g} epochs" if math.isfinite(t) else "never"


def verdict(problem: str, race: Race, catalog: Catalog | None = None) -> tuple[str | None, str]:
    """(winner, a sentence that says what won and why, in the chapter's words, with the numbers)."""
    catalog = catalog or Catalog()
    tgt, rows = board(problem, race, catalog)
    challenge = catalog.challenge(problem)
    why = CHALLENGE_WHY.get(challenge, challenge)
    win = rows[0]
    d = apart(tgt, finals(rows))
    if not win.reached:
        return None, f"No optimizer ends at the target T = {tgt:.{d}g} within the budget" + (f" — {why}." if why else ".")
    text = (f"{win.optimizer} wins: {win.reached}/{win.seeds} seeds end at or below T = {tgt:.{d}g}, after "
            f"{_epochs(win.ge_to_target)}")
    sgd = next((r for r in rows if r.optimizer == "SGD"), None)
    if sgd is not None and win.optimizer != "SGD":
        text += f"; SGD: {sgd.reached}/{sgd.seeds} seeds, {_epochs(sgd.ge_to_target)}"
        if math.isfinite(sgd.ge_to_target) and sgd.ge_to_target > 0:
            text += f" ({win.ge_to_target / sgd.ge_to_target:.2g}× SGD's time)"
    challenge_text = f"Challenge: {why}. " if why else ""  # a workload need not name one
    if measured(problem, race, catalog):  # the measured reasons say why (below the verdict); no template
        return win.optimizer, f"{text}. {challenge_text}".rstrip()
    return win.optimizer, (f"{text}. {challenge_text}The chapter's account (nothing measured here): "
                           f"{FAMILY_WHY[family(win.optimizer, catalog)]}.")


# ------------------------------------------------------------------------- measured reasons
#: Gradient descent on a quadratic converges while ε·λmax < 2 (§4.3.1; the curvature term of
#: §8.2.1's ½ε²gᵀHg − εgᵀg): the stability limit of momentum-free first-order steps.
STABILITY = 2.0
SPIKE = 10.0  # a minibatch ‖g‖ an order of magnitude above the expected one: a cliff (§8.2.4)
SPREAD = 1e3  # layer gradient norms spanning this factor: vanishing/exploding gradients (§8.2.5)


def _measured(tracks: dict[str, list[engine.RunResult]]) -> engine.RunResult | None:
    runs = tracks.get("instruments") or []
    return runs[0] if runs and runs[0].lambda_max else None


def _finite(values: Iterable[float]) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


def _stability(name: str, run: engine.RunResult) -> str | None:
    """lr·λmax for a momentum-free first-order method at its tuned learning rate."""
    tops = _finite(run.lambda_max or [])
    if run.lr is None or not tops or family(name) not in ("sgd",):
        return None
    start, peak = run.lr * tops[0], run.lr * max(tops)
    where = ("above the stability limit 2 of gradient descent on a quadratic (§8.2.1)" if peak > STABILITY else
             "near the stability limit 2 (§8.2.1): the largest curvature caps its step" if peak > 0.5 * STABILITY
             else "well inside the stability limit 2 (§8.2.1)")
    return (f"{name}'s tuned lr {run.lr:.3g} × λmax gives lr·λmax = {start:.2g} at the start and at most {peak:.2g} "
            f"along the run, {where}")


def _adaptive_scale(name: str, run: engine.RunResult) -> str | None:
    tops = _finite(run.lambda_max or [])
    if run.lr is None or not tops or family(name) != "adaptive":
        return None
    return (f"{name}'s lr·λmax = {run.lr * max(tops):.2g} does not bound it: its step is rescaled per parameter "
            "(§8.5)")


def _saddle(name: str, run: engine.RunResult) -> str | None:
    """λmin < 0, of at least ``challenges.FLAT`` of λmax, converged, where ‖g‖ has fallen to a
    thousandth of its largest value along the run: a saddle point (§8.2.3). Nothing is claimed
    from an unconverged λmin (the smallest Ritz value only bounds λmin from above)."""
    if not run.lambda_min or not run.grad_norm or not run.lambda_converged or not run.lambda_converged[-1]:
        return None
    low, top, norm = run.lambda_min[-1], run.lambda_max[-1], run.grad_norm[-1]  # type: ignore[index]
    norms = _finite(run.grad_norm)
    if not (math.isfinite(low) and math.isfinite(top) and norms) or low >= -challenges.FLAT * abs(top):
        return None
    if norm > 1e-3 * max(norms):
        return None
    return f"{name} ends at a saddle point (§8.2.3): ‖g‖ = {norm:.2g}, λmin = {low:.3g} < 0"


def _spike(run: engine.RunResult, batch: int) -> float:
    """The largest ratio of a minibatch ‖g‖ peak (between two points) to the norm a minibatch
    gradient is expected to have at those points, ‖G‖·√(1 + B_simple/B) (E‖g_B‖² = ‖G‖² + tr(Σ)/B):
    a jump that neither the full gradient nor the minibatch noise explains. Intervals where the
    noise could not be estimated are skipped (no claim); records without it use ‖G‖ alone."""
    peaks, norms = run.grad_peak or [], run.grad_norm or []
    noise = run.noise_scale or [0.0] * len(norms)
    worst = 0.0
    for i in range(1, min(len(peaks), len(norms), len(noise))):
        ends = [(norms[j], noise[j]) for j in (i - 1, i)]
        if not math.isfinite(peaks[i]) or not all(math.isfinite(g) and g > 0 and math.isfinite(b) for g, b in ends):
            continue
        expected = max(g * math.sqrt(1 + b / max(batch, 1)) for g, b in ends)
        worst = max(worst, peaks[i] / expected)
    return worst


def _cliff(name: str, run: engine.RunResult, diverged: int, batch: int) -> str | None:
    """Minibatch gradient spikes far above what the gradient and its noise explain (§8.2.4)."""
    ratio = _spike(run, batch)
    if ratio < SPIKE:
        return None
    n = run.within_budget()
    losses = run.train_loss[:n]
    rises = [(b / a, a, b) for a, b in zip(losses, losses[1:]) if a > 0 and math.isfinite(b)]
    rise, before, after = max(rises, default=(1.0, 0.0, 0.0))
    jumped = f" and its training loss rose {rise:.2g}× between two points ({before:.3g} → {after:.3g})" if rise > 2 else ""
    grid = f"{diverged} of its grid's runs diverged" if diverged else "none of its grid's runs diverged"
    return (f"{name} met minibatch gradients {ratio:.2g}× the norm expected there (‖G‖·√(1 + B_simple/B), the "
            f"gradient and its noise){jumped} (cliffs, §8.2.4); {grid}")


def _layers(run: engine.RunResult) -> str | None:
    """At initialization (the same for every optimizer: seed 0), the spread of the layers' gradient norms."""
    if not run.layer_grad_norms or not run.layer_names:
        return None
    first = [(n, v) for n, v in zip(run.layer_names, run.layer_grad_norms[0]) if n.endswith("weight") and v > 0]
    if len(first) < 2:
        return None
    spread = max(v for _, v in first) / min(v for _, v in first)
    if spread < SPREAD:
        return (f"at initialization the weight gradients of the {len(first)} layers lie within a factor {spread:.2g}: "
                "no vanishing or exploding gradients measured")
    (lo_name, lo), (hi_name, hi) = min(first, key=lambda t: t[1]), max(first, key=lambda t: t[1])
    return (f"at initialization the weight gradients span a factor {spread:.2g} ({lo_name}: {lo:.2g}, {hi_name}: "
            f"{hi:.2g}): vanishing/exploding gradients (§8.2.5)")


#: B_simple this many times the minibatch (or its inverse) is far from it: the estimate from
#: ``challenges.CHUNKS`` chunks is good to about a factor of 2.
NOISE_FAR = 4.0


def _noise(name: str, run: engine.RunResult, batch: int) -> str | None:
    """The gradient noise scale B_simple (McCandlish et al. 2018) against the minibatch (§8.1.3)."""
    scales = _finite(run.noise_scale or [])
    if not scales or batch <= 0:
        return None
    first, last = scales[0], scales[-1]
    if last == 0:
        return f"{name}'s gradient is the same on every example (B_simple = 0): no minibatch noise"
    if last > NOISE_FAR * batch:
        relation = (f"far above the minibatch of {batch}: the steps are dominated by gradient noise (§8.1.3), which "
                    "a larger batch or a smaller learning rate averages out")
    elif last < batch / NOISE_FAR:
        relation = (f"well below the minibatch of {batch}: a step sees less noise than it could afford (smaller "
                    "batches would make more steps of the same budget)")
    else:
        relation = f"comparable to the minibatch of {batch}"
    return (f"gradient noise scale B_simple = tr(Σ)/‖G‖² ≈ {first:.2g} examples at the start, {last:.2g} at the end "
            f"of {name}'s run (an estimate, good to a factor of about 2), {relation}")


def _account(challenge: str, runs: dict[str, engine.RunResult], winner: str, batch: int) -> str | None:
    """Whether the measurements agree with the chapter's account of the problem's ``challenge``: a
    sentence that says so, says they do not, or says the challenge is not measured here."""
    ch = challenge
    if ch.startswith("ill-conditioning"):
        sgd = runs.get("SGD")
        tops = _finite(sgd.lambda_max or []) if sgd is not None and sgd.lr is not None else []
        if not tops:
            return "The chapter's account (ill-conditioning) is not tested here: SGD's λmax was not measured"
        peak = sgd.lr * max(tops)  # type: ignore[union-attr]
        if peak >= 0.5 * STABILITY:
            return (f"As the chapter says (ill-conditioning, §8.2.1): SGD's tuned step reaches lr·λmax = {peak:.2g}, "
                    "so the largest curvature caps its learning rate")
        return (f"Not as the chapter says: SGD's tuned step stays at lr·λmax ≤ {peak:.2g}, well under the curvature's "
                "cap of 2, so something other than ill-conditioning (gradient noise, see B_simple) bounds it here")
    if ch == "saddle points":
        trapped = [n for n, r in runs.items() if _saddle(n, r)]
        if trapped:
            return (f"As the chapter says (§8.2.3): {', '.join(trapped)} end{'s' if len(trapped) == 1 else ''} at a "
                    f"saddle point, {winner} does not")
        return "Not as the chapter says: no measured run ends at a saddle point (§8.2.3)"
    if ch == "cliffs":
        spiky = [n for n, r in runs.items() if _spike(r, batch) >= SPIKE]
        if spiky:
            return f"As the chapter says (§8.2.4): {len(spiky)} of the {len(runs)} measured methods met gradient spikes"
        return "Not as the chapter says: no measured run met a minibatch gradient spike (§8.2.4)"
    if ch.startswith("vanishing"):
        run = runs.get(winner) or next(iter(runs.values()))
        text = _layers(run)
        if text is None:
            return "The chapter's account (vanishing/exploding gradients) is not tested here: one layer only"
        if "no vanishing" in text:
            return ("Not as the chapter says, at this initialization: the layers' gradients are even at the start (an "
                    "orthogonal or scaled initialization, §8.4, is what keeps them so)")
        return "As the chapter says (§8.2.5): the layers' gradients differ by orders of magnitude at the start"
    if ch == "long-term dependencies":
        return _through_time(runs, winner)
    return None


#: The first time step's ‖∂L/∂h‖ below this fraction of the last's: the gradient vanishes
#: through the recurrence (§8.2.5).
VANISHED = 1e-2


def _through_time(runs: dict[str, engine.RunResult], winner: str) -> str:
    """The long-term dependencies of §8.2.5 from ‖∂L/∂h_t‖ across time steps, at initialization
    and at the end of the winner's (or another measured) run."""
    def ratio(norms: list[float]) -> float:
        return norms[0] / norms[-1] if norms and norms[-1] > 0 else math.nan
    name = next((n for n in dict.fromkeys([winner, *runs]) if runs[n].time_grad_norms and
                 runs[n].time_grad_norms[0]), None) if runs else None  # type: ignore[index]
    if name is None:
        return ("The chapter's account (long-term dependencies) is not measured here: no recurrent module's time "
                "steps were recorded")
    steps = runs[name].time_grad_norms
    start, end = ratio(steps[0]), ratio(steps[-1])  # type: ignore[index]
    later = ("" if not math.isfinite(end) else f"; at the end of {name}'s run none reaches it" if end == 0 else
             f"; at the end of {name}'s run {end:.1g}×")
    if start < VANISHED:
        return (f"As the chapter says (§8.2.5): at initialization the gradient reaching the first of the "
                f"{len(steps[0])} time steps is {start:.1g}× the last one's: it vanishes through the recurrence"  # type: ignore[index]
                + later)
    return (f"Not as the chapter says at this length: at initialization the first of the {len(steps[0])} time steps "  # type: ignore[index]
            f"still gets {start:.2g}× the last one's gradient" + later)


def measured(problem: str, race: Race, catalog: Catalog | None = None) -> list[str]:
    """What the instrumented runs measured that explains the verdict, as sentences with the numbers
    (none where nothing was measured; each says where a measurement is only an estimate)."""
    catalog = catalog or Catalog()
    _, rows = board(problem, race, catalog)
    said: list[str] = []
    runs = {r.optimizer: _measured(race[r.optimizer]) for r in rows}
    runs = {n: r for n, r in runs.items() if r is not None}
    if not runs:
        return []
    winner, batch = rows[0].optimizer, catalog.batch_size(problem)
    for name in dict.fromkeys([winner, "SGD"]):
        run = runs.get(name)
        if run is not None:
            said += [s for s in (_stability(name, run), _adaptive_scale(name, run)) if s]
    for r in rows:
        run = runs.get(r.optimizer)
        if run is not None:
            said += [s for s in (_saddle(r.optimizer, run), _cliff(r.optimizer, run, r.diverged, batch)) if s]
    first = next((n for n in dict.fromkeys([winner, "SGD", *runs]) if n in runs and catalog.kind(n) == "first"), None)
    noise = _noise(first, runs[first], batch) if first else None
    layers = _layers(runs.get(winner) or next(iter(runs.values())))
    return said + [s for s in (noise, layers, _account(catalog.challenge(problem), runs, winner, batch)) if s]


# ---------------------------------------------------------------------------- overall answer
def standing(ratios: list[float]) -> tuple[int, int, float]:
    """(problems solved, problems within 2× of the fastest, geometric mean of the ratio to the
    fastest where solved) from an optimizer's performance-profile ratios."""
    solved = [r for r in ratios if math.isfinite(r)]
    geo = math.exp(statistics.fmean(math.log(max(r, 1.0)) for r in solved)) if solved else math.inf
    return len(solved), sum(r <= 2 for r in ratios), geo


def ranking(all_results: Results, catalog: Catalog | None = None) -> list[str]:
    """The optimizers, most problems solved first, then most within 2× of the fastest, then the
    smallest geometric-mean ratio to the fastest."""
    profile = performance_profile(all_results, catalog)
    return sorted(profile, key=lambda n: (-standing(profile[n])[0], -standing(profile[n])[1], standing(profile[n])[2]))


def overall(all_results: Results, catalog: Catalog | None = None) -> list[str]:
    """Which optimizer to use, from the performance profile across the run's problems, with the
    caveats that bound the answer: sentences (none for a single problem)."""
    if len(all_results) < 2:
        return []
    catalog = catalog or Catalog()
    profile = performance_profile(all_results, catalog)
    problems = list(all_results)
    ranked = ranking(all_results, catalog)
    best = ranked[0]
    solved, near, geo = standing(profile[best])
    if not solved:
        return [f"No optimizer solved any of the {len(problems)} problems within the budget: no answer from this run"]
    missed = [p if catalog.challenge(p).startswith("none") else
              f"{p} ({catalog.challenge(p) or 'challenge not stated'})"
              for p, r in zip(problems, profile[best]) if not math.isfinite(r)]
    said = [f"Across the {len(problems)} problems, {best} solved {solved}, within 2× of the fastest on {near} "
            f"(geometric mean {geo:.2g}× the fastest where it solved): the first choice on these problems"
            + (f"; it did not solve {', '.join(missed)}" if missed else "")]
    runner = next((n for n in ranked[1:] if standing(profile[n])[0]), None)
    if runner is not None:
        r_solved, r_near, _ = standing(profile[runner])
        said.append(f"Next: {runner}, {r_solved} solved, within 2× of the fastest on {r_near}")
    said.append("Caveats: every learning rate was tuned per problem on its grid (the tuning's cost is not in the "
                "budget; the defaults column shows untuned runs); a handful of problems and seeds is a small sample; "
                "another model, budget or batch size can change the order")
    return said
