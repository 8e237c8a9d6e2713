"""Does one script give the same bits in every new process? A check of torch itself, not of
deepdescent: the same float32 input (a Linear layer and a LayerNorm applied to a seeded batch) goes
through ``torch.tanh`` in ``--runs`` fresh interpreters, and each distinct result is reported with
its largest error against the float64 tanh, in units of float32's ε, on each half of the tensor
(the two threads' shares of ATen's parallel loop).

    python bench/tanh_across_processes.py [--runs 30] [--threads 2]

On this project's machines (torch 2.13.0+cpu, 2 threads) about one process in four computed the
first half with errors up to 437 ε instead of ≤ 0.53 ε (docs/guides/execution.md, "What the step
cannot make reproducible").
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys

CHILD = r"""
import hashlib, sys, torch
torch.set_num_threads(int(sys.argv[1]))
torch.manual_seed(0)
layers = torch.nn.Sequential(torch.nn.Linear(256, 1024), torch.nn.LayerNorm(1024))
x = torch.randn(64, 256, generator=torch.Generator().manual_seed(1))
with torch.no_grad():
    a = layers(x).flatten()
t = torch.tanh(a)
err = ((t.double() - torch.tanh(a.double())).abs() / torch.tanh(a.double()).abs().clamp_min(1e-30)
       / torch.finfo(torch.float32).eps)
half = t.numel() // 2
print(hashlib.sha1(t.numpy().tobytes()).hexdigest()[:12], f"{err[:half].max():.2f}", f"{err[half:].max():.2f}")
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    seen: collections.Counter[str] = collections.Counter()
    for _ in range(args.runs):
        out = subprocess.run([sys.executable, "-c", CHILD, str(args.threads)], capture_output=True, text=True,
                             check=True)
        seen[out.stdout.strip()] += 1
    print(f"{len(seen)} distinct result(s) of torch.tanh over {args.runs} processes, {args.threads} thread(s):")
    print("processes | sha1 of the result | max error, first half (ε) | max error, second half (ε)")
    for line, count in seen.most_common():
        print(count, "|", " | ".join(line.split()))


if __name__ == "__main__":
    main()
