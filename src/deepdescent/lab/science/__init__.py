"""The science suite: chapter 8's empirical claims tested in deepdescent, each beside its published
number (``deepdescent bench --suite science``).

Each experiment's raw records are stored as ``OUT/science/KEY.json`` when it finishes (a rerun skips
the finished ones: resumable), and the report's "Published results" table is derived from those
records only (:mod:`deepdescent.lab.science.report`).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from deepdescent.lab.science import (
    autoencoder,
    clipping,
    deepobs,
    depth,
    gradient_norm,
    interpolation,
    kfac,
    momentum_schedule,
    saddles,
)
from deepdescent.lab.science.experiment import SCALES, Experiment, Summary, check_scale

__all__ = ["EXPERIMENTS", "SCALES", "CorruptRecord", "Experiment", "Summary", "load", "run_suite", "stored"]

#: In the issue's order: the claims of §8.6.1, §8.4, §8.2.4, §8.2.3, Figure 8.1, §8.2.7, DeepOBS, §8.3.2,
#: and §8.6 at scale (K-FAC).
EXPERIMENTS: dict[str, Experiment] = {e.key: e for e in (
    autoencoder.EXPERIMENT, depth.EXPERIMENT, clipping.EXPERIMENT, saddles.EXPERIMENT, gradient_norm.EXPERIMENT,
    interpolation.EXPERIMENT, deepobs.EXPERIMENT, momentum_schedule.EXPERIMENT, kfac.EXPERIMENT)}


def _finite(value: Any) -> Any:
    """JSON without NaN/Infinity (not JSON): non-finite numbers become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


class CorruptRecord(ValueError):
    """A stored experiment record that cannot be used here: not valid JSON, or of another scale
    (named; never overwritten)."""


def path(out: Path, key: str) -> Path:
    return out / "science" / f"{key}.json"


def load(out: Path, key: str, scale: str) -> dict[str, Any] | None:
    """The stored record of an experiment at ``scale``; None if there is none. Raises
    :class:`CorruptRecord` for a file that is not JSON or holds another scale's run, so that
    neither is overwritten by a rerun."""
    p = path(out, key)
    if not p.is_file():
        return None
    try:
        record = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise CorruptRecord(f"{p} is corrupt ({err.msg} at line {err.lineno}); delete it to rerun experiment {key!r}") from None
    if record.get("scale") != scale:
        raise CorruptRecord(f"{p} holds experiment {key!r} at scale {record.get('scale')!r}, not {scale!r}: use "
                            "another --out, or delete it to rerun")
    return record


def stored(out: Path) -> dict[str, dict[str, Any]]:
    """Every readable experiment record under ``out``, whatever its scale, in the suite's order."""
    found = {}
    for key in EXPERIMENTS:
        try:
            record = json.loads(path(out, key).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue  # missing or unreadable: left out of the section (bench names a corrupt one)
        if isinstance(record, dict) and {"scale", "raw", "budget", "seconds"} <= record.keys():
            found[key] = record
    return found


def save(out: Path, key: str, record: dict[str, Any]) -> None:
    """Atomically: a kill mid-write leaves the previous file or none, never half of one."""
    p = path(out, key)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{key}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(_finite(record), f)
    os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the results from the run directory's other readers
    os.replace(tmp, p)


def run_suite(out: Path, scale: str = "cpu", device: str = "cpu", only: list[str] | None = None,
              progress: Callable[[str, int, int], None] | None = None) -> dict[str, dict[str, Any]]:
    """Run the experiments (``only``: these keys) not yet stored under ``out`` at ``scale``; returns
    every stored record {key: {"scale", "seconds", "budget", "raw"}}."""
    check_scale(scale)
    keys = list(only or EXPERIMENTS)
    unknown = [k for k in keys if k not in EXPERIMENTS]
    if unknown:
        raise ValueError(f"unknown experiment(s) {', '.join(map(repr, unknown))}; valid: {', '.join(EXPERIMENTS)}")
    records = {}
    for i, key in enumerate(keys):
        record = load(out, key, scale)
        if record is None:
            if progress:
                progress(key, i, len(keys))
            exp = EXPERIMENTS[key]
            start = time.perf_counter()
            raw = exp.run(scale, device)
            record = {"scale": scale, "device": device, "seconds": round(time.perf_counter() - start, 1),
                      "budget": exp.budget(scale), "raw": raw}
            save(out, key, record)
            record = json.loads(json.dumps(_finite(record)))  # exactly what a later report reads
        records[key] = record
    if progress:
        progress("", len(keys), len(keys))
    return records


def summaries(records: dict[str, dict[str, Any]]) -> dict[str, Summary]:
    """Each stored experiment's summary, derived from its raw records."""
    return {key: EXPERIMENTS[key].summarize(rec["raw"]) for key, rec in records.items()}
