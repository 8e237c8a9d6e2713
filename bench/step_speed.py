"""Time one optimizer step of every deepdescent optimizer/mode against torch.optim.

For each algorithm, the reference is torch.optim's fastest implementation of the same (or
nearest) mathematics, measured in the same run: each of torch's paths (fused, foreach, for-loop)
that exists for it is timed and the fastest is kept. Parameters: float32 tensors shaped as real
models' parameter lists (GPT-2 small: 148 tensors, 124M; ResNet-50: 161 tensors, 25.6M; many small
layers: 600 × 2,000) and uniform ones (50 × 200k, 1000 × 10k); 1 and 2 threads. On the CPU each row
also gives the fraction of the in-place read-modify-write bandwidth (measured in the same run) the
step reaches, and its time beyond that bandwidth per tensor (the per-tensor overhead). Reports ms/step, GB/s of minimal memory traffic and the ratio
ours/torch of throughput (> 1: deepdescent is faster). On the CPU, ours, torch's fastest path and
torch's fused Adam (the reference of "ours / fused Adam GB/s") are then stepped in turn, so that a
shared machine's slow phases hit all three alike.

    python bench/step_speed.py [--device cpu|cuda] [--threads 1 2] [--repeats 15] [--markdown FILE]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from datetime import date

import torch

from deepdescent.lab.optimizers import OPTIMIZERS


def _torch_reference(spec, h: dict) -> tuple[type, dict, str] | None:
    """torch.optim's class and options for the same math (or the nearest: torch's convention)."""
    options = spec.torch_options(h) if spec.torch_options else None
    note = "same at constant lr" if h.get("convention") == "book" and h.get("momentum") else "same"
    if options is None and spec.torch_options and "convention" in h:
        options = spec.torch_options({**h, "convention": "torch", "nesterov": False})
        note = "nearest: torch's δ outside √" + (", no Nesterov" if h.get("nesterov") else "")
    return None if options is None else (getattr(torch.optim, spec.torch_class), options, note)


def _cases() -> dict[str, tuple[Callable, type, dict, int, str]]:
    """name: (make ours, torch class, torch kwargs, bytes/param of minimal traffic, note on torch's
    math), for every minibatch variant of the registry (the lab's list) that torch.optim has."""
    out = {}
    for name, o in OPTIMIZERS.items():
        if o.kind != "first" or o.algorithm is None:
            continue
        h = o.hyperparameters(None if o.default_lr is not None else 1e-3)
        reference = _torch_reference(o.algorithm, h)
        if reference is None:
            continue
        cls, options, note = reference
        nbytes = 12 + 8 * len(o.algorithm.buffers(h))  # read θ, g, state; write θ, state (float32)
        out[name] = (lambda p, o=o: o.make(p, None), cls, options, nbytes, note)
    return out


CASES = _cases()
def _gpt2_small() -> list[int]:
    """GPT-2 small's 148 parameter tensors (124M): token and position embeddings, 12 blocks of
    two layer norms, the attention's qkv and output projections and the MLP (weights, biases),
    and the final layer norm."""
    d, block = 768, [768, 768, 768 * 2304, 2304, 768 * 768, 768, 768, 768, 768 * 3072, 3072, 3072 * 768, 768]
    return [50257 * d, 1024 * d] + block * 12 + [d, d]


def _resnet50() -> list[int]:
    """ResNet-50's 161 parameter tensors (25.6M): the stem, 16 bottleneck blocks (three
    convolutions with batch norm's weight and bias each; a projection on each stage's first block)
    and the classifier."""
    sizes, cin = [64 * 3 * 7 * 7, 64, 64], 64
    for width, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        for b in range(blocks):
            sizes += [cin * width, width, width, width * width * 9, width, width, width * 4 * width,
                      4 * width, 4 * width]
            if b == 0:
                sizes += [cin * 4 * width, 4 * width, 4 * width]
            cin = 4 * width
    return sizes + [2048 * 1000, 1000]


#: Layouts: the sizes of the parameter tensors.
LAYOUTS = {"gpt2-small": _gpt2_small(), "resnet50": _resnet50(), "600x2k": [2_000] * 600,
           "50x200k": [200_000] * 50, "1000x10k": [10_000] * 1000, "100x1M": [1_000_000] * 100}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()


def _device_name(device: str, copy: float) -> str:
    if device == "cuda":
        return f"cuda ({torch.cuda.get_device_name()}, device copy {copy:.0f} GB/s)"
    return device


def copy_bandwidth(n: int = 1 << 28) -> float:
    """GB/s of a device-to-device copy of n float32 (bytes read + written)."""
    a = torch.empty(n, device="cuda")
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(10):
        b.copy_(a)
    torch.cuda.synchronize()
    return 2 * 4 * n * 10 / (time.perf_counter() - t0) / 1e9


def rmw_bandwidth(n: int = 1 << 26, repeats: int = 10) -> float:
    """CPU GB/s of an in-place read-modify-write x += y over n float32 (12 bytes an element: x and y
    read, x written), the median of ``repeats``: the ceiling of an optimizer step's traffic."""
    x, y = torch.zeros(n), torch.ones(n)
    times = []
    for _ in range(repeats + 2):
        t0 = time.perf_counter()
        x.add_(y)
        times.append(time.perf_counter() - t0)
    return 12 * n / statistics.median(times[2:]) / 1e9


def make_params(layout: str, device: str) -> list[torch.nn.Parameter]:
    gen = torch.Generator(device=device).manual_seed(0)
    params = []
    for size in LAYOUTS[layout]:
        p = torch.nn.Parameter(torch.randn(size, generator=gen, device=device))
        p.grad = torch.randn(size, generator=gen, device=device)
        params.append(p)
    return params


def refresh(params: list[torch.nn.Parameter]) -> None:
    """Fresh parameters and gradients for the next contender (same shapes and memory): torch's
    foreach SGD with Nesterov adds the momentum buffer into the gradients in place, which would
    otherwise grow step after step until they overflow."""
    for p in params:
        p.data.normal_()
        p.grad.normal_()


def time_steps(opt: torch.optim.Optimizer, repeats: int, device: str) -> float:
    """Seconds per step after 3 warm-up steps: on the CPU the median of single steps; on a GPU, where
    steps are queued without waiting (as in training), the median over 5 runs of ``repeats``
    back-to-back steps between two synchronizations (throughput, not the latency of one step)."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(3):
        opt.step()
    sync()
    if device == "cuda":
        runs = []
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(repeats):
                opt.step()
            sync()
            runs.append((time.perf_counter() - t0) / repeats)
        return statistics.median(runs)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        opt.step()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_rotation(opts: list[torch.optim.Optimizer], repeats: int) -> list[float]:
    """CPU: median seconds per step of each optimizer, stepping them in turn (a shared machine's
    slow phases then hit all of them alike)."""
    for _ in range(3):
        for opt in opts:
            opt.step()
    times: list[list[float]] = [[] for _ in opts]
    for _ in range(repeats):
        for opt, ts in zip(opts, times):
            t0 = time.perf_counter()
            opt.step()
            ts.append(time.perf_counter() - t0)
    return [statistics.median(ts) for ts in times]


def torch_flags(path: str) -> dict:
    return {"fused": dict(fused=True), "foreach": dict(foreach=True), "forloop": dict(foreach=False)}[path]


def torch_paths(cls: type, kwargs: dict, params: list, repeats: int, device: str) -> tuple[str, float]:
    """The fastest of torch's implementations that exist for this optimizer and device."""
    best = ("", float("inf"))
    for path in ("fused", "foreach", "forloop"):
        try:
            opt = cls(params, **kwargs, **torch_flags(path))
            t = time_steps(opt, repeats, device)
        except (RuntimeError, TypeError, ValueError):
            continue  # this path does not exist for this optimizer/device
        finally:
            refresh(params)
        if t < best[1]:
            best = (path, t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--layouts", nargs="+", default=["gpt2-small", "resnet50", "600x2k", "50x200k"],
                    choices=list(LAYOUTS))
    ap.add_argument("--only", nargs="+", default=list(CASES), help="optimizer names to time")
    ap.add_argument("--markdown", help="also write the table as Markdown to this file")
    ap.add_argument("--impl", default="auto", choices=["auto", "fused", "eager"], help="deepdescent's path")
    ap.add_argument("--nonfinite", default="skip", choices=["skip", "propagate"],
                    help="deepdescent's non-finite handling (torch.optim does no check: 'propagate' is like for like)")
    args = ap.parse_args()
    copy = copy_bandwidth() if args.device == "cuda" else 0.0
    header = (f"machine: {_cpu_name()} ({torch.get_num_threads()} threads available), device {_device_name(args.device, copy)}; "
              f"date {date.today()}; torch {torch.__version__}; deepdescent impl={args.impl}, nonfinite={args.nonfinite}")
    print(header)
    rows = []
    cols = ("threads", "layout", "optimizer", "ours ms", "ours GB/s", "torch path", "torch ms", "torch GB/s",
            "ratio", "torch math", "ours / fused Adam GB/s") + (
        ("% of copy",) if args.device == "cuda" else ("% of RMW", "µs/tensor over RMW"))
    print(" | ".join(cols))
    for threads in args.threads if args.device == "cpu" else [torch.get_num_threads()]:
        torch.set_num_threads(threads)
        rmw = rmw_bandwidth() if args.device == "cpu" else 0.0
        if rmw:
            print(f"in-place read-modify-write bandwidth at {threads} thread(s): {rmw:.1f} GB/s", flush=True)
        for layout in args.layouts:
            params = make_params(layout, args.device)
            n = sum(p.numel() for p in params)
            adam = time_steps(torch.optim.Adam(params, lr=1e-3, fused=True), args.repeats, args.device)
            adam_gbs = n * 28 / adam / 1e9
            for name in args.only:
                make, cls, kwargs, nbytes, note = CASES[name]
                opt = make(params)
                opt.impl, opt.nonfinite = args.impl, args.nonfinite
                ours = time_steps(opt, args.repeats, args.device)
                if getattr(opt, "skipped_steps", 0):
                    raise SystemExit(f"{name}: {opt.skipped_steps} steps skipped (non-finite gradients): not timed")
                refresh(params)
                path, ref = torch_paths(cls, kwargs, params, args.repeats, args.device)
                if args.device == "cpu":  # ours, torch's fastest and torch's fused Adam, in turn
                    opt = make(params)
                    opt.impl, opt.nonfinite = args.impl, args.nonfinite
                    ours, ref, adam = time_rotation([opt, cls(params, **kwargs, **torch_flags(path)),
                                                     torch.optim.Adam(params, lr=1e-3, fused=True)], args.repeats)
                    adam_gbs = n * 28 / adam / 1e9
                    if getattr(opt, "skipped_steps", 0):
                        raise SystemExit(f"{name}: {opt.skipped_steps} steps skipped (non-finite gradients)")
                    refresh(params)
                gbs = lambda t: n * nbytes / t / 1e9  # noqa: E731
                row = (threads, layout, name, f"{ours * 1e3:.2f}", f"{gbs(ours):.1f}", path, f"{ref * 1e3:.2f}",
                       f"{gbs(ref):.1f}", f"{ref / ours:.2f}", note, f"{gbs(ours) / adam_gbs:.2f}")
                if args.device == "cuda":
                    row += (f"{100 * gbs(ours) / copy:.0f}%",)
                else:  # the step's time beyond what its traffic takes at the RMW bandwidth, per tensor
                    floor = n * nbytes / (rmw * 1e9)
                    row += (f"{100 * gbs(ours) / rmw:.0f}%", f"{max(0.0, ours - floor) / len(params) * 1e6:.1f}")
                rows.append(row)
                print(" | ".join(map(str, row)), flush=True)
            del params
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(header + "\n\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n")
            for row in rows:
                f.write("| " + " | ".join(map(str, row)) + " |\n")


if __name__ == "__main__":
    main()
