import os
import sys

sys.path.insert(0, os.path.dirname(__file__))  # tests import their float64 references as `reference`

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
