"""``python -m deepdescent.kernels``: build or load the fused CPU kernels, one library per algorithm.

``--background``: as a process started by a step that found them missing (low priority)."""

import os
import sys
import time

from deepdescent import kernels

if "--background" in sys.argv[1:]:
    os.nice(10)
start = time.perf_counter()
n = kernels.build(report=lambda line: print(f"  {line}", flush=True))
if kernels.available("cpu"):
    print(f"deepdescent: fused CPU kernels unavailable, the eager path will be used ({kernels.available('cpu')})")
else:
    print(f"deepdescent: {n} fused CPU functions ready ({time.perf_counter() - start:.1f} s)")
