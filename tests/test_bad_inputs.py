"""Bad input gets a clear error naming the argument, what was expected and what came."""

import pytest
import torch

import pai_fast
from pai_fast import functional as PF

from .helpers import dendrite_params


def _linear_args(d=2, bias=True):
    w, b, dw, db, g, c = dendrite_params((4, 3), d, bias=bias)
    return [torch.randn(5, 3), w, b, dw, db, g, c]


LINEAR_BAD = [
    (
        "integer x",
        lambda a: a.__setitem__(0, torch.ones(5, 3, dtype=torch.int64)),
        TypeError,
        r"x: expected a floating",
    ),
    ("mixed dtype", lambda a: a.__setitem__(1, a[1].double()), TypeError, r"weight: expected dtype torch.float32"),
    ("mixed dtype gate", lambda a: a.__setitem__(5, a[5].half()), TypeError, r"dendrite_gate: expected dtype"),
    (
        "wrong in_features",
        lambda a: a.__setitem__(0, torch.randn(5, 4)),
        ValueError,
        r"x: expected shape \[\.\.\., 3\]",
    ),
    (
        "weight 3d",
        lambda a: a.__setitem__(1, torch.randn(4, 3, 1)),
        ValueError,
        r"weight: expected shape \[out_features",
    ),
    (
        "D mismatch gate",
        lambda a: a.__setitem__(5, torch.randn(3, 4)),
        ValueError,
        r"dendrite_gate: expected shape \[2, 4\]",
    ),
    (
        "D mismatch cascade",
        lambda a: a.__setitem__(6, torch.randn(2, 3, 4)),
        ValueError,
        r"dendrite_cascade: expected shape \[2, 2, 4\]",
    ),
    (
        "dendrite weight shape",
        lambda a: a.__setitem__(3, torch.randn(2, 4, 2)),
        ValueError,
        r"dendrite_weight: expected shape \[2, 4, 3\]",
    ),
    (
        "dendrite weight rank",
        lambda a: a.__setitem__(3, torch.randn(4, 3)),
        ValueError,
        r"dendrite_weight: expected shape \[D, 4, 3\]",
    ),
    (
        "bias without dendrite bias",
        lambda a: a.__setitem__(4, None),
        ValueError,
        r"dendrite_bias: expected a tensor exactly",
    ),
    ("bias shape", lambda a: a.__setitem__(2, torch.randn(5)), ValueError, r"bias: expected shape \[4\]"),
    ("not a tensor", lambda a: a.__setitem__(0, [[1.0, 2.0, 3.0]]), TypeError, r"x: expected a torch.Tensor, got list"),
    ("scalar x", lambda a: a.__setitem__(0, torch.tensor(1.0)), ValueError, r"x: expected shape"),
]


@pytest.mark.parametrize("name,mutate,exc,msg", LINEAR_BAD, ids=[b[0] for b in LINEAR_BAD])
def test_linear_bad_inputs(name, mutate, exc, msg):
    args = _linear_args()
    mutate(args)
    with pytest.raises(exc, match=msg):
        PF.dendritic_linear(*args)


def test_linear_bad_activation_and_backend():
    with pytest.raises(ValueError, match="activation: expected one of"):
        PF.dendritic_linear(*_linear_args(), activation="swish")
    with pytest.raises(TypeError, match="activation: expected a name or a callable"):
        PF.dendritic_linear(*_linear_args(), activation=3)
    with pytest.raises(ValueError, match="backend: expected one of"):
        PF.dendritic_linear(*_linear_args(), backend="cublas")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs two devices (cpu + cuda) to mix")
@pytest.mark.gpu
def test_linear_mixed_devices():
    args = _linear_args()
    args[1] = args[1].cuda()
    with pytest.raises(ValueError, match=r"weight: expected a tensor on cpu"):
        PF.dendritic_linear(*args)


def _conv_args(d=2):
    w, b, dw, db, g, c = dendrite_params((6, 2, 3, 3), d)
    return [torch.randn(2, 4, 8, 8), w, b, dw, db, g, c]


CONV_BAD = [
    ("groups not dividing out", dict(groups=4), ValueError, r"groups: expected a divisor of out_channels=6, got 4"),
    ("groups zero", dict(groups=0), ValueError, r"groups: expected a positive int, got 0"),
    ("wrong channels", dict(groups=1), ValueError, r"x: expected 2 input channels"),
]


@pytest.mark.parametrize("name,kw,exc,msg", CONV_BAD, ids=[b[0] for b in CONV_BAD])
def test_conv_bad_groups(name, kw, exc, msg):
    with pytest.raises(exc, match=msg):
        PF.dendritic_conv2d(*_conv_args(), 1, 1, 1, **kw)


def test_conv_wrong_rank():
    args = _conv_args()
    args[0] = torch.randn(4, 8)
    with pytest.raises(ValueError, match=r"x: expected 4 dims \[batch, channels, \*spatial\]"):
        PF.dendritic_conv2d(*args, groups=2)
    args = _conv_args()
    with pytest.raises(ValueError, match=r"weight: expected 3 dims"):
        PF.dendritic_conv1d(torch.randn(2, 4, 8), *args[1:], groups=2)


def test_module_bad_input_shape_names_x():
    m = pai_fast.DendriticLinear(3, 2, dendrites=1)
    with pytest.raises(ValueError, match=r"x: expected shape \[\.\.\., 3\]"):
        m(torch.randn(4, 5))
    c = pai_fast.DendriticConv2d(3, 4, 3, dendrites=1)
    with pytest.raises(ValueError, match="x: expected 3 input channels"):
        c(torch.randn(1, 5, 8, 8))


def test_no_assert_on_user_input_in_library():
    import pathlib

    root = pathlib.Path(pai_fast.__file__).parent
    offenders = [str(p) for p in root.rglob("*.py") if "\n    assert " in p.read_text() or "\nassert " in p.read_text()]
    assert offenders == []
