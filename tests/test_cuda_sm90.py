"""The cuda backend's Hopper forward (csrc/sm90_linear.cuh: CUTLASS TMA + wgmma over packed weights) against the
float64 reference, its weight-pack cache, and the fallbacks around it.

GPU-only (@pytest.mark.gpu): these need an sm_90 device and a build with CUTLASS (benchmarks/gpu_check.sh builds with
PAI_FAST_CUTLASS=ON, so there a missing path fails the build rather than skipping here). The CPU part checks the C
interface's answers in a build without a GPU.
"""

from __future__ import annotations

import pytest
import torch

from pai_fast import cuda_backend as CB
from pai_fast import reference as R

from .test_cuda_backend import ACTS, REL_TOL, _close, _inputs, _ref_acts_linear, check_linear

gpu = pytest.mark.gpu


def _hopper() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)


needs_sm90 = pytest.mark.skipif(
    not (_hopper() and CB.sm90_enabled()), reason="needs an sm_90 GPU and pai_fast._C built with CUTLASS"
)


def _packs_of(w: torch.Tensor) -> int:
    return sum(1 for key in CB._PACKS if key[1] == w.data_ptr())


def test_packed_path_reports_absent_without_gpu():
    """Without a GPU (or without CUTLASS) the C interface says the path does not apply instead of failing."""
    if not CB.available() or torch.cuda.is_available():
        pytest.skip("checks the extension's answer on a machine without a GPU")
    lib = CB._C
    w = torch.empty(16, 32, dtype=torch.bfloat16)
    assert lib.linear_packed_bytes(2, CB._t(w), None) == 0
    assert lib.sm90_max_d() in (-1, 7)


# (m, k, n): odd m, k a multiple of 8 (the path's requirement), batch 0 and 1, several tiles of neurons; n odd or
# not a multiple of 8 (the direct epilogue) and n a multiple of 8 (the staged one, 16-byte row segments)
SHAPES = [(1, 8, 1), (0, 16, 9), (37, 40, 19), (300, 264, 333), (513, 1024, 130), (1, 16, 8), (129, 72, 200)]


@gpu
@needs_sm90
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("d", [0, 1, 2, 3, 4, 5, 7])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_sm90_linear_grid_gpu(dtype, d, shape):
    m, k, n = shape
    CB.clear_packed_weights()
    check_linear("cuda", dtype, m, k, n, d)
    assert len(CB._PACKS) >= 1, "the Hopper path was not taken"


@gpu
@needs_sm90
@pytest.mark.parametrize("schedule", ["cooperative", "pingpong"])
@pytest.mark.parametrize("d", [0, 1, 3, 6, 7])
@pytest.mark.parametrize("shape", [(37, 40, 19), (513, 1024, 130), (1100, 64, 700)], ids=str)
def test_sm90_each_schedule_gpu(monkeypatch, schedule, d, shape):
    """Every mainloop schedule, whatever the library would pick for the shape (PAI_FAST_SM90_SCHEDULE)."""
    monkeypatch.setenv("PAI_FAST_SM90_SCHEDULE", schedule)
    m, k, n = shape
    CB.clear_packed_weights()
    check_linear("cuda", torch.bfloat16, m, k, n, d)
    assert len(CB._PACKS) >= 1, "the Hopper path was not taken"


@gpu
@needs_sm90
@pytest.mark.parametrize("schedule", ["cooperative", "pingpong"])
@pytest.mark.parametrize("d", [0, 1, 2, 3, 5, 7])
@pytest.mark.parametrize("shape", [(37, 40, 24), (300, 264, 336), (1100, 64, 704)], ids=str)
def test_sm90_staged_epilogue_gpu(monkeypatch, schedule, d, shape):
    """The staged epilogue (8-row slices through shared memory, 16-byte row stores; taken where N % 8 == 0 and y, h
    are row-major) against the reference, and bit for bit against the direct register stores
    (PAI_FAST_SM90_EPILOGUE=direct): the same math in the same order, stored another way. The shapes have rows past M
    inside a slice and chunks past N inside a tile."""
    monkeypatch.setenv("PAI_FAST_SM90_SCHEDULE", schedule)
    m, k, n = shape
    CB.clear_packed_weights()
    check_linear("cuda", torch.bfloat16, m, k, n, d, grads=False)
    (x, w, b, dw, db, g, c), _ = _inputs((n, k), (m, k), d, True, torch.bfloat16, "cuda")
    outs = {}
    for epilogue in ("staged", "direct"):
        monkeypatch.setenv("PAI_FAST_SM90_EPILOGUE", epilogue)
        outs[epilogue] = CB.linear_fwd(x, w, b, dw, db, g, c, "sigmoid", True)
    assert torch.equal(outs["staged"][0], outs["direct"][0]), "y: the staged and direct epilogues differ"
    assert torch.equal(outs["staged"][1], outs["direct"][1]), "h: the staged and direct epilogues differ"


