"""The torch backend (pai_fast.reference) against an independent loop implementation, float64 and gradcheck."""

import pytest
import torch
import torch.nn.functional as F

from pai_fast import functional as PF
from pai_fast import reference as R

from .helpers import TOL, dendrite_params, noncontig, to64

ACTS = ["sigmoid", "tanh", "relu", "identity", F.silu]


@pytest.mark.parametrize("d", range(9))
@pytest.mark.parametrize("shape", [(7, 5, 3), (1, 13, 11), (0, 6, 4), (33, 17, 9)])
def test_linear_stacked_matches_loop_float64(d, shape):
    m, k, n = shape
    w, b, dw, db, g, c = dendrite_params((n, k), d, dtype=torch.float64)
    x = torch.randn(m, k, dtype=torch.float64)
    y = R.dendritic_linear_ref(x, w, b, dw, db, g, c)
    torch.testing.assert_close(y, R.dendritic_linear_loop(x, w, b, dw, db, g, c), rtol=1e-12, atol=1e-12)
    assert y.shape == (m, n)
    if d == 0:
        torch.testing.assert_close(y, F.linear(x, w, b), rtol=0, atol=0)


@pytest.mark.parametrize("act", ACTS, ids=lambda a: a if isinstance(a, str) else a.__name__)
@pytest.mark.parametrize("bias", [True, False])
def test_linear_activations_and_bias(act, bias):
    w, b, dw, db, g, c = dendrite_params((6, 5), 3, bias=bias, dtype=torch.float64)
    x = torch.randn(4, 3, 5, dtype=torch.float64)  # [B, T, F]: leading dims are batch
    y = PF.dendritic_linear(x, w, b, dw, db, g, c, activation=act)
    torch.testing.assert_close(y, R.dendritic_linear_loop(x, w, b, dw, db, g, c, act))
    assert y.shape == (4, 3, 6)


