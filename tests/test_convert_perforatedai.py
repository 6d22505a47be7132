"""Differential tests of pai_fast.convert against the real perforatedai 3.2.9 package.

Each case wraps a model with perforatedai's perforate_model, grows D dendrites through its tracker
(add_validation_score), randomises every parameter (main, dendrite layers, live and stale dendrites_to_top,
cascades, scaffolding) so the dendrite terms matter, and checks that the pai_fast conversion computes the same
outputs (and input gradients) in float32. perforatedai keeps global state (GPA.pc, GPA.pai_tracker) and writes
files into the working directory: every test gets a fresh PAIConfig, no tracker and its own tmp_path as cwd.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
from torch import nn

from pai_fast import DendriticConv1d, DendriticConv2d, DendriticConv3d, DendriticLinear
from pai_fast.convert import PerforatedAIConversionError, from_perforatedai, to_perforatedai_state_dict

GPA = pytest.importorskip("perforatedai.globals_perforatedai", reason="needs perforatedai==3.2.9 (pip --no-deps)")
UPA = pytest.importorskip("perforatedai.utils_perforatedai")

ATOL = 1e-6
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # from perforatedai


@pytest.fixture(autouse=True)
def pai(tmp_path, monkeypatch):
    """Fresh perforatedai globals, non-interactive settings, files under tmp_path."""
    monkeypatch.chdir(tmp_path)
    old_pc, old_tracker = GPA.pc, GPA.pai_tracker
    GPA.pc = GPA.PAIConfig()
    GPA.pai_tracker = []
    pc = GPA.pc
    pc.set_configuration_confirmed(True)  # no terminal UI
    pc.set_unwrapped_modules_confirmed(True)  # no pdb for unwrapped parameters
    pc.set_silent(True)
    pc.set_device("cpu")
    # One dendrite per add_validation_score call, for any D (capacity mode stops at 3).
    pc.set_testing_dendrite_capacity(False)
    pc.set_switch_mode(pc.DOING_SWITCH_EVERY_TIME)
    pc.set_retain_all_dendrites(True)
    pc.set_max_dendrites(100)
    pc.set_max_dendrite_tries(1000)
    yield pc
    GPA.pc, GPA.pai_tracker = old_pc, old_tracker


def _perforate(model, dims=None):
    model = UPA.perforate_model(model, save_name="PAI", making_graphs=False, maximizing_score=True)
    for path, d in (dims or {}).items():
        model.get_submodule(path).set_this_output_dimensions(d)
    return model


def _grow(model, x, d):
    """One forward+backward (perforatedai learns C from the first gradient), then d dendrite additions."""
    GPA.pai_tracker.set_optimizer_instance(torch.optim.SGD(model.parameters(), lr=0.01))
    model(x).sum().backward()
    for _ in range(d):
        model, restructured, complete = GPA.pai_tracker.add_validation_score(0.5, model)
        assert restructured and not complete
        GPA.pai_tracker.set_optimizer_instance(torch.optim.SGD(model.parameters(), lr=0.01))
    model.zero_grad(set_to_none=True)
    return model


@torch.no_grad()
def _randomise(model):
    """Every parameter random and O(1)-scaled outputs, so main and dendrite terms are both active."""
    for name, p in model.named_parameters():
        if p.numel() == 0:
            continue
        if "dendrites_to_top" in name or "dendrites_to_dendrites" in name or "candidates" in name:
            p.copy_(torch.randn_like(p))
        elif p.dim() >= 2:
            p.copy_(torch.randn_like(p) / math.sqrt(p[0].numel()))
        else:
            p.copy_(torch.randn_like(p) * 0.5)


def _pai_modules(model):
    return {n: m for n, m in model.named_modules() if type(m).__name__ == "PAINeuronModule"}


def _compare(ref_model, fast_model, x):
    xr = x.clone().requires_grad_(True)
    xf = x.clone().requires_grad_(True)
    yr = ref_model(xr)
    yf = fast_model(xf)
    assert yf.shape == yr.shape
    err = (yf - yr).abs().max().item()
    assert err <= ATOL, f"max |pai_fast - perforatedai| = {err}"
    g = torch.randn_like(yr)
    yr.backward(g)
    yf.backward(g)
    gerr = (xf.grad - xr.grad).abs().max().item()
    assert gerr <= 1e-5 * max(1.0, xr.grad.abs().max().item()), f"input grad error {gerr}"
    return yr


# name -> (model factory, input factory, perforatedai output dims overrides, expected pai_fast classes)
CASES = {
    "mlp": (
        lambda: nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3, bias=False)),
        lambda: torch.randn(4, 5),
        None,
        {"0": DendriticLinear, "2": DendriticLinear},
    ),
    "linear_seq": (
        lambda: nn.Sequential(nn.Linear(5, 6), nn.Tanh()),
        lambda: torch.randn(3, 4, 5),
        {"0": [-1, -1, 0]},
        {"0": DendriticLinear},
    ),
    "conv1d": (
        lambda: nn.Sequential(nn.Conv1d(3, 4, 3, padding=1)),
        lambda: torch.randn(2, 3, 9),
        None,
        {"0": DendriticConv1d},
    ),
    "conv2d": (
        lambda: nn.Sequential(nn.Conv2d(4, 6, 3, stride=2, padding=1, dilation=2, groups=2)),
        lambda: torch.randn(2, 4, 9, 8),
        None,
        {"0": DendriticConv2d},
    ),
    "conv3d": (
        lambda: nn.Sequential(nn.Conv3d(2, 4, (3, 2, 3), stride=(1, 2, 1), padding=1)),
        lambda: torch.randn(2, 2, 3, 5, 4),
        {"0": [-1, 0, -1, -1, -1]},
        {"0": DendriticConv3d},
    ),
}


@pytest.mark.parametrize("d", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("case", sorted(CASES))
def test_live_model_matches_perforatedai(case, d):
    make, make_x, dims, classes = CASES[case]
    x = make_x()
    model = _grow(_perforate(make(), dims), x, d)
    wrapped = _pai_modules(model)
    assert sorted(wrapped) == sorted(classes)
    assert all(len(m.dendrite_module.layers) == d for m in wrapped.values())
    _randomise(model)
    fast = from_perforatedai(model)
    for path, cls in classes.items():
        layer = fast.get_submodule(path)
        assert type(layer) is cls and layer.num_dendrites == d and layer.activation == "sigmoid"
    assert not any(type(m).__name__ in ("PAINeuronModule", "TrackedNeuronModule") for m in fast.modules())
    assert "tracker_string" not in fast.state_dict()
    if d:
        with torch.no_grad():
            # Main modules alone (live output weights zeroed), to show the dendrite terms are really active.
            saved = [m.dendrites_to_top[-1].clone() for m in wrapped.values()]
            for m in wrapped.values():
                m.dendrites_to_top[-1].zero_()
            y_main = model(x)
            for m, s in zip(wrapped.values(), saved):
                m.dendrites_to_top[-1].copy_(s)
    y = _compare(model, fast, x)
    if d:
        assert (y - y_main).abs().max().item() > 0.05
    # The source model is left alone.
    assert sorted(_pai_modules(model)) == sorted(classes)


def test_capacity_mode_three_dendrites(pai):
    """perforatedai's default testing_dendrite_capacity mode: 3 dendrites in 3 calls, then complete."""
    pai.set_testing_dendrite_capacity(True)
    pai.set_switch_mode(pai.DOING_HISTORY)
    x = torch.randn(4, 5)
    model = _grow(_perforate(nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))), x, 3)
    model, restructured, complete = GPA.pai_tracker.add_validation_score(0.5, model)
    assert complete
    _randomise(model)
    fast = from_perforatedai(model)
    assert fast[0].num_dendrites == 3 and fast[2].num_dendrites == 3
    _compare(model, fast, x)


