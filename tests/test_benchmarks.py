"""pytest-benchmark suite of small cases (CPU in CI; `pytest tests/test_benchmarks.py --benchmark-only` to time).

Under pytest-xdist (CI) pytest-benchmark runs each case once without timing; the checks still run.
Speed claims come from pai_fast.bench on the GPU machine, never from assertions here.
"""

import pytest
import torch
import torch.nn.functional as F

from pai_fast import functional as PF
from pai_fast import reference as R

from .helpers import dendrite_params


@pytest.mark.parametrize("d", [0, 1, 3])
@pytest.mark.parametrize("mode", ["f", "fb"])
def test_bench_linear_small(benchmark, d, mode):
    w, b, dw, db, g, c = dendrite_params((128, 784), d)
    x = torch.randn(64, 784, requires_grad=mode == "fb")
    params = [t.requires_grad_(mode == "fb") for t in (w, b, dw, db, g, c)]

    def step():
        y = PF.dendritic_linear(x, *params)
        if mode == "fb":
            y.sum().backward()
        return y

    y = benchmark(step)
    torch.testing.assert_close(y, R.dendritic_linear_loop(x, *params), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("d", [0, 3])
def test_bench_conv_small(benchmark, d):
    w, b, dw, db, g, c = dendrite_params((16, 8, 3, 3), d)
    x = torch.randn(4, 8, 16, 16)
    y = benchmark(lambda: PF.dendritic_conv2d(x, w, b, dw, db, g, c, 1, 1))
    assert y.shape == F.conv2d(x, w, b, 1, 1).shape
