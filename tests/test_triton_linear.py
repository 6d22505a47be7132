"""Triton backend (pai_fast.kernels), dendritic Linear: forward and backward against the float64 oracle
(pai_fast.reference), fp64 gradcheck, edge shapes, strides, determinism, errors.

How to run:
  CPU / CI (Triton interpreter; the variable must be set BEFORE triton is imported, so set it on the command line):
      TRITON_INTERPRET=1 pytest -m interpret tests/test_triton_linear.py tests/test_triton_conv.py
  GPU machine (the `interpret` tests then run on CUDA too, plus the full dtype grid):
      pytest -m "gpu or interpret" tests/test_triton_linear.py tests/test_triton_conv.py
Without TRITON_INTERPRET=1 and without a GPU, every test here skips and says why.

Accuracy rule (FlashAttention's): the kernel's error against float64 must stay within 2x (forward) / 3x (gradients)
the error of the plain-torch reference computed in the same dtype, plus a small floor relative to the magnitude.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

from pai_fast._layout import stacked_view
from pai_fast.reference import dendritic_linear_ref

from .helpers import cuda_kernel_names, dendrite_params, noncontig, stack_weights

pytest.importorskip("triton", reason="the triton backend needs the triton package")

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
HAS_CUDA = torch.cuda.is_available()
ACTS = ["sigmoid", "tanh", "relu", "identity"]
# Floors (atol, rtol-of-max|ref|) added to the ratio rule.
FLOOR = {
    torch.float64: (1e-11, 1e-10),
    torch.float32: (1e-6, 1e-5),
    torch.float16: (1e-3, 2e-3),
    torch.bfloat16: (8e-3, 8e-3),
}


def load_kernels():
    """pai_fast.kernels; from a source checkout (no package_dir install yet) load kernels/ under that name."""
    try:
        return importlib.import_module("pai_fast.kernels")
    except ModuleNotFoundError as e:
        if e.name != "pai_fast.kernels":
            raise
    root = Path(__file__).resolve().parents[1] / "kernels"
    spec = importlib.util.spec_from_file_location(
        "pai_fast.kernels", root / "__init__.py", submodule_search_locations=[str(root)]
    )
    mod = importlib.util.module_from_spec(spec)
    sys.modules["pai_fast.kernels"] = mod
    spec.loader.exec_module(mod)
    import pai_fast

    pai_fast.kernels = mod
    return mod


K = load_kernels()

if K.IMPORT_ERROR is not None:
    DEVICE, SKIP_REASON = None, K.IMPORT_ERROR
elif INTERPRET and not K.INTERPRET:
    DEVICE, SKIP_REASON = (
        None,
        "pai_fast.kernels was imported before TRITON_INTERPRET=1 was set; set it on the command line",
    )
elif INTERPRET:
    DEVICE, SKIP_REASON = "cpu", ""
elif HAS_CUDA:
    DEVICE, SKIP_REASON = "cuda", ""
else:
    DEVICE, SKIP_REASON = (
        None,
        (
            "needs the Triton interpreter or a GPU: run `TRITON_INTERPRET=1 pytest -m interpret "
            "tests/test_triton_*.py` (the variable must be set before triton is imported)"
        ),
    )

interp = [pytest.mark.interpret, pytest.mark.skipif(DEVICE is None, reason=SKIP_REASON or "no device")]
gpu = [pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA or INTERPRET, reason="needs CUDA without TRITON_INTERPRET")]


def apply(marks):
    def deco(fn):
        for m in marks:
            fn = m(fn)
        return fn

    return deco


# ---------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------


def max_err(a: torch.Tensor, ref64: torch.Tensor) -> float:
    if a.numel() == 0:
        return 0.0
    return (a.double() - ref64).abs().max().item()


def check_rule(name, got, ref64, same, dtype, ratio):
    """got (kernel) vs ref64, allowed ratio * error of `same` (torch in the same dtype) + floor."""
    assert got.shape == ref64.shape, f"{name}: shape {tuple(got.shape)} != {tuple(ref64.shape)}"
    assert torch.isfinite(got).all() == torch.isfinite(ref64).all(), f"{name}: non-finite values differ"
    atol, rtol = FLOOR[dtype]
    scale = ref64.abs().max().item() if ref64.numel() else 0.0
    e_k = max_err(got, ref64)
    e_t = max_err(same, ref64) if same is not None else 0.0
    bound = ratio * e_t + atol + rtol * scale
    assert e_k <= bound, (
        f"{name}: kernel error {e_k:.3e} > {ratio}x torch-{dtype} error {e_t:.3e} "
        f"+ floor ({atol:g} + {rtol:g}*{scale:.3g})"
    )


def make(m, k, n, d, dtype, device, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
    params = dendrite_params((n, k), d, bias=bias, dtype=torch.float64, generator=g)
    params = [None if p is None else p.to(device=device, dtype=dtype) for p in params]
    return (x, *params)


def linear_case(
    device,
    dtype,
    m,
    k,
    n,
    d,
    act,
    bias=True,
    x_fn=None,
    p_fn=None,
    gy_fn=None,
    backward=True,
    ratio_fwd=2.0,
    ratio_bwd=3.0,
    stacked=False,
):
    """Run the kernels on one case and check y, h and all seven gradients against float64 autograd.
    stacked: weight and dendrite_weight as views of one buffer (how DendriticLinear keeps them)."""
    x, w, b, dw, db, gate, cas = make(m, k, n, d, dtype, device, bias)
    if stacked:
        w, dw = stack_weights(w, dw)
    if x_fn is not None:
        x = x_fn(x)
    if p_fn is not None:
        w, dw, gate, cas = p_fn(w), p_fn(dw), p_fn(gate), p_fn(cas)
    inputs = (x, w, b, dw, db, gate, cas)
    y, h = K.linear_fwd(x, w, b, dw, db, gate, cas, act, backward)

    ref_in = [None if t is None else t.detach().double().requires_grad_() for t in inputs]
    same_in = [None if t is None else t.detach().clone().requires_grad_() for t in inputs]
    y64 = dendritic_linear_ref(*ref_in, activation=act)
    ysame = dendritic_linear_ref(*same_in, activation=act)
    assert y.dtype == dtype and y.shape == (m, n) and y.is_contiguous()
    check_rule("y", y, y64.detach(), ysame.detach(), dtype, ratio_fwd)
    if not backward:
        assert h.numel() == 0
        return
    assert h.shape == (m, d, n) and h.dtype == dtype

    gy64 = torch.randn(m, n, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).to(device)
    gy = gy64.to(dtype)
    if gy_fn is not None:
        gy = gy_fn(gy)
    torch.autograd.backward(y64, gy.double())
    torch.autograd.backward(ysame, gy)
    grads = K.linear_bwd(gy, x, w, dw, gate, cas, h, act, bias)
    names = ["dx", "dweight", "dbias", "ddendrite_weight", "ddendrite_bias", "dgate", "dcascade"]
    refs = [ref_in[i] for i in (0, 1, 2, 3, 4, 5, 6)]
    sames = [same_in[i] for i in (0, 1, 2, 3, 4, 5, 6)]
    for name, got, r, s_ in zip(names, grads, refs, sames):
        if r is None:  # no bias: the kernel may return zeros
            continue
        assert got.dtype == s_.dtype, f"{name}: dtype {got.dtype} != {s_.dtype}"
        check_rule(name, got, r.grad, s_.grad, dtype, ratio_bwd)
    # Only j < i cascade entries are used: every other entry gets exactly zero gradient.
    dcas = grads[6]
    upper = torch.ones(d, d, dtype=torch.bool, device=dcas.device).triu()
    assert (dcas[upper] == 0).all()
    return y, h, grads


# ---------------------------------------------------------------------------------------------------------------
# Interpreter (CPU) tests; on a GPU machine they run on CUDA
# ---------------------------------------------------------------------------------------------------------------


@apply(interp)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("d", [0, 1, 2, 3, 8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_linear_matches_fp64_oracle(dtype, d, act):
    linear_case(DEVICE, dtype, 37, 45, 29, d, act)


@apply(interp)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("d", [0, 3])
@pytest.mark.parametrize("mkn", [(1, 1, 1), (1, 16, 3), (2, 127, 31), (64, 64, 64), (70, 40, 130), (33, 300, 17)])
def test_linear_shapes(mkn, d, bias):
    linear_case(DEVICE, torch.float32, *mkn, d, "sigmoid", bias=bias)


@apply(interp)
@pytest.mark.parametrize("path", ["onepass", "gemm"])
@pytest.mark.parametrize(("d", "act"), [(1, "tanh"), (2, "relu"), (3, "sigmoid"), (7, "identity")])
def test_linear_backward_paths(d, act, path, monkeypatch):
    """Both Linear backwards (one launch with dZ recomputed in the GEMMs; the dZ kernel + cuBLAS) against the
    float64 oracle, on an odd shape whose rows, channels and K all leave partial tiles; the forced one ran."""
    lin = sys.modules["pai_fast.kernels.dendritic_linear"]
    launches = []
    real = lin._launch_onepass
    monkeypatch.setattr(lin, "_launch_onepass", lambda *a, **k: launches.append(1) or real(*a, **k))
    with K.backward_path(path):
        linear_case(DEVICE, torch.float64, 37, 45, 29, d, act)
    assert len(launches) == (1 if path == "onepass" else 0)


@apply(interp)
def test_linear_backward_paths_agree_and_bad_path():
    x, w, b, dw, db, g, c = make(70, 40, 130, 3, torch.float32, DEVICE)
    _, h = K.linear_fwd(x, w, b, dw, db, g, c, "sigmoid", True)
    gy = torch.randn(70, 130, device=DEVICE)
    out = {}
    for path in ("onepass", "gemm"):
        with K.backward_path(path):
            out[path] = K.linear_bwd_packed(gy, x, w, dw, g, c, h, "sigmoid", True)
    for a, b_ in zip(out["onepass"], out["gemm"]):
        assert a.stride() == b_.stride()
        torch.testing.assert_close(a, b_, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="backward_path: path must be one of"):
        with K.backward_path("fast"):
            pass


@apply(interp)
def test_linear_backward_auto_choice():
    """auto takes the one-pass backward for 1 <= D <= 3 up to the dtype's MAC threshold, else the split one;
    backward_path forces either (the one-pass one up to D = 7)."""
    lin = sys.modules["pai_fast.kernels.dendritic_linear"]

    def onepass(m, k, n, d, dtype=torch.float32):
        x, w, _, dw, _, g, c = make(m, k, n, d, dtype, DEVICE)
        h = torch.empty(m, d, n, dtype=dtype, device=DEVICE)
        gy = torch.empty(m, n, dtype=dtype, device=DEVICE)
        return lin._BwdPlan(gy, x, w, dw, g, c, h, "sigmoid", True).onepass

    limit = lin.onepass_max_macs(torch.float32)
    assert limit == lin.ONEPASS_MAX_MACS["ieee"] and lin.onepass_max_macs(torch.bfloat16) > limit
    assert onepass(64, 64, 32, 3)
    assert not onepass(limit // (4 * 512 * 256) + 1, 512, 256, 3)  # just past the threshold
    assert not onepass(64, 64, 32, 4) and not onepass(64, 64, 32, 0)  # auto: D <= 3; D = 0 has no dZ to fuse
    with K.backward_path("onepass"):
        assert onepass(64, 64, 32, 7) and onepass(limit // (4 * 512 * 256) + 1, 512, 256, 3)
        assert not onepass(16, 16, 8, 8)  # P = 16: past the one-pass kernel's tiles
    with K.backward_path("gemm"):
        assert not onepass(64, 64, 32, 3)
    x, w, _, dw, _, g, c = make(8, 16, 4, 2, torch.float32, DEVICE)
    h, gy = torch.empty(8, 2, 4, device=DEVICE), torch.empty(8, 4, device=DEVICE)
    with K.backward_path("onepass"):  # W and V walked with one K stride, so mismatched ones take the split path
        assert not lin._BwdPlan(gy, x, w.t().contiguous().t(), dw, g, c, h, "sigmoid", True).onepass
        assert lin._BwdPlan(gy, x, w, dw, g, c, h, "sigmoid", True).onepass
        assert not lin._BwdPlan(gy[:0], x[:0], w, dw, g, c, h[:0], "sigmoid", True).onepass  # nothing to launch
    # column offsets are int32 in the kernel: a grad_y whose columns span 2^31 elements is refused (meta: no memory)
    wide = torch.empty_strided((8, 4), (1, 1 << 30), device="meta")
    assert lin._columns_fit_int32(gy, x, w, dw, g, c, h) and not lin._columns_fit_int32(wide, x, w, dw, g, c, h)


@apply(interp)
def test_linear_fp16_forward():
    linear_case(DEVICE, torch.float16, 19, 48, 21, 2, "tanh", backward=False)


@apply(interp)
@pytest.mark.parametrize("d", [0, 2])
def test_linear_batch_zero(d):
    x, w, b, dw, db, g, c = make(0, 6, 5, d, torch.float32, DEVICE)
    y, h = K.linear_fwd(x, w, b, dw, db, g, c, "sigmoid", True)
    assert y.shape == (0, 5) and h.shape == (0, d, 5)
    grads = K.linear_bwd(torch.empty(0, 5, device=DEVICE), x, w, dw, g, c, h, "sigmoid", True)
    shapes = [(0, 6), (5, 6), (5,), (d, 5, 6), (d, 5), (d, 5), (d, d, 5)]
    assert [tuple(t.shape) for t in grads] == shapes
    assert all((t == 0).all() for t in grads)
    y, h = K.linear_fwd(x, w, b, dw, db, g, c, "sigmoid", False)
    assert y.shape == (0, 5) and h.numel() == 0


def _guarded(t: torch.Tensor, pad: int = 3) -> torch.Tensor:
    """t as a strided slice of a bigger NaN-filled buffer: any read outside t's elements poisons the result."""
    big = torch.full([s + 2 * pad for s in t.shape[:-1]] + [2 * t.shape[-1] + 2 * pad], float("nan"), dtype=t.dtype,
                     device=t.device)  # fmt: skip
    inner = big[tuple(slice(pad, pad + s) for s in t.shape[:-1]) + (slice(pad, pad + 2 * t.shape[-1], 2),)]
    inner.copy_(t)
    return inner


