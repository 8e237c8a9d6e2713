"""The Monitor: runs instruments on a schedule within an overhead budget, writes to sinks."""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from deepdescent.diagnostics import instruments as inst
from deepdescent.diagnostics.sinks import JSONLSink, Sink


class Monitor:
    """Attach to any training loop; call :meth:`step` after ``backward()`` and before
    ``optimizer.step()``::

        monitor = Monitor(model, loss_fn, optimizer, log="runs/diag.jsonl")
        for x, y in loader:
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            monitor.step(x, y, loss)
            opt.step()
        monitor.close()

    Args:
        model, loss_fn: any ``nn.Module`` and ``loss_fn(output, target)`` averaging over the batch.
        optimizer: any optimizer (its lr is the ε of the ill-conditioning ratio); optional.
        instruments: instrument instances (default: cheap, ill-conditioning, curvature, noise).
        every: override cadences by instrument name, e.g. ``{"curvature": 50}``.
        budget: the largest slowdown the Monitor may cause, as a fraction (0.10 = 10%). Expensive
            instruments due at a step are postponed while running them would exceed 80% of it
            (the rest covers effects it cannot time, such as the caches a measurement evicts).
        mode: ``"train"`` or ``"eval"``: BatchNorm/Dropout semantics of the extra passes the
            instruments make (they never change running statistics).
        log: a JSONL path (shortcut for a :class:`JSONLSink`); sinks: more sinks.
        eval_batch: ``(inputs, targets)`` for the landscape instruments (default: the first batch).

    A quantity that cannot be computed for the model warns once, saying why, and is dropped; the
    others go on. ``overhead`` is the measured monitor time / training time.
    """

    def __init__(self, model: nn.Module, loss_fn: Any, optimizer: torch.optim.Optimizer | None = None, *,
                 instruments: Sequence[inst.Instrument] | None = None, every: dict[str, int] | None = None,
                 budget: float = 0.10, mode: str = "train", log: str | None = None, sinks: Iterable[Sink] = (),
                 eval_batch: tuple[Tensor, Tensor] | None = None) -> None:
        if not 0 < budget:
            raise ValueError(f"invalid budget={budget!r}: a fraction > 0 (0.10 allows a 10% slowdown)")
        if mode not in ("train", "eval"):
            raise ValueError(f"invalid mode={mode!r}: must be 'train' or 'eval'")
        self.model, self.loss_fn, self.optimizer = model, loss_fn, optimizer
        self.instruments = list(instruments) if instruments is not None else [cls() for cls in inst.DEFAULT]
        self.every = {i.name: i.every for i in self.instruments} | dict(every or {})
        unknown = set(every or {}) - {i.name for i in self.instruments}
        if unknown:
            raise ValueError(f"every= names unknown instruments {sorted(unknown)}; active: {sorted(self.every)}")
        self.budget, self.mode = budget, mode
        self.sinks: list[Sink] = list(sinks) + ([JSONLSink(log)] if log else [])
        self.state: dict[str, Any] = {"initial_params": self._snapshot()}
        if eval_batch is not None:
            self.state["eval_batch"] = eval_batch
        self.disabled: dict[str, str] = {}
        self.cost: dict[str, float] = {}
        self.steps = 0
        self.train_seconds = 0.0
        self.monitor_seconds = 0.0
        self._start = time.perf_counter()
        self._last_return: float | None = None

    def _snapshot(self) -> list[Tensor]:
        return [p.detach().clone() for p in self.model.parameters() if p.requires_grad]

    @property
    def overhead(self) -> float:
        """Monitor time / training time, measured so far."""
        return self.monitor_seconds / self.train_seconds if self.train_seconds else 0.0

    def _due(self, instrument: inst.Instrument) -> bool:
        if instrument.name in self.disabled or self.steps % self.every[instrument.name]:
            return False
        if instrument.tier == "cheap":
            return True
        # before its first run, estimate the cost from its gradient count and the mean step time
        # (a training step is about one gradient evaluation)
        step_time = self.train_seconds / max(self.steps, 1)
        estimate = self.cost.get(instrument.name, instrument.gradients * step_time)
        # aim at 80% of the budget: the rest is for what the Monitor cannot time (caches it evicts)
        return self.steps > 0 and self.monitor_seconds + estimate <= 0.8 * self.budget * self.train_seconds

    def step(self, inputs: Tensor, targets: Tensor, loss: Tensor | float | None = None) -> list[dict[str, Any]]:
        """Measure what is due at this step; returns the records written."""
        now = time.perf_counter()
        if self._last_return is not None:
            self.train_seconds += now - self._last_return
        due = [i for i in self.instruments if self._due(i)]
        snapshot = any(i.name == "cheap" and self._due_next(i) for i in self.instruments)
        if not due and not snapshot:  # the common step: nothing to measure, return at once
            self.steps += 1
            self.monitor_seconds += time.perf_counter() - now
            self._last_return = time.perf_counter()
            return []
        ctx = inst.StepContext(self.model, self.loss_fn, inputs, targets,
                               None if loss is None else float(loss.detach() if isinstance(loss, Tensor) else loss),
                               self.optimizer, self.steps, self.mode, self.state)
        records = []
        for instrument in due:
            t0 = time.perf_counter()
            try:
                values = instrument.measure(ctx)
            except Exception as err:  # noqa: BLE001 - one failing quantity must not stop the others
                self.disabled[instrument.name] = f"{type(err).__name__}: {err}"
                warnings.warn(f"Monitor: {instrument.name} cannot be computed for this model and is dropped "
                              f"({type(err).__name__}: {err})", RuntimeWarning, stacklevel=2)
                continue
            seconds = time.perf_counter() - t0
            self.cost[instrument.name] = seconds
            records.append({"step": self.steps, "instrument": instrument.name, "time": t0 - self._start,
                            "seconds": seconds, "values": values})
        if snapshot:
            self.state["previous_params"] = self._snapshot()  # for the next step's update size
        self.steps += 1
        self.monitor_seconds += time.perf_counter() - now
        if records and self.steps % 100 == 1:
            records.append(self._overhead_record())
        for record in records:
            for sink in self.sinks:
                sink.write(record)
        self._last_return = time.perf_counter()
        return records

    def _due_next(self, instrument: inst.Instrument) -> bool:
        return instrument.name not in self.disabled and (self.steps + 1) % self.every[instrument.name] == 0

    def _overhead_record(self) -> dict[str, Any]:
        return {"step": self.steps, "instrument": "monitor", "time": time.perf_counter() - self._start, "seconds": 0.0,
                "values": {"train_seconds": self.train_seconds, "monitor_seconds": self.monitor_seconds,
                           "overhead": self.overhead, "disabled": dict(self.disabled)}}

    def close(self) -> None:
        """Write the final overhead record and close the sinks."""
        record = self._overhead_record()
        for sink in self.sinks:
            sink.write(record)
            sink.close()
