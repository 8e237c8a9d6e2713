"""Where the time of one fused CUDA step goes (Adam, 100 × 1M float32): each stage timed alone.

    python bench/gpu_profile.py
"""

from __future__ import annotations

import time

import torch

from deepdescent import kernels, optim
from deepdescent.kernels import triton_backend
from deepdescent.optim.base import _found_nonfinite


def timed(fn, n=50):
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n * 1e3


def main() -> None:
    for layout in [(100, 1_000_000), (1000, 10_000)]:
        n, size = layout
        params = [torch.nn.Parameter(torch.randn(size, device="cuda")) for _ in range(n)]
        for p in params:
            p.grad = torch.randn_like(p)
        opt = optim.Adam(params)
        opt.step()
        group = opt.param_groups[0]
        names = ("exp_avg", "exp_avg_sq")
        tr, scalar_names, _ = kernels._trace_for(opt, {k: v for k, v in group.items() if k != "params"}, False, names)
        lists = [params, [p.grad for p in params], [opt.state[p]["exp_avg"] for p in params],
                 [opt.state[p]["exp_avg_sq"] for p in params]]
        steps = [opt.state[p]["step"] for p in params]
        numeric = kernels._numeric(group)
        scalars = [numeric[k] for k in scalar_names]
        found = torch.zeros((), device="cuda")
        ref = torch.optim.Adam(params, fused=True)
        print(f"{n} x {size}: full step {timed(opt.step):.3f} ms | torch fused Adam {timed(ref.step):.3f} ms | "
              f"non-finite check {timed(lambda: _found_nonfinite(lists[1])):.3f} | "
              f"step counters {timed(lambda: torch._foreach_add_(steps, 1 - found)):.3f} | "
              f"kernel launch {timed(lambda: triton_backend.launch(tr, lists, scalars, steps, found)):.3f} | "
              f"copy of the same bytes {timed(lambda: torch._foreach_copy_(lists[2], lists[3])):.3f}", flush=True)


if __name__ == "__main__":
    main()
