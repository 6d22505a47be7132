"""Triton backend (pai_fast.kernels), dendritic Conv1d/2d/3d: implicit-GEMM forward and the fused backward against
the float64 oracle (pai_fast.reference), fp64 gradcheck, geometry (stride / padding / dilation), NCHW and
channels_last strides, edge shapes, errors.

Run exactly like tests/test_triton_linear.py (see its docstring):
    TRITON_INTERPRET=1 pytest -m interpret tests/test_triton_conv.py      # CPU interpreter
    pytest -m "gpu or interpret" tests/test_triton_conv.py                 # GPU machine
"""

from __future__ import annotations

import sys

import pytest
import torch

from pai_fast._layout import conv_empty, stacked_view
from pai_fast.reference import dendritic_conv_ref

from .helpers import cuda_kernel_names, dendrite_params, noncontig, stack_weights
from .test_triton_linear import (  # noqa: F401
    DEVICE,
    K,
    _guarded,
    _needs_tma,
    apply,
    check_rule,
    fixed_config,
    gpu,
    interp,
)

ACTS = ["sigmoid", "tanh", "relu", "identity"]


def _tup(v, nd):
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * nd


def make_conv(b, c, n, sp, k, d, dtype, device, bias=True, seed=0):
    nd = len(sp)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, *sp, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
    params = dendrite_params((n, c, *_tup(k, nd)), d, bias=bias, dtype=torch.float64, generator=g)
    params = [None if p is None else p.to(device=device, dtype=dtype) for p in params]
    return (x, *params)


