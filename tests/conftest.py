import os
import random

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    """Fresh, reproducible random inputs in every test."""
    random.seed(0)
    torch.manual_seed(0)
    yield


def pytest_collection_modifyitems(config, items):
    # GPU tests are deselected in CI by `-m "not gpu"`; if someone runs them without a GPU, fail loudly
    # rather than skip silently.
    if torch.cuda.is_available():
        return
    for item in items:
        if "gpu" in item.keywords and "not gpu" not in (config.getoption("-m") or ""):
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU: run benchmarks/gpu_check.sh on the GPU machine"))


def pytest_report_header(config):
    interp = os.environ.get("TRITON_INTERPRET")
    return f"torch {torch.__version__}, cuda={torch.cuda.is_available()}, TRITON_INTERPRET={interp}"


@pytest.fixture(params=["onepass", "split"])
def bwd_path(request, monkeypatch):
    """The Linear backward's two paths (csrc/onepass.cu, or the dZ kernel, its reduction and two GEMMs), forced
    through _C's PAI_FAST_CUDA_BACKWARD; where the one-pass kernel does not apply (D = 0, D > 3, an empty dim) both
    run the split one."""
    monkeypatch.setenv("PAI_FAST_CUDA_BACKWARD", request.param)
    return request.param
