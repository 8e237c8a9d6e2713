"""Where measurements go: a JSONL file (one record per line) and TensorBoard.

JSONL record schema (one JSON object per line)::

    {"step": int,            # the training step (Monitor.step calls so far, from 0)
     "instrument": str,      # "cheap", "ill_conditioning", "curvature", "spectrum",
                             # "gradient_noise", "recurrent", "interpolation", "slice2d", "monitor"
     "time": float,          # seconds since the Monitor started
     "seconds": float,       # what this measurement cost
     "values": {...}}        # the instrument's values: numbers, booleans, lists, dicts of numbers

The "monitor" records carry the measured overhead: {"train_seconds", "monitor_seconds", "overhead"}.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Protocol


class Sink(Protocol):
    def write(self, record: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/Inf
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


class JSONLSink:
    """Append one JSON line per record to ``path`` (created with its folder if needed)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8")
        except OSError as err:
            raise ValueError(f"cannot write the log {str(self.path)!r}: {err.strerror}") from err

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(_clean(record)) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class TensorBoardSink:
    """Scalars to TensorBoard as ``instrument/value`` (dicts of numbers as ``instrument/key/name``;
    lists are skipped: see the JSONL log and :func:`~deepdescent.diagnostics.plot`)."""

    def __init__(self, log_dir: str | os.PathLike[str]) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:  # tensorboard is an optional dependency
            raise ImportError("TensorBoardSink needs the tensorboard package: pip install 'deepdescent[tensorboard]'") from err
        self.writer = SummaryWriter(str(log_dir))

    def write(self, record: dict[str, Any]) -> None:
        prefix, step = record["instrument"], record["step"]
        for key, value in record["values"].items():
            if isinstance(value, bool):
                value = float(value)
            if isinstance(value, (int, float)) and value is not None:
                self.writer.add_scalar(f"{prefix}/{key}", value, step)
            elif isinstance(value, dict):
                for name, v in value.items():
                    if isinstance(v, (int, float)):
                        self.writer.add_scalar(f"{prefix}/{key}/{name}", v, step)

    def close(self) -> None:
        self.writer.close()


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of a JSONL log; a missing file or a corrupt line is a clear error."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no log at {str(p)!r}")
    records = []
    with p.open(encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{str(p)!r} line {i} is not valid JSON ({err.msg}): the log is corrupt") from err
    return records
