"""Shared by test_checkpoint.py and the fresh processes it starts:
``python resume_helper.py first|resume|full DIR`` trains every configuration's first part and saves a
checkpoint, resumes from it, or trains uninterrupted; each writes the final parameters to DIR."""

from __future__ import annotations

import sys

import torch
from torch import nn

from deepdescent import optim
from deepdescent.algorithms import REGISTRY
from deepdescent.schedules import LinearDecay

def _configs() -> tuple[dict, dict]:
    """Every registered first-order algorithm in each variant it races in (the registry drives it:
    a new algorithm is covered without an entry here), plus the torch convention and weight decay
    at Nesterov's interim point where the algorithm has them."""
    out = {}
    for spec in REGISTRY.values():
        cls = optim.optimizer_class(spec)
        for variant in spec.variants:
            options = dict(variant.options)
            out[variant.name.lower().replace("+", "-")] = (cls, options)
            if spec.interim(spec.defaults(**options)):  # weight decay added at θ̃, in torch's convention if valid
                extra = {**options, "weight_decay": 1e-3, "convention": "torch"}
                try:
                    spec.validate(spec.defaults(**extra))
                except (ValueError, TypeError):
                    extra.pop("convention")
                out[f"{variant.name.lower().replace('+', '-')}-decay"] = (cls, extra)
    return {name: (lambda cls, options: lambda p: cls(p, **options))(cls, options) for name, (cls, options) in out.items()}, \
        {name: cls.algorithm for name, (cls, _) in out.items()}


CONFIGS, SPECS = _configs()  # name → a maker of the optimizer; name → its algorithm spec
#: One configuration per registered algorithm (its last variant: Nesterov, AMSGrad, …), for the
#: slower tests that cannot afford every variant.
ONE_PER_ALGORITHM = {spec.variants[-1].name.lower().replace("+", "-"): spec for spec in REGISTRY.values()}
FIRST, SECOND = 13, 17  # checkpoint after 13 steps, 30 in all


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


def run(mode: str, directory: str) -> None:
    """In a new process: ``first`` trains FIRST steps and saves a checkpoint; ``resume`` loads each
    checkpoint into freshly built objects and finishes; ``full`` trains FIRST + SECOND steps."""
    for name in CONFIGS:
        model, opt, sched = make(name, seed=0 if mode != "resume" else 99)  # the load must matter
        if mode == "resume":
            ckpt = torch.load(f"{directory}/{name}.pt", weights_only=True)
            model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["opt"])
            sched.load_state_dict(ckpt["sched"])
        train(model, opt, sched, range(FIRST) if mode == "first" else range(FIRST, FIRST + SECOND)
              if mode == "resume" else range(FIRST + SECOND))
        if mode == "first":
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()},
                       f"{directory}/{name}.pt")
        torch.save({"params": [p.detach() for p in model.parameters()], "skipped": opt.skipped_steps,
                    "path": opt.path}, f"{directory}/{name}.{mode}.pt")


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2])
