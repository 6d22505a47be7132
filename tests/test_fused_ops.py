"""The pai_fast::* operators and their autograd Functions on the fused backends.

`interpret` tests run the Triton kernels in the CPU interpreter (CI: TRITON_INTERPRET=1 pytest -m interpret);
`gpu` tests run on the GPU machine for every fused backend that is available there.
"""

import os

import pytest
import torch

import pai_fast
from pai_fast import backends
from pai_fast import functional as PF
from pai_fast import reference as R

from .helpers import dendrite_params

interpret = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="run with TRITON_INTERPRET=1")


def _fused_available(name, device):
    x = torch.randn(2, 8, device=device)
    return not backends.input_reasons(name, "linear", x, torch.randn(4, 8, device=device), 1, "sigmoid")


def _gpu_backends():
    if not torch.cuda.is_available():
        return []
    return [b for b in ("triton", "cuda") if _fused_available(b, "cuda")]


GPU_BACKENDS = ["triton", "cuda"]


def _require(name, device):
    x, w = torch.randn(2, 8, device=device), torch.randn(4, 8, device=device)
    reasons = backends.input_reasons(name, "linear", x, w, 1, "sigmoid")
    if reasons:
        pytest.fail(f"backend {name} unavailable on {device}: {reasons}")


def _linear_case(d, device, dtype=torch.float64, m=5, k=7, n=6, bias=True):
    w, b, dw, db, g, c = dendrite_params((n, k), d, bias=bias, dtype=dtype, device=device)
    x = torch.randn(m, k, dtype=dtype, device=device)
    return x, [w, b, dw, db, g, c]


@interpret
@pytest.mark.interpret
@pytest.mark.parametrize("d", [0, 1, 3])
def test_opcheck_linear_interpret(d):
    x, p = _linear_case(d, "cpu")
    _require("triton", "cpu")
    torch.library.opcheck(torch.ops.pai_fast.dendritic_linear_fwd.default, (x, *p, "sigmoid", "triton", True))
    y, h = torch.ops.pai_fast.dendritic_linear_fwd(x, *p, "sigmoid", "triton", True)
    gy = torch.randn_like(y)
    torch.library.opcheck(
        torch.ops.pai_fast.dendritic_linear_bwd.default, (gy, x, p[0], p[2], p[4], p[5], h, "sigmoid", "triton", True)
    )


def _channels_last_conv_layer(device, dtype, d=2):
    torch.manual_seed(0)
    layer = pai_fast.DendriticConv2d(8, 12, 3, padding=1, dendrites=d).to(device=device, dtype=dtype)
    with torch.no_grad():
        layer.dendrite_gate.normal_()
        layer.dendrite_cascade.normal_(std=0.3)
    return layer.to(memory_format=torch.channels_last)


