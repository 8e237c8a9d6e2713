"""A step's cost beyond its arithmetic: deepdescent's Adam and SGD against torch's fused Adam on
parameter lists too small for memory traffic to matter (one 16-element tensor; the digits MLP's
four tensors; 600 tensors of 16 elements). The first two measure the fixed cost of a step (the
Python around the kernel, once per step), the third the cost per tensor.

    python bench/step_overhead.py [--threads 2] [--steps 300]

Prints µs per step, the best of three runs of ``--steps`` steps after 20 of warm-up.
"""

from __future__ import annotations

import argparse
import time

import torch

from deepdescent import optim

LAYOUTS = {"1 x 16": [16], "digits MLP 64-128-10": [64 * 128, 128, 128 * 10, 10], "600 x 16": [16] * 600}


def per_step(opt: torch.optim.Optimizer, steps: int) -> float:
    for _ in range(20):
        opt.step()
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(steps):
            opt.step()
        best = min(best, (time.perf_counter() - t0) / steps)
    return best * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=300)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print("layout | deepdescent Adam µs | deepdescent SGD µs | torch fused Adam µs")
    for label, sizes in LAYOUTS.items():
        params = [torch.nn.Parameter(torch.randn(n)) for n in sizes]
        for p in params:
            p.grad = torch.randn(p.numel())
        opts = [optim.Adam(params, lr=1e-3), optim.SGD(params, lr=1e-3), torch.optim.Adam(params, lr=1e-3, fused=True)]
        print(" | ".join([label, *(f"{per_step(o, args.steps):.1f}" for o in opts)]), flush=True)


if __name__ == "__main__":
    main()