def test_linear_cascade_uses_only_lower_triangle_and_activated_outputs():
    """Hand-computed D=2 case: z1 = u1 + B[1,0]*sigmoid(u0); B[0,*] and B[1,1] are ignored."""
    w, b, dw, db, g, c = dendrite_params((3, 4), 2, dtype=torch.float64)
    x = torch.randn(5, 4, dtype=torch.float64)
    u0 = x @ dw[0].T + db[0]
    u1 = x @ dw[1].T + db[1]
    a0 = torch.sigmoid(u0)
    a1 = torch.sigmoid(u1 + c[1, 0] * a0)
    expected = x @ w.T + b + g[0] * a0 + g[1] * a1
    c2 = c.clone()
    c2[0, 0] += 5
    c2[0, 1] += 7
    c2[1, 1] -= 3
    torch.testing.assert_close(PF.dendritic_linear(x, w, b, dw, db, g, c2), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_linear_low_precision_close_to_float64(dtype):
    w, b, dw, db, g, c = dendrite_params((19, 23), 4, dtype=torch.float64)
    x = torch.randn(31, 23, dtype=torch.float64)
    ref = R.dendritic_linear_ref(x, w, b, dw, db, g, c)
    args = [None if t is None else t.to(dtype) for t in (x, w, b, dw, db, g, c)]
    y = PF.dendritic_linear(*args)
    assert y.dtype == dtype
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(y.double(), ref, atol=atol * 5, rtol=rtol * 5)


def test_linear_noncontiguous_inputs():
    w, b, dw, db, g, c = dendrite_params((9, 8), 3, dtype=torch.float64)
    x = torch.randn(10, 8, dtype=torch.float64)
    y = PF.dendritic_linear(x, w, b, dw, db, g, c)
    xs = torch.randn(8, 10, dtype=torch.float64).T  # transposed view
    xs.copy_(x)
    assert not xs.is_contiguous()
    args = [noncontig(t) for t in (w, b, dw, db, g, c)]
    torch.testing.assert_close(PF.dendritic_linear(xs, *args), y, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("d", [0, 1, 2, 3])
@pytest.mark.parametrize("act", ["sigmoid", "tanh"])
def test_linear_gradcheck_all_inputs(d, act):
    w, b, dw, db, g, c = dendrite_params((4, 3), d, dtype=torch.float64)
    x = torch.randn(5, 3, dtype=torch.float64)
    inputs = [t.requires_grad_() for t in (x, w, b, dw, db, g, c)]
    assert torch.autograd.gradcheck(lambda *a: PF.dendritic_linear(*a, activation=act), inputs)


def test_linear_cascade_upper_entries_get_zero_grad():
    w, b, dw, db, g, c = dendrite_params((4, 3), 3, dtype=torch.float64)
    c.requires_grad_()
    PF.dendritic_linear(torch.randn(5, 3, dtype=torch.float64), w, b, dw, db, g, c).sum().backward()
    lower = torch.tril(torch.ones(3, 3, dtype=torch.bool), -1)
    assert torch.all(c.grad[~lower] == 0)
    assert torch.all(c.grad[lower].abs() > 0)


CONV_CASES = [
    # nd, x shape, (c_out, c_in/g, *k), stride, padding, dilation, groups
    (1, (3, 4, 11), (5, 4, 3), 1, 1, 1, 1),
    (1, (2, 6, 13), (4, 3, 3), 2, 0, 2, 2),
    (2, (2, 3, 7, 9), (5, 3, 3, 3), 1, 1, 1, 1),
    (2, (1, 4, 8, 7), (6, 2, 3, 2), (2, 1), (1, 0), (1, 2), 2),
    (2, (0, 3, 5, 5), (4, 3, 3, 3), 1, 1, 1, 1),
    (2, (2, 4, 6, 6), (4, 1, 3, 3), 1, "same", 1, 4),
    (3, (2, 2, 5, 4, 6), (3, 2, 3, 1, 3), 1, (1, 0, 1), 1, 1),
]


@pytest.mark.parametrize("d", [0, 1, 3, 5])
@pytest.mark.parametrize("case", CONV_CASES, ids=[f"conv{c[0]}d-{i}" for i, c in enumerate(CONV_CASES)])
def test_conv_stacked_matches_loop_float64(case, d):
    nd, xs, ws, s, p, dil, grp = case
    w, b, dw, db, g, c = dendrite_params(ws, d, dtype=torch.float64)
    x = torch.randn(xs, dtype=torch.float64)
    fn = getattr(PF, f"dendritic_conv{nd}d")
    y = fn(x, w, b, dw, db, g, c, s, p, dil, grp)
    torch.testing.assert_close(y, R.dendritic_conv_loop(x, w, b, dw, db, g, c, s, p, dil, grp), rtol=1e-11, atol=1e-11)
    conv = getattr(F, f"conv{nd}d")
    assert y.shape == conv(x, w, b, s, p, dil, grp).shape
    if d == 0:
        torch.testing.assert_close(y, conv(x, w, b, s, p, dil, grp), rtol=0, atol=0)


def test_conv_unbatched_and_channels_last():
    w, b, dw, db, g, c = dendrite_params((5, 3, 3, 3), 2, dtype=torch.float64)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    y = PF.dendritic_conv2d(x, w, b, dw, db, g, c, 1, 1)
    y_cl = PF.dendritic_conv2d(x.to(memory_format=torch.channels_last), w, b, dw, db, g, c, 1, 1)
    torch.testing.assert_close(y_cl, y, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(PF.dendritic_conv2d(x[1], w, b, dw, db, g, c, 1, 1), y[1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("nd,groups", [(1, 1), (2, 1), (2, 2), (3, 1)])
def test_conv_gradcheck_all_inputs(nd, groups):
    ws = (4, 2 // groups * 1 if groups == 2 else 2) + (2,) * nd
    w, b, dw, db, g, c = dendrite_params(ws, 2, dtype=torch.float64)
    x = torch.randn((2, 2) + (4,) * nd, dtype=torch.float64)
    fn = getattr(PF, f"dendritic_conv{nd}d")
    inputs = [t.requires_grad_() for t in (x, w, b, dw, db, g, c)]
    assert torch.autograd.gradcheck(lambda *a: fn(*a, 1, 1, 1, groups), inputs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_conv_low_precision_close_to_float64(dtype):
    w, b, dw, db, g, c = dendrite_params((8, 6, 3, 3), 3, dtype=torch.float64)
    x = torch.randn(2, 6, 9, 9, dtype=torch.float64)
    ref = R.dendritic_conv_ref(x, *(w, b, dw, db, g, c), 1, 1)
    y = PF.dendritic_conv2d(*[t.to(dtype) for t in (x, w, b, dw, db, g, c)], 1, 1)
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(y.double(), ref, atol=atol * 5, rtol=rtol * 5)
    assert to64(y)[0].shape == ref.shape
