"""The ``cuda`` backend (csrc/ through pai_fast._C and pai_fast.cuda_backend) against the float64 reference.

CPU-runnable: the extension imports, build_info works, calls without a GPU raise a clear error, supports()
gives reasons. GPU (@pytest.mark.gpu, run on the GPU machine): the full dtype grid, odd sizes, batch 0 and 1,
non-contiguous inputs, D = 0..9 and beyond the fused-register limit, every activation, forward and every
gradient, conv 1d/2d/3d with stride/padding/dilation and channels_last, determinism, TF32.
The same case functions also run on the CPU through the SIMT emulator (tests/test_cuda_emulated.py).
"""

from __future__ import annotations

import itertools

import pytest
import torch

from pai_fast import cuda_backend as CB
from pai_fast import reference as R

from .helpers import dendrite_params, noncontig, stack_weights

ACTS = ["sigmoid", "tanh", "relu", "identity"]
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
# max |out - ref| / max |ref| (ref in float64 from the same rounded inputs)
REL_TOL = {torch.float64: 1e-11, torch.float32: 2e-5, torch.float16: 1e-2, torch.bfloat16: 4e-2}
TF32_TOL = 1e-2


def _gpu_ready() -> bool:
    return (
        torch.cuda.is_available()
        and CB.available()
        and not CB.supports("linear", torch.empty(1, 1, device="cuda"), torch.empty(1, 1, device="cuda"), 1, "sigmoid")
    )


def _close(name, out, ref, tol):
    assert out.shape == ref.shape, f"{name}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    o, r = out.detach().double().cpu(), ref.detach().double().cpu()
    if r.numel() == 0:
        return
    assert torch.isfinite(o).all(), f"{name}: non-finite values in the output"
    scale = r.abs().max().item()
    err = (o - r).abs().max().item()
    assert err <= tol * max(scale, 1e-6) + 1e-300, f"{name}: max abs err {err:.3e} vs max |ref| {scale:.3e} (tol {tol})"


def _inputs(weight_shape, x_shape, d, bias, dtype, device, scale=0.5):
    """Random inputs, rounded to dtype; the float64 copies hold exactly the rounded values."""
    w, b, dw, db, g, c = dendrite_params(weight_shape, d, bias=bias, dtype=torch.float64, scale=scale)
    x = torch.randn(x_shape, dtype=torch.float64)
    ts = [x, w, b, dw, db, g, c]
    low = [None if t is None else t.to(dtype).to(device) for t in ts]
    ref = [None if t is None else t.to(dtype).double() for t in ts]
    return low, ref


def _ref_grads(fn, ref_inputs, gy):
    leaves = [None if t is None else t.clone().requires_grad_() for t in ref_inputs]
    y = fn(*leaves)
    y.backward(gy)
    return y.detach(), [None if t is None else t.grad for t in leaves]


