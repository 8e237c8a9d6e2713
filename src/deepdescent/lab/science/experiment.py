"""What one experiment of the science suite is and what it reports.

An experiment tests one empirical claim of chapter 8 (or of a paper it cites). It is split so that
every number in the report can be traced to its runs: ``run(scale, device)`` trains and returns the
raw records (curves, final losses, counts: JSON), ``summarize(raw)`` derives the reported numbers
and the verdict from those records alone, ``figure(raw, ax)`` draws them. The published number is
the only constant; it is quoted with its source.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: Sizes of the suite: ``tiny`` (seconds per experiment: the tests), ``cpu`` (the default: the whole
#: suite within 30 minutes on 2 cores), ``full`` (the papers' sizes where a GPU makes them affordable).
SCALES = ("tiny", "cpu", "full")

#: reproduced: every check holds clearly; partly / not reproduced: a check fails clearly; inconclusive
#: at this scale: none fails clearly, but some interval straddles its threshold.
VERDICTS = ("reproduced", "partly", "not reproduced", "inconclusive at this scale")
INCONCLUSIVE = VERDICTS[3]
#: Two-sided confidence of the intervals over seeds.
CONFIDENCE = 0.95
_CAP = 50.0  # |ln ratio| of a diverged seed against a finite one: e^50, decisive for that seed alone


@dataclass(frozen=True)
class Summary:
    """What the report shows of an experiment, all derived from its raw records."""

    ours: str  # our number(s), in words
    comparable: bool  # whether ours and the published number measure the same thing at the same scale
    why: str  # why they are (not) comparable: what differs
    verdict: str  # one of VERDICTS
    explanation: str  # the verdict's reason, in one or two sentences
    numbers: dict[str, float] = field(default_factory=dict)  # the key numbers behind ``ours``
    #: The checks of the claim that failed, in words (empty when reproduced): the report names them.
    failed: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict={self.verdict!r}; valid: {', '.join(VERDICTS)}")


@dataclass(frozen=True)
class Experiment:
    key: str  # file-name safe
    title: str
    claim: str
    source: str
    published: str  # the published number or figure, quoted
    budget: Callable[[str], str]  # the compute it gets at a scale, in words
    run: Callable[..., dict[str, Any]]  # run(scale, device, progress) -> raw records
    summarize: Callable[[dict[str, Any]], Summary]
    figure: Callable[[dict[str, Any], Any], None]  # figure(raw, fig) draws on a matplotlib figure
    #: Its runs store the other seeds' results (``raw["other_seeds"]``): a record without them was
    #: stored by an earlier version, one seed per setting, and has no interval to judge by.
    seeded: bool = False


def check_scale(scale: str) -> str:
    if scale not in SCALES:
        raise ValueError(f"scale={scale!r}; valid: {', '.join(SCALES)}")
    return scale


def verdict(reproduced: bool, partly: bool) -> str:
    return "reproduced" if reproduced else "partly" if partly else "not reproduced"


@dataclass(frozen=True)
class Paired:
    """The claim "``lower`` ends below ``tolerance`` × ``higher``", judged on shared seeds: with
    r_s = lower_s / higher_s per seed, a t interval (:data:`CONFIDENCE`) of the geometric mean of
    r over the n seeds. The claim **holds** when the whole interval lies below ``tolerance``,
    **fails** when it lies at or above it (seeds that agree exactly on a tie fail a claim of
    "below"), and is **inconclusive** when it straddles it (always with one seed). A diverged
    seed (∞) counts as e^50 against a finite one. ``linear=True``: the difference
    lower_s − higher_s against ``tolerance`` instead (rates that may be 0)."""

    lower: tuple[float, ...]
    higher: tuple[float, ...]
    tolerance: float = 1.0
    linear: bool = False

    def __post_init__(self) -> None:
        if len(self.lower) != len(self.higher) or not self.lower:
            raise ValueError(f"paired seeds: {len(self.lower)} against {len(self.higher)}; need the same n ≥ 1")

    @property
    def differences(self) -> list[float]:
        """Per seed: ln(lower/higher), or lower − higher when ``linear``."""
        if self.linear:
            return [a - b for a, b in zip(self.lower, self.higher)]
        out = []
        for a, b in zip(self.lower, self.higher):
            if math.isinf(a) and math.isinf(b) or math.isnan(a) or math.isnan(b):
                out.append(0.0)
            elif math.isinf(a) or b <= 0:
                out.append(_CAP)
            elif math.isinf(b) or a <= 0:
                out.append(-_CAP)
            else:
                out.append(max(-_CAP, min(_CAP, math.log(a / b))))
        return out

    @property
    def interval(self) -> tuple[float, float, float]:
        """(low, estimate, high): of the geometric-mean ratio, or of the mean difference (``linear``)."""
        from scipy.stats import t  # slow to import: only a summary pays it

        d = self.differences
        n, mean = len(d), sum(d) / len(d)
        half = math.inf
        if n >= 2:
            sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
            half = float(t.ppf(0.5 + CONFIDENCE / 2, n - 1)) * sd / math.sqrt(n)
        if self.linear:
            return mean - half, mean, mean + half
        return math.exp(mean - half), math.exp(mean), math.exp(mean + half)

    @property
    def outcome(self) -> str:
        """holds, fails or inconclusive."""
        low, _, high = self.interval
        return "holds" if high < self.tolerance else "fails" if low >= self.tolerance else "inconclusive"

    def text(self) -> str:
        d = self.differences
        if not self.linear and all(abs(x) == _CAP for x in d) and len(set(d)) == 1:  # ∞ on one side throughout
            side = "the first" if d[0] > 0 else "the second"
            return f"{side} never ended finite (∞: diverged, or never reached) in any of the {len(d)} seeds"
        low, mid, high = self.interval
        what = "difference" if self.linear else "ratio"
        bound = "" if self.tolerance == (0 if self.linear else 1) else f" (claim: < {self.tolerance:g})"
        return (f"{what} {mid:.3g}, {100 * CONFIDENCE:.0f}% interval [{low:.3g}, {high:.3g}] over {len(self.lower)} "
                f"seed{'s' if len(self.lower) != 1 else ''}{bound}")


Check = bool | Paired | tuple  # a tuple: every comparison in it must hold


def outcome(check: Check) -> str:
    """holds, fails or inconclusive: a bool holds or fails; a tuple holds when all its members do
    and fails when any fails."""
    if isinstance(check, bool):
        return "holds" if check else "fails"
    if isinstance(check, Paired):
        return check.outcome
    found = [outcome(c) for c in check]
    return "fails" if "fails" in found else "holds" if all(f == "holds" for f in found) else "inconclusive"


def judged(checks: dict[str, Check], partly: Check) -> dict[str, Any]:
    """``verdict`` and ``failed`` of a Summary from the claim's named checks: reproduced when all
    hold clearly; when one fails clearly, partly if ``partly`` holds, else not reproduced; when
    none fails but some are inconclusive, inconclusive at this scale. The checks that did not
    hold are named (with "inconclusive:" before those that only straddle)."""
    found = {k: outcome(c) for k, c in checks.items()}
    failed = tuple(k for k, o in found.items() if o == "fails")
    unsure = tuple(f"inconclusive: {k}" for k, o in found.items() if o == "inconclusive")
    if failed:
        result = verdict(False, outcome(partly) == "holds")
    else:
        result = INCONCLUSIVE if unsure else "reproduced"
    return {"verdict": result, "failed": failed + unsure}


def num(value: float | None) -> float:
    """A stored number: JSON keeps non-finite values as None (a diverged run's loss reads back as ∞)."""
    return math.inf if value is None else float(value)


def seed_bar(ax: Any, x: float, values: tuple[float, ...], color: Any) -> None:
    """An error bar at ``x``: the median of ``values`` over seeds and their range (finite ones)."""
    finite = sorted(v for v in values if math.isfinite(v))
    if len(finite) < 2:
        return
    mid = statistics.median(finite)
    ax.errorbar([x], [mid], yerr=[[mid - finite[0]], [finite[-1] - mid]], fmt="o", ms=4, capsize=4, color=color)
