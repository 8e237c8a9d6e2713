"""Real learning: every optimizer trains the digits MLP to ≥ 95% test accuracy."""

from __future__ import annotations

import pytest
import torch

from deepdescent.lab import digits


@pytest.fixture(scope="module")
def data():
    return digits.load_digits(seed=0)


@pytest.mark.slow
@pytest.mark.parametrize("name", digits.BOOK)
def test_each_optimizer_learns_digits(name, data):
    torch.set_num_threads(1)
    result = digits.train(name, digits.OPTIMIZERS[name], data, epochs=20)
    assert result.test_accuracy >= 0.95, f"{name}: {result}"
    assert result.train_loss < 0.2
