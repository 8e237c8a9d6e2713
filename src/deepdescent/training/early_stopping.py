"""Early stopping (§8.1.2, §7.8): stop when a validation metric stops improving, keep the best
parameters."""

from __future__ import annotations

import copy
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn


class EarlyStopping:
    """Track a metric; ``step(metric)`` returns True when training should stop.

    An improvement is a metric below ``best − min_delta`` (``mode="min"``) or above
    ``best + min_delta`` (``"max"``). After ``patience`` evaluations without one, training should
    stop; with ``restore_best`` the best parameters are then loaded back into the model. With
    ``checkpoint`` (a path), each new best is also written to disk atomically (a temporary file in
    the same folder, then an atomic rename), so a crash never leaves a half-written file. A NaN
    metric never counts as an improvement.
    """

    def __init__(self, model: nn.Module, mode: str = "min", patience: int = 10, min_delta: float = 0.0, *,
                 restore_best: bool = True, checkpoint: str | os.PathLike[str] | None = None) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"invalid mode={mode!r}: must be 'min' or 'max'")
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
            raise ValueError(f"invalid patience={patience!r}: must be an integer >= 0")
        if not (isinstance(min_delta, (int, float)) and math.isfinite(min_delta) and min_delta >= 0):
            raise ValueError(f"invalid min_delta={min_delta!r}: must be finite and >= 0")
        if checkpoint is not None and not Path(checkpoint).parent.is_dir():
            raise ValueError(f"checkpoint={str(checkpoint)!r}: the folder {str(Path(checkpoint).parent)!r} does not exist")
        self.model, self.mode, self.patience, self.min_delta = model, mode, patience, float(min_delta)
        self.restore_best, self.checkpoint = restore_best, checkpoint
        self.best: float = math.inf if mode == "min" else -math.inf
        self.best_step = -1
        self.steps = 0
        self.bad_steps = 0
        self.stopped = False
        self._best_state: dict[str, torch.Tensor] | None = None

    def _improves(self, metric: float) -> bool:
        if self.mode == "min":
            return metric < self.best - self.min_delta
        return metric > self.best + self.min_delta

    def step(self, metric: float | torch.Tensor) -> bool:
        value = float(metric)
        if self._improves(value):
            self.best, self.best_step, self.bad_steps = value, self.steps, 0
            self._best_state = copy.deepcopy(self.model.state_dict())
            if self.checkpoint is not None:
                self._save(self._best_state)
        else:
            self.bad_steps += 1
        self.steps += 1
        if self.bad_steps > self.patience and not self.stopped:
            self.stopped = True
            if self.restore_best:
                self.restore()
        return self.stopped

    def restore(self) -> None:
        """Load the best parameters seen so far into the model."""
        if self._best_state is None:
            raise RuntimeError("no metric has improved yet: there are no best parameters to restore")
        self.model.load_state_dict(self._best_state)

    def _save(self, state: dict[str, torch.Tensor]) -> None:
        path = Path(self.checkpoint)  # type: ignore[arg-type]
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save({"model": state, "metric": self.best, "step": self.best_step}, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def state_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("best", "best_step", "steps", "bad_steps", "stopped")} | {
            "best_state": self._best_state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k in ("best", "best_step", "steps", "bad_steps", "stopped"):
            setattr(self, k, state[k])
        self._best_state = state["best_state"]
