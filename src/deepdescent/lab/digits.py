"""A small MLP on scikit-learn's digits (1,797 8×8 images, shipped with scikit-learn).

The race of the first-order optimizers: each trains the same network from the same
initialization on the same minibatch order; the table reports final training loss, test accuracy
and wall time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from deepdescent.lab.optimizers import OPTIMIZERS as LAB_OPTIMIZERS
from deepdescent.lab.optimizers import OptimizerSpec


@dataclass(frozen=True)
class Digits:
    """Train/test split of the digits, features scaled to [0, 1]."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor


def load_digits(seed: int = 0, test_fraction: float = 0.25) -> Digits:
    """scikit-learn's digits, split reproducibly (stratified) by ``seed``."""
    from sklearn.datasets import load_digits as _load
    from sklearn.model_selection import train_test_split

    data = _load()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    i_train, i_test = train_test_split(
        range(len(y)), test_size=test_fraction, random_state=seed, stratify=data.target
    )
    return Digits(x[i_train], y[i_train], x[i_test], y[i_test])


def mlp(seed: int = 0, hidden: int = 64) -> nn.Module:
    """64 → hidden → hidden → 10 with tanh units, initialised from ``seed``."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 10))


#: Learning rates that train the digits MLP well (batch 32, 30 epochs), by the lab's optimizer names;
#: the others run at their default.
LEARNING_RATES = {"SGD": 0.1, "Momentum": 0.02, "Nesterov": 0.02, "AdaGrad": 0.05, "RMSProp": 1e-3,
                  "RMSProp+Momentum": 2e-4, "RMSProp+Nesterov": 2e-4, "Adam": 2e-3, "AdaDelta": 1.0}


def _maker(spec: OptimizerSpec) -> Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]:
    return lambda params: spec.make(params, LEARNING_RATES.get(spec.name))


#: Every minibatch first-order optimizer of the lab (the registry's variants), ready to build.
OPTIMIZERS: dict[str, Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]] = {
    name: _maker(spec) for name, spec in LAB_OPTIMIZERS.items() if spec.kind == "first" and not spec.takes_model}
#: What ``deepdescent digits`` races by default: the methods of chapter 8.
BOOK = [name for name in OPTIMIZERS if LAB_OPTIMIZERS[name].in_book]


@dataclass(frozen=True)
class Result:
    name: str
    train_loss: float
    test_accuracy: float
    seconds: float


def evaluate(model: nn.Module, data: Digits) -> tuple[float, float]:
    """(mean training cross-entropy, test accuracy)."""
    with torch.no_grad():
        loss = nn.functional.cross_entropy(model(data.x_train), data.y_train).item()
        acc = (model(data.x_test).argmax(1) == data.y_test).float().mean().item()
    return loss, acc


def train(
    name: str,
    make_optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer],
    data: Digits,
    *,
    epochs: int = 30,
    batch_size: int = 32,
    seed: int = 0,
) -> Result:
    """Train the MLP with one optimizer; minibatches are shuffled once, then reused (§8.1.3)."""
    model = mlp(seed)
    opt = make_optimizer(model.parameters())
    order = torch.randperm(len(data.y_train), generator=torch.Generator().manual_seed(seed))
    batches = order.split(batch_size)
    start = time.perf_counter()
    for _ in range(epochs):
        for idx in batches:
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(data.x_train[idx]), data.y_train[idx]).backward()
            opt.step()
    seconds = time.perf_counter() - start
    at_theta = getattr(opt, "at_theta", None)  # Nesterov look-ahead mode: evaluate θ, not θ̃
    if at_theta is not None:
        with at_theta():
            loss, acc = evaluate(model, data)
    else:
        loss, acc = evaluate(model, data)
    return Result(name, loss, acc, seconds)
