"""Curriculum learning (§8.7.6; Bengio et al. 2009): easy examples first. Samplers for
``torch.utils.data.DataLoader`` driven by a difficulty score per example (lower = easier)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor
from torch.utils.data import Sampler


def _scores(difficulty: Sequence[float] | Tensor) -> Tensor:
    d = torch.as_tensor(difficulty, dtype=torch.float64).flatten()
    if d.numel() == 0:
        raise ValueError("difficulty is empty: give one score per example")
    if not torch.isfinite(d).all():
        raise ValueError("difficulty scores must be finite")
    return d


def _fraction(name: str, value: float) -> float:
    if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
        raise ValueError(f"invalid {name}={value!r}: must be in [0, 1]")
    return float(value)


class Curriculum(Sampler[int]):
    """Examples from easy to hard, with pacing.

    At epoch e the sampler uses the easiest fraction f(e) = min(1, start + (1 − start)·e/ramp_epochs)
    of the data; ``order="sorted"`` yields them from easiest to hardest, ``order="shuffled"``
    shuffles within that pool (seeded per epoch). With ``start=1`` it is a plain easy-to-hard
    ordering of all examples.
    """

    def __init__(self, difficulty: Sequence[float] | Tensor, *, start: float = 1.0, ramp_epochs: int = 1,
                 order: str = "sorted", seed: int = 0) -> None:
        self.rank = torch.argsort(_scores(difficulty), stable=True)
        self.start = _fraction("start", start)
        if self.start == 0:
            raise ValueError("invalid start=0: the first epoch would have no examples")
        if ramp_epochs < 1:
            raise ValueError(f"invalid ramp_epochs={ramp_epochs!r}: must be >= 1")
        if order not in ("sorted", "shuffled"):
            raise ValueError(f"invalid order={order!r}: must be 'sorted' or 'shuffled'")
        self.ramp_epochs, self.order, self.seed, self.epoch = ramp_epochs, order, seed, 0

    def fraction(self, epoch: int) -> float:
        return min(1.0, self.start + (1.0 - self.start) * epoch / self.ramp_epochs)

    def _pool(self) -> Tensor:
        n = len(self.rank)
        return self.rank[: max(1, round(self.fraction(self.epoch) * n))]

    def __iter__(self) -> Iterator[int]:
        pool = self._pool()
        if self.order == "shuffled":
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            pool = pool[torch.randperm(len(pool), generator=g)]
        self.epoch += 1
        return iter(pool.tolist())

    def __len__(self) -> int:
        return len(self._pool())


class StochasticCurriculum(Sampler[int]):
    """A stochastic curriculum (Zaremba & Sutskever 2014): every epoch mixes easy and hard
    examples, and the share of hard ones rises from ``hard_start`` to ``hard_end`` over
    ``ramp_epochs``. Examples whose difficulty is above the ``split`` quantile are "hard". Each of
    the ``num_samples`` draws of an epoch picks the hard set with the current share, then an
    example uniformly within the set."""

    def __init__(self, difficulty: Sequence[float] | Tensor, *, hard_start: float = 0.1, hard_end: float = 0.5,
                 ramp_epochs: int = 10, split: float = 0.5, num_samples: int | None = None, seed: int = 0) -> None:
        d = _scores(difficulty)
        threshold = torch.quantile(d, _fraction("split", split))
        self.easy, self.hard = (d <= threshold).nonzero().flatten(), (d > threshold).nonzero().flatten()
        if len(self.easy) == 0 or len(self.hard) == 0:
            raise ValueError(f"split={split} leaves the {'easy' if len(self.easy) == 0 else 'hard'} set empty")
        self.hard_start, self.hard_end = _fraction("hard_start", hard_start), _fraction("hard_end", hard_end)
        if ramp_epochs < 1:
            raise ValueError(f"invalid ramp_epochs={ramp_epochs!r}: must be >= 1")
        self.ramp_epochs, self.num_samples = ramp_epochs, num_samples or len(d)
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch = 0

    def hard_share(self, epoch: int) -> float:
        t = min(1.0, epoch / self.ramp_epochs)
        return self.hard_start + (self.hard_end - self.hard_start) * t

    def __iter__(self) -> Iterator[int]:
        n, g = self.num_samples, self.generator
        pick_hard = torch.rand(n, generator=g) < self.hard_share(self.epoch)
        hard = self.hard[torch.randint(len(self.hard), (n,), generator=g)]
        easy = self.easy[torch.randint(len(self.easy), (n,), generator=g)]
        self.epoch += 1
        return iter(torch.where(pick_hard, hard, easy).tolist())

    def __len__(self) -> int:
        return self.num_samples