@apply(interp)
@pytest.mark.parametrize("d", [1, 3])
def test_linear_noncontiguous_and_guard_bands(d):
    # x: NaN-guarded strided slice; weights / gate / cascade non-contiguous; grad_y transposed storage.
    linear_case(
        DEVICE,
        torch.float32,
        21,
        35,
        19,
        d,
        "sigmoid",
        x_fn=_guarded,
        p_fn=noncontig,
        gy_fn=lambda t: t.t().contiguous().t(),
    )


@apply(interp)
def test_linear_transposed_x_and_mismatched_weight_strides():
    def p_fn(t):
        # weight [N, K] stored K-major, dendrite_weight contiguous: the K strides differ (launcher must cope).
        return t.t().contiguous().t() if t.dim() == 2 and t.shape[1] == 23 else t

    linear_case(DEVICE, torch.float32, 17, 23, 13, 2, "tanh", x_fn=lambda t: t.t().contiguous().t(), p_fn=p_fn)


@apply(interp)
def test_linear_inference_writes_no_h_and_same_y():
    x, w, b, dw, db, g, c = make(25, 30, 22, 3, torch.float32, DEVICE)
    y1, h1 = K.linear_fwd(x, w, b, dw, db, g, c, "sigmoid", True)
    y0, h0 = K.linear_fwd(x, w, b, dw, db, g, c, "sigmoid", False)
    assert h0.numel() == 0
    assert torch.equal(y0, y1)
    # h holds the activated dendrite outputs a_i.
    a = []
    x64, w64, b64, dw64, db64, g64, c64 = [t.double() for t in (x, w, b, dw, db, g, c)]
    for i in range(3):
        s = x64 @ dw64[i].t() + db64[i]
        for j in range(i):
            s = s + c64[i, j] * a[j]
        a.append(torch.sigmoid(s))
    torch.testing.assert_close(h1.double(), torch.stack(a, 1), atol=1e-5, rtol=1e-5)