@gpu
@needs_sm90
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("d", [0, 1, 3, 7])
@pytest.mark.parametrize("shape", SHAPES[1:], ids=str)
def test_sm90_backward_stacked_gpu(bwd_path, dtype, d, shape):
    """Stacked weights (DendriticLinear's layout): the backward's dX GEMM runs on CUTLASS too."""
    m, k, n = shape
    check_linear("cuda", dtype, m, k, n, d, stacked=True)


@gpu
@needs_sm90
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("bias", [True, False])
def test_sm90_activations_bias_gpu(bwd_path, act, bias):
    CB.clear_packed_weights()
    check_linear("cuda", torch.bfloat16, 77, 96, 45, 3, act=act, bias=bias)
    assert len(CB._PACKS) >= 1


@gpu
@needs_sm90
@pytest.mark.parametrize("sm90", ["1", "0"], ids=["hopper", "generic"])
@pytest.mark.parametrize("act", ["sigmoid", "tanh"])
def test_16bit_epilogue_saturates_gpu(monkeypatch, sm90, act):
    """The 16-bit epilogues' approximate exp / reciprocal / tanh (common.cuh act_fwd_16) at saturated
    pre-activations, dendrite biases +60, -60, +1e4, -1e4 (exp overflows to inf at 1e4): every a_i within 1 % of the
    float64 value element by element (sigmoid(-60) ~ 1e-26 is a normal bf16 number), exactly the activation's limit
    where float64 rounds to it (sigmoid 1 and 0, tanh +-1), and y within tolerance of the reference."""
    monkeypatch.setenv("PAI_FAST_CUDA_SM90", sm90)
    CB.clear_packed_weights()
    (x, w, b, dw, db, g, c), ref = _inputs((40, 64), (33, 64), 4, True, torch.bfloat16, "cuda")
    db = torch.tensor([60.0, -60.0, 1e4, -1e4])[:, None].expand(4, 40).to(torch.bfloat16).cuda().contiguous()
    ref[4] = db.double().cpu()
    y, h = CB.linear_fwd(x, w, b, dw, db, g, c, act, True)
    assert (len(CB._PACKS) >= 1) == (sm90 == "1"), "the path under test was not the one taken"
    want = _ref_acts_linear(ref, act)
    got = h.double().cpu()
    assert torch.isfinite(got).all()
    assert ((got - want).abs() <= 1e-2 * want.abs()).all(), f"max abs err {(got - want).abs().max().item():.3e}"
    limits = (want.abs() == 1) | (want == 0)
    assert limits[:, [0, 2, 3]].all(), "the +60 / +-1e4 branches saturate in float64 too"
    assert torch.equal(got[limits], want[limits]), "saturated values must be the activation's exact limits"
    _close("y", y, R.dendritic_linear_ref(*ref, activation=act), REL_TOL[torch.bfloat16])


@gpu
@needs_sm90
def test_sm90_matches_generic_kernel_gpu(monkeypatch):
    """Same inputs through the Hopper path and the generic kernel: both within tolerance of each other."""
    (x, w, b, dw, db, g, c), _ = _inputs((200, 128), (150, 128), 3, True, torch.bfloat16, "cuda")
    y1, h1 = CB.linear_fwd(x, w, b, dw, db, g, c, "tanh", True)
    monkeypatch.setenv("PAI_FAST_CUDA_SM90", "0")
    y0, h0 = CB.linear_fwd(x, w, b, dw, db, g, c, "tanh", True)
    _close("y", y1, y0.double(), 2 * REL_TOL[torch.bfloat16])
    _close("h", h1, h0.double(), 2 * REL_TOL[torch.bfloat16])


@gpu
@needs_sm90
def test_sm90_pack_follows_weight_updates_gpu():
    """An in-place weight update (an optimizer step) repacks; an unchanged weight reuses its pack."""
    CB.clear_packed_weights()
    (x, w, b, dw, db, g, c), (x64, w64, b64, dw64, db64, g64, c64) = _inputs(
        (64, 64), (33, 64), 2, True, torch.float16, "cuda"
    )
    y1, _ = CB.linear_fwd(x, w, b, dw, db, g, c, "sigmoid", False)
    packed = next(v[2] for k, v in CB._PACKS.items() if k[1] == w.data_ptr())
    y1b, _ = CB.linear_fwd(x, w, b, dw, db, g, c, "sigmoid", False)
    assert next(v[2] for k, v in CB._PACKS.items() if k[1] == w.data_ptr()) is packed, "repacked unchanged weights"
    assert torch.equal(y1, y1b)
    for t, t64 in ((w, w64), (dw, dw64)):
        t.mul_(-0.5)
        t64.copy_(t.double())
        y2, _ = CB.linear_fwd(x, w, b, dw, db, g, c, "sigmoid", False)
        ref = R.dendritic_linear_ref(x64, w64, b64, dw64, db64, g64, c64, activation="sigmoid")
        _close("y after update", y2, ref, REL_TOL[torch.float16])
    assert _packs_of(w) == 1


