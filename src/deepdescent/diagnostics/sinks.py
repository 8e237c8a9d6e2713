"""Where measurements go: a JSONL file (one record per line) and TensorBoard.

JSONL record schema (one JSON object per line)::

    {"step": int,            # the training step (Monitor.step calls so far, from 0)
     "instrument": str,      # "cheap", "ill_conditioning", "curvature", "spectrum",
                             # "gradient_noise", "recurrent", "interpolation", "slice2d", "monitor"
     "time": float,          # seconds since the Monitor started
     "seconds": float,       # what this measurement cost
     "values": {...}}        # the instrument's values: numbers, booleans, lists, dicts of numbers

The "monitor" records carry the Monitor's accounts: {"train_seconds", "monitor_seconds",
"overhead", "warmup_seconds", "spent" (per tier), "measured", "postponed" (steps waited),
"waiting" (instrument → the step it fell due), "disabled" (instrument → the reason)}.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
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
    """Scalars (:func:`scalars`) to TensorBoard."""

    def __init__(self, log_dir: str | os.PathLike[str]) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:  # tensorboard is an optional dependency
            raise ImportError("TensorBoardSink needs the tensorboard package: pip install 'deepdescent[tensorboard]'") from err
        self.writer = SummaryWriter(str(log_dir))

    def write(self, record: dict[str, Any]) -> None:
        for name, value in scalars(record).items():
            self.writer.add_scalar(name, value, record["step"])

    def close(self) -> None:
        self.writer.close()


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """A record's numbers as ``instrument/value`` (dicts of numbers as ``instrument/key/name``;
    booleans as 0/1; lists are left to the JSONL log and :func:`~deepdescent.diagnostics.plot`)."""
    prefix, out = record["instrument"], {}
    for key, value in record["values"].items():
        if isinstance(value, (bool, int, float)) and value is not None:
            out[f"{prefix}/{key}"] = float(value)
        elif isinstance(value, dict):
            out.update({f"{prefix}/{key}/{name}": float(v) for name, v in value.items()
                        if isinstance(v, (bool, int, float))})
    return out


class MetricsSink:
    """Scalars (:func:`scalars`) to a ``log(metrics, step)`` function: a trainer's loggers."""

    def __init__(self, log: Callable[[dict[str, float], int], None]) -> None:
        self.log = log

    def write(self, record: dict[str, Any]) -> None:
        metrics = scalars(record)
        if metrics:
            self.log(metrics, record["step"])

    def close(self) -> None:
        pass


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
            check_record(records[-1], f"{str(p)!r} line {i}")
    return records


#: The fields every record has, and their types (the schema at the top of this module).
FIELDS = {"step": (int, "an integer"), "instrument": (str, "a string"), "values": (dict, "an object")}


def check_record(record: Any, where: str) -> None:
    """ValueError naming ``where`` unless ``record`` has the Monitor's record schema (a JSON object
    with an integer ``step``, a string ``instrument`` and a ``values`` object)."""
    if not isinstance(record, dict):
        raise ValueError(f"{where} is a JSON {type(record).__name__}, not a Monitor record (an object with "
                         f"{', '.join(FIELDS)})")
    for key, (kind, called) in FIELDS.items():
        if not isinstance(record.get(key), kind) or isinstance(record.get(key), bool):
            raise ValueError(f"{where}: {key!r} must be {called} in a Monitor record, got "
                             f"{record.get(key)!r}"[:300] + " (is this a deepdescent Monitor log?)")