def check_linear(
    device, dtype, m, k, n, d, act="sigmoid", bias=True, noncontig_x=False, tf32=False, grads=True, stacked=False
):
    """One forward + backward case of the cuda backend against float64 autograd of the reference. stacked: weight
    and dendrite_weight are views of one [(1+D)N, K] storage, as DendriticLinear keeps them."""
    (x, w, b, dw, db, g, c), ref_in = _inputs((n, k), (m, k), d, bias, dtype, device)
    if stacked:
        w, dw = stack_weights(w, dw)
    if noncontig_x:
        x = noncontig(x)
    tol = TF32_TOL if tf32 and dtype == torch.float32 else REL_TOL[dtype]
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        y, h = CB.linear_fwd(x, w, b, dw, db, g, c, act, True)
        y_inf, h_inf = CB.linear_fwd(x, w, b, dw, db, g, c, act, False)
        gy64 = torch.randn(m, n, dtype=torch.float64).to(dtype).double()

        def fn(xx, ww, bb, dww, dbb, gg, cc):
            return R.dendritic_linear_ref(xx, ww, bb, dww, dbb, gg, cc, activation=act)

        y64, g64 = _ref_grads(fn, ref_in, gy64)
        assert y.dtype == dtype and y.shape == (m, n) and h.shape == (m, d, n) and h_inf.numel() == 0
        _close("y", y, y64, tol)
        assert torch.equal(y, y_inf), "inference forward differs from training forward"
        if d > 0:
            a_ref = _ref_acts_linear(ref_in, act)
            _close("h", h, a_ref, max(tol, REL_TOL[dtype]))
        if not grads:
            return
        gy = gy64.to(dtype).to(device)
        out = CB.linear_bwd(gy, x, w, dw, g, c, h, act, bias)
        names = ["dx", "dweight", "dbias", "ddendrite_weight", "ddendrite_bias", "dgate", "dcascade"]
        refs = [g64[0], g64[1], g64[2], g64[3], g64[4], g64[5], g64[6]]
        gtol = 3 * tol
        for name, o, r, inp in zip(names, out, refs, [x, w, b, dw, db, g, c]):
            if r is None:  # no bias: zeros are returned
                assert torch.count_nonzero(o) == 0, f"{name}: expected zeros without bias"
                continue
            assert o.dtype == dtype, f"{name}: dtype {o.dtype}"
            assert o.shape == inp.shape, f"{name}: shape {tuple(o.shape)} != {tuple(inp.shape)}"
            _close(name, o, r, gtol)
        if d > 0:
            upper = torch.triu(torch.ones(d, d, dtype=torch.bool), 0).to(device)
            assert torch.count_nonzero(out[6][upper]) == 0, "dcascade entries [k, i] with i >= k must be exactly 0"
        again = CB.linear_bwd(gy, x, w, dw, g, c, h, act, bias)
        for name, o1, o2 in zip(names, out, again):
            assert torch.equal(o1, o2), f"{name}: backward is not bitwise deterministic"
        # grad_y one element off its alignment: the dZ kernel's scalar path (one channel per thread) instead of its
        # vector one (two); each channel sums the same rows in the same order, so the bits agree.
        gy_off = torch.empty(m * n + 1, dtype=dtype, device=device)[1:].view(m, n).copy_(gy)
        scalar = CB.linear_bwd(gy_off, x, w, dw, g, c, h, act, bias)
        for name, o1, o2 in zip(names, out, scalar):
            assert torch.equal(o1, o2), f"{name}: the dZ kernel's vector and scalar paths differ"
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def _ref_acts_linear(ref_in, act):
    x, w, b, dw, db, g, c = ref_in
    from pai_fast.activations import resolve_activation

    f = resolve_activation(act)
    acts = []
    for i in range(dw.shape[0]):
        s = x @ dw[i].T + (0 if db is None else db[i])
        for j in range(i):
            s = s + c[i, j] * acts[j]
        acts.append(f(s))
    return torch.stack(acts, 1)


def check_conv(
    device, dtype, b, cin, cout, sp, k, stride, pad, dil, d, act="sigmoid", bias=True, channels_last=False, tf32=False
):
    nd = len(sp)
    (x, w, bb, dw, db, g, c), ref_in = _inputs((cout, cin, *k), (b, cin, *sp), d, bias, dtype, device)
    if channels_last:
        fmt = {2: torch.channels_last, 3: torch.channels_last_3d}.get(nd)
        if fmt is not None:
            x = x.contiguous(memory_format=fmt)
        else:
            x = noncontig(x)
    tol = TF32_TOL if tf32 and dtype == torch.float32 else REL_TOL[dtype]
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        y, h = CB.conv_fwd(x, w, bb, dw, db, g, c, stride, pad, dil, act, True)

        def fn(xx, ww, b_, dww, dbb, gg, cc):
            return R.dendritic_conv_ref(xx, ww, b_, dww, dbb, gg, cc, stride, pad, dil, 1, activation=act)

        y_shape = fn(*ref_in).shape
        gy64 = torch.randn(y_shape, dtype=torch.float64).to(dtype).double()
        y64, g64 = _ref_grads(fn, ref_in, gy64)
        _close("y", y, y64, tol)
        assert h.shape == (b, d, cout, *y_shape[2:])
        gy = gy64.to(dtype).to(device)
        out = CB.conv_bwd(gy, x, w, dw, g, c, h, stride, pad, dil, act, bias)
        names = ["dx", "dweight", "dbias", "ddendrite_weight", "ddendrite_bias", "dgate", "dcascade"]
        for name, o, r, inp in zip(names, out, g64, [x, w, bb, dw, db, g, c]):
            if r is None:
                assert torch.count_nonzero(o) == 0, f"{name}: expected zeros without bias"
                continue
            assert o.shape == inp.shape and o.dtype == dtype, f"{name}: {tuple(o.shape)} {o.dtype}"
            _close(name, o, r, 3 * tol)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


