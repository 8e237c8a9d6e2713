"""What one experiment of the science suite is and what it reports.

An experiment tests one empirical claim of chapter 8 (or of a paper it cites). It is split so that
every number in the report can be traced to its runs: ``run(scale, device)`` trains and returns the
raw records (curves, final losses, counts: JSON), ``summarize(raw)`` derives the reported numbers
and the verdict from those records alone, ``figure(raw, ax)`` draws them. The published number is
the only constant; it is quoted with its source.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: Sizes of the suite: ``tiny`` (seconds per experiment: the tests), ``cpu`` (the default: the whole
#: suite within 30 minutes on 2 cores), ``full`` (the papers' sizes where a GPU makes them affordable).
SCALES = ("tiny", "cpu", "full")

VERDICTS = ("reproduced", "partly", "not reproduced")


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


def check_scale(scale: str) -> str:
    if scale not in SCALES:
        raise ValueError(f"scale={scale!r}; valid: {', '.join(SCALES)}")
    return scale


def verdict(reproduced: bool, partly: bool) -> str:
    return "reproduced" if reproduced else "partly" if partly else "not reproduced"


def judged(checks: dict[str, bool], partly: bool) -> dict[str, Any]:
    """``verdict`` and ``failed`` of a Summary from the claim's named checks: reproduced when all
    hold, partly when ``partly`` does; the failed ones named."""
    return {"verdict": verdict(all(checks.values()), partly), "failed": tuple(k for k, ok in checks.items() if not ok)}


def num(value: float | None) -> float:
    """A stored number: JSON keeps non-finite values as None (a diverged run's loss reads back as ∞)."""
    return math.inf if value is None else float(value)
