"""Where the time of one fused CUDA step goes, and which Triton block size suits the card.

1. Sweep (elements per program × warps) on 100 × 1M float32 for SGD and Adam: full steps with
   ``nonfinite="propagate"`` (the update kernel and the counters alone). Prints the best pair and
   writes it as shell assignments to ``--env FILE`` (for bench/step_speed.py in the same run).
   Then the same for the read-only non-finite check (it reads the gradients only).
2. With the best pairs, each stage of an Adam step timed alone: the non-finite check, the step
   counters, the update kernel; the full step (both ``nonfinite`` modes); torch's fused Adam; a
   copy of the same number of bytes.

    python bench/gpu_profile.py [--env best.env]
"""

from __future__ import annotations

import argparse
import time

import torch

from deepdescent import kernels, optim
from deepdescent.kernels import triton_backend as tb


def timed(fn, n=60):
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n * 1e3


def make(n: int, size: int) -> list[torch.nn.Parameter]:
    params = [torch.nn.Parameter(torch.randn(size, device="cuda")) for _ in range(n)]
    for p in params:
        p.grad = torch.randn_like(p)
    return params


def sweep(params) -> tuple[int, int]:
    n = sum(p.numel() for p in params)
    best, best_t = (tb.BLOCK, tb.NUM_WARPS), float("inf")
    for block in (1024, 2048, 4096, 8192):
        for warps in (4, 8, 16):
            if block // (32 * warps) < 4:  # fewer than 4 elements per thread: no vector loads
                continue
            tb.BLOCK, tb.NUM_WARPS = block, warps
            total = 0.0
            line = []
            for name, mk, nbytes in (("SGD", lambda p: optim.SGD(p, lr=1e-3, nonfinite="propagate"), 12),
                                     ("Adam", lambda p: optim.Adam(p, nonfinite="propagate"), 28)):
                ms = timed(mk(params).step)
                total += ms
                line.append(f"{name} {ms:.3f} ms ({n * nbytes / ms / 1e6:.0f} GB/s)")
            print(f"BLOCK={block} warps={warps}: " + " | ".join(line), flush=True)
            if total < best_t:
                best, best_t = (block, warps), total
    return best


def sweep_check(params) -> tuple[int, int]:
    grads = [p.grad for p in params]
    table = tb.pointer_table([g.data_ptr() for g in grads], torch.device("cuda"))
    sizes = tuple(g.numel() for g in grads)
    found = torch.zeros((), device="cuda")
    best, best_t = (tb.CHECK_BLOCK, tb.CHECK_WARPS), float("inf")
    for block in (1024, 2048, 4096, 8192, 16384):
        for warps in (4, 8, 16):
            tb.CHECK_BLOCK, tb.CHECK_WARPS = block, warps
            ms = timed(lambda: tb.check(sizes, table, grads[0].dtype, found))
            print(f"check BLOCK={block} warps={warps}: {ms:.3f} ms "
                  f"({sum(sizes) * 4 / ms / 1e6:.0f} GB/s)", flush=True)
            if ms < best_t:
                best, best_t = (block, warps), ms
    return best


def stages(n: int, size: int) -> None:
    params = make(n, size)
    opt = optim.Adam(params)
    opt.step()
    plan = opt.executor.plans[id(opt.param_groups[0])]
    h = {k: v for k, v in opt.param_groups[0].items() if k != "params"}
    tr, scalar_names = kernels.traced(opt.algorithm, h)
    numeric = kernels.scalar_values(opt.algorithm, h)
    scalars = [numeric[k] for k in scalar_names]
    grads = [p.grad for p in params]
    gtable = tb.pointer_table([g.data_ptr() for g in grads], torch.device("cuda"))
    table = tb.pointer_table(plan.pptrs + [g.data_ptr() for g in grads] + plan.bptrs, torch.device("cuda"))
    found = torch.zeros((), device="cuda")
    quiet = optim.Adam(params, nonfinite="propagate")
    ref = torch.optim.Adam(params, fused=True)
    bufs = [opt.state[p]["exp_avg"] for p in params]
    print(f"{n} x {size} (BLOCK={tb.BLOCK}, warps={tb.NUM_WARPS}): "
          f"full step {timed(opt.step):.3f} ms | propagate {timed(quiet.step):.3f} | "
          f"torch fused Adam {timed(ref.step):.3f} | "
          f"check {timed(lambda: tb.check(plan.sizes, gtable, plan.dtype, found)):.3f} | "
          f"counters {timed(lambda: tb.bump(plan.step_table, len(plan.steps), found, None)):.3f} | "
          f"update kernel {timed(lambda: tb.update(tr, plan.dtype, plan.blocks, table, plan.step_table, n, scalars, found, plan.aligned)):.3f} | "  # noqa: E501
          f"copy of the bytes of one list {timed(lambda: torch._foreach_copy_(bufs, grads)):.3f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--env", help="write the best BLOCK/warps as shell assignments to this file")
    args = ap.parse_args()
    print(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    block, warps = sweep(make(100, 1_000_000))
    print(f"best: BLOCK={block} warps={warps}", flush=True)
    cblock, cwarps = sweep_check(make(100, 1_000_000))
    print(f"best check: CHECK_BLOCK={cblock} warps={cwarps}", flush=True)
    if args.env:
        with open(args.env, "w") as f:
            f.write(f"export DEEPDESCENT_TRITON_BLOCK={block} DEEPDESCENT_TRITON_WARPS={warps} "
                    f"DEEPDESCENT_TRITON_CHECK_BLOCK={cblock} DEEPDESCENT_TRITON_CHECK_WARPS={cwarps}\n")
    tb.BLOCK, tb.NUM_WARPS, tb.CHECK_BLOCK, tb.CHECK_WARPS = block, warps, cblock, cwarps
    for n, size in ((100, 1_000_000), (1000, 10_000)):
        stages(n, size)


if __name__ == "__main__":
    main()