# ------------------------------------------------------------------------------------------- CPU tests
def test_adapter_imports_without_gpu():
    assert callable(CB.linear_fwd) and callable(CB.conv_bwd) and callable(CB.supports)


def test_extension_imports_and_build_info():
    if not CB.available():
        pytest.skip(f"pai_fast._C not built here: {CB._IMPORT_ERROR}")
    from pai_fast import _C

    info = _C.build_info()
    assert "80" in info["archs"] and "90" in info["archs"], info
    assert info["nvcc_version"].count(".") >= 1, info
    assert info["max_dendrites"] == CB.MAX_DENDRITES == _C.MAX_DENDRITES
    assert _C.ACTIVATIONS == CB._ACTS
    assert _C.EMULATED is False


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_no_gpu_raises_clear_error():
    if not CB.available():
        pytest.skip(f"pai_fast._C not built here: {CB._IMPORT_ERROR}")
    from pai_fast import _C

    assert _C.device_count() == 0
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        _C.require_gpu()
    x, w = torch.randn(3, 4), torch.randn(5, 4)
    e = torch.empty(0, 5, 4)
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        CB.linear_fwd(x, w, None, e, None, torch.empty(0, 5), torch.empty(0, 0, 5), "sigmoid", False)


def test_unavailable_module_reason(monkeypatch):
    monkeypatch.setattr(CB, "_C", None)
    monkeypatch.setattr(CB, "_IMPORT_ERROR", "ImportError: test")
    reasons = CB.supports("linear", torch.randn(2, 3), torch.randn(4, 3), 1, "sigmoid")
    assert any("pai_fast._C" in r and "ImportError: test" in r for r in reasons), reasons
    with pytest.raises(RuntimeError, match="not available"):
        CB.linear_fwd(
            torch.randn(2, 3),
            torch.randn(4, 3),
            None,
            torch.empty(0, 4, 3),
            None,
            torch.empty(0, 4),
            torch.empty(0, 0, 4),
            "sigmoid",
            False,
        )


@pytest.mark.parametrize(
    "kind,x,w,d,act,needle",
    [
        ("linear", torch.randn(2, 3), torch.randn(4, 3), 1, "sigmoid", "needs CUDA tensors"),
        ("linear", torch.ones(2, 3, dtype=torch.int32), torch.randn(4, 3), 1, "sigmoid", "dtype must be"),
        ("linear", torch.randn(2, 3), torch.randn(4, 3), 1, "gelu", "activation must be one of"),
        ("linear", torch.randn(2, 3), torch.randn(4, 3), 128, "sigmoid", "0..127 dendrites"),
        ("linear", torch.randn(2, 3), torch.randn(4, 3, dtype=torch.float64), 1, "sigmoid", "differs from x dtype"),
        ("linear", torch.randn(2, 3), torch.randn(4, 5), 1, "sigmoid", "linear expects"),
        ("linear", torch.randn(2, 3), torch.randn(4, 3, 1), 1, "sigmoid", "linear expects"),
        ("conv", torch.randn(2, 6, 5, 5), torch.randn(4, 3, 3, 3), 1, "sigmoid", "groups must be 1"),
        ("conv", torch.randn(6, 5, 5), torch.randn(4, 6, 3, 3), 1, "sigmoid", "must be batched"),
        ("pool", torch.randn(2, 3), torch.randn(4, 3), 1, "sigmoid", "kind: expected"),
    ],
)
def test_supports_reasons(kind, x, w, d, act, needle):
    reasons = CB.supports(kind, x, w, d, act)
    assert any(needle in r for r in reasons), reasons


class _RecordingC:
    """A stand-in for pai_fast._C that records each call's arguments; linear_packed_bytes answers 4096."""

    EMULATED = False

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        def call(*args):
            self.calls.append((name, args))
            return 4096 if name == "linear_packed_bytes" else 0

        return call


