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


def test_bench_harness_cli_writes_json_png_and_summary(tmp_path, capsys):
    """`pai-fast bench` (the GPU harness) end to end on the CPU: one small case, two providers, one round."""
    import json

    from pai_fast import bench

    out = tmp_path / "b"
    argv = ["--shapes", "64x784->128", "--dendrites", "1", "--modes", "fb", "--providers", "plain,eager"]
    assert bench.main([*argv, "--rounds", "1", "--out", str(out)]) == 0
    data = json.loads((out.parent / "b.json").read_text())
    assert (out.parent / "b.png").stat().st_size > 0
    assert {r["provider"] for r in data["rows"]} == {"plain", "eager"}
    assert all(r["ms"] > 0 and r["mode"] == "fb" and r["D"] == 1 for r in data["rows"])
    assert data["environment"]["torch"] == torch.__version__
    assert "linear 64x784->128 float32 D=1 fb" in capsys.readouterr().out


def test_bench_summary_ratios():
    from pai_fast.bench import summarize

    case = dict(kind="linear", shape="s", dtype="bfloat16", D=3, mode="fb")
    ms = {"plain": 0.5, "cat_gemm": 0.4, "eager": 3.0, "compiled": 2.0, "triton": 1.0, "cuda": 1.5}
    table = summarize([dict(case, provider=p, ms=v) for p, v in ms.items()])
    header, row = table.splitlines()
    assert header.split()[-4:] == ["best/limit", "best/compiled", "eager/triton", "eager/cuda"]
    # best fused = triton 1.0: 1.0/0.4, 1.0/2.0; eager 3.0 over triton and cuda
    assert row.split()[-4:] == ["2.50", "0.50", "3.00", "2.00"]


def test_host_profile_lists_the_profiled_calls():
    from pai_fast.bench import host_profile

    calls = []

    def marker_function_for_profile():
        calls.append(1)

    table = host_profile(marker_function_for_profile, calls=7, top=5)
    assert len(calls) == 7
    row = next(line for line in table.splitlines() if "marker_function_for_profile" in line)
    assert row.split()[0] == "7"  # ncalls
    assert all(line.strip() for line in table.splitlines())


def test_host_and_wall_ms_times_every_call():
    from pai_fast.bench import host_and_wall_ms

    calls = []
    host, wall = host_and_wall_ms(lambda: calls.append(1), 40)
    assert len(calls) == 10 + 40  # the warm-up, then the timed calls
    assert 0 < host <= wall


def test_bench_plot_writes_a_png(tmp_path):
    """The bench's PNG: one bar per provider and case, forward and forward+backward; D = 0 rows add no bar, and
    rows with nothing to compare write nothing."""
    pytest.importorskip("matplotlib")
    from pai_fast.bench import plot

    rows = [dict(kind="linear", shape="64x784->128", dtype="float32", mode=m, D=d, provider=p, ms=t)
            for m in ("f", "fb") for d in (0, 1, 3)
            for p, t in (("plain", 1.0), ("cat_gemm", 1.2), ("triton", 1.5 + d), ("eager", 4.0 + d))]  # fmt: skip
    path = tmp_path / "bench.png"
    plot(rows, str(path), "test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    empty = tmp_path / "empty.png"
    plot([r for r in rows if r["D"] == 0], str(empty), "test")
    assert not empty.exists()
