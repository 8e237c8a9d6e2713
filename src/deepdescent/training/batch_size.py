"""Growing the batch size during training (§8.1.3, §8.3.1: trades the fast early progress of
small batches for the low-variance gradients of large ones)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

from torch.optim import Optimizer
from torch.utils.data import Sampler


class GrowingBatchSampler(Sampler[list[int]]):
    """A batch sampler whose batch size follows a schedule of epochs.

    ``schedule`` is a list of ``(first_epoch, batch_size)`` pairs, e.g. ``[(0, 32), (10, 128)]``.
    With ``optimizer`` and ``lr_rule`` set, each group's learning rate is rescaled whenever the
    batch size changes: ``"linear"`` keeps ε/m constant (Goyal et al. 2017), ``"sqrt"`` keeps
    ε/√m constant (the variance of the gradient estimate falls as 1/m).
    """

    def __init__(self, sampler: Sampler[int], schedule: Sequence[tuple[int, int]], *, drop_last: bool = False,
                 optimizer: Optimizer | None = None, lr_rule: str = "none") -> None:
        if not schedule or schedule[0][0] != 0:
            raise ValueError(f"invalid schedule={schedule!r}: a list of (first_epoch, batch_size) starting at epoch 0")
        epochs = [e for e, _ in schedule]
        if epochs != sorted(set(epochs)) or any(not isinstance(b, int) or b < 1 for _, b in schedule):
            raise ValueError(f"invalid schedule={schedule!r}: epochs must increase and batch sizes be integers >= 1")
        if lr_rule not in ("none", "linear", "sqrt"):
            raise ValueError(f"invalid lr_rule={lr_rule!r}: must be 'none', 'linear' or 'sqrt'")
        if lr_rule != "none" and optimizer is None:
            raise ValueError(f"lr_rule={lr_rule!r} needs the optimizer whose learning rate it scales")
        self.sampler, self.schedule, self.drop_last = sampler, list(schedule), drop_last
        self.optimizer, self.lr_rule = optimizer, lr_rule
        self.epoch, self._current = 0, schedule[0][1]

    def batch_size(self, epoch: int) -> int:
        return [b for e, b in self.schedule if e <= epoch][-1]

    def _rescale_lr(self, new: int) -> None:
        if self.optimizer is None or self.lr_rule == "none" or new == self._current:
            return
        ratio = new / self._current
        factor = ratio if self.lr_rule == "linear" else math.sqrt(ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = group["lr"] * factor

    def __iter__(self) -> Iterator[list[int]]:
        size = self.batch_size(self.epoch)
        self._rescale_lr(size)
        self._current = size
        self.epoch += 1
        batch: list[int] = []
        for i in self.sampler:
            batch.append(i)
            if len(batch) == size:
                yield batch
                batch = []
        if batch and not self.drop_last:
            yield batch

    def __len__(self) -> int:
        n, size = len(self.sampler), self.batch_size(self.epoch)  # type: ignore[arg-type]
        return n // size if self.drop_last else -(-n // size)
