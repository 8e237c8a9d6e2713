"""The first steps of a fresh install (no scripts/setup.sh, so no kernel on disk): the first step
must not wait for the C++ compiler. Runs Adam on the digits-sized MLP in a new process with an
empty kernel cache and reports the first step's time, how long the background build (a process of
its own) took, the step time of that optimizer (eager for its whole life) and of one created after
the build (fused).

    .venv/bin/python bench/fresh_install.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

CHILD = r"""
import time, torch
from torch import nn
from deepdescent import kernels, optim
m = nn.Sequential(nn.Linear(64, 512), nn.Tanh(), nn.Linear(512, 512), nn.Tanh(), nn.Linear(512, 10))
opt = optim.Adam(m.parameters(), lr=1e-3)
x = torch.randn(32, 64)
def step(opt):
    opt.zero_grad(); m(x).sum().backward(); t = time.perf_counter(); opt.step(); return time.perf_counter() - t
start = time.perf_counter()
first = step(opt)
eager = [step(opt) for _ in range(20)]
while not kernels.wait_for_build(0.5):
    step(opt)
built = time.perf_counter() - start
still = [step(opt) for _ in range(20)]
later = optim.Adam(m.parameters(), lr=1e-3)
fused = [step(later) for _ in range(20)]
print(f"first step {first * 1e3:.1f} ms; eager steps meanwhile {sorted(eager)[10] * 1e3:.2f} ms; kernels ready after "
      f"{built:.1f} s; the running optimizer stays on path {opt.path!r} ({sorted(still)[10] * 1e3:.2f} ms); one "
      f"created after: {later.path!r}, {sorted(fused)[10] * 1e3:.2f} ms")
"""

with tempfile.TemporaryDirectory() as cache:
    env = {**os.environ, "DEEPDESCENT_KERNEL_CACHE": cache, "DEEPDESCENT_KERNEL_BUILD": "background"}
    subprocess.run([sys.executable, "-c", CHILD], env=env, check=True)
