"""Shared by test_checkpoint.py and the fresh process it starts (``python resume_helper.py DIR``)."""

from __future__ import annotations

import sys

import torch
from torch import nn

from deepdescent import optim
from deepdescent.schedules import LinearDecay

CONFIGS = {
    "sgd": lambda p: optim.SGD(p, lr=0.1),
    "momentum": lambda p: optim.SGD(p, lr=0.05, momentum=0.9),
    "nesterov": lambda p: optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "nesterov-torch": lambda p: optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, convention="torch"),
    "adagrad": lambda p: optim.AdaGrad(p, lr=0.05),
    "rmsprop": lambda p: optim.RMSProp(p, lr=1e-3),
    "rmsprop-momentum": lambda p: optim.RMSProp(p, lr=1e-3, momentum=0.9),
    "rmsprop-nesterov": lambda p: optim.RMSProp(p, lr=1e-3, momentum=0.9, nesterov=True),
    "adam": lambda p: optim.Adam(p, lr=1e-2),
    "adadelta": lambda p: optim.AdaDelta(p),
}
FIRST, SECOND = 7, 9


def make(name: str, seed: int):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 2))
    opt = CONFIGS[name]([{"params": model[0].parameters()}, {"params": model[2].parameters(), "lr": 0.01}])
    return model, opt, LinearDecay(opt, tau=10)


def train(model, opt, sched, steps: range) -> None:
    for k in steps:
        gen = torch.Generator().manual_seed(1000 + k)
        x, y = torch.randn(16, 6, generator=gen), torch.randn(16, 2, generator=gen)
        if k == FIRST + 2:
            x[0, 0] = float("nan")  # a skipped step after the resume, to exercise that counter too
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        sched.step()


def resume(directory: str) -> None:
    """In a fresh process: load each checkpoint into freshly built objects and finish training."""
    for name in CONFIGS:
        model, opt, sched = make(name, seed=99)  # different initial weights: the load must matter
        ckpt = torch.load(f"{directory}/{name}.pt", weights_only=True)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        sched.load_state_dict(ckpt["sched"])
        train(model, opt, sched, range(FIRST, FIRST + SECOND))
        torch.save({"params": [p.detach() for p in model.parameters()], "skipped": opt.skipped_steps},
                   f"{directory}/{name}.resumed.pt")


if __name__ == "__main__":
    resume(sys.argv[1])
