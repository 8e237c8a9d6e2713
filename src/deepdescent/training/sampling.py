"""Minibatch sampling (§8.1.3), as ``torch.utils.data`` samplers.

The book's practice: shuffle the data once and take consecutive minibatches; later epochs reuse
that order (:class:`ShuffleOnce`). Also: reshuffle each epoch, i.i.d. draws with replacement,
sequential order, and online learning from a stream where each example is used once.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator, Sized

import torch
from torch.utils.data import Sampler


def _check_size(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(f"invalid number of examples {n!r}: must be an integer >= 1")
    return int(n)


def _size(data_source: Sized | int) -> int:
    if isinstance(data_source, (str, bytes)):  # Sized, but surely a mistyped number, not a data set
        raise TypeError(f"invalid data_source={data_source!r}: must be a data set (anything with len()) or the "
                        "number of examples as an integer, not a string")
    if isinstance(data_source, Sized):
        return _check_size(len(data_source))
    return _check_size(data_source)  # type: ignore[arg-type]


def _check_seed(seed: int | None, optional: bool = True) -> int | None:
    if (seed is None and optional) or (isinstance(seed, numbers.Integral) and not isinstance(seed, bool)):
        return None if seed is None else int(seed)
    raise TypeError(f"invalid seed={seed!r}: must be an integer{' or None' if optional else ''}")


def _seeded(seed: int | None) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(int(torch.empty((), dtype=torch.int64).random_().item()) if seed is None else seed)
    return g


class ShuffleOnce(Sampler[int]):
    """One random permutation, drawn at construction, reused in every epoch (§8.1.3)."""

    def __init__(self, data_source: Sized | int, seed: int | None = None) -> None:
        self.n = _size(data_source)
        self.order = torch.randperm(self.n, generator=_seeded(_check_seed(seed))).tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.order)

    def __len__(self) -> int:
        return self.n


class Reshuffle(Sampler[int]):
    """A new permutation every epoch; epoch e uses the generator seeded with ``seed + e``, so any
    epoch can be reproduced (``set_epoch``, as with DistributedSampler)."""

    def __init__(self, data_source: Sized | int, seed: int = 0) -> None:
        self.n, self.seed, self.epoch = _size(data_source), _check_seed(seed, optional=False), 0

    def set_epoch(self, epoch: int) -> None:
        if isinstance(epoch, bool) or not isinstance(epoch, numbers.Integral) or epoch < 0:
            raise ValueError(f"invalid epoch={epoch!r}: must be an integer >= 0")
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        order = torch.randperm(self.n, generator=_seeded(self.seed + self.epoch)).tolist()
        self.epoch += 1
        return iter(order)

    def __len__(self) -> int:
        return self.n


class WithReplacement(Sampler[int]):
    """``num_samples`` i.i.d. uniform draws per epoch (unbiased minibatch gradient estimates)."""

    def __init__(self, data_source: Sized | int, num_samples: int | None = None, seed: int | None = None) -> None:
        self.n = _size(data_source)
        self.num_samples = self.n if num_samples is None else _check_size(num_samples)
        self.generator = _seeded(_check_seed(seed))

    def __iter__(self) -> Iterator[int]:
        return iter(torch.randint(self.n, (self.num_samples,), generator=self.generator).tolist())

    def __len__(self) -> int:
        return self.num_samples


class Sequential(Sampler[int]):
    """0, 1, …, n − 1 every epoch (for data that is already shuffled, or for evaluation)."""

    def __init__(self, data_source: Sized | int) -> None:
        self.n = _size(data_source)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.n))

    def __len__(self) -> int:
        return self.n


class Stream(Sampler[int]):
    """Online learning (§8.1.3): each example is used exactly once, in a random order; the stream
    is exhausted after one pass and a second iteration raises instead of repeating examples (only
    the first pass gives an unbiased estimate of the generalization-error gradient)."""

    def __init__(self, data_source: Sized | int, seed: int | None = None) -> None:
        self.n = _size(data_source)
        self.order = torch.randperm(self.n, generator=_seeded(_check_seed(seed))).tolist()
        self.position = 0

    def __iter__(self) -> Iterator[int]:
        if self.position >= self.n:
            raise RuntimeError(f"the stream of {self.n} examples is exhausted: online learning uses each example once")
        while self.position < self.n:
            i = self.order[self.position]
            self.position += 1
            yield i

    def __len__(self) -> int:
        return self.n - self.position
