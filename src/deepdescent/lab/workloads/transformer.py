"""A character-level Transformer language model (Vaswani et al. 2017, decoder only) on English
text that ships with Python (``pydoc_data.topics``), written against the public
:class:`~deepdescent.lab.workload.Workload` protocol.

Each example is a window of text: the model reads characters 1..T and predicts characters
2..T+1 (causal self-attention, pre-norm blocks). The held-out windows come from the last 10% of
the text. The metric is next-character accuracy. Its members race one at a time (``stack=False``); the recorded losses
and the challenges are measured on few windows (``eval_examples``, ``measure_examples``), as a
forward pass costs more here than on the toy problems.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from deepdescent.lab import data
from deepdescent.lab.workload import Workload

DESCRIPTION = "character-level Transformer language model on Python's pydoc text"
CHALLENGE = "ill-conditioning"
#: size → (context T, width d, heads, layers, training windows, batch, epochs of budget)
SIZES = {"cpu": (32, 48, 4, 2, 4000, 32, 1.5), "full": (128, 256, 8, 4, 50_000, 64, 10.0)}


class Attention(nn.Module):
    """softmax(QKᵀ/√d_head + causal mask) V, heads concatenated, then a projection."""

    def __init__(self, width: int, heads: int, context: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.register_buffer("mask", torch.ones(context, context).triu(1).bool(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        n, t, d = x.shape
        q, k, v = self.qkv(x).view(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(d // self.heads)
        att = scores.masked_fill(self.mask[:t, :t], float("-inf")).softmax(-1)
        return self.out((att @ v).transpose(1, 2).reshape(n, t, d))


class Block(nn.Module):
    def __init__(self, width: int, heads: int, context: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attention = Attention(width, heads, context)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class CharTransformer(nn.Module):
    def __init__(self, vocab: int, context: int, width: int, heads: int, layers: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.position = nn.Parameter(0.02 * torch.randn(context, width))
        self.blocks = nn.Sequential(*[Block(width, heads, context) for _ in range(layers)])
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab)

    def forward(self, ids: Tensor) -> Tensor:
        h = self.embed(ids) + self.position[: ids.shape[1]]
        return self.head(self.norm(self.blocks(h)))


def next_char_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy of every position's next character, averaged over the batch and positions."""
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def workload(size: str = "cpu") -> Workload:
    context, width, heads, layers, n, batch, epochs = SIZES[size]
    train, test, vocab = data.text_windows(context, n, max(500, n // 10))
    return Workload(model=lambda: CharTransformer(len(vocab), context, width, heads, layers),
                    train=(train[:, :-1], train[:, 1:]), loss=next_char_loss, batch_size=batch, budget=epochs,
                    test=(test[:, :-1], test[:, 1:]), classification=True, eval_examples=250, measure_examples=64,
                    stack=False,  # measured: stacked members step 1.7× slower each than one at a time on a CPU
                    description=DESCRIPTION, challenge=CHALLENGE)
