"""Backend selection: argument > set_backend > PAI_FAST_BACKEND > auto; explicit-but-unavailable raises."""

import pytest
import torch

import pai_fast
from pai_fast import backends
from pai_fast import functional as PF

from .helpers import dendrite_params


@pytest.fixture(autouse=True)
def _reset(monkeypatch):
    monkeypatch.delenv("PAI_FAST_BACKEND", raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    pai_fast.set_backend(None)
    yield
    pai_fast.set_backend(None)


def test_precedence(monkeypatch):
    assert pai_fast.get_backend() == "auto"
    monkeypatch.setenv("PAI_FAST_BACKEND", "torch")
    assert pai_fast.get_backend() == "torch"
    pai_fast.set_backend("triton")
    assert pai_fast.get_backend() == "triton"
    pai_fast.set_backend(None)
    monkeypatch.setenv("PAI_FAST_BACKEND", "bogus")
    with pytest.raises(ValueError, match="PAI_FAST_BACKEND: expected one of"):
        pai_fast.get_backend()
    with pytest.raises(ValueError, match="backend: expected one of"):
        pai_fast.set_backend("fast")


def test_auto_on_cpu_is_torch_without_warning(recwarn):
    x = torch.randn(3, 4)
    w = torch.randn(2, 4)
    assert backends.choose("linear", x, w, 1, "sigmoid") == "torch"
    assert not [w for w in recwarn if "falling back" in str(w.message)]


@pytest.mark.parametrize("name", ["triton", "cuda"])
def test_explicit_unavailable_backend_raises_with_reasons(name):
    w, b, dw, db, g, c = dendrite_params((4, 3), 1)
    with pytest.raises(pai_fast.BackendUnavailableError, match=f"backend '{name}' cannot run dendritic_linear") as e:
        PF.dendritic_linear(torch.randn(2, 3), w, b, dw, db, g, c, backend=name)
    assert "cpu" in str(e.value)


def test_explicit_torch_backend_always_runs():
    w, b, dw, db, g, c = dendrite_params((4, 3), 1)
    PF.dendritic_linear(torch.randn(2, 3), w, b, dw, db, g, c, backend="torch")
    pai_fast.set_backend("torch")
    PF.dendritic_linear(torch.randn(2, 3), w, b, dw, db, g, c)


def test_custom_activation_reason():
    if backends.module_reasons("triton"):
        pytest.skip("triton kernels not installed in this environment")
    reasons = backends.input_reasons("triton", "linear", torch.randn(2, 3), torch.randn(4, 3), 1, None)
    assert any("activation must be one of" in r for r in reasons)


def test_report_lists_every_backend():
    rep = backends.report()
    assert set(rep) == {"torch", "triton", "cuda"}
    assert rep["torch"] == []
    if not torch.cuda.is_available():
        assert rep["cuda"]  # a reason is given


def test_doctor_runs(capsys):
    from pai_fast.cli import main

    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "torch" in out and "backend" in out and "available" in out


def test_auto_order_by_device_and_shape_class():
    """auto reads its order off AUTO_TABLE by device class and shape class: small Linear layers (by multiply-adds,
    every leading dim a batch dim), larger ones and convs; devices without a measured row take the default row."""
    from pai_fast import backends

    small = torch.empty(256, 1024, device="meta")
    large = torch.empty(8192, 4096, device="meta")
    w = torch.empty(1024, 1024, device="meta")
    assert backends.shape_class("linear", small, w, 3) == "small_linear"
    assert backends.shape_class("linear", large, torch.empty(4096, 4096, device="meta"), 1) == "linear"
    assert backends.shape_class("linear", torch.empty(4, 64, 1024, device="meta"), w, 3) == "small_linear"
    assert backends.shape_class("linear", torch.empty(0, 8, device="meta"), torch.empty(4, 8, device="meta"), 1) == (
        "small_linear"
    )
    conv_x = torch.empty(1, 3, 8, 8, device="meta")
    assert backends.shape_class("conv", conv_x, torch.empty(4, 3, 3, 3, device="meta"), 1) == "conv"
    assert backends.device_class(torch.device("meta")) == backends.DEFAULT_DEVICE_CLASS
    row = backends.AUTO_TABLE[backends.DEFAULT_DEVICE_CLASS]
    assert set(row) == set(backends.SHAPE_CLASSES)
    assert backends.auto_order("linear", small, w, 3) == row["small_linear"]
    assert backends.auto_order("conv", conv_x, torch.empty(4, 3, 3, 3, device="meta"), 1) == row["conv"]
    for orders in backends.AUTO_TABLE.values():
        for order in orders.values():
            assert order and set(order) <= set(backends.BACKENDS) - {"torch"}, order


def test_auto_order_follows_the_table(monkeypatch):
    """A measured row for a device class is what auto tries, per shape class."""
    from pai_fast import backends

    monkeypatch.setitem(
        backends.AUTO_TABLE,
        backends.DEFAULT_DEVICE_CLASS,
        {"small_linear": ("cuda", "triton"), "linear": ("triton",), "conv": ("triton",)},
    )
    small, w = torch.empty(64, 784, device="meta"), torch.empty(128, 784, device="meta")
    assert backends.auto_order("linear", small, w, 3) == ("cuda", "triton")
    assert backends.auto_order("linear", torch.empty(8192, 4096, device="meta"), torch.empty(4096, 4096), 1) == (
        "triton",
    )


def test_auto_sends_few_rows_with_long_k_to_torch():
    """Few rows with a long K (batch-1 inference of a wide layer) take the torch backend: no fused backend is
    tried (so no fallback warning); from FEW_ROWS rows on, or with a shorter K, the fused order applies."""
    from pai_fast import backends

    w = torch.empty(128, backends.LONG_K, device="meta")
    for rows in (1, backends.FEW_ROWS - 1):
        assert backends.auto_order("linear", torch.empty(rows, backends.LONG_K, device="meta"), w, 3) == ()
    assert backends.auto_order("linear", torch.empty(backends.FEW_ROWS, backends.LONG_K, device="meta"), w, 3)
    short = torch.empty(1, backends.LONG_K - 1, device="meta")
    assert backends.auto_order("linear", short, torch.empty(128, backends.LONG_K - 1, device="meta"), 3)