@apply(interp)
def test_linear_nan_stays_in_its_row():
    x, w, b, dw, db, g, c = make(40, 24, 18, 2, torch.float32, DEVICE)
    x[7, 3] = float("nan")
    y, _ = K.linear_fwd(x, w, b, dw, db, g, c, "tanh", False)
    assert torch.isnan(y[7]).all()
    assert torch.isfinite(torch.cat([y[:7], y[8:]])).all()


@apply(interp)
@pytest.mark.parametrize("path", ["onepass", "gemm"])
def test_linear_backward_is_deterministic(path):
    x, w, b, dw, db, g, c = make(150, 33, 45, 3, torch.float32, DEVICE)
    _, h = K.linear_fwd(x, w, b, dw, db, g, c, "sigmoid", True)
    gy = torch.randn(150, 45, device=DEVICE)
    with K.backward_path(path):
        g1 = K.linear_bwd(gy, x, w, dw, g, c, h, "sigmoid", True)
        g2 = K.linear_bwd(gy, x, w, dw, g, c, h, "sigmoid", True)
    for a, b_ in zip(g1, g2):
        assert torch.equal(a, b_)


@apply(interp)
def test_linear_weights_in_one_storage_use_the_stacked_view():
    n, k, d = 14, 19, 3
    x, w, b, dw, db, g, c = make(23, k, n, d, torch.float64, DEVICE)
    w1, dw1 = stack_weights(w, dw)
    assert K.dendritic_linear._stacked_view(w1, dw1) is not None
    assert K.dendritic_linear._stacked_view(w, dw) is None
    _, h = K.linear_fwd(x, w, b, dw, db, g, c, "tanh", True)
    gy = torch.randn(23, n, dtype=torch.float64, device=DEVICE)
    with K.backward_path("gemm"):  # the split backward's dX is the GEMM that reads the stacked view
        ga = K.linear_bwd(gy, x, w, dw, g, c, h, "tanh", True)
        gb = K.linear_bwd(gy, x, w1, dw1, g, c, h, "tanh", True)
    for a, b_ in zip(ga, gb):
        torch.testing.assert_close(a, b_, atol=1e-12, rtol=1e-12)


@apply(interp)
@pytest.mark.parametrize("d", [12])
def test_linear_beyond_eight_dendrites(d):
    linear_case(DEVICE, torch.float64, 13, 17, 11, d, "sigmoid")


class _KernelLinear(torch.autograd.Function):
    """The launchers wrapped for gradcheck (what pai_fast.ops does, minus the op registration)."""

    @staticmethod
    def forward(ctx, x, w, b, dw, db, g, c, act):
        y, h = K.linear_fwd(x, w, b, dw, db, g, c, act, True)
        ctx.save_for_backward(x, w, dw, g, c, h)
        ctx.act, ctx.has_bias = act, b is not None
        return y

    @staticmethod
    def backward(ctx, gy):
        x, w, dw, g, c, h = ctx.saved_tensors
        dx, dW, dB, dDW, dDB, dG, dC = K.linear_bwd(gy, x, w, dw, g, c, h, ctx.act, ctx.has_bias)
        if not ctx.has_bias:
            dB = dDB = None
        return dx, dW, dB, dDW, dDB, dG, dC, None


@apply(interp)
@pytest.mark.parametrize(
    "d,act,bias",
    [(0, "sigmoid", True), (1, "tanh", False), (2, "relu", True), (3, "sigmoid", True), (2, "identity", True)],
)
@pytest.mark.parametrize("path", ["onepass", "gemm"])
def test_linear_gradcheck_fp64(d, act, bias, path):
    x, w, b, dw, db, g, c = make(3, 4, 3, d, torch.float64, DEVICE, bias=bias, seed=3)
    inputs = [None if t is None else t.requires_grad_() for t in (x, w, b, dw, db, g, c)]
    with K.backward_path(path):
        assert torch.autograd.gradcheck(
            lambda *a: _KernelLinear.apply(*a, act), inputs, eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=d != 1
        )