@pytest.mark.parametrize("fn,name", [(torch.tanh, "tanh"), (torch.relu, "relu")])
def test_forward_function_is_used(pai, fn, name):
    pai.set_pai_forward_function(fn)
    x = torch.randn(6, 5)
    model = _grow(_perforate(nn.Sequential(nn.Linear(5, 4))), x, 2)
    _randomise(model)
    fast = from_perforatedai(model)
    assert fast[0].activation == name
    _compare(model, fast, x)


class Blocks(nn.Module):
    """Tracked LayerNorm, a one-layer PAISequential and a plain Linear."""

    def __init__(self):
        super().__init__()
        self.a = GPA.PAISequential([nn.Linear(5, 6)])
        self.ln = nn.LayerNorm(6)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        return self.head(torch.relu(self.ln(self.a(x))))


def test_tracked_and_single_layer_paisequential(pai):
    pai.append_module_names_to_track(["LayerNorm"])
    x = torch.randn(4, 5)
    model = _grow(_perforate(Blocks()), x, 2)
    assert type(model.ln).__name__ == "TrackedNeuronModule"
    _randomise(model)
    with torch.no_grad():
        model.ln.main_module.weight.add_(1.0)
    fast = from_perforatedai(model)
    assert type(fast.a) is DendriticLinear and fast.a.num_dendrites == 2
    assert type(fast.ln) is nn.LayerNorm and type(fast.head) is DendriticLinear
    _compare(model, fast, x)


@pytest.mark.parametrize("case,d", [("mlp", 2), ("conv2d", 3), ("linear_seq", 1), ("conv3d", 0)])
def test_checkpoint_matches_perforatedai(case, d):
    make, make_x, dims, classes = CASES[case]
    x = make_x()
    model = _grow(_perforate(make(), dims), x, d)
    _randomise(model)
    UPA.save_system(model, "PAI", "ckpt")
    path = os.path.join("PAI", "ckpt.pt")
    assert os.path.isfile(path)
    fresh = make()
    fast = from_perforatedai(path, model=fresh)
    for p, cls in classes.items():
        assert type(fast.get_submodule(p)) is cls and fast.get_submodule(p).num_dendrites == d
    assert type(fresh[0]) in (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)  # the template is not modified
    _compare(model, fast, x)


