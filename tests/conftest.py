import os
import sys

sys.path.insert(0, os.path.dirname(__file__))  # tests import their float64 references as `reference`
# a step compiles a missing kernel before it runs (instead of in the background, on the eager path
# meanwhile): every test takes one path throughout, whatever the kernel cache holds
os.environ.setdefault("DEEPDESCENT_KERNEL_BUILD", "wait")
# pytest-xdist runs the tests in one process per core (pyproject's addopts): one thread each, and
# in the processes they start, so that N processes share N cores instead of oversubscribing them
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)

import pytest  # noqa: E402


@pytest.fixture
def triton_interpreter(monkeypatch):
    """Run the fused GPU path (the generated Triton kernel) on CPU tensors in Triton's interpreter."""
    pytest.importorskip("triton", reason="triton is not installed")
    from deepdescent import kernels

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(kernels, "TRITON_DEVICES", ("cuda", "cpu"))
    if kernels.available("cuda") is not None:
        pytest.skip(f"the Triton path is unavailable: {kernels.available('cuda')}")