@apply(interp)
def test_linear_bad_inputs_name_the_argument():
    x, w, b, dw, db, g, c = make(4, 6, 5, 2, torch.float32, DEVICE)
    with pytest.raises(ValueError, match="activation"):
        K.linear_fwd(x, w, b, dw, db, g, c, "gelu", False)
    with pytest.raises(ValueError, match="weight must be"):
        K.linear_fwd(x, w[:, :5], b, dw, db, g, c, "sigmoid", False)
    with pytest.raises(ValueError, match="dendrite_weight must be"):
        K.linear_fwd(x, w, b, dw[:, :4], db, g, c, "sigmoid", False)
    with pytest.raises(ValueError, match="gate must be"):
        K.linear_fwd(x, w, b, dw, db, g[:1], c, "sigmoid", False)
    with pytest.raises(ValueError, match="cascade must be"):
        K.linear_fwd(x, w, b, dw, db, g, c[:, :1], "sigmoid", False)
    with pytest.raises(ValueError, match="dendrite_bias"):
        K.linear_fwd(x, w, b, dw, None, g, c, "sigmoid", False)
    with pytest.raises(TypeError, match="weight dtype"):
        K.linear_fwd(x, w.double(), b, dw, db, g, c, "sigmoid", False)
    with pytest.raises(ValueError, match="h must be"):
        K.linear_bwd(torch.ones(4, 5, device=DEVICE), x, w, dw, g, c, torch.empty(0, device=DEVICE), "sigmoid", True)


@apply(interp)
def test_supports_reasons():
    x = torch.randn(4, 6, device=DEVICE)
    w = torch.randn(5, 6, device=DEVICE)
    assert K.supports("linear", x, w, 3, "sigmoid") == []
    assert any("activation" in r for r in K.supports("linear", x, w, 3, "gelu"))
    assert any("D=40" in r for r in K.supports("linear", x, w, 40, "sigmoid"))
    assert any("dtype" in r for r in K.supports("linear", x, w.double(), 1, "sigmoid"))
    assert any("dtype" in r for r in K.supports("linear", x.int(), w.int(), 1, "sigmoid"))
    assert any("kind" in r for r in K.supports("matmul", x, w, 1, "sigmoid"))
    if INTERPRET:
        assert any("bfloat16" in r for r in K.supports("linear", x.bfloat16(), w.bfloat16(), 1, "sigmoid"))


@apply(interp)
def test_through_the_pai_fast_op_layer():
    """The registered op + autograd.Function (pai_fast.ops) with backend="triton" matches the torch backend."""
    from pai_fast import functional as PF

    x, w, b, dw, db, g, c = make(9, 12, 7, 2, torch.float64, DEVICE)
    ps = [t.clone().requires_grad_() for t in (x, w, b, dw, db, g, c)]
    qs = [t.clone().requires_grad_() for t in (x, w, b, dw, db, g, c)]
    y1 = PF.dendritic_linear(*ps, activation="tanh", backend="triton")
    y2 = PF.dendritic_linear(*qs, activation="tanh", backend="torch")
    torch.testing.assert_close(y1, y2)
    gy = torch.randn_like(y1)
    y1.backward(gy)
    y2.backward(gy)
    for p, q in zip(ps, qs):
        torch.testing.assert_close(p.grad, q.grad)


# ---------------------------------------------------------------------------------------------------------------
# GPU tests (lead runs them on the H100/H200): full dtype grid, tf32, determinism, CUDA graphs
# ---------------------------------------------------------------------------------------------------------------

GPU_SHAPES = [(64, 784, 128), (1000, 513, 257), (4096, 512, 640)]


@pytest.fixture
def fixed_config():
    """GPU grids run the heuristic config: autotuning every (shape, D, dtype) would compile ~4 kernels per case.
    The autotune candidates get their own tests (test_gpu_*_every_config, test_gpu_*_autotuned)."""
    state = sys.modules["pai_fast.kernels._common"]._state
    old = state["autotune"]
    K.set_autotune(False)
    yield
    K.set_autotune(old)


