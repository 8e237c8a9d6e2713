"""Where should the non-finite check run? In step() (the default: one read of every gradient), or
while the gradient is hot — a post-accumulate-grad hook per parameter that runs the same compiled
check as backward produces each gradient (issue 27's first proposal)? Timed as a training step
would see it: backward + step(), medians over 30 steps after 5 of warm-up, each mode built afresh
and the three modes interleaved twice.

    python bench/check_placement.py [--layouts 600x2k 50x200k resnet50] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from deepdescent import kernels, optim

LAYOUTS = {"600x2k": [2_000] * 600, "50x200k": [200_000] * 50}


def _resnet50() -> list[int]:
    import importlib.util
    import pathlib

    spec = importlib.util.spec_from_file_location("step_speed", pathlib.Path(__file__).with_name("step_speed.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.LAYOUTS["resnet50"]


def run(sizes: list[int], mode: str, steps: int = 30) -> tuple[float, float, float]:
    """(backward, step, backward + step) medians in seconds for ``mode``: skip (the check in
    step()), propagate (no check), hooks (the check in per-parameter hooks, step() without it)."""
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(n)) for n in sizes]
    weights = [torch.randn(n) for n in sizes]
    opt = optim.Adam(params, lr=1e-3, nonfinite="skip" if mode == "skip" else "propagate")
    flags: list = []
    if mode == "hooks":
        for p in params:
            p.register_post_accumulate_grad_hook(lambda p: flags.append(kernels.any_nonfinite([p.grad])))
    times = []
    for i in range(steps + 5):
        opt.zero_grad(set_to_none=False)
        flags.clear()
        loss = sum((p * w).sum() for p, w in zip(params, weights))
        t0 = time.perf_counter()
        loss.backward()
        t1 = time.perf_counter()
        if mode == "hooks" and any(bool(f) for f in flags):
            raise FloatingPointError("non-finite gradient")
        opt.step()
        t2 = time.perf_counter()
        if i >= 5:
            times.append((t1 - t0, t2 - t1))
    backward = statistics.median(b for b, _ in times)
    step = statistics.median(s for _, s in times)
    return backward, step, statistics.median(b + s for b, s in times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layouts", nargs="+", default=["600x2k", "50x200k", "resnet50"])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# torch {torch.__version__}, {args.threads} threads; Adam; ms, medians")
    print("| layout | check | backward | step() | backward + step() | ratio to skip |")
    print("|---|---|---|---|---|---|")
    for layout in args.layouts:
        sizes = _resnet50() if layout == "resnet50" else LAYOUTS[layout]
        results: dict[str, list[tuple[float, float, float]]] = {m: [] for m in ("skip", "propagate", "hooks")}
        for _ in range(2):
            for mode in results:
                results[mode].append(run(sizes, mode))
        base = min(r[2] for r in results["skip"])
        for mode, rs in results.items():
            b, s, t = (min(r[j] for r in rs) for j in range(3))
            print(f"| {layout} | {mode} | {b * 1e3:.2f} | {s * 1e3:.2f} | {t * 1e3:.2f} | {t / base:.2f} |", flush=True)


if __name__ == "__main__":
    main()
