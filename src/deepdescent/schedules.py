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


class InverseTimeDecay(LRScheduler):
    r"""ε_k = ε₀ / (1 + k/τ)^p, a decay that meets the convergence conditions of SGD (8.12, 8.13):
    Σ_k ε_k = ∞ and Σ_k ε_k² < ∞ hold exactly when 1/2 < p ≤ 1.

    Args:
        tau: τ > 0, the iteration scale of the decay (ε halves at k = τ for p = 1).
        power: p in (1/2, 1].
    """

    def __init__(self, optimizer: Optimizer, tau: float, power: float = 1.0, last_epoch: int = -1) -> None:
        if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not math.isfinite(tau) or tau <= 0:
            raise ValueError(f"invalid tau={tau!r}: must be finite and > 0")
        if isinstance(power, bool) or not isinstance(power, (int, float)) or not 0.5 < power <= 1.0:
            raise ValueError(f"invalid power={power!r}: must be in (0.5, 1] for Σε = ∞ and Σε² < ∞ (8.12, 8.13)")
        self.tau, self.power = float(tau), float(power)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:  # type: ignore[override]
        factor = (1.0 + self.last_epoch / self.tau) ** -self.power
        return [base * factor for base in self.base_lrs]

    def _get_closed_form_lr(self) -> list[float]:
        return self.get_lr()


class StepDecay(LRScheduler):
    """ε_k = ε₀ · γ^⌊k/step_size⌋: multiply the learning rate by ``gamma`` every ``step_size`` steps."""

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1, last_epoch: int = -1) -> None:
        if isinstance(step_size, bool) or not isinstance(step_size, int) or step_size < 1:
            raise ValueError(f"invalid step_size={step_size!r}: must be an integer >= 1")
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not 0.0 < gamma <= 1.0:
            raise ValueError(f"invalid gamma={gamma!r}: must be in (0, 1]")
        self.step_size, self.gamma = step_size, float(gamma)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:  # type: ignore[override]
        factor = self.gamma ** (self.last_epoch // self.step_size)
        return [base * factor for base in self.base_lrs]

    def _get_closed_form_lr(self) -> list[float]:
        return self.get_lr()


class MomentumSchedule:
    r"""Momentum that rises during training (§8.3.2: "α may grow over time"), as Sutskever et al.
    (2013): α_t = min(1 − 2^(−1 − log₂(⌊t/period⌋ + 1)), α_max), i.e. 0.5, 0.75, 0.833, 0.875, …

    Each ``step()`` writes α_t into every param group: into ``momentum`` where the group has it
    (deepdescent's and torch's SGD/RMSProp), else into ``betas[0]`` (Adam-like). Call it once per
    iteration, like an LR scheduler; the first value is applied at construction.
    """

    def __init__(self, optimizer: Optimizer, max_momentum: float = 0.99, period: int = 250) -> None:
        if not (isinstance(max_momentum, (int, float)) and 0.0 <= max_momentum < 1.0):
            raise ValueError(f"invalid max_momentum={max_momentum!r}: must be in [0, 1)")
        if isinstance(period, bool) or not isinstance(period, int) or period < 1:
            raise ValueError(f"invalid period={period!r}: must be an integer >= 1")
        if not all("momentum" in g or "betas" in g for g in optimizer.param_groups):
            raise ValueError("MomentumSchedule needs param groups with 'momentum' or 'betas'")
        self.optimizer, self.max_momentum, self.period, self.t = optimizer, float(max_momentum), period, 0
        self._apply()

    def momentum(self, t: int) -> float:
        return min(1.0 - 2.0 ** (-1.0 - math.log2(t // self.period + 1)), self.max_momentum)

    def _apply(self) -> None:
        alpha = self.momentum(self.t)
        for group in self.optimizer.param_groups:
            if "momentum" in group:
                group["momentum"] = alpha
            else:
                group["betas"] = (alpha, group["betas"][1])

    def step(self) -> None:
        self.t += 1
        self._apply()

    def state_dict(self) -> dict[str, float | int]:
        return {"t": self.t, "max_momentum": self.max_momentum, "period": self.period}

    def load_state_dict(self, state: dict[str, float | int]) -> None:
        self.t, self.max_momentum, self.period = int(state["t"]), float(state["max_momentum"]), int(state["period"])
        self._apply()