@apply(gpu)
@pytest.mark.usefixtures("fixed_config")
@pytest.mark.parametrize("mkn", GPU_SHAPES)
@pytest.mark.parametrize("d", [0, 1, 3, 8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_gpu_linear_grid(dtype, d, mkn):
    linear_case("cuda", dtype, *mkn, d, "sigmoid")


@apply(gpu)
@pytest.mark.usefixtures("fixed_config")
@pytest.mark.parametrize("path", ["onepass", "gemm"])
@pytest.mark.parametrize("mkn", [(1000, 513, 257), (4096, 512, 640)])
@pytest.mark.parametrize("d", [1, 3, 7])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_gpu_linear_backward_paths(dtype, d, mkn, path):
    """Each Linear backward forced on shapes where auto picks one or the other (GPU_SHAPES run auto)."""
    with K.backward_path(path):
        linear_case("cuda", dtype, *mkn, d, "sigmoid")


@apply(gpu)
@pytest.mark.parametrize("autotune", [False, True])
def test_gpu_fast_launch_replays_what_triton_runs(autotune):
    """The direct-launch cache (kernels/_launch.py) gives bitwise what Triton's own launch gives, also when the
    shape, the strides or the input's 16-byte alignment (each a Triton specialization) change between calls."""
    common = sys.modules["pai_fast.kernels._common"]
    lin = sys.modules["pai_fast.kernels.dendritic_linear"]
    old = common._state["autotune"]
    K.set_autotune(autotune)
    try:
        for m, k, n, off in [(37, 96, 48, 0), (37, 96, 48, 1), (64, 784, 128, 0), (37, 96, 48, 0), (5, 33, 17, 1)]:
            x, w, b, dw, db, g, c = make(m, k + 1, n, 2, torch.bfloat16, "cuda")
            x = x[:, off : off + k]  # row stride k + 1; off = 1 moves the data pointer off 16-byte alignment
            w, dw = w[:, :k].contiguous(), dw[:, :, :k].contiguous()
            gy = torch.randn(m, n, device="cuda", dtype=torch.bfloat16)
            for path in ("onepass", "gemm"):
                runs = []
                for fast in (False, True, True, True):
                    K.set_fast_launch(fast)
                    y, h = K.linear_fwd(x, w, b, dw, db, g, c, "tanh", True)
                    with K.backward_path(path):
                        grads = K.linear_bwd_packed(gy, x, w, dw, g, c, h, "tanh", True)
                    runs.append((y, h, *grads))
                for run in runs[1:]:
                    for got, want in zip(run, runs[0]):
                        assert torch.equal(got, want)
        used = lin._launch_fwd_tuned if autotune else lin._launch_fwd
        assert used._cache and common._launch_dz_tiled._cache and lin._launch_onepass._cache
    finally:
        K.set_fast_launch(True)
        K.set_autotune(old)


@apply(gpu)
@pytest.mark.usefixtures("fixed_config")
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_linear_activations(dtype, act):
    linear_case("cuda", dtype, 512, 384, 320, 3, act)


@apply(gpu)
@pytest.mark.usefixtures("fixed_config")
@pytest.mark.parametrize("d", [2, 5, 12])
def test_gpu_linear_odd_dendrite_counts(d):
    linear_case("cuda", torch.bfloat16, 300, 200, 100, d, "tanh")


@apply(gpu)
@pytest.mark.usefixtures("fixed_config")
def test_gpu_linear_noncontiguous_and_inference():
    linear_case("cuda", torch.bfloat16, 333, 257, 129, 3, "sigmoid", x_fn=_guarded, p_fn=noncontig)
    linear_case("cuda", torch.bfloat16, 333, 256, 128, 3, "sigmoid", backward=False)


@apply(gpu)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gpu_linear_every_config(dtype):
    """Every autotune candidate of the dtype's pools, forced one by one (ragged M, N to exercise the masks)."""
    common = sys.modules["pai_fast.kernels._common"]
    es = torch.empty(0, dtype=dtype).element_size()
    pool = common.CONFIG_POOLS[(True, es)] + common.CONFIG_POOLS[(False, es)]
    for cfg in pool:
        with K.use_config(cfg):
            linear_case("cuda", dtype, 1000, 512, 200, 3, "sigmoid")


def _needs_tma():
    if torch.cuda.get_device_capability() < (9, 0):
        pytest.skip("the TMA forward needs sm_90 (Hopper)")


@apply(gpu)
@pytest.mark.parametrize(
    ("dtype", "d"),
    [(torch.bfloat16, 1), (torch.bfloat16, 3), (torch.bfloat16, 5), (torch.float16, 2), (torch.float32, 3)],
)
def test_gpu_linear_tma_forward(dtype, d):
    """W and V adjacent in one storage and a large problem: the TMA kernel runs (each of its autotune candidates,
    ragged M and N, D = 2 and 5 so the out-of-bounds branch rows of the 3-D box are exercised), and matches. Every
    case compiles ~7 kernels, hence the short list."""
    _needs_tma()
    m, k, n = 1030, 264, 520
    x, w, bias, dw, dbias, gate, cas = make(m, k, n, d, dtype, "cuda")
    buf = torch.cat([w.unsqueeze(0), dw])
    p = K.dendritic_linear.next_pow2(1 + d)
    old_tf32 = torch.backends.cuda.matmul.allow_tf32
    state = sys.modules["pai_fast.kernels._common"]._state
    old = state["autotune"]
    # fp32 takes the TMA kernel only as TF32 (as cuBLAS: torch's allow_tf32). TF32 products: the fused forward's
    # error is ~10x cuBLAS's (test_gpu_linear_tf32), and h carries it into the gradient reductions.
    ratio = dict(ratio_fwd=12.0, ratio_bwd=12.0) if dtype == torch.float32 else {}
    try:
        if dtype == torch.float32:
            torch.backends.cuda.matmul.allow_tf32 = False
            assert K.dendritic_linear._tma_weight(x, buf[0], buf[1:], p) is None  # true fp32: pointer kernel
            torch.backends.cuda.matmul.allow_tf32 = True
        assert K.dendritic_linear._tma_weight(x, buf[0], buf[1:], p) is not None
        assert K.dendritic_linear._tma_weight(x, w, dw, p) is None  # not adjacent
        for cfg in K.dendritic_linear.tma_configs(dtype):
            with K.use_config(cfg):
                linear_case("cuda", dtype, m, k, n, d, "sigmoid", stacked=True, **ratio)
        linear_case("cuda", dtype, m, k, n, d, "tanh", stacked=True, backward=False, **ratio)  # inference: no h
        if d == 3:
            K.set_autotune(True)
            linear_case("cuda", dtype, m, k, n, d, "sigmoid", stacked=True, **ratio)
            args = (x, buf[0], bias, buf[1:], dbias, gate, cas)
            outs = []
            for fast in (False, True, True):  # the direct launch replays the autotuned pick (its box pre-hook too)
                K.set_fast_launch(fast)
                outs.append(K.linear_fwd(*args, "sigmoid", True))
            assert all(torch.equal(a, b_) for o in outs[1:] for a, b_ in zip(o, outs[0]))
            assert K.dendritic_linear._launch_tma_tuned._cache
    finally:
        K.set_fast_launch(True)
        K.set_autotune(old)
        torch.backends.cuda.matmul.allow_tf32 = old_tf32


@apply(gpu)
def test_gpu_dendritic_linear_module_takes_the_tma_path():
    """DendriticLinear keeps weight and dendrite_weight adjacent (also after .to()), so its large forward takes
    the TMA kernel; forward and all gradients match the torch backend."""
    _needs_tma()
    import pai_fast.functional as PF
    from pai_fast.nn import DendriticLinear

    torch.manual_seed(0)
    layer = DendriticLinear(264, 520, dendrites=3).to("cuda", torch.bfloat16)
    with torch.no_grad():
        layer.dendrite_gate.normal_()
        layer.dendrite_cascade.normal_(std=0.1)
        layer.dendrite_weight.mul_(20)
    x = torch.randn(1030, 264, device="cuda", dtype=torch.bfloat16)
    assert K.dendritic_linear._tma_weight(x, layer.weight, layer.dendrite_weight, 4) is not None
    outs = {}
    for backend in ("triton", "torch"):
        layer.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_()
        y = PF.dendritic_linear(
            xi, layer.weight, layer.bias, *layer.dendrite_args(), activation="sigmoid", backend=backend
        )
        y.float().square().sum().backward()
        outs[backend] = [y.detach(), xi.grad] + [p.grad for p in layer.parameters()]
    for a, b_ in zip(outs["triton"], outs["torch"]):  # both bf16: compare relative to the largest entry
        assert (a.float() - b_.float()).abs().max() <= 3e-2 * b_.float().abs().max()


@apply(gpu)
@pytest.mark.parametrize("d", [1, 3])
def test_gpu_linear_autotuned(d):
    state = sys.modules["pai_fast.kernels._common"]._state
    old = state["autotune"]
    K.set_autotune(True)
    try:
        linear_case("cuda", torch.bfloat16, 2048, 1024, 512, d, "sigmoid")
        for dtype in (torch.float64, torch.float32, torch.float16):  # every dtype's default path, small
            linear_case("cuda", dtype, 33, 40, 24, d, "tanh")
    finally:
        K.set_autotune(old)


@apply(gpu)
@pytest.mark.usefixtures("fixed_config")
def test_gpu_linear_tf32():
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        # torch's fp32 reference uses TF32 GEMMs here too. Measured on the H100: the fused forward's TF32 error is
        # ~10x cuBLAS's (2.7e-2 vs 2.5e-3 at |y| <= 37, K = 1024; tl.dot feeds the fp32 operands to the tensor
        # cores, which drop the low mantissa bits, while cuBLAS rounds them), i.e. still within one TF32 ulp
        # (2^-10 relative) of the largest output. The backward GEMMs are cuBLAS's own.
        linear_case("cuda", torch.float32, 1024, 1024, 512, 3, "sigmoid", ratio_fwd=12.0)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


@apply(gpu)
@pytest.mark.usefixtures("fixed_config")
@pytest.mark.parametrize("finish", ["torch", "kernel"])
def test_gpu_linear_deterministic(finish):
    with K.dz_finish(finish), K.backward_path("gemm" if finish == "kernel" else "auto"):
        x, w, b, dw, db, g, c = make(4096, 512, 512, 3, torch.bfloat16, "cuda")
        _, h = K.linear_fwd(x, w, b, dw, db, g, c, "sigmoid", True)
        gy = torch.randn(4096, 512, device="cuda", dtype=torch.bfloat16)
        first = K.linear_bwd(gy, x, w, dw, g, c, h, "sigmoid", True)
        for _ in range(20):
            again = K.linear_bwd(gy, x, w, dw, g, c, h, "sigmoid", True)
            assert all(torch.equal(a, b_) for a, b_ in zip(first, again))
            y2, h2 = K.linear_fwd(x, w, b, dw, db, g, c, "sigmoid", True)
            assert torch.equal(h2, h)


@apply(gpu)
@pytest.mark.parametrize("finish", ["torch", "kernel"])
@pytest.mark.parametrize(("d", "rows", "n"), [(1, 32 * 56 * 56, 64), (3, 32 * 56 * 56, 64), (3, 8192, 4096),
                                             (7, 6272, 256), (9, 3001, 96)])  # fmt: skip
def test_gpu_dz_launch(d, rows, n, finish):
    """DzLaunch on the GPU with either finish of the reductions; with finish="kernel" hundreds of programs really
    race for the arrival counters (the interpreter runs them one after another): bf16 dZ and fp32 reductions
    against float64, the same bits on every one of 30 launches, the counters back at zero after each, and the same
    bits again from a CUDA graph captured on another stream (its own counters) and replayed 5 times."""
    common = sys.modules["pai_fast.kernels._common"]
    g = torch.Generator(device="cuda").manual_seed(d)
    bf = torch.bfloat16
    dy = torch.randn(rows, 1, n, device="cuda", dtype=bf, generator=g)
    a = torch.tanh(torch.randn(rows, 1, d, n, device="cuda", dtype=bf, generator=g))
    gate = torch.randn(d, n, device="cuda", dtype=bf, generator=g)
    cas = torch.randn(d, d, n, device="cuda", dtype=bf, generator=g) / d
    dz = torch.empty(rows, 1, 1 + d, n, device="cuda", dtype=bf)
    launch = common.DzLaunch(dy.stride(), a.stride(), dz.stride(), gate, cas, rows, n, 1,
                             common.ACT_CODES["tanh"], bf, finish=finish, out_dtype=torch.float32)  # fmt: skip
    assert launch.finishes_in_kernel == (finish == "kernel")
    first = launch(dy, a, gate, cas, dz).clone()
    first_dz = dz.clone()
    want_dz, want = _dz_reference(dy, a, gate, cas)
    torch.testing.assert_close(first_dz.double().reshape(rows, 1 + d, n), want_dz, rtol=2e-2, atol=2e-2)
    # The row kernel (D > 7) reads ds_k back from dZ, rounded to bf16, for the cascade; the tiled one keeps fp32.
    tol = 1e-2 if d > common.TILED_DZ_MAX_D else 1e-3
    torch.testing.assert_close(first.double(), want, rtol=tol, atol=tol * 0.1 * want.abs().max().item())
    counters = common.counter_buffer(dy.device, launch.counters)
    for _ in range(30):
        assert torch.equal(launch(dy, a, gate, cas, dz), first)
        assert not counters.any()  # (finish="torch" needs none; they stay zero)
    assert torch.equal(dz, first_dz)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):  # s's counters exist before the capture: no memset inside the graph
        launch(dy, a, gate, cas, dz)
        s_counters = common.counter_buffer(dy.device, launch.counters)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(s), torch.cuda.graph(graph, stream=s):
        captured = launch(dy, a, gate, cas, dz)
    torch.cuda.current_stream().wait_stream(s)
    for _ in range(5):  # each replay finds the counters the previous one left at zero
        captured.zero_()
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(captured, first)
        assert not s_counters.any()


@apply(gpu)
@pytest.mark.parametrize("d", [1, 3])
def test_gpu_linear_split_backward_three_launches(d):
    """Issue #4's backward: the dZ kernel, its reductions finished inside its own launch, then dX and dW as one GEMM
    each over the stacked weights (as the modules keep them): no torch.sum, cast, memset or copy beside them. The
    GEMMs' kernels are those torch.mm launches for the same operands (cuBLAS may split one GEMM in two)."""
    x, w, b, dw, db, g, c = make(2048, 1024, 1024, d, torch.bfloat16, "cuda")
    w, dw = stack_weights(w, dw)
    _, h = K.linear_fwd(x, w, b, dw, db, g, c, "sigmoid", True)
    gy = torch.randn(2048, 1024, device="cuda", dtype=torch.bfloat16)
    linear = sys.modules["pai_fast.kernels.dendritic_linear"]
    with K.backward_path("gemm"):
        names = cuda_kernel_names(lambda: linear.linear_bwd_packed(gy, x, w, dw, g, c, h, "sigmoid", True))
    dz = torch.randn(2048, (1 + d) * 1024, device="cuda", dtype=torch.bfloat16)
    wcat = stacked_view(w, dw, flat=True)
    gemms = cuda_kernel_names(lambda: (torch.mm(dz.t(), x), torch.mm(dz, wcat)))
    ours = [k for k in names if k not in gemms]
    assert ours == ["_dendritic_dz_tiled_kernel"], names
    assert len(names) == 1 + len(gemms), (names, gemms)
    with K.dz_finish("torch"):  # the alternative finish adds the sum of the partials and a cast
        assert len(cuda_kernel_names(lambda: linear.linear_bwd_packed(gy, x, w, dw, g, c, h, "sigmoid", True))) > len(
            names
        )


@apply(gpu)
def test_gpu_linear_cuda_graph():
    x, w, b, dw, db, g, c = make(256, 784, 128, 3, torch.bfloat16, "cuda")
    gy = torch.randn(256, 128, device="cuda", dtype=torch.bfloat16)

    def step():
        y, h = K.linear_fwd(x, w, b, dw, db, g, c, "sigmoid", True)
        return (y, *K.linear_bwd(gy, x, w, dw, g, c, h, "sigmoid", True))

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):  # autotuning and compilation happen here, outside the capture
            eager = step()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(eager[0], out[0])  # the fused forward is bitwise reproducible
    for a, b_ in zip(eager[1:], out[1:]):  # cuBLAS may pick another algorithm under capture
        torch.testing.assert_close(a, b_)