def _check_channels_last_conv(name, device, dtype, tol):
    """A channels_last dendritic Conv2d through a fused backend: the op's outputs have the strides its fake kernel
    promises (dwcat in the weights' channels_last format), and forward and gradients match the torch backend."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    layer = _channels_last_conv_layer(device, dtype)
    x = torch.randn(3, 8, 7, 9, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    w, b, dw, db, g, c = layer.weight, layer.bias, *layer.dendrite_args()
    geo = ([1, 1], [1, 1], [1, 1], "sigmoid", name)
    with torch.no_grad():
        y, h = torch.ops.pai_fast.dendritic_conv_fwd(x, w, b, dw, db, g, c, *geo, True)
        bwd_args = (torch.randn_like(y), x, w, dw, g, c, h, *geo, True)
        real = torch.ops.pai_fast.dendritic_conv_bwd(*bwd_args)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fake = torch.ops.pai_fast.dendritic_conv_bwd(*[mode.from_tensor(a) if torch.is_tensor(a) else a
                                                         for a in bwd_args])  # fmt: skip
    assert [t.stride() for t in real] == [t.stride() for t in fake]
    assert real[1].is_contiguous(memory_format=torch.channels_last)
    outs, grads = [], []
    for backend in (name, "torch"):
        layer.zero_grad(set_to_none=True)
        with _backend(backend):
            out = layer(x)
        out.square().sum().backward()
        outs.append(out.detach())
        grads.append([p.grad.clone() for p in layer.parameters()])
        assert all(p.grad.stride() == p.stride() for p in layer.parameters())
    torch.testing.assert_close(outs[0], outs[1], **tol)
    for a, b_ in zip(*grads):
        torch.testing.assert_close(a, b_, **tol)


class _backend:
    def __init__(self, name):
        self.name = name

    def __enter__(self):
        backends.set_backend(self.name)

    def __exit__(self, *exc):
        backends.set_backend(None)


@interpret
@pytest.mark.interpret
def test_channels_last_conv_module_interpret():
    _check_channels_last_conv("triton", "cpu", torch.float64, dict(rtol=1e-9, atol=1e-9))


@pytest.mark.gpu
@pytest.mark.parametrize("name", GPU_BACKENDS)
def test_channels_last_conv_module_gpu(name):
    """Also the re-laid-out weights the cuda backend copies per call (held until its launch: a temporary freed
    inside the argument list was overwritten by the next copy before the kernel read it)."""
    _require(name, "cuda")
    old = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # the torch backend's convs (and the fused backward's cuDNN) in fp32
    try:
        _check_channels_last_conv(name, "cuda", torch.float32, dict(rtol=2e-3, atol=2e-3))
    finally:
        torch.backends.cudnn.allow_tf32 = old


@interpret
@pytest.mark.interpret
@pytest.mark.parametrize("bias", [True, False])
def test_autograd_function_gradcheck_interpret(bias):
    _require("triton", "cpu")
    x, p = _linear_case(2, "cpu", bias=bias, m=3, k=4, n=3)
    inputs = [t.requires_grad_() for t in [x] + p if t is not None]

    def fn(*a):
        a = list(a)
        xx, w = a[0], a[1]
        if bias:
            b, dw, db, g, c = a[2:]
        else:
            b, db = None, None
            dw, g, c = a[2:]
        return PF.dendritic_linear(xx, w, b, dw, db, g, c, backend="triton")

    assert torch.autograd.gradcheck(fn, inputs)


@interpret
@pytest.mark.interpret
def test_compile_fullgraph_fused_interpret():
    _require("triton", "cpu")
    m = pai_fast.DendriticLinear(8, 6, dendrites=2, dtype=torch.float64)
    with torch.no_grad():
        m.dendrite_gate.normal_()
    pai_fast.set_backend("triton")
    try:
        x = torch.randn(4, 8, dtype=torch.float64, requires_grad=True)
        y = torch.compile(m, fullgraph=True, backend="aot_eager")(x)
        torch.testing.assert_close(y, R.dendritic_linear_ref(x, m.weight, m.bias, *m.dendrite_args()))
        y.sum().backward()
        assert x.grad is not None and m.dendrite_gate.grad is not None
    finally:
        pai_fast.set_backend(None)


# ----------------------------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.parametrize("name", GPU_BACKENDS)
@pytest.mark.parametrize("d", [0, 1, 3])
def test_opcheck_linear_gpu(name, d):
    _require(name, "cuda")
    x, p = _linear_case(d, "cuda", dtype=torch.float32, m=33, k=65, n=40)
    if d == 0:
        # opcheck clones every input with torch._dynamo.utils.clone_input, whose CUDA path computes a negative
        # size for a contiguous [0, 0, N] tensor (two empty dims) and raises before the op runs. The same empty
        # cascade with strides (0, 0, 1) clones fine.
        p[5] = torch.empty_strided((0, 0, p[0].shape[0]), (0, 0, 1), device="cuda")
    utils = ["test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic"]
    fwd = torch.ops.pai_fast.dendritic_linear_fwd.default
    torch.library.opcheck(fwd, (x, *p, "sigmoid", name, True), test_utils=utils)
    y, h = torch.ops.pai_fast.dendritic_linear_fwd(x, *p, "sigmoid", name, True)
    torch.library.opcheck(
        torch.ops.pai_fast.dendritic_linear_bwd.default,
        (torch.randn_like(y), x, p[0], p[2], p[4], p[5], h, "sigmoid", name, True),
        test_utils=utils,
    )


@pytest.mark.gpu
@pytest.mark.parametrize("name", GPU_BACKENDS)
def test_compile_fullgraph_and_export_gpu(name):
    _require(name, "cuda")
    torch._dynamo.reset()
    model = torch.nn.Sequential(
        pai_fast.DendriticLinear(64, 48, dendrites=3), torch.nn.ReLU(), pai_fast.DendriticLinear(48, 10, dendrites=3)
    ).cuda()
    with torch.no_grad():
        for mod in model:
            if hasattr(mod, "dendrite_gate"):
                mod.dendrite_gate.normal_()
    pai_fast.set_backend(name)
    try:
        x = torch.randn(32, 64, device="cuda", requires_grad=True)
        eager = model(x)
        compiled = torch.compile(model, fullgraph=True)
        y = compiled(x)
        torch.testing.assert_close(y, eager, rtol=2e-3, atol=2e-3)
        y.sum().backward()
        ep = torch.export.export(model.eval(), (x.detach(),))
        assert any("pai_fast" in str(n.target) for n in ep.graph.nodes)
        torch.testing.assert_close(ep.module()(x.detach()), eager.detach(), rtol=2e-3, atol=2e-3)
    finally:
        pai_fast.set_backend(None)


@pytest.mark.gpu
@pytest.mark.parametrize("name", GPU_BACKENDS)
def test_cuda_graph_training_step(name):
    """A whole training step (forward, backward, optimizer) captured and replayed in a CUDA graph."""
    _require(name, "cuda")
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        pai_fast.DendriticLinear(32, 32, dendrites=2), torch.nn.Tanh(), pai_fast.DendriticLinear(32, 4, dendrites=2)
    ).cuda()
    ref = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(16, 32, device="cuda")
    pai_fast.set_backend(name)
    try:

        def step():
            opt.zero_grad(set_to_none=False)
            model(x).square().mean().backward()
            opt.step()

        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(3):
                step()
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            step()
        for _ in range(5):
            g.replay()
        torch.cuda.synchronize()
        # the same 3 + 1 (capture runs no kernels) + 5 steps eagerly on a copy
        params = [p.clone().requires_grad_() for p in ref]
        for _ in range(8):
            w1, b1, dw1, db1, g1, c1, w2, b2, dw2, db2, g2, c2 = params
            h = torch.tanh(R.dendritic_linear_ref(x, w1, b1, dw1, db1, g1, c1))
            loss = R.dendritic_linear_ref(h, w2, b2, dw2, db2, g2, c2).square().mean()
            grads = torch.autograd.grad(loss, params)
            with torch.no_grad():
                params = [(p - 0.1 * gr).requires_grad_() for p, gr in zip(params, grads)]
        for p, q in zip(model.parameters(), params):
            torch.testing.assert_close(p, q, rtol=2e-3, atol=2e-4)
    finally:
        pai_fast.set_backend(None)


@pytest.mark.gpu
@pytest.mark.parametrize("name", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("d", [0, 1, 2, 3, 5, 8, 9])
@pytest.mark.parametrize("shape", [(1, 33, 17), (0, 16, 8), (129, 257, 96), (64, 784, 128), (3, 7, 200)])
def test_linear_gpu_vs_float64(name, dtype, d, shape):
    """Forward and every gradient against float64: error <= 2x (fwd) / 3x (grads) torch's same-dtype error + floor."""
    _require(name, "cuda")
    m, k, n = shape
    x64, p64 = _linear_case(d, "cuda", dtype=torch.float64, m=m, k=k, n=n)
    x64 = x64[:, :].T.contiguous().T if m > 1 else x64  # also exercise a transposed (non-contiguous) x
    ins64 = [x64] + p64
    ins = [t.to(dtype).requires_grad_() for t in ins64]
    ins_t = [t.to(dtype).requires_grad_() for t in ins64]
    ins64 = [t.clone().requires_grad_() for t in ins64]
    y64 = PF.dendritic_linear(*ins64, backend="torch")
    y = PF.dendritic_linear(*ins, backend=name)
    yt = PF.dendritic_linear(*ins_t, backend="torch")
    gy = torch.randn_like(y64)
    g64 = torch.autograd.grad(y64, ins64, gy, allow_unused=True)
    g = torch.autograd.grad(y, ins, gy.to(dtype), allow_unused=True)
    gt = torch.autograd.grad(yt, ins_t, gy.to(dtype), allow_unused=True)
    floor = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}[dtype]

    def check(a, b, ref, k_factor, what):
        if ref is None or ref.numel() == 0:
            return
        err = (a.double() - ref).abs().max().item()
        err_t = (b.double() - ref).abs().max().item()
        scale = max(1.0, ref.abs().max().item())
        assert err <= k_factor * err_t + floor * scale, f"{what}: {err} vs torch {err_t}"

    check(y, yt, y64, 2, "y")
    names = ["x", "weight", "bias", "dendrite_weight", "dendrite_bias", "gate", "cascade"]
    for nm, a, b, ref in zip(names, g, gt, g64):
        check(a, b, ref, 3, f"grad {nm}")


