"""DendriticLinear / DendriticConv*d: torch-layer parity, growth, conversion, state dicts, dtype/device moves."""

import copy
import inspect

import pytest
import torch
from torch import nn

import pai_fast
from pai_fast import reference as R
from pai_fast.nn import DendriteMismatchError

PAIRS = [
    (pai_fast.DendriticLinear, nn.Linear, (13, 7), (5, 13)),
    (pai_fast.DendriticConv1d, nn.Conv1d, (3, 5, 3), (2, 3, 11)),
    (pai_fast.DendriticConv2d, nn.Conv2d, (3, 5, 3), (2, 3, 9, 8)),
    (pai_fast.DendriticConv3d, nn.Conv3d, (2, 4, 3), (2, 2, 5, 6, 5)),
]
IDS = [p[0].__name__ for p in PAIRS]


@pytest.mark.parametrize("cls,base,args,xshape", PAIRS, ids=IDS)
def test_constructor_mirrors_torch_layer(cls, base, args, xshape):
    ours = inspect.signature(cls.__init__).parameters
    theirs = inspect.signature(base.__init__).parameters
    for name, p in theirs.items():
        assert name in ours, name
        assert ours[name].default == p.default, name
    assert ours["dendrites"].default == 0 and ours["activation"].default == "sigmoid"
    assert isinstance(cls(*args), base)


@pytest.mark.parametrize("cls,base,args,xshape", PAIRS, ids=IDS)
def test_zero_dendrites_is_exactly_the_torch_layer(cls, base, args, xshape):
    torch.manual_seed(1)
    ref = base(*args)
    torch.manual_seed(1)
    ours = cls(*args)  # same RNG stream -> same initialisation as the torch layer
    torch.testing.assert_close(ours.weight, ref.weight, rtol=0, atol=0)
    x = torch.randn(xshape, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    y, y_ref = ours(x), ref(x2)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0)
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    torch.testing.assert_close(x.grad, x2.grad, rtol=0, atol=0)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, rtol=0, atol=0)
    torch.testing.assert_close(ours.bias.grad, ref.bias.grad, rtol=0, atol=0)


@pytest.mark.parametrize("cls,base,args,xshape", PAIRS, ids=IDS)
def test_parameters_shapes_and_names(cls, base, args, xshape):
    m = cls(*args, dendrites=3)
    n = m.weight.shape[0]
    assert m.num_dendrites == 3
    assert m.dendrite_weight.shape == (3, *m.weight.shape)
    assert m.dendrite_bias.shape == (3, n)
    assert m.dendrite_gate.shape == (3, n)
    assert m.dendrite_cascade.shape == (3, 3, n)
    assert {k for k, _ in m.named_parameters()} == {
        "weight",
        "bias",
        "dendrite_weight",
        "dendrite_bias",
        "dendrite_gate",
        "dendrite_cascade",
    }
    nb = cls(*args, bias=False, dendrites=2)
    assert nb.dendrite_bias is None and nb.bias is None
    assert nb(torch.randn(xshape)).shape == base(*args, bias=False)(torch.randn(xshape)).shape


@pytest.mark.parametrize("cls,base,args,xshape", PAIRS, ids=IDS)
def test_add_dendrite_is_function_preserving_and_initialised(cls, base, args, xshape):
    # Widths where the GEMM's per-column result does not depend on the total width (BLAS-dependent for
    # tiny shapes), so growth is bit-identical.
    m = cls(*args)
    x = torch.randn(xshape)
    for d in range(1, 5):
        with torch.no_grad():
            m.dendrite_gate.normal_()
            m.dendrite_cascade.normal_()
        y0 = m(x)
        m.add_dendrite()
        assert m.num_dendrites == d
        torch.testing.assert_close(m(x), y0, rtol=1e-6, atol=1e-6)
        assert torch.all(m.dendrite_gate[-1] == 0)
        assert torch.all(m.dendrite_cascade[-1] == 0) and torch.all(m.dendrite_cascade[:, -1] == 0)
    big = cls(*[a * 8 if i < 2 else a for i, a in enumerate(args)], dendrites=40)
    std = big.dendrite_weight.std().item()
    assert 0.009 < std < 0.011, std  # N(0, 0.01^2)


def test_add_dendrite_bit_identical_linear():
    m = pai_fast.DendriticLinear(64, 32, dendrites=1)
    x = torch.randn(16, 64)
    for _ in range(4):
        with torch.no_grad():
            m.dendrite_gate.normal_()
            m.dendrite_cascade.normal_()
        y0 = m(x)
        m.add_dendrite()
        assert torch.equal(m(x), y0)


