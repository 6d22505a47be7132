"""torch.compile (fullgraph, no graph break), torch.export, and recompiles per growth event (torch backend, CPU)."""

import torch
from torch import nn

import pai_fast


class Net(nn.Module):
    def __init__(self, d=2):
        super().__init__()
        self.conv = pai_fast.DendriticConv2d(3, 4, 3, padding=1, dendrites=d)
        self.fc = pai_fast.DendriticLinear(4 * 6 * 6, 5, dendrites=d, activation="tanh")

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def _randomize(m):
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "gate" in name or "cascade" in name:
                p.normal_()


class CountingBackend:
    def __init__(self):
        self.compiles = 0

    def __call__(self, gm, example_inputs):
        self.compiles += 1
        return gm.forward


def test_compile_fullgraph_matches_eager_and_backprops():
    torch._dynamo.reset()
    m = Net()
    _randomize(m)
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    y = compiled(x)
    torch.testing.assert_close(y, m(x), rtol=1e-5, atol=1e-6)
    y.sum().backward()
    assert m.fc.dendrite_cascade.grad is not None and x.grad is not None


def test_one_recompile_per_growth_event():
    torch._dynamo.reset()
    m = Net(d=1)
    counter = CountingBackend()
    compiled = torch.compile(m, backend=counter, fullgraph=True)
    x = torch.randn(2, 3, 6, 6)
    compiled(x)
    compiled(x)
    assert counter.compiles == 1
    for growth in range(1, 4):
        m.conv.add_dendrite()
        m.fc.add_dendrite()
        for _ in range(3):
            torch.testing.assert_close(compiled(x), m(x), rtol=1e-5, atol=1e-6)
        assert counter.compiles == 1 + growth


def test_torch_export_round_trip(tmp_path):
    m = Net().eval()
    _randomize(m)
    x = torch.randn(2, 3, 6, 6)
    batch = torch.export.Dim("batch", min=1, max=64)
    ep = torch.export.export(m, (x,), dynamic_shapes={"x": {0: batch}})
    path = tmp_path / "net.pt2"
    torch.export.save(ep, path)
    loaded = torch.export.load(path).module()
    for b in (1, 5):
        xb = torch.randn(b, 3, 6, 6)
        torch.testing.assert_close(loaded(xb), m(xb), rtol=1e-5, atol=1e-6)
