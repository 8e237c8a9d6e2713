"""``python -m deepdescent.kernels``: build or load the fused CPU kernels."""

import time

from deepdescent import kernels

start = time.perf_counter()
try:
    n = kernels.build()
    print(f"deepdescent: {n} fused CPU kernels ready ({time.perf_counter() - start:.1f} s)")
except kernels.FusedUnavailable as err:
    print(f"deepdescent: fused CPU kernels unavailable, the eager path will be used ({err})")