@gpu
@needs_sm90
def test_sm90_graph_capture_replays_new_weights_gpu():
    """Inside capture the pack is part of the graph: a replay after a weight update sees the new weights."""
    (x, w, b, dw, db, g, c), (x64, w64, b64, dw64, db64, g64, c64) = _inputs(
        (48, 32), (64, 32), 3, True, torch.bfloat16, "cuda"
    )
    CB.linear_fwd(x, w, b, dw, db, g, c, "sigmoid", False)  # warm: a cached pack exists before capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y, _ = CB.linear_fwd(x, w, b, dw, db, g, c, "sigmoid", False)
    with torch.no_grad():
        w.mul_(2.0)
        dw.add_(0.25)
    graph.replay()
    torch.cuda.synchronize()
    w64.copy_(w.double())
    dw64.copy_(dw.double())
    ref = R.dendritic_linear_ref(x64, w64, b64, dw64, db64, g64, c64, activation="sigmoid")
    _close("y", y, ref, REL_TOL[torch.bfloat16])


@gpu
@needs_sm90
def test_sm90_fallbacks_gpu():
    """Where the path does not apply the generic kernel runs, and the result is still right."""
    CB.clear_packed_weights()
    # D = 8 (R = 9 > 8), K not a multiple of 8, x rows misaligned (a view starting one element in), fp32
    check_linear("cuda", torch.bfloat16, 20, 24, 17, 8, grads=False)
    check_linear("cuda", torch.bfloat16, 20, 30, 17, 2, grads=False)
    check_linear("cuda", torch.float32, 20, 24, 17, 2, grads=False)
    assert len(CB._PACKS) == 0
    (x, w, b, dw, db, g, c), ref = _inputs((17, 24), (20, 25), 2, True, torch.bfloat16, "cuda")
    xs = x[:, 1:]
    assert xs.data_ptr() % 16 != 0
    y, _ = CB.linear_fwd(xs, w, b, dw, db, g, c, "relu", False)
    _close("y", y, R.dendritic_linear_ref(ref[0][:, 1:], *ref[1:], activation="relu"), REL_TOL[torch.bfloat16])
    assert len(CB._PACKS) == 0


@gpu
@needs_sm90
def test_sm90_strided_weights_gpu():
    """Transposed (non-contiguous) weight views take the pack kernel's strided copy."""
    CB.clear_packed_weights()
    (x, w, b, dw, db, g, c), ref = _inputs((40, 64), (21, 64), 3, True, torch.float16, "cuda")
    wt = w.t().contiguous().t()
    dwt = dw.transpose(1, 2).contiguous().transpose(1, 2)
    y, _ = CB.linear_fwd(x, wt, b, dwt, db, g, c, "tanh", False)
    _close("y", y, R.dendritic_linear_ref(*ref, activation="tanh"), REL_TOL[torch.float16])
    assert len(CB._PACKS) == 1


@gpu
@needs_sm90
def test_sm90_c_interface_rejects_bad_packed_buffer_gpu():
    lib = CB._C
    (x, w, b, dw, db, g, c), _ = _inputs((16, 32), (8, 32), 1, True, torch.bfloat16, "cuda")
    nbytes = lib.linear_packed_bytes(2, CB._t(w), CB._t(dw))
    assert nbytes == 128 * 32 * 2  # one 128-row tile of K = 32 bf16
    y = torch.empty(8, 16, dtype=torch.bfloat16, device="cuda")
    small = torch.empty(nbytes - 16, dtype=torch.uint8, device="cuda")
    s = torch.cuda.current_stream().cuda_stream
    args = (CB._t(x), CB._t(w), CB._t(b), CB._t(dw), CB._t(db), CB._t(g), CB._t(c))
    with pytest.raises(RuntimeError, match="'packed' must be a 16-byte aligned device buffer of at least"):
        lib.linear_forward_packed(2, 1, *args, small.data_ptr(), small.numel(), CB._t(y), None, s)
    with pytest.raises(RuntimeError, match="'packed' must be"):
        lib.linear_pack(2, CB._t(w), CB._t(dw), small.data_ptr(), small.numel(), s)
    ok = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    xs = torch.empty(8, 33, dtype=torch.bfloat16, device="cuda")[:, 1:]
    with pytest.raises(ValueError, match="argument 'x'"):
        lib.linear_forward_packed(2, 1, CB._t(xs), *args[1:], ok.data_ptr(), nbytes, CB._t(y), None, s)
    assert lib.sm90_max_d() == 7
    assert lib.linear_packed_bytes(2, CB._t(w), CB._t(torch.empty(7, 16, 32, dtype=torch.bfloat16))) > 0
    assert lib.linear_packed_bytes(2, CB._t(w), CB._t(torch.empty(8, 16, 32, dtype=torch.bfloat16))) == 0  # D = 8
    assert lib.linear_packed_bytes(0, CB._t(w.float()), CB._t(dw.float())) == 0  # fp32
