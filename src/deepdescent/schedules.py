"""Learning-rate schedules of §8.3."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler


class LinearDecay(LRScheduler):
    r"""Linear decay of the learning rate until iteration τ, then constant (eq. 8.14).

    ε_k = (1 − α) ε₀ + α ε_τ,  α = k/τ  (k ≤ τ);   ε_k = ε_τ  (k ≥ τ),  with ε_τ = final_factor · ε₀.

    The book's advice: ε_τ about 1% of ε₀ (``final_factor=0.01``) and τ large enough for a few
    hundred passes through the training set. ε₀ is each group's learning rate when the scheduler
    is created. Works with any ``torch.optim.Optimizer``; call ``step()`` once per iteration, after
    ``optimizer.step()``.

    Args:
        optimizer: the wrapped optimizer.
        tau: τ, the iteration at which decay ends (a positive integer).
        final_factor: ε_τ/ε₀, in [0, 1].
        last_epoch: the index of the last iteration, for resuming (-1 starts afresh).
    """

    def __init__(self, optimizer: Optimizer, tau: int, final_factor: float = 0.01, last_epoch: int = -1) -> None:
        if isinstance(tau, bool) or not isinstance(tau, int) or tau < 1:
            raise ValueError(f"invalid tau={tau!r}: must be an integer >= 1 (the iteration where decay ends)")
        if isinstance(final_factor, bool) or not isinstance(final_factor, (int, float)) \
                or not math.isfinite(final_factor) or not 0.0 <= final_factor <= 1.0:
            raise ValueError(f"invalid final_factor={final_factor!r}: must be in [0, 1] (ε_τ = final_factor·ε₀)")
        self.tau = tau
        self.final_factor = float(final_factor)
        super().__init__(optimizer, last_epoch)

    def _factor(self, k: int) -> float:
        alpha = min(k, self.tau) / self.tau
        return (1.0 - alpha) + alpha * self.final_factor  # ε_k / ε₀

    def get_lr(self) -> list[float]:  # type: ignore[override]
        return [base * self._factor(self.last_epoch) for base in self.base_lrs]

    def _get_closed_form_lr(self) -> list[float]:
        return self.get_lr()
