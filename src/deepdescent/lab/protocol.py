"""The protocol of a race: what every optimizer on a problem gets, the same for everyone
(DeepOBS/AlgoPerf-style fairness). One :class:`Protocol` is built from the command line, checked
there, sent as itself to every worker process and named in every study it stores.

* **equal compute** — every optimizer on a problem gets the problem's budget in
  gradient-equivalents (one full-batch gradient = 1; a minibatch gradient batch/n; a
  curvature-vector product 2; a line-search evaluation 1); results depend only on the protocol
  and the seeds, never on the clock (a time limit is an explicit option, and it flags the runs it
  cuts);
* **tuned track** — the learning rate is tuned on a log grid of ``budget`` points (4 decades around
  the optimizer's default), ``seeds`` seeds per point; the best point is the one with the lowest
  median final training loss (a diverged run counts as +∞). While the best sits at an edge of the
  grid, the grid grows by one point (the same spacing) beyond that edge, at most
  ``MAX_EXTENSION`` times per side, so the tuned value is interior or the report says it is not;
  ``search`` = ``qmc`` or ``tpe`` samples ``budget`` learning rates instead (:mod:`.search`);
* **defaults track** — the optimizer at its default hyperparameters, ``seeds`` seeds
  (Schmidt et al. 2021: several optimizers at their defaults are about as good as tuning one);
* methods without a learning rate (line searches, Newton, HF) have one setting: both tracks are it;
* **instruments** — one extra run of each first-order optimizer (tuned learning rate, seed 0)
  measures the §8.2 challenges along the way (:mod:`.challenges`), so that the report draws them
  without training anything.
"""

from __future__ import annotations

from dataclasses import dataclass

from deepdescent.lab.suites import SUITES

#: 2: runs record their failed line searches; 3: equal gradient-equivalent budgets, no clock,
#: extended grids, instrumented runs; 4: quadratic_deep is DeepOBS's exactly; 5: instrumented
#: runs measure the §8.2 challenges (lab.challenges) on a fixed batch, second-order runs included;
#: 6: the noise scale B_simple measured too, the spectrum at every 4th point, losses recorded in
#: the model's evaluation mode
PROTOCOL_VERSION = 6
MAX_EXTENSION = 3  # grid points added beyond an edge at most, per side

SEARCHES = ("grid", "qmc", "tpe")


@dataclass(frozen=True)
class Protocol:
    suite: str = "quick"
    budget: int = 6  # learning rates per optimizer
    seeds: int = 2
    search: str = "grid"  # grid (log grid, vectorized), qmc (quasi-random, Sobol), tpe (Optuna's TPE)
    device: str = "cpu"  # where the members train; part of the study name (results of two devices never mix)
    time_limit: float | None = None  # seconds per run; None: none (results never depend on the clock)

    def __post_init__(self) -> None:
        if self.time_limit is not None and not self.time_limit > 0:
            raise ValueError(f"invalid time_limit={self.time_limit!r}: seconds must be > 0")

    @property
    def quick(self) -> bool:
        """The problems' small sizes (the suites of small races: lab.suites)."""
        return self.suite in SUITES and SUITES[self.suite].small


    def tag(self) -> str:
        on = "" if self.device == "cpu" else f"-{self.device.replace(':', '.')}"
        limit = "" if self.time_limit is None else f"-t{self.time_limit:g}"
        return f"v{PROTOCOL_VERSION}-{self.suite}-b{self.budget}-s{self.seeds}-{self.search}{on}{limit}"

    @classmethod
    def from_tag(cls, tag: str) -> Protocol:
        parts = tag.split("-")
        extra = parts[5:]
        device = next((p.replace(".", ":") for p in extra if p.startswith("cuda")), "cpu")
        limit = next((float(p[1:]) for p in extra if p.startswith("t")), None)
        return cls(suite=parts[1], budget=int(parts[2][1:]), seeds=int(parts[3][1:]),
                   search=parts[4] if len(parts) > 4 else "grid", device=device, time_limit=limit)

    def run_options(self) -> dict:
        return {"device": self.device, "time_limit": self.time_limit}