@pytest.mark.parametrize("sm90", [True, False], ids=["hopper", "generic"])
def test_linear_forward_passes_each_calls_tensors(monkeypatch, sm90):
    """The forward wrapper hands _C the pointers of each call's own tensors (inputs and fresh outputs) with their
    sizes and strides, on the Hopper path (weights packed once per version) and the generic one."""
    lib = _RecordingC()
    monkeypatch.setattr(CB, "_C", lib)
    monkeypatch.setattr(CB, "sm90_enabled", lambda: sm90)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    CB.clear_packed_weights()
    d = 2
    for _ in range(2):
        (x, w, b, dw, db, g, c), _ = _inputs((13, 24), (21, 24), d, True, torch.bfloat16, "cpu")
        lib.calls.clear()
        y, h = CB.linear_fwd(x, w, b, dw, db, g, c, "tanh", True)
        name, args = lib.calls[-1]
        assert name == ("linear_forward_packed" if sm90 else "linear_forward")
        assert args[:2] == (2, 2)  # bfloat16, tanh
        ins = args[2:9] if sm90 else args[3:10]
        for t, a in zip((x, w, b, dw, db, g, c), ins):
            assert a == (t.data_ptr(), tuple(t.shape), t.stride())
        outs = args[11:13] if sm90 else args[10:12]
        assert outs == ((y.data_ptr(), (21, 13), (13, 1)), (h.data_ptr(), (21, d, 13), (d * 13, 13, 1)))
        if sm90:
            assert args[10] == 4096 and any(n == "linear_pack" for n, _ in lib.calls)


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="activation: expected one of"):
        CB._act_code("gelu")
    with pytest.raises(ValueError, match="x: expected dtype"):
        CB._dtype_code(torch.zeros(1, dtype=torch.int64))
    with pytest.raises(ValueError, match="weight: expected dtype"):
        CB._check_same(torch.zeros(1), weight=torch.zeros(1, dtype=torch.float64))


# ------------------------------------------------------------------------------------------- GPU tests
gpu = pytest.mark.gpu

LINEAR_SHAPES = [(1, 1, 1), (37, 33, 19), (0, 17, 9), (130, 100, 70), (5, 257, 300)]


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("d", [0, 1, 2, 3, 5, 8, 9])
@pytest.mark.parametrize("shape", LINEAR_SHAPES, ids=str)
def test_linear_grid_gpu(bwd_path, dtype, d, shape):
    assert _gpu_ready(), CB.supports(
        "linear", torch.empty(1, 1, device="cuda"), torch.empty(1, 1, device="cuda"), 1, "sigmoid"
    )
    m, k, n = shape
    check_linear("cuda", dtype, m, k, n, d)


@gpu
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_linear_activations_bias_gpu(bwd_path, act, bias, dtype):
    check_linear("cuda", dtype, 23, 45, 31, 3, act=act, bias=bias)


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_linear_noncontiguous_gpu(bwd_path, dtype):
    check_linear("cuda", dtype, 29, 40, 21, 4, noncontig_x=True)
    # transposed x and transposed weight views
    (x, w, b, dw, db, g, c), ref = _inputs((21, 40), (40, 29), 2, True, dtype, "cuda")
    y, _ = CB.linear_fwd(x.t(), w.t().contiguous().t(), b, dw, db, g, c, "tanh", False)
    y64 = R.dendritic_linear_ref(ref[0].t(), *ref[1:], activation="tanh")
    _close("y", y, y64, REL_TOL[dtype])


@gpu
@pytest.mark.parametrize("d", [12, 31, 127])
def test_linear_large_d_gpu(d):
    check_linear("cuda", torch.float32, 19, 24, 5, d)


@gpu
def test_linear_too_many_dendrites_gpu():
    (x, w, b, dw, db, g, c), _ = _inputs((3, 4), (2, 4), 128, True, torch.float32, "cuda")
    with pytest.raises(RuntimeError, match="at most 127"):
        CB.linear_fwd(x, w, b, dw, db, g, c, "sigmoid", False)


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_linear_splitk_and_big_gpu(bwd_path, dtype):
    # few output tiles + long reduction -> split-K in both backward GEMMs
    check_linear("cuda", dtype, 3000, 64, 24, 3)
    check_linear("cuda", dtype, 16, 2000, 40, 2)


@gpu
def test_linear_tf32_gpu(bwd_path):
    check_linear("cuda", torch.float32, 77, 300, 45, 3, tf32=True)