def conv_case(
    device,
    dtype,
    b,
    c,
    n,
    sp,
    k,
    d,
    act="sigmoid",
    stride=1,
    padding=0,
    dilation=1,
    bias=True,
    x_fn=None,
    backward=True,
    ratio_fwd=2.0,
    ratio_bwd=3.0,
):
    nd = len(sp)
    st, pd, dl = _tup(stride, nd), _tup(padding, nd), _tup(dilation, nd)
    x, w, bb, dw, db, gate, cas = make_conv(b, c, n, sp, k, d, dtype, device, bias)
    if x_fn is not None:
        x = x_fn(x)
    inputs = (x, w, bb, dw, db, gate, cas)
    y, h = K.conv_fwd(x, w, bb, dw, db, gate, cas, st, pd, dl, act, backward)

    ref_in = [None if t is None else t.detach().double().requires_grad_() for t in inputs]
    same_in = [None if t is None else t.detach().clone().requires_grad_() for t in inputs]
    y64 = dendritic_conv_ref(*ref_in, stride=st, padding=pd, dilation=dl, activation=act)
    ysame = dendritic_conv_ref(*same_in, stride=st, padding=pd, dilation=dl, activation=act)
    # Outputs keep x's memory format (channels_last in, channels_last out), as the op's fake kernel promises.
    assert y.dtype == dtype and y.stride() == conv_empty(x, (b, n), y.shape[2:]).stride()
    check_rule("y", y, y64.detach(), ysame.detach(), dtype, ratio_fwd)
    if not backward:
        assert h.numel() == 0
        return
    assert h.shape == (b, d, n, *y.shape[2:]) and h.stride() == conv_empty(x, (b, d, n), y.shape[2:]).stride()

    gy = torch.randn(y64.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    torch.autograd.backward(y64, gy.double())
    torch.autograd.backward(ysame, gy)
    grads = K.conv_bwd(gy, x, w, dw, gate, cas, h, st, pd, dl, act, bias)
    names = ["dx", "dweight", "dbias", "ddendrite_weight", "ddendrite_bias", "dgate", "dcascade"]
    for name, got, r, s_ in zip(names, grads, ref_in, same_in):
        if r is None:
            continue
        assert got.dtype == s_.dtype, f"{name}: dtype {got.dtype} != {s_.dtype}"
        check_rule(name, got, r.grad, s_.grad, dtype, ratio_bwd)
    assert grads[0].stride() == torch.empty_like(x).stride(), "dx strides must match empty_like(x) (the fake kernel)"
    upper = torch.ones(d, d, dtype=torch.bool, device=grads[6].device).triu()
    assert (grads[6][upper] == 0).all()
    return y, h, grads


# ---------------------------------------------------------------------------------------------------------------
# Interpreter (CPU) tests; on a GPU machine they run on CUDA
# ---------------------------------------------------------------------------------------------------------------

SPATIAL = {1: (11,), 2: (7, 9), 3: (4, 5, 6)}


@apply(interp)
@pytest.mark.parametrize("d", [0, 1, 3, 8])
@pytest.mark.parametrize("nd", [1, 2, 3])
def test_conv_matches_fp64_oracle_fp32(nd, d):
    conv_case(DEVICE, torch.float32, 2, 5, 6, SPATIAL[nd], 3, d, padding=1)


@apply(interp)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("nd", [1, 2])
def test_conv_activations_fp64(nd, act):
    conv_case(DEVICE, torch.float64, 2, 3, 5, SPATIAL[nd], 3, 2, act=act, padding=1)


@apply(interp)
@pytest.mark.parametrize("d", [1, 3, 9])
def test_conv_dz_finish_in_kernel_fp64(d):
    """The conv backward with the dZ kernel's partial reductions summed inside its launch (dz_finish("kernel"):
    dZ, then cuDNN's backward) against float64 autograd."""
    with K.dz_finish("kernel"):
        conv_case(DEVICE, torch.float64, 3, 3, 5, (9, 8), 3, d, "tanh", padding=1)


@apply(interp)
@pytest.mark.parametrize(
    "k,stride,padding,dilation",
    [(1, 1, 0, 1), (3, 2, 1, 1), (3, 1, 2, 2), (2, 3, 0, 1), ((3, 2), (2, 1), (0, 1), (1, 2)), (5, 2, 3, 1)],
)
def test_conv_geometry(k, stride, padding, dilation):
    conv_case(DEVICE, torch.float32, 2, 4, 5, (10, 9), k, 2, "tanh", stride, padding, dilation)


@apply(interp)
@pytest.mark.parametrize("layout", ["channels_last", "sliced", "guarded", "channels_last_3d"])
def test_conv_input_strides(layout):
    if layout == "channels_last":
        conv_case(DEVICE, torch.float32, 3, 6, 5, (8, 7), 3, 3, padding=1,
                  x_fn=lambda t: t.contiguous(memory_format=torch.channels_last))  # fmt: skip
    elif layout == "sliced":
        conv_case(DEVICE, torch.float32, 2, 4, 5, (9, 8), 3, 2, padding=1, x_fn=lambda t: noncontig(t))
    elif layout == "guarded":
        conv_case(DEVICE, torch.float32, 2, 4, 5, (9, 8), 3, 2, stride=2, padding=2, x_fn=_guarded)
    else:
        conv_case(DEVICE, torch.float32, 2, 3, 4, (4, 5, 6), 3, 2, padding=1,
                  x_fn=lambda t: t.contiguous(memory_format=torch.channels_last_3d))  # fmt: skip


@pytest.fixture
def forced_tma():
    """Both TMA mainloops forced (on the CPU the interpreter runs them; the GPU tests cover Hopper)."""
    conv = sys.modules["pai_fast.kernels.dendritic_conv"]
    old = dict(conv._state)
    conv._state.update(weight_tma=True, x_tma=True)
    yield conv
    conv._state.update(old)


CPU_ONLY = pytest.mark.skipif(
    DEVICE != "cpu",
    reason="forces the TMA mainloops under the interpreter; on the GPU test_gpu_conv_weight_tma runs them",
)


@apply(interp)
@CPU_ONLY
@pytest.mark.usefixtures("forced_tma")
@pytest.mark.parametrize(
    ("sp", "k", "padding", "dilation", "d", "c", "mode"),
    [((7, 9), 3, 1, 1, 3, 8, 2), ((7, 9), 3, 0, 1, 1, 4, 1), ((8, 7), 3, 2, 2, 2, 12, 2), ((8, 7), 1, 0, 1, 3, 4, 1),
     ((8, 7), (3, 1), (1, 0), 2, 0, 4, 2), ((11,), 5, 2, 1, 2, 4, 2), ((11,), 3, 0, 2, 1, 8, 1),
     ((4, 5, 6), 3, 1, 1, 1, 4, 2), ((4, 5, 6), 2, 0, 1, 2, 4, 1), ((20, 40), 3, 1, 1, 1, 4, 2)],
)  # fmt: skip
def test_conv_x_tma_mainloops(sp, k, padding, dilation, d, c, mode):
    """The mainloops whose x tile comes by TMA. Mode 1 (no padding): one box of the [B * prod(input), Cin] matrix
    shifted per tap, rows off the output grid computed and dropped. Mode 2 (padding): a spatial box per tap whose
    parts in the padding TMA returns as zeros, the weight tiles packed per N-tile. 'same' and valid padding,
    dilation, Cin not a multiple of BLOCK_K (the box's channels past Cin come back as zeros), Conv1d..3d."""
    conv = sys.modules["pai_fast.kernels.dendritic_conv"]
    plans = conv._plans
    plans.clear()
    x_fn = lambda t: conv._channels_last(t, 1)  # noqa: E731 (Conv1d too: [B, L, C] in memory)
    conv_case(DEVICE, torch.float32, 2, c, 5, sp, k, d, "tanh", 1, padding, dilation, x_fn=x_fn)
    assert [p.x_tma for p in plans._plans.values()] == [mode]


@apply(interp)
@CPU_ONLY
@pytest.mark.usefixtures("forced_tma")
def test_conv_x_tma_box_tiles_forced_small():
    """The spatial box with BLOCK_M 16 (2 x 8 boxes): several tiles along both the rows and the columns of a plane,
    ragged at both ends, each with its own padding."""
    import triton

    cfg = triton.Config({"BLOCK_M": 16, "BLOCK_C": 16, "BLOCK_K": 16, "GROUP_M": 8}, num_warps=4, num_stages=1)
    assert sys.modules["pai_fast.kernels.dendritic_conv"].box_width(9, 21, 16) == 8  # 5 x 3 tiles of 2 x 8
    with K.use_config(cfg):
        conv_case(DEVICE, torch.float32, 2, 8, 5, (9, 21), 3, 1, "sigmoid", 1, 1, 1,
                  x_fn=lambda t: t.contiguous(memory_format=torch.channels_last))  # fmt: skip


@apply(interp)
@CPU_ONLY
@pytest.mark.usefixtures("forced_tma")
def test_conv_tma_mainloops_with_unaligned_tensors():
    """x at a 4-byte offset (dense, so the TMA mainloops still apply): TMA needs a 16-byte aligned base, so the
    launcher copies it first, and the result is the oracle's."""
    plans = sys.modules["pai_fast.kernels.dendritic_conv"]._plans
    plans.clear()

    def unaligned(t):  # same values, channels innermost, data 4 bytes past a 16-byte boundary
        flat = torch.empty(t.numel() + 1, dtype=t.dtype)[1:]
        out = flat.view(t.shape[0], *t.shape[2:], t.shape[1]).movedim(-1, 1)
        out.copy_(t)
        assert out.data_ptr() % 16 and out.movedim(1, -1).is_contiguous()
        return out

    conv_case(DEVICE, torch.float32, 2, 8, 5, (6, 7), 3, 2, "tanh", 1, 1, 1, x_fn=unaligned)
    assert [p.x_tma for p in plans._plans.values()] == [2]


@apply(interp)
@CPU_ONLY
@pytest.mark.usefixtures("forced_tma")
def test_conv_x_tma_only_where_it_applies():
    """Stride > 1 and x not dense channels-innermost keep the pointer x tile (with the weight by TMA); forced, no
    padding takes the flat rows; "auto" takes the box."""
    conv = sys.modules["pai_fast.kernels.dendritic_conv"]
    x = torch.randn(2, 8, 6, 6).contiguous(memory_format=torch.channels_last)
    one, pad = (1, 1, 1), (0, 0, 0)
    assert conv._x_tma_mode(x, one, pad, (1, 6, 6)) == 1
    assert conv._x_tma_mode(x, one, (0, 1, 1), (1, 6, 6)) == 2
    assert conv._x_tma_mode(x, (1, 2, 2), pad, (1, 6, 6)) == 0
    assert conv._x_tma_mode(x.contiguous(), one, pad, (1, 6, 6)) == 0
    assert conv._x_tma_mode(x[:, :6], one, pad, (1, 6, 6)) == 0
    conv._state["x_tma"] = "auto"
    assert conv._x_tma_mode(x, one, pad, (1, 6, 6)) == 2, "auto: the spatial box (flat rows are opt-in)"
    conv_case(DEVICE, torch.float32, 2, 8, 5, (6, 6), 3, 2, "sigmoid", 2, 1, 1, x_fn=lambda t: t.contiguous(
        memory_format=torch.channels_last))  # fmt: skip


def test_box_width_covers_the_plane_with_the_fewest_rows():
    conv = sys.modules["pai_fast.kernels.dendritic_conv"]
    assert conv.box_width(56, 56, 64) == 8  # 8 x 8 tiles: no waste
    assert conv.box_width(1, 300, 128) == 128  # Conv1d: one row of 128
    assert conv.box_width(14, 14, 128) in (8, 16)
    for oh, ow, bm in ((56, 56, 128), (14, 14, 64), (7, 7, 128), (28, 28, 256), (3, 100, 64)):
        bw = conv.box_width(oh, ow, bm)
        cost = -(-oh // (bm // bw)) * (bm // bw) * -(-ow // bw) * bw
        for other in (8, 16, 32, 64, 128, 256):
            if other <= bm:
                bh = bm // other
                assert cost <= -(-oh // bh) * bh * -(-ow // other) * other


@pytest.mark.parametrize(
    ("n", "d", "bn"), [(64, 3, 64), (40, 2, 16), (96, 1, 64), (128, 1, 64), (256, 3, 64), (64, 2, 32)]
)
def test_pack_tiles_puts_each_stacked_tile_in_one_box(n, d, bn):
    conv = sys.modules["pai_fast.kernels.dendritic_conv"]
    p = K.dendritic_linear.next_pow2(1 + d)
    wpack = torch.randn(1 + d, n, 36)
    tiles = conv._pack_tiles(wpack, p, bn)
    assert tiles.shape == (-(-n // bn) * p * bn, 36)
    for t in range(-(-n // bn)):
        for branch in range(p):
            rows = tiles[(t * p + branch) * bn : (t * p + branch + 1) * bn]
            want = torch.zeros(bn, 36)
            if branch <= d:
                part = wpack[branch, t * bn : (t + 1) * bn]
                want[: part.shape[0]] = part
            assert torch.equal(rows, want)


@apply(interp)
@pytest.mark.parametrize("bias", [True, False])
def test_conv_small_and_single(bias):
    conv_case(DEVICE, torch.float32, 1, 1, 1, (1, 1), 1, 1, bias=bias)
    conv_case(DEVICE, torch.float32, 1, 2, 3, (3,), 3, 2, bias=bias)


@apply(interp)
def test_conv_inference_writes_no_h():
    conv_case(DEVICE, torch.float32, 2, 4, 5, (6, 7), 3, 3, padding=1, backward=False)
    x, w, b, dw, db, g, c = make_conv(2, 4, 5, (6, 7), 3, 3, torch.float32, DEVICE)
    args = (x, w, b, dw, db, g, c, (1, 1), (1, 1), (1, 1), "sigmoid")
    y0, h0 = K.conv_fwd(*args, False)
    y1, h1 = K.conv_fwd(*args, True)
    assert h0.numel() == 0 and torch.equal(y0, y1)


@apply(interp)
@pytest.mark.parametrize("d", [0, 2])
def test_conv_batch_zero(d):
    x, w, b, dw, db, g, c = make_conv(0, 3, 4, (5, 5), 3, d, torch.float32, DEVICE)
    y, h = K.conv_fwd(x, w, b, dw, db, g, c, (1, 1), (0, 0), (1, 1), "sigmoid", True)
    assert y.shape == (0, 4, 3, 3) and h.shape == (0, d, 4, 3, 3)
    grads = K.conv_bwd(y, x, w, dw, g, c, h, (1, 1), (0, 0), (1, 1), "sigmoid", True)
    assert [tuple(t.shape) for t in grads] == [tuple(x.shape), (4, 3, 3, 3), (4,), (d, 4, 3, 3, 3), (d, 4), (d, 4),
                                               (d, d, 4)]  # fmt: skip
    assert all((t == 0).all() for t in grads)


@apply(interp)
def test_conv_backward_is_deterministic():
    x, w, b, dw, db, g, c = make_conv(3, 4, 6, (9, 9), 3, 3, torch.float32, DEVICE)
    geo = ((1, 1), (1, 1), (1, 1))
    _, h = K.conv_fwd(x, w, b, dw, db, g, c, *geo, "sigmoid", True)
    gy = torch.randn(3, 6, 9, 9, device=DEVICE)
    g1 = K.conv_bwd(gy, x, w, dw, g, c, h, *geo, "sigmoid", True)
    g2 = K.conv_bwd(gy, x, w, dw, g, c, h, *geo, "sigmoid", True)
    assert all(torch.equal(a, b_) for a, b_ in zip(g1, g2))


@apply(interp)
def test_conv_grad_y_with_odd_strides():
    """grad_y arriving as an expanded / permuted tensor (autograd can hand those over)."""
    x, w, b, dw, db, g, c = make_conv(2, 3, 4, (5, 6), 3, 2, torch.float64, DEVICE)
    geo = ((1, 1), (1, 1), (1, 1))
    _, h = K.conv_fwd(x, w, b, dw, db, g, c, *geo, "tanh", True)
    gy_full = torch.randn(2, 4, 5, 6, dtype=torch.float64, device=DEVICE)
    gy_perm = gy_full.permute(0, 1, 3, 2).contiguous().permute(0, 1, 3, 2)  # H, W strides swapped: do not merge
    gy_exp = torch.randn(1, 4, 1, 1, dtype=torch.float64, device=DEVICE).expand(2, 4, 5, 6)
    for gy in (gy_perm, gy_exp):
        got = K.conv_bwd(gy, x, w, dw, g, c, h, *geo, "tanh", True)
        want = K.conv_bwd(gy.contiguous(), x, w, dw, g, c, h, *geo, "tanh", True)
        for a, b_ in zip(got, want):
            torch.testing.assert_close(a, b_, atol=1e-12, rtol=1e-12)


class _KernelConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b, dw, db, g, c, geo, act):
        y, h = K.conv_fwd(x, w, b, dw, db, g, c, *geo, act, True)
        ctx.save_for_backward(x, w, dw, g, c, h)
        ctx.geo, ctx.act, ctx.has_bias = geo, act, b is not None
        return y

    @staticmethod
    def backward(ctx, gy):
        x, w, dw, g, c, h = ctx.saved_tensors
        dx, dW, dB, dDW, dDB, dG, dC = K.conv_bwd(gy, x, w, dw, g, c, h, *ctx.geo, ctx.act, ctx.has_bias)
        if not ctx.has_bias:
            dB = dDB = None
        return dx, dW, dB, dDW, dDB, dG, dC, None, None


@apply(interp)
@pytest.mark.parametrize(
    "cin,sp,k,geo,d,act",
    [
        (2, (6,), 2, ((2,), (1,), (1,)), 2, "sigmoid"),
        (2, (4, 3), 2, ((1, 1), (1, 0), (1, 1)), 2, "tanh"),
        (1, (3, 2, 2), 2, ((1, 1, 1), (0, 0, 1), (1, 1, 1)), 1, "identity"),
    ],
)
def test_conv_gradcheck_fp64(cin, sp, k, geo, d, act):
    x, w, b, dw, db, g, c = make_conv(1, cin, 2, sp, k, d, torch.float64, DEVICE, seed=5)
    inputs = [t.requires_grad_() for t in (x, w, b, dw, db, g, c)]
    assert torch.autograd.gradcheck(
        lambda *a: _KernelConv.apply(*a, geo, act), inputs, eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=d != 1
    )


@apply(interp)
def test_conv_bad_inputs_name_the_argument():
    x, w, b, dw, db, g, c = make_conv(2, 4, 5, (6, 6), 3, 2, torch.float32, DEVICE)
    geo = ((1, 1), (0, 0), (1, 1))
    with pytest.raises(ValueError, match="groups=1"):
        K.conv_fwd(x[:, :2], w, b, dw, db, g, c, *geo, "sigmoid", False)
    with pytest.raises(ValueError, match="batched"):
        K.conv_fwd(x[0], w, b, dw, db, g, c, *geo, "sigmoid", False)
    with pytest.raises(ValueError, match="stride must have 2 entries"):
        K.conv_fwd(x, w, b, dw, db, g, c, (1,), (0, 0), (1, 1), "sigmoid", False)
    with pytest.raises(ValueError, match="too small"):
        K.conv_fwd(x[:, :, :2, :2], w, b, dw, db, g, c, *geo, "sigmoid", False)
    with pytest.raises(ValueError, match="dendrite_weight must be"):
        K.conv_fwd(x, w, b, dw[:, :, :, :2], db, g, c, *geo, "sigmoid", False)
    with pytest.raises(ValueError, match="gate must be"):
        K.conv_fwd(x, w, b, dw, db, g[:1], c, *geo, "sigmoid", False)
    with pytest.raises(ValueError, match="activation"):
        K.conv_fwd(x, w, b, dw, db, g, c, *geo, "softplus", False)


@apply(interp)
def test_conv_supports_reasons():
    x = torch.randn(2, 4, 6, 6, device=DEVICE)
    w = torch.randn(5, 4, 3, 3, device=DEVICE)
    assert K.supports("conv", x, w, 2, "sigmoid") == []
    assert K.supports("conv", torch.randn(2, 4, 6, device=DEVICE), torch.randn(5, 4, 3, device=DEVICE), 2, "relu") == []
    assert any("groups=1" in r for r in K.supports("conv", x, w[:, :2], 2, "sigmoid"))
    assert any("batched" in r for r in K.supports("conv", x[0], w, 2, "sigmoid"))
    assert any("Conv1d/2d/3d" in r for r in K.supports("conv", x, w.view(5, 4, 3, 3, 1, 1), 2, "sigmoid"))


@apply(interp)
def test_conv_through_the_pai_fast_op_layer():
    from pai_fast import functional as PF

    x, w, b, dw, db, g, c = make_conv(2, 3, 4, (6, 5), 3, 2, torch.float64, DEVICE)
    ps = [t.clone().requires_grad_() for t in (x, w, b, dw, db, g, c)]
    qs = [t.clone().requires_grad_() for t in (x, w, b, dw, db, g, c)]
    y1 = PF.dendritic_conv2d(*ps, stride=2, padding=1, activation="relu", backend="triton")
    y2 = PF.dendritic_conv2d(*qs, stride=2, padding=1, activation="relu", backend="torch")
    torch.testing.assert_close(y1, y2)
    gy = torch.randn_like(y1)
    y1.backward(gy)
    y2.backward(gy)
    for p, q in zip(ps, qs):
        torch.testing.assert_close(p.grad, q.grad)


@apply(interp)
def test_conv_weights_in_one_storage():
    x, w, b, dw, db, g, c = make_conv(2, 3, 4, (5, 5), 3, 2, torch.float64, DEVICE)
    w1, dw1 = stack_weights(w, dw)
    geo = ((1, 1), (1, 1), (1, 1))
    _, h = K.conv_fwd(x, w, b, dw, db, g, c, *geo, "sigmoid", True)
    gy = torch.randn(2, 4, 5, 5, dtype=torch.float64, device=DEVICE)
    ga = K.conv_bwd(gy, x, w, dw, g, c, h, *geo, "sigmoid", True)
    gb = K.conv_bwd(gy, x, w1, dw1, g, c, h, *geo, "sigmoid", True)
    for a, b_ in zip(ga, gb):
        torch.testing.assert_close(a, b_, atol=1e-12, rtol=1e-12)


# ---------------------------------------------------------------------------------------------------------------
# GPU tests
# ---------------------------------------------------------------------------------------------------------------

GPU_CONVS = [
    # (B, Cin, Cout, spatial, k, stride, padding, dilation)
    (8, 64, 64, (28, 28), 3, 1, 1, 1),
    (4, 32, 48, (15, 17), 5, 2, 2, 1),
    (8, 64, 96, (100,), 3, 1, 2, 2),
    (2, 16, 24, (8, 10, 12), 3, 1, 1, 1),
    (16, 3, 32, (32, 32), 3, 1, 1, 1),
]


@apply(gpu)
@pytest.mark.usefixtures("fixed_config")
@pytest.mark.parametrize("cfg", GPU_CONVS, ids=lambda c: f"{c[1]}x{'x'.join(map(str, c[3]))}-k{c[4]}s{c[5]}")
@pytest.mark.parametrize("d", [0, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_gpu_conv_grid(dtype, d, cfg):
    b, c, n, sp, k, s, p, dl = cfg
    conv_case("cuda", dtype, b, c, n, sp, k, d, "sigmoid", s, p, dl)


@apply(gpu)
@pytest.mark.usefixtures("fixed_config")
@pytest.mark.parametrize("act", ACTS)
def test_gpu_conv_channels_last_activations(act):
    conv_case("cuda", torch.bfloat16, 8, 64, 64, (14, 14), 3, 3, act, 1, 1, 1,
              x_fn=lambda t: t.contiguous(memory_format=torch.channels_last))  # fmt: skip


@apply(gpu)
@pytest.mark.usefixtures("fixed_config")
def test_gpu_conv_d8_and_inference():
    conv_case("cuda", torch.bfloat16, 4, 32, 32, (16, 16), 3, 8, "tanh", 1, 1, 1)
    conv_case("cuda", torch.bfloat16, 4, 32, 32, (16, 16), 3, 3, "tanh", 1, 1, 1, backward=False)


@apply(gpu)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
def test_gpu_conv_autotuned_every_dtype(dtype):
    """The default GPU path (autotune on, no forced config) for every dtype, fp64 included (it has no TMA
    candidates: its plan must not ask for one)."""
    conv_case("cuda", dtype, 4, 16, 24, (9, 11), 3, 2, "sigmoid", 1, 1, 1)


@apply(gpu)
@pytest.mark.parametrize(("weight_tma", "x_tma"), [(False, False), (True, False), (True, "auto")])
def test_gpu_conv_every_config(weight_tma, x_tma):
    """Every pointer-pool config forced through each mainloop: pointers, the weight tile by TMA, and both tiles by
    TMA (the spatial box, which "auto" picks on Hopper for this stride-1 problem)."""
    common = sys.modules["pai_fast.kernels._common"]
    conv = sys.modules["pai_fast.kernels.dendritic_conv"]
    if weight_tma:
        _needs_tma()
    old = dict(conv._state)
    conv._state.update(weight_tma=weight_tma, x_tma=x_tma)
    try:
        for cfg in common.CONFIG_POOLS[(True, 2)] + common.CONFIG_POOLS[(False, 2)]:
            with K.use_config(cfg):
                conv_case("cuda", torch.bfloat16, 6, 64, 48, (13, 14), 3, 3, "sigmoid", 1, 1, 1,
                          x_fn=lambda t: t.contiguous(memory_format=torch.channels_last))  # fmt: skip
    finally:
        conv._state.update(old)


def _channels_last(t):
    return t.contiguous(memory_format=torch.channels_last)


@apply(gpu)
@pytest.mark.parametrize(
    ("dtype", "d", "c"),
    [(torch.bfloat16, 1, 64), (torch.bfloat16, 3, 24), (torch.bfloat16, 5, 64), (torch.float16, 2, 40),
     (torch.float32, 3, 64)],
)  # fmt: skip
@pytest.mark.parametrize("x_tma", [False, "auto"])
def test_gpu_conv_weight_tma(dtype, d, c, x_tma):
    """The Hopper mainloops with the stacked weight tile by TMA, x by pointers (x_tma False) or by TMA too (the
    spatial box, x_tma "auto"): each weight-TMA candidate forced (ragged Cout, Cin = 24 and 40 so a box runs past a
    kernel position's channels, D = 2 and 5 so branch rows fall outside the box), then autotuned over stride /
    padding / dilation variants (stride 2 takes the pointer x tile); the direct launch replays the autotuned pick
    bitwise."""
    _needs_tma()
    conv = sys.modules["pai_fast.kernels.dendritic_conv"]
    common = sys.modules["pai_fast.kernels._common"]
    old_tf32, old_tune = torch.backends.cuda.matmul.allow_tf32, common._state["autotune"]
    torch.backends.cuda.matmul.allow_tf32 = True  # fp32 takes the TMA mainloop only as TF32 (as cuBLAS)
    # TF32 products: the fused forward's error is ~10x cuBLAS's (test_gpu_linear_tf32), and h carries it into
    # the gradient reductions.
    ratio = dict(ratio_fwd=12.0, ratio_bwd=12.0) if dtype == torch.float32 else {}
    b, n, sp = 4, 40, (17, 19)
    x = _channels_last(torch.randn(b, c, *sp, device="cuda", dtype=dtype))
    old_mode = dict(conv._state)
    conv._launch_tma_tuned._cache.clear()
    conv._launch_box_tuned._cache.clear()
    try:
        conv._state.update(weight_tma=True, x_tma=x_tma)  # this small problem takes the pointer mainloop under "auto"
        assert conv._tma_capable(x, c, 9, K.dendritic_linear.next_pow2(1 + d), b * 17 * 19)
        K.set_autotune(False)
        for cfg in conv.tma_configs(dtype):
            with K.use_config(cfg):
                conv_case("cuda", dtype, b, c, n, sp, 3, d, "sigmoid", 1, 1, 1, x_fn=_channels_last, **ratio)
        conv_case("cuda", dtype, b, c, n, sp, 3, d, "tanh", 1, 1, 1, x_fn=_channels_last, backward=False, **ratio)
        K.set_autotune(True)
        for s, p, dl in ((1, 1, 1), (2, 1, 1), (1, 2, 2), (1, 0, 1)):
            conv_case("cuda", dtype, b, c, n, sp, 3, d, "sigmoid", s, p, dl, x_fn=_channels_last, **ratio)
        xs, w, bb, dw, db, g, cas = make_conv(b, c, n, sp, 3, d, dtype, "cuda")
        xs = _channels_last(xs)
        outs = []
        for fast in (False, True, True):
            K.set_fast_launch(fast)
            outs.append(K.conv_fwd(xs, w, bb, dw, db, g, cas, (1, 1), (1, 1), (1, 1), "sigmoid", True))
        assert all(torch.equal(a, b_) for o in outs[1:] for a, b_ in zip(o, outs[0]))
        tuned = conv._launch_box_tuned if x_tma else conv._launch_tma_tuned
        assert tuned._cache, "the autotuned launches of this mainloop were replayed from the direct-launch cache"
    finally:
        conv._state.update(old_mode)
        K.set_fast_launch(True)
        K.set_autotune(old_tune)
        torch.backends.cuda.matmul.allow_tf32 = old_tf32


@apply(gpu)
@pytest.mark.parametrize("d", [1, 3])
def test_gpu_conv_backward_three_launches(d):
    """The conv backward: the dZ kernel, its reductions finished inside its own launch, then cuDNN's backward over
    the stacked weights (dX and dW): nothing else. cuDNN's kernels are those convolution_backward launches alone
    for the same operands."""
    x, w, b, dw, db, g, c = make_conv(16, 64, 64, (28, 28), 3, d, torch.bfloat16, "cuda")
    w, dw = stack_weights(w, dw)
    geo = ((1, 1), (1, 1), (1, 1))
    _, h = K.conv_fwd(x, w, b, dw, db, g, c, *geo, "sigmoid", True)
    gy = torch.randn(16, 64, 28, 28, device="cuda", dtype=torch.bfloat16)
    conv = sys.modules["pai_fast.kernels.dendritic_conv"]
    names = cuda_kernel_names(lambda: conv.conv_bwd_packed(gy, x, w, dw, g, c, h, *geo, "sigmoid", True))
    dz = torch.randn(16, (1 + d) * 64, 28, 28, device="cuda", dtype=torch.bfloat16)
    wcat = stacked_view(w, dw, flat=True)
    cudnn = cuda_kernel_names(
        lambda: torch.ops.aten.convolution_backward(
            dz, x, wcat, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, [True, True, False]
        )
    )
    ours = [k for k in names if k not in cudnn]
    assert ours == ["_dendritic_dz_tiled_kernel"], names
    assert len(names) == 1 + len(cudnn), (names, cudnn)


@apply(gpu)
@pytest.mark.usefixtures("fixed_config")
@pytest.mark.parametrize("finish", ["torch", "kernel"])
def test_gpu_conv_deterministic(finish):
    with K.dz_finish(finish):
        x, w, b, dw, db, g, c = make_conv(16, 64, 64, (28, 28), 3, 3, torch.bfloat16, "cuda")
        geo = ((1, 1), (1, 1), (1, 1))
        _, h = K.conv_fwd(x, w, b, dw, db, g, c, *geo, "sigmoid", True)
        gy = torch.randn(16, 64, 28, 28, device="cuda", dtype=torch.bfloat16)
        first = K.conv_bwd(gy, x, w, dw, g, c, h, *geo, "sigmoid", True)
        for _ in range(10):
            again = K.conv_bwd(gy, x, w, dw, g, c, h, *geo, "sigmoid", True)
            # dX / dW come from cuDNN; with torch.backends.cudnn.deterministic unset only the fused parts are pinned.
            assert all(torch.equal(a, b_) for a, b_ in list(zip(first, again))[2:])


try:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as hs
except ImportError:  # pragma: no cover - hypothesis is in the test extra
    given = None


if given is not None:
    # Drawn by both fuzz tests: batch (0 included), output channels, kernel size, dendrites, dilation.
    _LAYER = dict(b=hs.integers(0, 2), n=hs.integers(1, 5), k=hs.integers(1, 3), d=hs.integers(0, 4),
                  dilation=hs.integers(1, 2))  # fmt: skip

    @apply(interp)
    @settings(max_examples=10, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(
        **_LAYER,
        nd=hs.integers(1, 2),
        c=hs.integers(1, 4),
        stride=hs.integers(1, 2),
        padding=hs.integers(0, 1),
        extra=hs.integers(0, 3),
        act=hs.sampled_from(["sigmoid", "tanh", "relu", "identity"]),
    )
    def test_conv_fuzzed_shapes(nd, b, c, n, k, d, stride, padding, dilation, extra, act):
        """Hypothesis-drawn Conv1d/2d geometries (batch 0 included) in float64."""
        side = max(1, dilation * (k - 1) + 1 - 2 * padding) + extra  # at least one output position
        conv_case(DEVICE, torch.float64, b, c, n, (side,) * nd, k, d, act, stride, padding, dilation)

    @apply(interp)
    @CPU_ONLY
    @settings(max_examples=8, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(
        **_LAYER,
        sp=hs.lists(hs.integers(1, 9), min_size=1, max_size=3),
        half_c=hs.integers(1, 3),
        padding=hs.integers(0, 2),
        x_tma=hs.sampled_from([True, "auto"]),
        act=hs.sampled_from(["sigmoid", "tanh"]),
    )
    def test_conv_x_tma_fuzzed_shapes(sp, b, half_c, n, k, d, padding, dilation, x_tma, act):
        """Hypothesis-drawn stride-1 geometries through the TMA mainloops (forced; float64, channels innermost):
        the flat rows (x_tma=True without padding) and the spatial box, Conv1d..3d, batch 0 included."""
        conv = sys.modules["pai_fast.kernels.dendritic_conv"]
        sp = tuple(max(v, dilation * (k - 1) + 1 - 2 * padding) for v in sp)  # at least one output position
        old = dict(conv._state)
        conv._state.update(weight_tma=True, x_tma=x_tma)
        conv._plans.clear()
        try:
            x_fn = lambda t: conv._channels_last(t, 1)  # noqa: E731 (channels innermost, what TMA reads)
            conv_case(DEVICE, torch.float64, b, 2 * half_c, n, sp, k, d, act, 1, padding, dilation, x_fn=x_fn)
            want = 1 if x_tma is True and padding == 0 else 2
            assert [p.x_tma for p in conv._plans._plans.values()] == [want]
        finally:
            conv._state.update(old)


def test_conv_outputs_keep_the_input_memory_format():
    """conv_empty (what the fused backends and the fake kernels allocate through): channels_last in, channels last
    out (h as [B, *out, D, C] in memory); NCHW / Conv1d / sliced inputs get contiguous outputs."""
    x = torch.randn(2, 3, 5, 6).contiguous(memory_format=torch.channels_last)
    y = conv_empty(x, (2, 7), (4, 5))
    assert y.shape == (2, 7, 4, 5) and y.is_contiguous(memory_format=torch.channels_last)
    h = conv_empty(x, (2, 3, 7), (4, 5))
    assert h.shape == (2, 3, 7, 4, 5) and h.permute(0, 3, 4, 1, 2).is_contiguous()
    x3 = torch.randn(2, 3, 4, 5, 6).contiguous(memory_format=torch.channels_last_3d)
    assert conv_empty(x3, (2, 7), (3, 4, 5)).is_contiguous(memory_format=torch.channels_last_3d)
    for plain in (x.contiguous(), torch.randn(2, 3, 9), x.contiguous()[:, :, ::2]):
        out = conv_empty(plain, (2, 7), plain.shape[2:])
        assert out.is_contiguous() and out.shape == (2, 7, *plain.shape[2:])
