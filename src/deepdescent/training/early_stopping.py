"""Early stopping (§8.1.2, §7.8): stop when a validation metric stops improving, keep the best
parameters."""

from __future__ import annotations

import copy
import math
import numbers
import os
import tempfile
import warnings
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
    the same folder, then an atomic rename and an fsync of the folder), so a crash never leaves a
    half-written file; temporary files a crashed run left behind are removed. A NaN metric never
    counts as an improvement; if every metric was NaN when training stops, the model keeps its
    parameters and a warning says so.
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
        self._nan_steps = 0
        if checkpoint is not None:
            self._remove_stale_temporaries()

    def _improves(self, metric: float) -> bool:
        if self.mode == "min":
            return metric < self.best - self.min_delta
        return metric > self.best + self.min_delta

    def step(self, metric: float | torch.Tensor) -> bool:
        if isinstance(metric, torch.Tensor) and metric.numel() != 1:
            raise ValueError(f"metric must be a number or a one-element tensor, got a tensor of shape "
                             f"{tuple(metric.shape)}")
        if isinstance(metric, (str, bytes)) or not isinstance(metric, (numbers.Real, torch.Tensor)):
            raise TypeError(f"metric must be a real number, got {metric!r} ({type(metric).__name__})")
        value = float(metric)
        self._nan_steps += math.isnan(value)
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
            if self.restore_best and self._best_state is None:
                warnings.warn(f"EarlyStopping: no metric improved on the start ({self._never_improved()}); the model "
                              "keeps its current parameters", RuntimeWarning, stacklevel=2)
            elif self.restore_best:
                self.restore()
        return self.stopped

    def _never_improved(self) -> str:
        if self._nan_steps == self.steps:
            return f"all {self.steps} metrics were NaN"
        better = "<" if self.mode == "min" else ">"
        return f"{self.steps} metrics, {self._nan_steps} of them NaN, none {better} {self.best}"

    def restore(self) -> None:
        """Load the best parameters seen so far into the model."""
        if self._best_state is None:
            raise RuntimeError(f"no metric has improved yet ({self._never_improved()}): there are no best parameters "
                               "to restore")
        self.model.load_state_dict(self._best_state)

    def _remove_stale_temporaries(self) -> None:
        path = Path(self.checkpoint)  # type: ignore[arg-type]
        for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a run killed while writing
            stale.unlink(missing_ok=True)

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
        _fsync_folder(path.parent)  # the rename itself survives a power loss

    def state_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in _COUNTERS} | {"best": self.best, "stopped": self.stopped,
                                                            "nan_steps": self._nan_steps,
                                                            "best_state": self._best_state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Check everything, then apply in one go: a bad dict raises ValueError and changes nothing."""
        if not isinstance(state, dict):
            raise ValueError(f"state must be a dict from EarlyStopping.state_dict(), got {type(state).__name__}")
        missing = sorted({*_COUNTERS, "best", "stopped", "best_state"} - set(state))
        if missing:
            raise ValueError(f"EarlyStopping state lacks {missing}")
        for k in (*_COUNTERS, "nan_steps"):
            v = state.get(k, 0)
            low = -1 if k == "best_step" else 0
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < low:
                raise ValueError(f"invalid EarlyStopping state {k}={v!r}: must be an integer >= {low}")
        best = state["best"]
        if isinstance(best, bool) or not isinstance(best, numbers.Real) or math.isnan(best):
            raise ValueError(f"invalid EarlyStopping state best={best!r}: must be a number (±inf before any improvement)")
        if not isinstance(state["stopped"], bool):
            raise ValueError(f"invalid EarlyStopping state stopped={state['stopped']!r}: must be True or False")
        best_state = state["best_state"]
        if best_state is not None:
            expected = self.model.state_dict()
            if not isinstance(best_state, dict) or set(best_state) != set(expected):
                raise ValueError("EarlyStopping state best_state does not hold this model's parameters (its keys "
                                 "differ from model.state_dict())")
            for k, v in expected.items():
                if not isinstance(best_state[k], torch.Tensor) or best_state[k].shape != v.shape:
                    raise ValueError(f"EarlyStopping state best_state[{k!r}] must be a tensor of shape {tuple(v.shape)}")
        for k in _COUNTERS:
            setattr(self, k, int(state[k]))
        self.best, self.stopped, self._nan_steps = float(best), state["stopped"], int(state.get("nan_steps", 0))
        self._best_state = best_state


_COUNTERS = ("best_step", "steps", "bad_steps")


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # a platform without directory file descriptors
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
