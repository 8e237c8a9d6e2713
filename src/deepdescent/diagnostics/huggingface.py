"""The Monitor in a Hugging Face ``Trainer``, in one line::

    trainer = Trainer(model=model, args=args, ..., callbacks=[MonitorCallback(log="runs/diag.jsonl")])

The objective is the model's own loss (``model(**batch).loss``) on the batch of each optimizer
step (the last micro-batch under gradient accumulation), measured after the gradients are clipped
(``on_pre_optimizer_step``). Measurements go to the JSONL log and, when the Trainer reports to
TensorBoard, beside its events (in a ``deepdescent`` subfolder) as ``instrument/value`` scalars.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import transformers
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from deepdescent.diagnostics import instruments as inst
from deepdescent.diagnostics.monitor import Monitor
from deepdescent.diagnostics.sinks import TensorBoardSink


class OwnLoss(nn.Module):
    """A Trainer model as the Monitor sees it: a batch (dict of tensors) ↦ the model's loss."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, Any]) -> Tensor:
        # the fused attention kernels (flash, memory-efficient) have no second derivative: curvature
        # products need the math kernel (same function, other rounding)
        with sdpa_kernel([SDPBackend.MATH]):
            return self.model(**batch).loss.reshape(1)


def _the_loss(output: Tensor, _targets: Any) -> Tensor:
    return output.sum()


def _tensorboard_dir(args: transformers.TrainingArguments) -> str:
    """Beside the Trainer's own TensorBoard events: $TENSORBOARD_LOGGING_DIR, ``logging_dir``
    (transformers < 5), else ``output_dir/runs``; in a ``deepdescent`` subfolder."""
    base = os.getenv("TENSORBOARD_LOGGING_DIR") or getattr(args, "logging_dir", None) or \
        os.path.join(args.output_dir, "runs")
    return os.path.join(os.path.expanduser(base), "deepdescent")


#: Gradient noise needs per-example gradients of tensor inputs; a Trainer batch is a dict.
INSTRUMENTS = (inst.Cheap, inst.IllConditioning, inst.Curvature)


class MonitorCallback(transformers.TrainerCallback):
    """Runs a :class:`~deepdescent.diagnostics.Monitor` at every optimizer step of ``train``.

    Args:
        **monitor_options: for the Monitor (``log``, ``budget``, ``every``, ``instruments`` —
            default Cheap, IllConditioning, Curvature —, …).
    """

    def __init__(self, **monitor_options: Any) -> None:
        self.options = monitor_options
        self.monitor: Monitor | None = None
        self._batch: dict[str, Any] | None = None
        self._loss: Tensor | None = None
        self._measuring = False
        self._hooks: list[Any] = []

    def on_train_begin(self, args: transformers.TrainingArguments, state: Any, control: Any,
                       model: nn.Module | None = None, optimizer: torch.optim.Optimizer | None = None,
                       **kwargs: Any) -> None:
        if model is None:
            raise ValueError("MonitorCallback needs the Trainer's model (it passes model= to its callbacks)")
        options = dict(self.options)
        sinks = list(options.pop("sinks", ()))
        if "tensorboard" in (args.report_to or []):
            sinks.append(TensorBoardSink(_tensorboard_dir(args)))
        options.setdefault("instruments", [cls() for cls in INSTRUMENTS])
        self.monitor = Monitor(OwnLoss(model), _the_loss, optimizer, sinks=sinks, **options)
        self._hooks = [model.register_forward_pre_hook(self._keep_batch, with_kwargs=True),
                       model.register_forward_hook(self._keep_loss)]

    def _keep_batch(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        if module.training and torch.is_grad_enabled() and not self._measuring:
            self._batch = dict(kwargs)

    def _keep_loss(self, module: nn.Module, args: tuple, output: Any) -> None:
        loss = getattr(output, "loss", None)
        if module.training and not self._measuring and isinstance(loss, Tensor):
            self._loss = loss.detach()

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.monitor is None or self._batch is None:
            return
        self._measuring = True
        try:
            self.monitor.step(self._batch, None, self._loss)  # type: ignore[arg-type]
        finally:
            self._measuring = False

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        for hook in self._hooks:
            hook.remove()
        if self.monitor is not None:
            self.monitor.close()