@apply(interp)
def test_autotune_candidates_fit():
    """The GPU autotune pools: never empty, shared memory within an H100's budget, sized by problem and dtype."""
    common = sys.modules["pai_fast.kernels._common"]
    for rows, n, k, p in [(64, 128, 784, 4), (8192, 4096, 4096, 4), (8192, 4096, 4096, 16), (3, 5, 1, 1)]:
        for es in (2, 4, 8):
            chosen = common.select_configs(common.ALL_CONFIGS, rows, n, k, p, es)
            assert chosen and len(chosen) <= 4
            for c in chosen:
                smem = c.num_stages * (c.kwargs["BLOCK_M"] + c.kwargs["BLOCK_C"]) * c.kwargs["BLOCK_K"] * es
                assert smem <= 200 * 1024
    big = common.select_configs(common.ALL_CONFIGS, 8192, 4096, 4096, 4, 2)
    assert any(c.kwargs["BLOCK_C"] == 256 and c.num_warps == 8 for c in big)


@apply(interp)
@pytest.mark.parametrize("finish", ["torch", "kernel"])
@pytest.mark.parametrize("d", [0, 1, 3, 5, 9])
def test_linear_dz_kernel_float64(d, finish):
    """The split backward (the dZ kernel, then the GEMMs) on odd sizes, against float64 autograd, with the
    partial reductions summed by torch or inside the dZ launch."""
    with K.backward_path("gemm"), K.dz_finish(finish):
        linear_case(DEVICE, torch.float64, 37, 6, 9, d, "tanh")


