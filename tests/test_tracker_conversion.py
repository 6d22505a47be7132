"""perforate_model's conversion walk (spec §3): default types, the selection lists, PAISequential blocks and other
modules through the generic dendritic wrapper, processors for tuple outputs, and the node dimension."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

import pai_fast
from pai_fast.tracker import (
    DendriticModule,
    GRUProcessor,
    LSTMProcessor,
    PAIConfigurationError,
    PAISequential,
    pc,
)


@pytest.fixture(autouse=True)
def _fresh_config(tmp_path):
    old = os.getcwd()
    os.chdir(tmp_path)
    pc.reset()
    pc.set_silent(True)
    yield
    pc.reset()
    os.chdir(old)


def _randomise_gates(model: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "dendrite_gate" in name or "dendrite_cascade" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.norm = nn.LayerNorm(8)
        self.fc1 = nn.Linear(4 * 8 * 8, 16)
        self.fc2 = nn.Linear(16, 5)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(self.norm(self.conv(x)).flatten(1))))


def test_default_conversion_keeps_weights_and_outputs():
    torch.manual_seed(0)
    net = Net()
    x = torch.randn(3, 2, 8, 8)
    before = net(x)
    model = pai_fast.perforate_model(net, save_name="conv")
    assert type(model.conv) is pai_fast.DendriticConv2d and type(model.fc1) is pai_fast.DendriticLinear
    assert type(model.norm) is nn.LayerNorm  # not a perforated type
    torch.testing.assert_close(model(x), before, rtol=0, atol=0)
    for m in (model.conv, model.fc1, model.fc2):
        m.add_dendrite()
    torch.testing.assert_close(model(x), before, rtol=0, atol=1e-6)  # new dendrites start with zero gates
    _randomise_gates(model)
    assert (model(x) - before).abs().max() > 1e-3  # and then they do change the output


def test_selection_lists_by_id_type_and_name():
    pc.append_module_ids_to_track([".fc2"])  # tracked, no dendrites
    pc.append_modules_to_track([nn.Conv2d])
    pc.append_module_ids_to_perforate([".norm"])  # perforated by id (generic wrapper; warns: a norm layer)
    with pytest.warns(UserWarning, match="normalization layer"):
        model = pai_fast.perforate_model(Net(), save_name="sel")
    assert type(model.fc2) is nn.Linear and type(model.conv) is nn.Conv2d
    assert type(model.fc1) is pai_fast.DendriticLinear
    assert isinstance(model.norm, DendriticModule)
    pc.reset()
    pc.set_silent(True)
    pc.set_module_names_to_perforate(["Linear"])  # only Linear by type name
    model = pai_fast.perforate_model(Net(), save_name="sel2")
    assert type(model.conv) is nn.Conv2d and type(model.fc1) is pai_fast.DendriticLinear


class Blocky(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = PAISequential([nn.Linear(6, 7), nn.LayerNorm(7)])
        self.head = nn.Linear(7, 3)

    def forward(self, x):
        return self.head(torch.relu(self.block(x)))


def test_paisequential_block_grows_copies_of_itself_and_round_trips():
    torch.manual_seed(1)
    model = pai_fast.perforate_model(Blocky(), save_name="blk")
    assert isinstance(model.block, DendriticModule)
    x = torch.randn(5, 6)
    before = model(x)
    model.block.add_dendrite(2)
    assert model.block.num_dendrites == 2
    dendrite = model.block.dendrites[0]
    assert isinstance(dendrite, PAISequential) and isinstance(dendrite.model[1], nn.LayerNorm)  # a copy
    torch.testing.assert_close(model(x), before, rtol=0, atol=1e-6)
    _randomise_gates(model)
    y = model(x)
    y.sum().backward()
    assert model.block.dendrite_gate.grad is not None and model.block.dendrites[1].model[0].weight.grad.abs().sum() > 0
    fresh = pai_fast.perforate_model(Blocky(), save_name="blk2")
    fresh(x)  # learns the channel count
    pai_fast.save_checkpoint(model, "b.safetensors")
    pai_fast.load_checkpoint(fresh, "b.safetensors")
    assert fresh.block.num_dendrites == 2
    torch.testing.assert_close(fresh(x), y.detach(), rtol=0, atol=0)


class Recurrent(nn.Module):
    def __init__(self, cell=nn.GRU):
        super().__init__()
        self.rnn = cell(4, 6, batch_first=True)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


@pytest.mark.parametrize("cell,proc", [(nn.GRU, GRUProcessor), (nn.LSTM, LSTMProcessor)])
def test_recurrent_module_with_a_processor(cell, proc):
    torch.manual_seed(2)
    pc.append_modules_to_perforate([cell])
    pc.append_modules_with_processing([cell])
    pc.append_modules_processing_classes([proc])
    pc.set_output_dimensions([-1, -1, 0])  # [B, T, H]: the hidden features are the neurons
    model = pai_fast.perforate_model(Recurrent(cell), save_name="rnn")
    assert isinstance(model.rnn, DendriticModule)
    x = torch.randn(3, 5, 4)
    before = model(x)
    model.rnn.add_dendrite()
    assert model.rnn.dendrite_gate.shape == (1, 6)  # one gate per hidden feature
    torch.testing.assert_close(model(x), before, rtol=0, atol=1e-6)
    _randomise_gates(model)
    out, hidden = model.rnn(x)  # the module still returns (output, hidden)
    assert out.shape == (3, 5, 6) and (hidden[0] if isinstance(hidden, tuple) else hidden).shape == (1, 3, 6)
    assert (model(x) - before).abs().max() > 1e-4


def test_tuple_output_without_a_processor_names_the_fix():
    pc.append_modules_to_perforate([nn.GRU])
    model = pai_fast.perforate_model(Recurrent(nn.GRU), save_name="noproc")
    with pytest.raises(PAIConfigurationError, match="append_modules_with_processing"):
        model(torch.randn(2, 3, 4))


def test_fused_layers_take_leading_batch_dims():
    """[B, T, F] through a converted Linear: every leading dim is batch (perforatedai's node-dim setting for
    Linear layouts), one gate per output feature."""
    model = pai_fast.perforate_model(nn.Sequential(nn.Linear(8, 5)), save_name="btf")
    model[0].add_dendrite()
    _randomise_gates(model)
    x = torch.randn(2, 7, 8)
    y = model(x)
    assert y.shape == (2, 7, 5) and model[0].dendrite_gate.shape == (1, 5)
    torch.testing.assert_close(y[1, 3], model(x[1, 3][None])[0], rtol=1e-6, atol=1e-6)