def test_add_dendrite_validates_n():
    m = pai_fast.DendriticLinear(3, 2)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="n: expected a positive int"):
            m.add_dendrite(bad)
    with pytest.raises(ValueError, match="dendrites: expected a non-negative int"):
        pai_fast.DendriticLinear(3, 2, dendrites=-1)
    with pytest.raises(ValueError, match="activation"):
        pai_fast.DendriticLinear(3, 2, activation="softsign")


@pytest.mark.parametrize("cls,base,args,xshape", PAIRS, ids=IDS)
def test_from_module_keeps_weights(cls, base, args, xshape):
    layer = base(*args)
    m = cls.from_module(layer, dendrites=2)
    assert m.num_dendrites == 2
    torch.testing.assert_close(m.weight, layer.weight, rtol=0, atol=0)
    x = torch.randn(xshape)
    with torch.no_grad():
        torch.testing.assert_close(m(x), layer(x), rtol=1e-6, atol=1e-6)  # new gates are zero
    assert m.weight.data_ptr() != layer.weight.data_ptr()
    again = cls.from_module(m)
    assert again.num_dendrites == 2
    torch.testing.assert_close(again(x), m(x), rtol=0, atol=0)
    with pytest.raises(TypeError, match="layer: expected"):
        cls.from_module(nn.ReLU())