@apply(interp)
@pytest.mark.parametrize(
    ("d", "b", "s", "n", "programs", "strided", "dtype"),
    [(1, 37, 1, 29, 1, "", torch.float64), (2, 10, 5, 70, 2, "dy", torch.float64),
     (3, 9, 5, 13, 1, "", torch.float64), (4, 6, 7, 130, 1, "h", torch.float32),
     (6, 11, 3, 9, 1, "dy", torch.float32), (7, 23, 1, 9, 1, "", torch.float64),
     (8, 4, 3, 5, 2, "", torch.float64)],
)  # fmt: skip
def test_dz_kernel_against_float64(d, b, s, n, programs, strided, dtype):
    """DzLaunch itself (the tiled kernel up to D = 7, the row kernel beyond) against the dZ recursion in float64:
    rows as (batch, position) pairs with S positions each, dZcat's branch blocks interleaved per row (a
    channels_last conv's layout), so few programs that each walks several row tiles, partial tiles in rows and
    channels (fp32: 128-channel tiles), and a grad_y (NCHW) or saved h whose channels are strided. Checks dZcat and
    the four reductions."""
    common = sys.modules["pai_fast.kernels._common"]
    g = torch.Generator().manual_seed(d)
    rows, f64 = b * s, torch.float64

    def r(*shape):
        return torch.randn(shape, generator=g, dtype=f64).to(DEVICE)

    dy = r(b, n, s).transpose(1, 2) if strided == "dy" else r(b, s, n)
    a = torch.tanh(r(b, s, n, d).transpose(2, 3) if strided == "h" else r(b, s, d, n))
    gate, cas = r(d, n), r(d, d, n)
    dy, a, gate, cas = (t.to(dtype) for t in (dy, a, gate, cas))
    dz = torch.full((b, s, 1 + d, n), float("nan"), dtype=dtype, device=DEVICE)
    launch = common.DzLaunch(dy.stride(), a.stride(), dz.stride(), gate, cas, rows, n, s,
                             common.ACT_CODES["tanh"], dtype, programs=programs)  # fmt: skip
    split = launch.part_shape[0]
    assert launch.tiled == (d <= common.TILED_DZ_MAX_D) and split <= programs
    assert rows > split * launch.meta.get("BLOCK_R", 1)  # some program walks more than one row tile
    red = launch(dy, a, gate, cas, dz)
    want_dz, want = _dz_reference(dy, a, gate, cas)
    tol = 1e-12 if dtype == f64 else 1e-5
    torch.testing.assert_close(dz.double().reshape(rows, 1 + d, n), want_dz, rtol=tol, atol=tol)
    torch.testing.assert_close(red.double(), want, rtol=tol * 100, atol=tol * 100)


def _dz_reference(dy, a, gate, cas):
    """(dZcat [rows, 1 + D, N], dsmall [1 + 2D + D*D, N]) in float64 from dy [..., N] and tanh activations a
    [..., D, N]."""
    d, n = gate.shape
    dy2, a2 = dy.double().reshape(-1, n), a.double().reshape(-1, d, n)
    gate, cas, f64 = gate.double(), cas.double(), torch.float64
    ds = torch.zeros(dy2.shape[0], d, n, dtype=f64, device=dy.device)
    for i in range(d - 1, -1, -1):
        da = gate[i] * dy2 + sum((cas[k, i] * ds[:, k] for k in range(i + 1, d)), torch.zeros_like(dy2))
        ds[:, i] = da * (1 - a2[:, i] ** 2)
    want = torch.zeros(1 + 2 * d + d * d, n, dtype=f64, device=dy.device)
    want[0] = dy2.sum(0)
    want[1 : 1 + d] = ds.sum(0)
    want[1 + d : 1 + 2 * d] = (dy2[:, None] * a2).sum(0)
    for k in range(d):
        for i in range(k):
            want[1 + 2 * d + k * d + i] = (ds[:, k] * a2[:, i]).sum(0)
    return torch.cat([dy2[:, None], ds], 1), want


