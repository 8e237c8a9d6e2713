"""What one command knows of the problems and optimizers it names.

A lab problem or a lab optimizer is a constant (:data:`~.problems.PROBLEMS`,
:data:`~.optimizers.OPTIMIZERS`). A user's workload is not: ``bench`` imports and checks it (once,
however many races it runs), and ``report`` knows it only from what the run directory recorded,
never importing what a folder names. A :class:`Catalog` holds both kinds for the command that made
it — no module keeps them — and answers the report's questions about a name (its floor, batch size,
challenge, whether it classifies, the optimizer's family) from whichever it has.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from deepdescent.lab import optimizers, problems
from deepdescent.lab.optimizers import OptimizerSpec
from deepdescent.lab.problems import Problem


@dataclass
class Catalog:
    """The workloads a command loaded (to race them) or described (to report them), and the
    descriptions of the optimizers its run directory recorded. ``Catalog()`` knows the lab's own
    problems and optimizers only."""

    workloads: dict[str, Problem] = field(default_factory=dict)
    described_optimizers: dict[str, dict[str, Any]] = field(default_factory=dict)

    # ------------------------------------------------------------------ problems
    def problem(self, name: str) -> Problem:
        """A problem to race (:func:`.problems.problem`); a workload is imported and checked the
        first time this catalog is asked for it."""
        held = self.workloads.get(name)
        if held is not None and held.build is not problems.not_built:
            return held
        p = problems.problem(name)
        if p.workload:
            self.workloads[name] = p
        return p

    def describe(self, name: str, described: dict | None = None) -> Problem:
        """A problem as a report sees it: a lab problem, a workload this catalog loaded (it says
        more), else the workload from ``described`` (:func:`.problems.describe`), importing nothing."""
        if not problems.is_workload(name):
            return problems.problem(name)
        held = self.workloads.get(name)
        if held is None or held.build is problems.not_built:
            held = self.workloads[name] = problems.describe(name, described)
        return held

    def known(self, name: str) -> Problem:
        """A lab problem, or a workload this catalog loaded or described (ValueError for any other
        name: nothing is imported)."""
        if name in self.workloads:
            return self.workloads[name]
        if problems.is_workload(name):
            raise ValueError(f"workload {name!r} was neither loaded nor described by this command")
        return problems.problem(name)

    def _fact(self, name: str, attribute: str, unknown: object) -> object:
        if name in self.workloads:
            return getattr(self.workloads[name], attribute)
        if problems.base_name(name) in problems.PROBLEMS:
            return getattr(problems.reference(name), attribute)
        return unknown

    def floor(self, name: str) -> float:
        """The training loss's infimum of a problem (0 where unknown): targets are set above it."""
        return float(self._fact(name, "floor", 0.0))  # type: ignore[arg-type]

    def batch_size(self, name: str) -> int:
        """The minibatch of a problem's first-order methods (0 where unknown)."""
        return int(self._fact(name, "batch_size", 0))  # type: ignore[call-overload]

    def classification(self, name: str) -> bool:
        """Whether a problem's outputs are class scores (accuracy reported)."""
        return bool(self._fact(name, "classification", False))

    def challenge(self, name: str) -> str:
        """The §8.2 challenge a problem shows ("" where unknown)."""
        if name in self.workloads:
            return self.workloads[name].challenge
        base = problems.base_name(name)
        return problems.PROBLEMS[base].challenge if base in problems.PROBLEMS else ""

    # ---------------------------------------------------------------- optimizers
    def spec(self, name: str) -> OptimizerSpec | None:
        """An optimizer as a report sees it (:func:`.optimizers.describe`, from the description
        the run directory recorded where there is one); None for a name that is not one."""
        return optimizers.describe(name, self.described_optimizers.get(name))

    def kind(self, name: str) -> str:
        """first, full_batch or second ("first" for an optimizer nothing is known of)."""
        spec = self.spec(name)
        return spec.kind if spec else "first"