def test_checkpoint_tracked_and_state_dict_input(pai):
    pai.append_module_names_to_track(["LayerNorm"])
    x = torch.randn(4, 5)
    model = _grow(_perforate(Blocks()), x, 3)
    _randomise(model)
    with torch.no_grad():
        model.ln.main_module.bias.add_(2.0)
    UPA.save_system(model, "PAI", "blocks")
    from safetensors.torch import load_file

    sd = load_file(os.path.join("PAI", "blocks.pt"))
    assert "ln.main_module.bias" in sd and "a.dendrite_module.layers.2.model.0.weight" in sd
    for source in (os.path.join("PAI", "blocks.pt"), sd):
        fast = from_perforatedai(source, model=Blocks())
        assert type(fast.ln) is nn.LayerNorm and fast.a.num_dendrites == 3
        _compare(model, fast, x)


def test_unsupported_wrapped_module_names_path(pai):
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = GPA.PAISequential([nn.Linear(5, 6), nn.LayerNorm(6)])

        def forward(self, x):
            return self.block(x)

    model = _perforate(M())
    with pytest.raises(PerforatedAIConversionError, match=r"'block'.*PAISequential"):
        from_perforatedai(model)


def test_wrong_node_dimension_names_path(pai):
    model = _perforate(nn.Sequential(nn.Identity(), nn.Linear(5, 6)), {"1": [-1, 0, -1]})
    with pytest.raises(PerforatedAIConversionError, match=r"'1'.*node dim"):
        from_perforatedai(model)


def test_checkpoint_errors():
    x = torch.randn(4, 5)
    model = _grow(_perforate(CASES["mlp"][0]()), x, 1)
    UPA.save_system(model, "PAI", "ckpt")
    path = os.path.join("PAI", "ckpt.pt")
    with pytest.raises(TypeError, match="model"):
        from_perforatedai(path)
    with pytest.raises(PerforatedAIConversionError, match="'2'"):
        from_perforatedai(path, model=nn.Sequential(nn.Linear(5, 7), nn.ReLU()))
    with pytest.raises(PerforatedAIConversionError, match="'0'"):
        from_perforatedai(path, model=nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3, bias=False)))
    with pytest.raises(PerforatedAIConversionError, match="wrapped"):
        from_perforatedai(path, model=model)
    with pytest.raises(FileNotFoundError):
        from_perforatedai("does_not_exist.pt", model=CASES["mlp"][0]())


@pytest.mark.parametrize("case,d", [("mlp", 3), ("conv2d", 2), ("linear_seq", 1), ("conv1d", 0)])
def test_export_loads_into_perforatedai(case, d):
    """to_perforatedai_state_dict: same keys/shapes as perforatedai's own, and load_system reproduces pai_fast."""
    make, make_x, dims, classes = CASES[case]
    x = make_x()
    model = _grow(_perforate(make(), dims), x, d)
    _randomise(model)
    fast = from_perforatedai(model)
    with torch.no_grad():
        for p in fast.parameters():  # new numbers, so a load that silently did nothing would fail
            p.add_(torch.randn_like(p) * 0.1)
    real = {k: v for k, v in model.state_dict().items() if k != "tracker_string"}
    exported = to_perforatedai_state_dict(fast, output_dimensions=dims, tracker_string=model.tracker_string)
    assert sorted(exported) == sorted([*real, "tracker_string"])
    for k, v in real.items():
        assert exported[k].shape == v.shape and exported[k].dtype == v.dtype, k
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in exported.items()}, os.path.join("PAI", "exported.pt"))
    # perforatedai's inference recipe: wrap a fresh instance the same way, then load_system.
    GPA.pai_tracker = []
    target = _perforate(make(), dims)
    target = UPA.load_system(target, "PAI", "exported", load_from_restart=True)
    assert all(len(m.dendrite_module.layers) == d for m in _pai_modules(target).values())
    _compare(target, fast, x)


class Tied(nn.Module):
    """A Linear head sharing its weight with an embedding (weight tying)."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(7, 5)
        self.head = nn.Linear(5, 7)
        self.head.weight = self.emb.weight

    def forward(self, x):
        return self.head(torch.tanh(x @ self.emb.weight[:5]))


def test_live_weight_tying_is_kept(pai):
    pai.set_weight_tying_experimental(True)  # perforatedai cannot save tied tensors otherwise
    x = torch.randn(3, 5)
    model = _grow(_perforate(Tied()), x, 2)
    _randomise(model)
    fast = from_perforatedai(model)
    assert fast.head.weight is fast.emb.weight and fast.head.weight is not model.emb.weight
    assert fast.training and fast.head.dendrite_weight.requires_grad
    _compare(model, fast, x)
    model.eval()
    assert not from_perforatedai(model).head.training


def test_checkpoint_weight_tying_is_kept(pai):
    pai.set_weight_tying_experimental(True)
    x = torch.randn(3, 5)
    model = _grow(_perforate(Tied()), x, 2)
    _randomise(model)
    UPA.save_system(model, "PAI", "tied")
    fast = from_perforatedai(os.path.join("PAI", "tied.pt"), model=Tied())
    assert fast.head.weight is fast.emb.weight
    _compare(model, fast, x)