def test_direct_call_only_when_nothing_traces():
    """The autograd Functions call the kernels without the dispatcher only for plain eager tensors; fake tensors,
    dispatch modes, jit tracing and torch.compile get the registered op (with its fake kernel)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from pai_fast.ops import _direct

    x = torch.randn(3, 4)
    assert _direct(x, None, x)
    with FakeTensorMode() as mode:
        assert not _direct(mode.from_tensor(x))
        assert not _direct(x)  # the mode alone is enough
    assert not _direct(torch.nn.Parameter(x))  # a subclass: left to the dispatcher
    seen = []

    def probe(t):
        seen.append(_direct(t))
        return t * 2

    torch.jit.trace(probe, (x,), check_trace=False)
    assert seen == [False]
    torch.compile(probe, backend="eager", fullgraph=True)(x)
    assert seen == [False, False]
    probe(x)
    assert seen[-1]


def test_plan_cache_validates_every_new_signature():
    """Validation and backend choice run once per call signature: a cached signature does not hide a bad input
    with another shape, dtype or device, and a bad input raises on every call (nothing cached for it)."""
    w, b, dw, db, g, c = dendrite_params((4, 8), 2)
    x = torch.randn(3, 8)
    y1 = PF.dendritic_linear(x, w, b, dw, db, g, c)
    assert torch.allclose(PF.dendritic_linear(x, w, b, dw, db, g, c), y1)
    for _ in range(2):
        with pytest.raises(ValueError, match="x: expected shape"):
            PF.dendritic_linear(torch.randn(3, 7), w, b, dw, db, g, c)
        with pytest.raises(TypeError, match="weight: expected dtype"):
            PF.dendritic_linear(x, w.double(), b, dw, db, g, c)
        with pytest.raises(ValueError, match="dendrite_gate: expected shape"):
            PF.dendritic_linear(x, w, b, dw, db, g[:1], c)
        with pytest.raises(TypeError, match="x: expected a torch.Tensor"):
            PF.dendritic_linear(x.numpy(), w, b, dw, db, g, c)
