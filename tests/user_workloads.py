"""A user's own workloads, for the tests that race them by import path (deepdescent.lab.workload):
a small classifier written as a user would, and one broken workload per failure the lab names."""

from __future__ import annotations

import torch
from torch import nn

from deepdescent.lab.workload import Workload


def _blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    centers = torch.tensor([[2.0, 0.0], [-1.0, 1.7], [-1.0, -1.7]])
    return centers[y] + 0.6 * torch.randn(n, 2, generator=g), y


def blobs() -> Workload:
    """Three Gaussian blobs, a 2-16-3 tanh network: what a user's factory looks like."""
    return Workload(model=lambda: nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 3)),
                    train=_blobs(256, 0), test=_blobs(128, 1), loss=nn.functional.cross_entropy,
                    batch_size=32, budget=4, classification=True, description="three blobs, 2-16-3 MLP")


class Scaled(nn.Module):
    """Not a Sequential of Linear layers: races through torch.func, or member by member."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(2, 3))
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.add_(1)  # an in-place buffer update: torch.func cannot batch it
        return x @ self.w


stateful = Workload(model=Scaled, train=_blobs(64, 0), loss=nn.functional.cross_entropy, batch_size=16, budget=2)

# --- broken workloads: each must be named in one line, the other races going on
not_a_workload = 42
returns_a_dict = lambda: {"model": None}  # noqa: E731
wrong_train = Workload(model=lambda: nn.Linear(2, 3), train=(torch.zeros(5, 2), torch.zeros(4)),
                       loss=nn.functional.cross_entropy, batch_size=2)
no_parameters = Workload(model=lambda: nn.ReLU(), train=_blobs(8, 0), loss=nn.functional.cross_entropy, batch_size=4)
batch_too_large = Workload(model=lambda: nn.Linear(2, 3), train=_blobs(8, 0), loss=nn.functional.cross_entropy,
                           batch_size=9)
not_a_scalar = Workload(model=lambda: nn.Linear(2, 3), train=_blobs(8, 0), batch_size=4,
                        loss=lambda out, y: nn.functional.cross_entropy(out, y, reduction="none"))


def factory_raises() -> Workload:
    raise FileNotFoundError("data/train.pt")


class _FailsLater(nn.Linear):
    """Fine at the check (seed 0's two examples), raises in training: after 3 forward passes."""

    def __init__(self) -> None:
        super().__init__(2, 3)
        self.passes = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.passes += 1
        if self.passes > 3:
            raise RuntimeError("CUDA out of memory (simulated)")
        return super().forward(x)


fails_in_training = Workload(model=_FailsLater, train=_blobs(64, 0), loss=nn.functional.cross_entropy,
                             batch_size=16, budget=2)


def full_batch() -> Workload:
    """Every step on all 64 examples (batch_size = n): a plain loop can replay any member exactly."""
    return Workload(model=lambda: nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 3)), train=_blobs(64, 0),
                    loss=nn.functional.cross_entropy, batch_size=64, budget=5, classification=True, floor=0.0)


class Pairs(torch.utils.data.Dataset):
    """A map-style dataset of (input, target) pairs, as a user's data pipeline gives them."""

    def __init__(self, n: int, seed: int) -> None:
        self.x, self.y = _blobs(n, seed)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.x[i], int(self.y[i])


def from_loader() -> Workload:
    """The training data as a shuffling DataLoader (its batch size taken), the held-out data as a Dataset."""
    loader = torch.utils.data.DataLoader(Pairs(256, 0), batch_size=32, shuffle=True)
    return Workload(model=lambda: nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 3)), train=loader,
                    test=Pairs(128, 1), loss=nn.functional.cross_entropy, budget=4, classification=True)


def edited() -> Workload:
    """blobs whose data a user changes between two benches (DEEPDESCENT_TEST_DATA_SEED)."""
    import os

    seed = int(os.environ.get("DEEPDESCENT_TEST_DATA_SEED", "0"))
    return Workload(model=lambda: nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 3)),
                    train=_blobs(128, seed), loss=nn.functional.cross_entropy, batch_size=32, budget=2,
                    classification=True)


def with_metric() -> Workload:
    """A regression scored on held-out data by its mean absolute error (lower is better)."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(192, 3, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.1 * torch.randn(192, 1, generator=g)
    return Workload(model=lambda: nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1)),
                    train=(x[:128], y[:128]), test=(x[128:], y[128:]), loss=nn.functional.mse_loss,
                    batch_size=16, budget=3, metric=lambda out, t: (out - t).abs().mean(), metric_name="MAE",
                    lower_is_better=True)