@apply(interp)
@pytest.mark.parametrize(
    ("d", "programs", "fin_w", "out_dtype", "n"),
    [(1, 7, 16, torch.float64, 21), (3, 7, 32, torch.float16, 21), (2, 5, 512, torch.float64, 21),
     (9, 6, 64, torch.float64, 21), (3, 9, 16, torch.float32, 21), (3, 7, 512, torch.float64, 21),
     (3, 15, 16, torch.float64, 150)],
)  # fmt: skip
def test_dz_sums_inside_the_launch(d, programs, fin_w, out_dtype, n):
    """The in-launch sum of the programs' partials (_finish_partials): finisher programs after the dZ programs,
    each summing fin_w-wide blocks of the flattened 1 + 2D + D*D rows x n channels (the last block short; one
    block for all at 512; at n = 150, 150 blocks for the 128 finishers, so some take two), in [FIN_S, fin_w]
    chunks of slots (at 512: 4 + 3 and 4 + 1 slots), the tiled kernel and the row kernel (D = 9), dsmall written in
    out_dtype. The counters are all zero again after the launch, and a second launch into the same counters gives
    the same bits."""
    common = sys.modules["pai_fast.kernels._common"]
    g = torch.Generator().manual_seed(d + fin_w)
    b, s = 41, 3

    def r(*shape):
        return torch.randn(shape, generator=g, dtype=torch.float64).to(DEVICE)

    dy, a, gate, cas = r(b, s, n), torch.tanh(r(b, s, d, n)), r(d, n), r(d, d, n)
    dz = torch.empty(b, s, 1 + d, n, dtype=torch.float64, device=DEVICE)
    launch = common.DzLaunch(dy.stride(), a.stride(), dz.stride(), gate, cas, b * s, n, s,
                             common.ACT_CODES["tanh"], torch.float64, programs=programs, finish="kernel",
                             fin_w=fin_w, out_dtype=out_dtype)  # fmt: skip
    total = (1 + 2 * d + d * d) * n
    num_n = -(-n // launch.meta["BLOCK_N"])  # programs = split x num_n dZ programs (n = 150: 5 x 3)
    assert launch.part_shape[0] * num_n == programs and launch.meta["FIN_W"] == fin_w
    assert launch.grid == (programs + min(128, -(-total // fin_w)),)
    if fin_w == 512:
        assert launch.meta["FIN_S"] < programs and programs % launch.meta["FIN_S"] and num_n == 1
    part = torch.empty(launch.part_shape, dtype=torch.float64, device=DEVICE)
    counters = torch.zeros(launch.counters, dtype=torch.int32, device=DEVICE)
    outs = []
    for _ in range(2):
        out = torch.full(launch.part_shape[1:], float("nan"), dtype=out_dtype, device=DEVICE)
        launch.launch_into(dy, a, gate, cas, dz, part, counters, out)
        assert not counters.any(), "every counter returns to zero"
        outs.append(out)
    want_dz, want = _dz_reference(dy, a, gate, cas)
    torch.testing.assert_close(dz.reshape(b * s, 1 + d, n), want_dz, rtol=1e-12, atol=1e-12)
    tol = 1e-10 if out_dtype == torch.float64 else 1e-6 if out_dtype == torch.float32 else 2e-3
    assert outs[0].dtype == out_dtype
    torch.testing.assert_close(outs[0].double(), want, rtol=tol, atol=tol)
    assert torch.equal(outs[0], outs[1])


@apply(interp)
def test_dz_launch_configuration():
    """The tiled kernel's tiles shrink when programs would walk few of them and stay powers of two; int64 rows only
    near 2^31; the row kernel can be asked for, the tiled one only where it runs."""
    common = sys.modules["pai_fast.kernels._common"]
    g, c = torch.empty(3, 256), torch.empty(3, 3, 256)

    def launch(rows, n=256, **kw):
        gg, cc = g[:, :n], c[:, :, :n]
        return common.DzLaunch((n, n, 1), (3 * n, 3 * n, n, 1), (4 * n, 4 * n, n, 1), gg, cc, rows, n, rows, 1,
                               torch.bfloat16, **kw)  # fmt: skip

    few, many = launch(6272), launch(1 << 20)
    assert few.meta["BLOCK_R"] < many.meta["BLOCK_R"] and not many.meta["ROWS64"]
    assert launch((1 << 31) - 1000).meta["ROWS64"]
    for rows in (64, 999, 6272, 1 << 20):  # the elements per thread (hence BLOCK_R) are powers of two
        block_r = launch(rows).meta["BLOCK_R"]
        assert block_r & (block_r - 1) == 0, (rows, block_r)
    assert not launch(64, tiled=False).tiled and launch(64).tiled  # the row kernel on request (probes)
    assert launch(64).finishes_in_kernel and not launch(64, finish="torch").finishes_in_kernel  # the default
    with K.dz_finish("torch"):
        assert not launch(64).finishes_in_kernel
    with pytest.raises(ValueError, match="finish must be one of"):
        launch(64, finish="atomics")
    with pytest.raises(ValueError, match="fin_w must be a power of two"):
        launch(64, finish="kernel", fin_w=6)
    fin = launch(64, finish="kernel")
    part = torch.empty(fin.part_shape)
    with pytest.raises(ValueError, match="needs counters and out"):
        fin.launch_into(part, part, part, part, part, part)
    with pytest.raises(ValueError, match="part must be a contiguous torch.float32 tensor"):
        fin.launch_into(part, part, part, part, part, part.double())
    counters, out = torch.zeros(fin.counters, dtype=torch.int32), torch.empty(fin.part_shape[1:])  # the gate's dtype
    with pytest.raises(ValueError, match="out must be a contiguous torch.float32 tensor"):
        fin.launch_into(part, part, part, part, part, part, counters, out.double())
    with pytest.raises(ValueError, match="out must be a contiguous torch.float32 tensor"):
        fin.launch_into(part, part, part, part, part, part, counters, out[:, :8])
    with pytest.raises(ValueError, match="counters must be int32"):
        fin.launch_into(part, part, part, part, part, part, counters.float(), out)
    with pytest.raises(ValueError, match="tiled kernel takes 1 <= D <= 7"):
        common.DzLaunch((8, 8, 1), (64, 64, 8, 1), (72, 72, 8, 1), torch.empty(8, 8), torch.empty(8, 8, 8), 4, 8, 4,
                        1, torch.bfloat16, tiled=True)  # fmt: skip


try:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover - hypothesis is in the test extra
    given = None


if given is not None:

    @apply(interp)
    @settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(
        m=st.integers(0, 40),
        k=st.integers(1, 40),
        n=st.integers(1, 40),
        d=st.integers(0, 9),
        act=st.sampled_from(["sigmoid", "tanh", "relu", "identity"]),
        bias=st.booleans(),
    )
    def test_linear_fuzzed_shapes(m, k, n, d, act, bias):
        """Hypothesis-drawn shapes (batch 0 included, D beyond the fused register path) in float64."""
        linear_case(DEVICE, torch.float64, m, k, n, d, act, bias=bias)
