"""CURVES, generated: the synthetic images of curves of Hinton & Salakhutdinov (2006), drawn here
from a seed instead of downloaded, and the deep autoencoder of Martens (2010) scaled to them.

Each image shows one smooth curve through three random points (a quadratic Bézier curve through the
middle one), drawn with a soft pen, intensities in [0, 1]. The published set has 28×28 images and
20,000 training cases; ``size`` and ``n`` scale it down.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from deepdescent import init

#: Martens (2010) / Sutskever et al. (2013) CURVES autoencoder: 784-400-200-100-50-25-6 and its
#: mirror, logistic units, a linear 6-unit code.
PUBLISHED_LAYERS = (784, 400, 200, 100, 50, 25, 6)


def images(n: int, size: int = 16, seed: int = 0) -> Tensor:
    """``n`` images of ``size``×``size`` pixels, flattened (n, size²)."""
    g = torch.Generator().manual_seed(seed)
    p = 0.1 + 0.8 * torch.rand(n, 3, 2, generator=g)
    control = 2 * p[:, 1] - 0.5 * (p[:, 0] + p[:, 2])  # the curve passes through p₁ at t = ½
    t = torch.linspace(0, 1, 4 * size)[None, :, None]
    curve = (1 - t) ** 2 * p[:, None, 0] + 2 * (1 - t) * t * control[:, None] + t**2 * p[:, None, 2]
    grid = (torch.arange(size) + 0.5) / size
    yy, xx = torch.meshgrid(grid, grid, indexing="ij")
    pixels = torch.stack([xx.flatten(), yy.flatten()], 1)  # (size², 2)
    d2 = (pixels[None, :, None, :] - curve[:, None, :, :]).square().sum(-1)
    return torch.exp(-d2 / (2 * (0.7 / size) ** 2)).amax(-1).clamp(0, 1)


def autoencoder(layers: tuple[int, ...], seed: int) -> nn.Sequential:
    """The encoder ``layers`` and its mirror: logistic units, a linear code layer, logits out (the
    loss applies the output's logistic); Martens's sparse initialization (15 nonzero inputs per unit)."""
    sizes = list(layers) + list(reversed(layers[:-1]))
    code, last = len(layers) - 2, len(sizes) - 2
    modules: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        modules.append(nn.Linear(a, b))
        if i not in (code, last):
            modules.append(nn.Sigmoid())
    model = nn.Sequential(*modules)
    init.apply(model, "sparse", sparse_k=15, generator=torch.Generator().manual_seed(seed))
    return model


def cross_entropy(logits: Tensor, x: Tensor) -> Tensor:
    """The training loss: Bernoulli cross-entropy summed over pixels, averaged over images (Martens)."""
    return nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="sum") / len(x)


def squared_error(model: nn.Module, x: Tensor) -> float:
    """The reported error: squared reconstruction error summed over pixels, averaged over images."""
    with torch.no_grad():
        return float((torch.sigmoid(model(x)) - x).square().sum(1).mean())
