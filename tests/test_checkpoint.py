"""Checkpoints: exact round trips, structure rebuild, mismatch messages, corruption, kill -9 during save."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import pai_fast
from pai_fast import checkpoint as ck
from pai_fast.checkpoint import (
    CheckpointCorruptError,
    CheckpointError,
    CheckpointFormatError,
    CheckpointMismatchError,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(pai_fast.__file__)))


class ToyWrapper(nn.Module):
    """A generic dendritic wrapper: exposes only ``num_dendrites`` and ``_set_num_dendrites``."""

    def __init__(self, block: nn.Module, channels: int) -> None:
        super().__init__()
        self.main_module = block
        self.dendrites = nn.ModuleList()
        self.channels = channels
        self.dendrite_gate = nn.Parameter(torch.zeros(0, channels))

    @property
    def num_dendrites(self) -> int:
        return len(self.dendrites)

    @torch.no_grad()
    def _set_num_dendrites(self, d: int) -> None:
        while len(self.dendrites) < d:
            new = nn.Linear(self.main_module.in_features, self.channels)
            self.dendrites.append(new.to(self.dendrite_gate.device))
        del self.dendrites[d:]
        gate = torch.randn(d, self.channels, device=self.dendrite_gate.device)
        self.dendrite_gate = nn.Parameter(gate)

    def forward(self, x):
        y = self.main_module(x)
        for g, d in zip(self.dendrite_gate, self.dendrites):
            y = y + g * torch.sigmoid(d(x))
        return y


class Net(nn.Module):
    """Several dendritic layers, a generic wrapper, BatchNorm buffers, tied weights, a bf16 buffer."""

    def __init__(self, d1: int = 0, d2: int = 0, d3: int = 0, width: int = 7) -> None:
        super().__init__()
        self.conv = pai_fast.DendriticConv2d(3, 4, 3, padding=1, dendrites=d1, activation="tanh")
        self.fc1 = pai_fast.DendriticLinear(4 * 5 * 5, width, dendrites=d2)
        self.bn = nn.BatchNorm1d(width)
        self.fc2 = pai_fast.DendriticLinear(width, 5, bias=False, dendrites=d3)
        self.wrap = ToyWrapper(nn.Linear(5, 5), 5)
        self.emb = nn.Embedding(11, 5)
        self.head = nn.Linear(5, 11, bias=False)
        self.head.weight = self.emb.weight  # tied
        self.register_buffer("scale", torch.randn(5).to(torch.bfloat16))

    def forward(self, x):
        y = self.fc2(self.bn(self.fc1(self.conv(x).flatten(1))))
        return self.head(self.wrap(y) * self.scale.float())


def trained(d=(2, 3, 1), wrap=2) -> Net:
    torch.manual_seed(1)
    m = Net(*d)
    m.wrap._set_num_dendrites(wrap)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p))  # gates and cascades non-zero, so dendrites matter
    m.train()
    m(torch.randn(6, 3, 5, 5))  # BatchNorm statistics
    return m.eval()


def assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and sa[k].shape == sb[k].shape, k
        assert torch.equal(sa[k], sb[k]), k


TRACKER = {
    "mode": "n",
    "num_dendrites_added": 3,
    "accuracies": [0.25, 0.5, float("nan"), float("inf")],
    "extra_scores": {"Train": [1.0, 2.0]},
    "switch_epochs": [4, 4],
    "overwritten_extras": [{"Train": [0.1]}],
    "committed_to_initial_rate": True,
    "last_max_learning_rate_value": None,
}


def same_json(a, b) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)  # NaN-aware equality


def test_round_trip_exact(tmp_path):
    src = trained()
    path = tmp_path / "best_model.pt"
    assert save_checkpoint(src, path, tracker_state=TRACKER, extra_metadata={"note": "x"}) == str(path)
    dst = Net()  # every layer at 0 dendrites
    info = load_checkpoint(dst, path)
    assert_same_state(src, dst)
    assert dst.head.weight is dst.emb.weight  # the tie survives
    x = torch.randn(4, 3, 5, 5)
    assert torch.equal(src(x), dst.eval()(x))
    assert same_json(info["tracker_state"], TRACKER)
    assert info["extra_metadata"] == {"note": "x"}
    assert info["dendrites"] == {"conv": 2, "fc1": 3, "fc2": 1, "wrap": 2}
    assert info["activations"]["conv"] == "tanh" and info["activations"]["fc1"] == "sigmoid"
    assert info["aliases"] == {"head.weight": "emb.weight"}  # stored once
    assert info["format_version"] == ck.FORMAT_VERSION and info["pai_fast_version"] == pai_fast.__version__
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    # no temp files left behind
    assert sorted(os.listdir(tmp_path)) == ["best_model.pt"]


def test_read_checkpoint_without_model(tmp_path):
    src = trained()
    save_checkpoint(src, tmp_path / "a.pt", tracker_state={"k": 1})
    state, info = read_checkpoint(tmp_path / "a.pt")
    assert set(state) == set(src.state_dict())
    assert state["head.weight"] is state["emb.weight"]
    assert torch.equal(state["fc1.dendrite_cascade"], src.fc1.dendrite_cascade)
    assert info["tracker_state"] == {"k": 1} and info["tracker_state"] is not None


@pytest.mark.parametrize("start", [(0, 0, 0), (5, 1, 4), (2, 3, 1)])
def test_load_rebuilds_structure(tmp_path, start):
    src = trained(d=(2, 0, 3), wrap=1)
    save_checkpoint(src, tmp_path / "c.pt")
    dst = Net(*start)
    dst.wrap._set_num_dendrites(4)
    load_checkpoint(dst, tmp_path / "c.pt")
    assert [dst.conv.num_dendrites, dst.fc1.num_dendrites, dst.fc2.num_dendrites, dst.wrap.num_dendrites] == [
        2,
        0,
        3,
        1,
    ]
    assert_same_state(src, dst)


def test_load_does_not_touch_the_rng(tmp_path):
    save_checkpoint(trained(d=(3, 3, 3), wrap=3), tmp_path / "c.pt")
    dst = Net()
    before = torch.random.get_rng_state()
    load_checkpoint(dst, tmp_path / "c.pt")  # grows layers, which draws random numbers
    assert torch.equal(before, torch.random.get_rng_state())


def test_nested_dendritic_layers(tmp_path):
    """A generic wrapper whose dendrites are copies of a block holding a dendritic layer: outer layers first."""

    class Outer(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = ToyWrapper(pai_fast.DendriticLinear(4, 4), 4)

    src = Outer()
    src.block.main_module.add_dendrite(2)
    with torch.no_grad():
        src.block._set_num_dendrites(2)
        src.block.dendrites[1] = pai_fast.DendriticLinear(4, 4, dendrites=3)  # a dendritic layer inside a dendrite
    save_checkpoint(src, tmp_path / "n.pt")
    assert read_checkpoint(tmp_path / "n.pt")[1]["dendrites"] == {
        "block": 2,
        "block.main_module": 2,
        "block.dendrites.1": 3,
    }

    dst = Outer()
    with pytest.raises(CheckpointMismatchError, match="block.dendrites.1"):
        load_checkpoint(dst, tmp_path / "n.pt")  # ToyWrapper grows plain Linears: structure cannot match
    assert dst.block.num_dendrites == 0  # the dry run left the model untouched


def test_mismatch_lists_every_difference_and_leaves_model_untouched(tmp_path):
    save_checkpoint(trained(), tmp_path / "m.pt")

    class Other(Net):
        def __init__(self):
            super().__init__(width=9)  # fc1/bn/fc2 shapes differ
            self.extra = pai_fast.DendriticLinear(2, 2, dendrites=1)
            del self.wrap

    dst = Other()
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(CheckpointMismatchError) as err:
        load_checkpoint(dst, tmp_path / "m.pt")
    msg = str(err.value)
    assert str(tmp_path / "m.pt") in msg
    assert "'wrap' (2 dendrites)" in msg  # a layer only in the checkpoint
    assert "'extra'" in msg  # a dendritic layer only in the model
    assert "extra.weight" in msg and "wrap.dendrite_gate" in msg  # missing / unexpected keys
    assert "'fc1.weight': checkpoint [7, 100], model [9, 100]" in msg  # shapes, both sides
    assert isinstance(err.value, pai_fast.DendriteMismatchError)
    # nothing was resized or overwritten
    assert dst.fc1.num_dendrites == 0 and dst.conv.num_dendrites == 0
    after = dst.state_dict()
    assert list(after) == list(before) and all(torch.equal(before[k], after[k]) for k in before)


def test_strict_false_loads_what_matches(tmp_path):
    src = trained()
    save_checkpoint(src, tmp_path / "m.pt")

    class More(Net):
        def __init__(self):
            super().__init__()
            self.extra = pai_fast.DendriticLinear(2, 2, dendrites=1)

    dst = More()
    with pytest.raises(CheckpointMismatchError, match="extra"):
        load_checkpoint(dst, tmp_path / "m.pt")
    info = load_checkpoint(dst, tmp_path / "m.pt", strict=False)
    assert set(info["missing_keys"]) == {f"extra.{n}" for n, _ in dst.extra.named_parameters()}
    assert torch.equal(dst.fc1.dendrite_weight, src.fc1.dendrite_weight)


def test_activation_mismatch_is_reported(tmp_path):
    save_checkpoint(trained(), tmp_path / "m.pt")
    dst = Net()
    dst.conv.activation = "sigmoid"  # saved with tanh
    with pytest.raises(CheckpointMismatchError, match="'conv': checkpoint tanh, model sigmoid"):
        load_checkpoint(dst, tmp_path / "m.pt")


def test_byte_flip_in_payload_is_detected(tmp_path):
    path = tmp_path / "f.pt"
    save_checkpoint(trained(), path, tracker_state=TRACKER)
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0x10  # inside the last tensor's data
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointCorruptError, match="checksum") as err:
        load_checkpoint(Net(), path)
    assert str(path) in str(err.value)


def test_random_byte_flips_never_load_silently_wrong(tmp_path):
    src = trained()
    path = tmp_path / "f.pt"
    save_checkpoint(src, path, tracker_state=TRACKER)
    good = path.read_bytes()
    rng = random.Random(0)
    detected = 0
    for _ in range(40):
        raw = bytearray(good)
        pos = rng.randrange(len(raw))
        raw[pos] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(raw))
        dst = Net()
        try:
            info = load_checkpoint(dst, path)
        except CheckpointError:
            detected += 1
            continue
        # Only harmless flips load (e.g. JSON whitespace in the header padding): the result must be exact.
        assert_same_state(src, dst)
        assert same_json(info["tracker_state"], TRACKER)
    assert detected >= 30


@pytest.mark.parametrize("keep", [0, 7, 100, 0.5, -1])
def test_truncated_file_is_rejected(tmp_path, keep):
    path = tmp_path / "t.pt"
    save_checkpoint(trained(), path)
    raw = path.read_bytes()
    n = int(len(raw) * keep) if isinstance(keep, float) else (keep if keep >= 0 else len(raw) + keep)
    path.write_bytes(raw[:n])
    with pytest.raises(CheckpointCorruptError) as err:
        load_checkpoint(Net(), path)
    assert str(path) in str(err.value)


def test_newer_format_is_refused(tmp_path):
    path = tmp_path / "new.pt"
    tensors = {"w": torch.randn(3)}
    meta = {ck._VERSION: str(ck.FORMAT_VERSION + 1), ck._DENDRITES: "{}", ck._ALIASES: "{}", ck._PAI_VERSION: "9.0"}
    meta[ck._CHECKSUM] = ck._digest(tensors, meta)
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(CheckpointFormatError, match="upgrade pai_fast"):
        read_checkpoint(path)


def test_foreign_files_get_a_clear_error(tmp_path):
    torch.save(trained().state_dict(), tmp_path / "torch.pt")
    with pytest.raises(CheckpointFormatError, match="torch.save"):
        load_checkpoint(Net(), tmp_path / "torch.pt")
    save_file({"w": torch.randn(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(CheckpointFormatError, match="without pai_fast metadata"):
        load_checkpoint(Net(), tmp_path / "plain.safetensors")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(Net(), tmp_path / "missing.pt")


def test_perforatedai_checkpoint_goes_through_the_converter(tmp_path):
    convert = pytest.importorskip("pai_fast.convert")
    if not hasattr(convert, "to_perforatedai_state_dict"):
        pytest.skip("pai_fast.convert has no exporter to build a perforatedai-format file")
    torch.manual_seed(3)
    src = nn.Sequential(pai_fast.DendriticLinear(4, 6, dendrites=2), nn.ReLU(), pai_fast.DendriticLinear(6, 3))
    with torch.no_grad():
        for p in src.parameters():
            p.add_(torch.randn_like(p))
    sd = {k: v.contiguous() for k, v in convert.to_perforatedai_state_dict(src).items()}
    assert any(".main_module." in k for k in sd)
    save_file(sd, str(tmp_path / "pai.pt"))
    dst = nn.Sequential(pai_fast.DendriticLinear(4, 6), nn.ReLU(), pai_fast.DendriticLinear(6, 3))
    info = load_checkpoint(dst, tmp_path / "pai.pt")
    assert info["format"] == "perforatedai" and info["dendrites"] == {"0": 2, "2": 0}
    x = torch.randn(5, 4)
    torch.testing.assert_close(dst(x), src(x))
    with pytest.raises(CheckpointFormatError, match="from_perforatedai"):
        read_checkpoint(tmp_path / "pai.pt")


def test_tracker_state_must_be_json(tmp_path):
    with pytest.raises(TypeError, match="tracker_state: dict keys must be str.*int key 1"):
        save_checkpoint(trained(), tmp_path / "j.pt", tracker_state={1: "int key"})
    with pytest.raises(TypeError, match="object"):
        save_checkpoint(trained(), tmp_path / "j.pt", tracker_state={"x": object()})
    np = pytest.importorskip("numpy")
    save_checkpoint(trained(), tmp_path / "j.pt", tracker_state={"a": np.float32(0.5), "t": torch.tensor([1, 2])})
    assert read_checkpoint(tmp_path / "j.pt")[1]["tracker_state"] == {"a": 0.5, "t": [1, 2]}
    assert not [f for f in os.listdir(tmp_path) if ".tmp-" in f]


def test_map_location(tmp_path):
    src = trained()
    save_checkpoint(src, tmp_path / "m.pt")
    for loc in ("cpu", torch.device("cpu"), None):
        dst = Net()
        load_checkpoint(dst, tmp_path / "m.pt", map_location=loc)
        assert_same_state(src, dst)
    state, _ = read_checkpoint(tmp_path / "m.pt", map_location="cpu")
    assert all(t.device.type == "cpu" for t in state.values())
    with pytest.raises(ValueError, match="map_location.*meta"):
        load_checkpoint(Net(), tmp_path / "m.pt", map_location="meta")
    with pytest.raises(ValueError, match="map_location"):
        load_checkpoint(Net(), tmp_path / "m.pt", map_location="gpu:7")
    with pytest.raises(TypeError, match="map_location"):
        load_checkpoint(Net(), tmp_path / "m.pt", map_location={"cuda:0": "cpu"})


@pytest.mark.gpu
def test_cuda_checkpoint_loads_on_cpu(tmp_path):
    src = trained().cuda()
    save_checkpoint(src, tmp_path / "g.pt")
    dst = Net()
    load_checkpoint(dst, tmp_path / "g.pt", map_location="cpu")
    assert_same_state(src.cpu(), dst)
    back = Net().cuda()
    load_checkpoint(back, tmp_path / "g.pt", map_location="cuda")
    assert back.fc1.dendrite_weight.device.type == "cuda" and back.fc1.num_dendrites == 3


def test_wrappers_are_unwrapped(tmp_path):
    src = trained()
    save_checkpoint(nn.DataParallel(src), tmp_path / "dp.pt")
    state, _ = read_checkpoint(tmp_path / "dp.pt")
    assert not any(k.startswith("module.") for k in state)
    dst = nn.DataParallel(Net())
    load_checkpoint(dst, tmp_path / "dp.pt")
    assert_same_state(src, dst.module)


def test_stale_temp_files_are_removed_by_the_next_save(tmp_path):
    path = tmp_path / "latest.pt"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".latest.pt.tmp-{dead.pid}-0123456789ab"
    mine = tmp_path / f".latest.pt.tmp-{os.getpid()}-0123456789ab"  # ours but not in flight: left by an error
    live = tmp_path / f".latest.pt.tmp-{os.getppid()}-0123456789ab"  # a live writer: must stay
    other = tmp_path / ".other.pt.tmp-1-0123456789ab"  # another file's temp: not ours to judge
    for f in (stale, mine, live, other):
        f.write_bytes(b"partial")
    save_checkpoint(trained(), path)
    left = sorted(os.listdir(tmp_path))
    assert left == sorted(["latest.pt", live.name, other.name])


KILL_SCRIPT = textwrap.dedent(
    """
    import os, random, select, signal, sys, time
    import torch
    from torch import nn
    import pai_fast
    from pai_fast.checkpoint import save_checkpoint

    base, trials, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rng = random.Random(seed)

    def saver(path, ready_fd):
        torch.set_num_threads(1)
        model = nn.Sequential(pai_fast.DendriticLinear(384, 1024), nn.ReLU(), pai_fast.DendriticLinear(1024, 384))
        i = 0
        while True:
            with torch.no_grad():
                model[0]._set_num_dendrites(i % 3)
                for p in model.parameters():
                    p.fill_(float(i))
            save_checkpoint(model, path, tracker_state={"i": i})
            if i == 0:
                os.write(ready_fd, b"r")
            i += 1

    # The parent only imports torch (no tensor work), so forking is safe; each child is one save loop.
    for t in range(trials):
        d = os.path.join(base, str(t))
        os.makedirs(d)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            try:
                saver(os.path.join(d, "latest.pt"), w)
            finally:
                os._exit(3)
        os.close(w)
        ready, _, _ = select.select([r], [], [], 120)
        assert ready and os.read(r, 1) == b"r", "the first save did not finish"
        time.sleep(rng.uniform(0.0, 0.2))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(r)
    print("done")
    """
)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_kill_9_during_save_always_leaves_a_loadable_checkpoint(tmp_path):
    trials = 10
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-c", KILL_SCRIPT, str(tmp_path), str(trials), "1234"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0 and "done" in proc.stdout, proc.stderr[-3000:]

    def fresh():
        return nn.Sequential(pai_fast.DendriticLinear(384, 1024), nn.ReLU(), pai_fast.DendriticLinear(1024, 384))

    for t in range(trials):
        d = tmp_path / str(t)
        path = d / "latest.pt"
        model = fresh()
        info = load_checkpoint(model, path)  # the old or the new file, never a broken one
        i = info["tracker_state"]["i"]
        assert model[0].num_dendrites == i % 3
        assert all(bool((p == i).all()) for p in model.parameters())
        save_checkpoint(model, path)  # the next save removes temp files of the killed writer
        assert os.listdir(d) == ["latest.pt"]


def test_atomic_write_helper(tmp_path):
    target = tmp_path / "x.txt"
    ck.atomic_write(target, "one")
    ck.atomic_write(target, b"two", fsync=False)
    assert target.read_text() == "two" and os.listdir(tmp_path) == ["x.txt"]
    with pytest.raises(FileNotFoundError):
        save_checkpoint(trained(), tmp_path / "no_such_dir" / "m.pt")


def test_generic_wrapper_that_never_ran_learns_its_channels(tmp_path):
    generic = pytest.importorskip("pai_fast.tracker.generic")

    def make():
        torch.manual_seed(5)
        return nn.Sequential(generic.DendriticModule(nn.Sequential(nn.Linear(4, 6), nn.Tanh()), ".0"), nn.ReLU())

    src = make()
    x = torch.randn(3, 4)
    src(x)  # learns C = 6
    src[0].add_dendrite(2)
    with torch.no_grad():
        src[0].dendrite_gate.normal_()
        src[0].dendrite_cascade.normal_()
    save_checkpoint(src, tmp_path / "g.pt")
    assert read_checkpoint(tmp_path / "g.pt")[1]["channels"] == {"0": 6}
    dst = make()  # no forward yet: it cannot grow without knowing C
    load_checkpoint(dst, tmp_path / "g.pt")
    assert dst[0].num_dendrites == 2
    torch.testing.assert_close(dst(x), src(x), rtol=0, atol=0)
