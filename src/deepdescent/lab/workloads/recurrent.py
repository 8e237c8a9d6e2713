"""An LSTM (Hochreiter & Schmidhuber 1997, §10.10 of the book) that reads an MNIST image one row
per time step and classifies it after the last row (Le et al. 2015's sequential MNIST, by rows),
written against the public :class:`~deepdescent.lab.workload.Workload` protocol.

The class must be carried across 28 steps: the gradient of the early rows passes through the
recurrence, the long-term dependencies of §8.2.5 that the LSTM's gated cell was made for.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from deepdescent.lab import data
from deepdescent.lab.workload import Workload

DESCRIPTION = "LSTM reading MNIST row by row (28 steps), classifying at the end"
CHALLENGE = "long-term dependencies"
#: size → (hidden units, layers, epochs of budget)
SIZES = {"cpu": (48, 1, 3.0), "full": (128, 2, 20.0)}


class RowLSTM(nn.Module):
    def __init__(self, hidden: int, layers: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(28, hidden, layers, batch_first=True)
        self.head = nn.Linear(hidden, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.lstm(x.view(-1, 28, 28))[0][:, -1])


def workload(size: str = "cpu") -> Workload:
    hidden, layers, epochs = SIZES[size]
    x, y, x_test, y_test = data.mnist()
    return Workload(model=lambda: RowLSTM(hidden, layers), train=(x, y), loss=F.cross_entropy, batch_size=64,
                    budget=epochs, test=(x_test, y_test), classification=True,
                    description=DESCRIPTION, challenge=CHALLENGE)
