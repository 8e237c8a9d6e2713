"""The suites of ``deepdescent bench --suite NAME``, as data: each a name, a line for ``--help``
(with its measured time), its problems, its optimizers and its protocol defaults. The science
suite is one of them (its experiments fix their own problems and optimizers)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from deepdescent.lab.optimizers import OPTIMIZERS, lookup
from deepdescent.lab.problems import PROBLEMS

#: Saxe et al. (2013): the deep linear network at three depths under orthogonal and scaled-uniform
#: (Glorot) initialization; the report draws training time against depth.
DEPTH = [f"deep_linear:depth={d},scheme={s}" for s in ("orthogonal", "normalized") for d in (2, 8, 32)]
#: The modern suite: the book's fastest first-order methods on the quick problems against what
#: practitioners use today, from torch.optim and the ``schedulefree`` package (Defazio et al. 2024,
#: the self-tuning track winner of AlgoPerf 2024; ``pip install deepdescent[modern]``).
MODERN_BOOK = ["Nesterov", "RMSProp", "Adam"]
MODERN = ["torch.optim.AdamW", "torch.optim.NAdam", "torch.optim.RAdam", "schedulefree.AdamWScheduleFree"]
#: The second-order suite (§8.6 at scale): the book's second-order methods, the layer-wise
#: curvature methods that made curvature pay at scale, and the book's best first-order baselines.
SECOND_ORDER = ["Newton", "DampedNewton", "HessianFree", "CG", "BFGS", "L-BFGS", "K-FAC", "Shampoo", "Adam",
                "Nesterov"]
#: The workloads suite: models people train (lab.workloads), raced by the plain gradient step
#: (the reference), the book's momentum and its two most used adaptive methods.
WORKLOAD_OPTIMIZERS = ["SGD", "Nesterov", "RMSProp", "Adam"]


def tagged(tag: str) -> Callable[[str], list[str]]:
    """The lab problems listed under ``tag`` in their ``suites`` (the device changes nothing)."""
    return lambda device: [p.name for p in PROBLEMS.values() if tag in p.suites]


def book() -> list[str]:
    """Every method of chapter 8 (descendants such as AdamW race on request)."""
    return [name for name, spec in OPTIMIZERS.items() if spec.in_book]


def workloads(device: str) -> list[str]:
    """The built-in workloads, at their full size on a GPU."""
    size = "" if device == "cpu" else ":size=full"
    return [p.name + size for p in PROBLEMS.values() if "workloads" in p.suites]


@dataclass(frozen=True)
class Suite:
    name: str
    problems: Callable[[str], list[str]]  # the problem names on a device
    optimizers: Callable[[], list[str]]
    #: Small races: the problems at their small sizes, 6 learning rates × 2 seeds by default
    #: (else the full sizes, 12 × 3).
    small: bool = False
    experiments: bool = False  # the science suite: experiments (lab.science), not races
    #: Optimizers of the suite whose package is not installed (left out, said once), and the
    #: extra that installs them.
    missing: Callable[[], list[str]] = field(default=lambda: [])
    install: str = ""

    @property
    def budget(self) -> int:
        """Learning rates per optimizer unless ``--budget`` says otherwise."""
        return 6 if self.small else 12

    @property
    def seeds(self) -> int:
        return 2 if self.small else 3


SUITES: dict[str, Suite] = {s.name: s for s in [
    Suite("quick", tagged("quick"), book, small=True),  # the help texts and times: deepdescent.cli
    Suite("full", tagged("full"), book),
    Suite("depth", lambda device: list(DEPTH), book),
    Suite("modern", tagged("quick"), lambda: MODERN_BOOK + [n for n in MODERN if lookup(n) is not None], small=True,
          missing=lambda: [n for n in MODERN if lookup(n) is None], install="deepdescent[modern]"),
    Suite("workloads", workloads, lambda: list(WORKLOAD_OPTIMIZERS), small=True),
    Suite("second_order", tagged("quick"), lambda: list(SECOND_ORDER), small=True),
    Suite("science", lambda device: [], lambda: [], experiments=True),
]}


def suite(name: str) -> Suite:
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; valid: {', '.join(SUITES)}")
    return SUITES[name]