def test_from_module_conv_options_and_padding_modes():
    for mode in ("zeros", "reflect", "replicate", "circular"):
        layer = nn.Conv2d(4, 6, 3, stride=2, padding=1, dilation=1, groups=2, padding_mode=mode)
        m = pai_fast.DendriticConv2d.from_module(layer)
        x = torch.randn(2, 4, 9, 9)
        torch.testing.assert_close(m(x), layer(x), rtol=0, atol=0)
        m.add_dendrite(2)
        with torch.no_grad():
            m.dendrite_gate.normal_()
        manual = R.dendritic_conv_loop(
            torch.nn.functional.pad(x, m._reversed_padding_repeated_twice, mode=mode) if mode != "zeros" else x,
            m.weight,
            m.bias,
            *m.dendrite_args(),
            m.stride,
            0 if mode != "zeros" else m.padding,
            m.dilation,
            m.groups,
        )
        torch.testing.assert_close(m(x), manual, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls,base,args,xshape", PAIRS, ids=IDS)
def test_state_dict_round_trip_and_mismatch(cls, base, args, xshape):
    m = cls(*args, dendrites=3)
    with torch.no_grad():
        m.dendrite_gate.normal_()
    other = cls(*args, dendrites=3)
    other.load_state_dict(m.state_dict())
    x = torch.randn(xshape)
    torch.testing.assert_close(other(x), m(x), rtol=0, atol=0)
    with pytest.raises(DendriteMismatchError, match="state dict has 3 dendrites, the layer has 1"):
        cls(*args, dendrites=1).load_state_dict(m.state_dict())


def test_to_dtype_device_and_deepcopy_and_repr():
    m = pai_fast.DendriticLinear(5, 4, dendrites=2, activation="tanh")
    m64 = copy.deepcopy(m).to(torch.float64)
    assert all(p.dtype == torch.float64 for p in m64.parameters())
    x = torch.randn(3, 5)
    torch.testing.assert_close(m64(x.double()).float(), m(x), rtol=1e-5, atol=1e-6)
    r = repr(m)
    assert "in_features=5" in r and "dendrites=2" in r and "activation=tanh" in r
    mb = pai_fast.DendriticLinear(5, 4, dendrites=1, dtype=torch.bfloat16)
    assert mb.dendrite_weight.dtype == torch.bfloat16 and mb(x.bfloat16()).dtype == torch.bfloat16


def test_custom_callable_activation():
    m = pai_fast.DendriticLinear(5, 4, dendrites=2, activation=torch.nn.functional.gelu)
    with torch.no_grad():
        m.dendrite_gate.normal_()
    x = torch.randn(3, 5)
    expected = R.dendritic_linear_loop(x, m.weight, m.bias, *m.dendrite_args(), torch.nn.functional.gelu)
    torch.testing.assert_close(m(x), expected)
    assert "activation=gelu" in repr(m)


def test_training_step_updates_all_parameters():
    m = pai_fast.DendriticLinear(6, 3, dendrites=2)
    with torch.no_grad():
        m.dendrite_gate.normal_()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    before = {k: v.detach().clone() for k, v in m.named_parameters()}
    m(torch.randn(8, 6)).pow(2).mean().backward()
    opt.step()
    for k, v in m.named_parameters():
        assert not torch.equal(v, before[k]), k


@pytest.mark.parametrize(("cls", "args", "xshape"), [(pai_fast.DendriticLinear, (16, 8), (5, 16)),
                                                     (pai_fast.DendriticConv2d, (3, 4, 3), (2, 3, 7, 7))])  # fmt: skip
def test_weight_and_dendrite_weight_stay_in_one_storage(cls, args, xshape):
    """The fused kernels read Wcat = [weight; dendrite_weight] as one view (TMA forward, one dX GEMM): the layer
    keeps them adjacent through growth, shrinking and dtype/device moves, without new Parameter objects, and
    packing never changes a value."""
    from pai_fast._layout import stacked_view

    torch.manual_seed(0)
    layer = cls(*args, dendrites=2)
    with torch.no_grad():
        layer.dendrite_gate.normal_()
    assert stacked_view(layer.weight, layer.dendrite_weight) is not None
    x = torch.randn(xshape)
    before = layer(x)
    ids = [id(p) for p in (layer.weight, layer.dendrite_weight)]
    layer.weight.data = layer.weight.data.clone()  # apart, as FSDP or an assign-load would leave them
    assert stacked_view(layer.weight, layer.dendrite_weight) is None
    torch.testing.assert_close(layer(x), before, rtol=0, atol=0)  # the general path still runs
    layer = layer.double()
    assert [id(p) for p in (layer.weight, layer.dendrite_weight)] == ids
    assert stacked_view(layer.weight, layer.dendrite_weight) is not None
    torch.testing.assert_close(layer(x.double()), before.double(), rtol=1e-6, atol=1e-6)
    layer.add_dendrite()
    assert layer.num_dendrites == 3 and stacked_view(layer.weight, layer.dendrite_weight) is not None
    layer._set_num_dendrites(1)
    assert stacked_view(layer.weight, layer.dendrite_weight) is not None
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    layer(x.double()).square().sum().backward()
    opt.step()  # in-place updates of the two views
    assert stacked_view(layer.weight, layer.dendrite_weight) is not None
    fresh = cls(*args, dendrites=1).double()
    fresh.load_state_dict(layer.state_dict())
    torch.testing.assert_close(fresh(x.double()), layer(x.double()), rtol=0, atol=0)


@pytest.mark.parametrize("dendrites", [0, 1, 3])
def test_channels_last_module_conversion(dendrites):
    """model.to(memory_format=torch.channels_last) works on a dendritic Conv2d (its 5-D dendrite weight converts as
    D stacked 4-D weights), keeps weight and dendrite_weight stacked in one storage in that format, changes no
    value, and gradients come back in the parameters' own layout (autograd accumulates them without a copy)."""
    from pai_fast._layout import stacked_view

    torch.manual_seed(0)
    layer = pai_fast.DendriticConv2d(6, 10, 3, padding=1, dendrites=dendrites)
    with torch.no_grad():
        layer.dendrite_gate.normal_()
        layer.dendrite_cascade.normal_()
    x = torch.randn(2, 6, 9, 8)
    before = layer(x)
    ids = [id(p) for p in layer.parameters()]
    layer.to(memory_format=torch.channels_last)
    assert [id(p) for p in layer.parameters()] == ids
    assert layer.weight.is_contiguous(memory_format=torch.channels_last) and not layer.weight.is_contiguous()
    if dendrites:
        assert stacked_view(layer.weight, layer.dendrite_weight) is not None
        assert layer.dendrite_weight.stride()[1:] == layer.weight.stride()
    xc = x.contiguous(memory_format=torch.channels_last)
    y = layer(xc)
    torch.testing.assert_close(y, before, rtol=1e-5, atol=1e-6)
    y.square().sum().backward()
    for p in layer.parameters():
        assert p.grad.stride() == p.stride()
    layer.double()
    assert layer.weight.is_contiguous(memory_format=torch.channels_last)
    if dendrites:
        assert stacked_view(layer.weight, layer.dendrite_weight) is not None
    fresh = pai_fast.DendriticConv2d(6, 10, 3, padding=1, dendrites=dendrites).double()
    fresh.load_state_dict(layer.state_dict())
    torch.testing.assert_close(fresh(x.double()), layer(xc.double()), rtol=1e-9, atol=1e-12)
    layer.to(memory_format=torch.contiguous_format)
    assert layer.weight.is_contiguous() and layer.dendrite_weight.is_contiguous()
