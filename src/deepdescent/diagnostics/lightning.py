"""The Monitor in a Lightning ``Trainer``, in one line::

    trainer = L.Trainer(callbacks=[MonitorCallback(F.cross_entropy, log="runs/diag.jsonl")])

Measurements go to the JSONL log and to the trainer's loggers (TensorBoard, CSV, …) as
``instrument/value`` scalars at the trainer's global step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning.pytorch as L
from torch import Tensor, nn

from deepdescent.diagnostics.monitor import Monitor
from deepdescent.diagnostics.sinks import MetricsSink


def _first_two(batch: Any) -> tuple[Tensor, Tensor]:
    return batch[0], batch[1]


class MonitorCallback(L.Callback):
    """Runs a :class:`~deepdescent.diagnostics.Monitor` at every optimizer step of ``fit``: after
    the backward pass (``on_before_optimizer_step``), on the batch of that step.

    Args:
        loss_fn: ``loss_fn(model(inputs), targets)``, averaging over the batch.
        model: what maps inputs to outputs (default: the LightningModule itself, its ``forward``);
            a function of the LightningModule, e.g. ``lambda module: module.net``.
        batch: the (inputs, targets) of a training batch (default: its first two items).
        **monitor_options: for the Monitor (``log``, ``budget``, ``every``, ``instruments``, …).
    """

    def __init__(self, loss_fn: Callable[[Tensor, Tensor], Tensor], *,
                 model: Callable[[L.LightningModule], nn.Module] | None = None,
                 batch: Callable[[Any], tuple[Tensor, Tensor]] = _first_two, **monitor_options: Any) -> None:
        self.loss_fn, self.model, self.batch, self.options = loss_fn, model, batch, monitor_options
        self.monitor: Monitor | None = None
        self._step: tuple[Tensor, Tensor] | None = None
        self._loss: Tensor | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        model = pl_module if self.model is None else self.model(pl_module)
        sinks = list(self.options.pop("sinks", ()))
        if trainer.loggers:
            sinks.append(MetricsSink(lambda metrics, _step: [lg.log_metrics(metrics, step=trainer.global_step)
                                                            for lg in trainer.loggers]))
        self.monitor = Monitor(model, self.loss_fn, trainer.optimizers[0] if trainer.optimizers else None,
                               sinks=sinks, **self.options)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._step = self.batch(batch)

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: Tensor) -> None:
        self._loss = loss.detach()

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        # once per batch: a closure optimizer (L-BFGS) evaluates several times within one step; the
        # first evaluation is the one at the step's θ
        if self.monitor is not None and self._step is not None:
            self.monitor.step(*self._step, self._loss)
            self._step = None

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.monitor is not None:
            self.monitor.close()