@gpu
def test_linear_bad_shapes_gpu():
    (x, w, b, dw, db, g, c), _ = _inputs((6, 5), (4, 5), 2, True, torch.float32, "cuda")
    with pytest.raises(ValueError, match="'gate'"):
        CB.linear_fwd(x, w, b, dw, db, g[:, :3], c, "sigmoid", False)
    with pytest.raises(ValueError, match="'dendrite_weight'"):
        CB.linear_fwd(x, w, b, dw[:, :, :4], db, g, c, "sigmoid", False)
    with pytest.raises(ValueError, match="dendrite_bias"):
        CB.linear_fwd(x, w, b, dw, None, g, c, "sigmoid", False)


CONV_CASES = [
    # b, cin, cout, spatial, kernel, stride, padding, dilation
    (2, 3, 5, (11,), (3,), (1,), (1,), (1,)),
    (1, 4, 6, (13,), (4,), (2,), (0,), (2,)),
    (2, 3, 7, (9, 8), (3, 3), (1, 1), (1, 1), (1, 1)),
    (3, 5, 4, (10, 7), (3, 2), (2, 1), (1, 0), (1, 2)),
    (1, 2, 3, (5, 6, 7), (3, 3, 2), (1, 2, 1), (1, 0, 1), (1, 1, 2)),
    (0, 3, 4, (6, 6), (3, 3), (1, 1), (1, 1), (1, 1)),
]


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CONV_CASES, ids=str)
@pytest.mark.parametrize("d", [0, 2, 9])
def test_conv_grid_gpu(dtype, case, d):
    check_conv("cuda", dtype, *case, d)


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("case", CONV_CASES[2:5], ids=str)
def test_conv_channels_last_gpu(dtype, case):
    check_conv("cuda", dtype, *case, 3, channels_last=True, act="tanh")


@gpu
@pytest.mark.parametrize("act,bias", list(itertools.product(ACTS, [True, False])))
def test_conv_activations_gpu(act, bias):
    check_conv("cuda", torch.float32, 2, 3, 5, (8, 9), (3, 3), (1, 1), (1, 1), (1, 1), 2, act=act, bias=bias)


@gpu
def test_conv_big_splitk_gpu():
    check_conv("cuda", torch.bfloat16, 8, 16, 8, (32, 32), (3, 3), (1, 1), (1, 1), (1, 1), 3)
    check_conv("cuda", torch.float32, 4, 16, 24, (20, 20), (3, 3), (2, 2), (1, 1), (1, 1), 3, tf32=True)


@gpu
def test_streams_and_graph_capture_gpu():
    """Launches go to the current stream and are CUDA-graph capturable (no host syncs)."""
    (x, w, b, dw, db, g, c), _ = _inputs((32, 48), (64, 48), 3, True, torch.float16, "cuda")
    y_ref, h_ref = CB.linear_fwd(x, w, b, dw, db, g, c, "sigmoid", True)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        y1, _ = CB.linear_fwd(x, w, b, dw, db, g, c, "sigmoid", True)
        CB.linear_bwd(torch.ones_like(y1), x, w, dw, g, c, h_ref, "sigmoid", True)
    torch.cuda.current_stream().wait_stream(s)
    assert torch.equal(y1, y_ref)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y2, h2 = CB.linear_fwd(x, w, b, dw, db, g, c, "sigmoid", True)
        grads = CB.linear_bwd(torch.ones_like(y2), x, w, dw, g, c, h2, "sigmoid", True)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(y2, y_ref)
    eager = CB.linear_bwd(torch.ones_like(y_ref), x, w, dw, g, c, h_ref, "sigmoid", True)
    for a, e in zip(grads, eager):
        assert torch.equal(a, e)


@gpu
def test_determinism_repeats_gpu():
    (x, w, b, dw, db, g, c), _ = _inputs((64, 96), (4096, 96), 4, True, torch.bfloat16, "cuda")
    y, h = CB.linear_fwd(x, w, b, dw, db, g, c, "sigmoid", True)
    gy = torch.randn_like(y)
    first = CB.linear_bwd(gy, x, w, dw, g, c, h, "sigmoid", True)
    for _ in range(20):
        again = CB.linear_bwd(gy, x, w, dw, g, c, h, "sigmoid", True)
        for a, e in zip(first, again):
            assert torch.equal(a, e)
