"""pai_fast.exporting (fold, export to ONNX / pt2 / ExecuTorch, the ``pai-fast export`` CLI) and pai_fast.inference.

CPU tests run in CI (ONNX export is slow, ~3 s a model: few ONNX cases, small models); tests of
inference.optimize on a GPU are marked ``gpu``.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
import warnings

import pytest
import torch
from torch import nn

import pai_fast
from pai_fast import DendriticConv1d, DendriticConv2d, DendriticConv3d, DendriticLinear
from pai_fast.exporting import (
    ExportCheckError,
    ExportError,
    ExportResult,
    FoldedDendriticConv,
    FoldedDendriticLinear,
    UnfoldableModuleError,
    export,
    fold,
)
from pai_fast.nn import DendriteMixin
from tests.fixtures_export import ConvNet, mlp, randomise_dendrites
from tests.helpers import TOL

FOLD_ATOL = 1e-6  # fold vs the original layer, float32
ACTS = ["sigmoid", "tanh", "relu"]
HAS_EXECUTORCH = importlib.util.find_spec("executorch") is not None
FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures_export.py")
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")


def _max_err(a, b) -> float:
    diff = (a.detach().double() - b.detach().double()).abs()
    return diff.max().item() if diff.numel() else 0.0


def _check_folded(original: nn.Module, folded: nn.Module, *inputs, atol=FOLD_ATOL):
    with torch.no_grad():
        ref = original.eval()(*inputs)
        out = folded(*inputs)
    assert out.shape == ref.shape
    err = _max_err(out, ref)
    assert err <= atol, f"max |fold - original| = {err}"
    assert not any(isinstance(m, DendriteMixin) for m in folded.modules())
    assert not any(p.requires_grad for p in folded.parameters())
    assert not folded.training
    return ref


# ---------------------------------------------------------------------------------------------------------------
# fold


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("d", [0, 1, 2, 3])
def test_fold_mlp(d, act):
    model = randomise_dendrites(mlp(d, act, in_features=13, hidden=7, out=5))
    folded = fold(model)
    expected = nn.Linear if d == 0 else FoldedDendriticLinear
    assert type(folded[0]) is expected and type(folded[2]) is expected
    x = torch.randn(6, 13)
    ref = _check_folded(model, folded, x)
    _check_folded(model, folded, torch.randn(2, 3, 13))  # every leading dim is batch
    _check_folded(model, folded, torch.randn(1, 13))
    _check_folded(model, folded, torch.randn(0, 13))
    # The original is untouched: still dendritic, trainable; the dendrite terms matter (D > 0).
    assert isinstance(model[0], DendriticLinear) and model[0].weight.requires_grad
    if d:
        plain = nn.Sequential(nn.Linear(13, 7), nn.ReLU(), nn.Linear(7, 5, bias=False))
        plain.load_state_dict({k: v for k, v in model.state_dict().items() if "dendrite" not in k})
        assert _max_err(plain(x), ref) > 1e-3


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("d", [0, 1, 2, 3])
def test_fold_convnet(d, act):
    model = randomise_dendrites(ConvNet(d, act))
    folded = fold(model)
    conv_type = nn.Conv2d if d == 0 else FoldedDendriticConv
    assert type(folded.c2) is conv_type
    assert type(folded.c1) is (nn.Conv1d if d == 0 else FoldedDendriticConv)
    assert folded.c2.padding_mode == "reflect" and folded.c2.groups == 2
    for b in (1, 4):
        _check_folded(model, folded, torch.randn(b, 3, 6, 8))


@pytest.mark.parametrize(
    "cls,kw,shape",
    [
        (DendriticConv2d, dict(padding=1, padding_mode="circular"), (2, 4, 7, 6)),
        (DendriticConv2d, dict(padding=(1, 2), padding_mode="replicate", stride=(2, 1)), (2, 4, 7, 6)),
        (DendriticConv2d, dict(padding="same", dilation=2), (2, 4, 7, 6)),
        (DendriticConv2d, dict(padding=1, groups=4), (2, 4, 7, 6)),
        (DendriticConv1d, dict(padding="valid", groups=2, bias=False), (3, 4, 11)),
        (DendriticConv3d, dict(padding=1, stride=2), (2, 4, 5, 4, 6)),
    ],
)
def test_fold_conv_variants(cls, kw, shape):
    layer = randomise_dendrites(cls(4, 8, 3, dendrites=3, **kw))
    folded = fold(layer)  # the root module itself is a dendritic layer
    assert isinstance(folded, FoldedDendriticConv)
    x = torch.randn(shape)
    _check_folded(layer, folded, x)
    _check_folded(layer, folded, x[0])  # unbatched input


def test_fold_custom_activation_shared_layers_and_wrappers():
    act = torch.nn.functional.silu  # a callable the fused kernels do not have
    shared = randomise_dendrites(DendriticLinear(6, 6, dendrites=2, activation=act))
    model = nn.Sequential(shared, nn.Tanh(), shared, DendriticLinear(6, 3, dendrites=1, activation="identity"))
    randomise_dendrites(model[3])
    folded = fold(model)
    assert folded[0] is folded[2]  # a layer used twice stays one folded module
    assert folded[0].activation is act and folded[3].activation == "identity"
    x = torch.randn(4, 6)
    _check_folded(model, folded, x)
    for wrapped in (nn.DataParallel(model), torch.compile(model)):  # wrappers are removed
        _check_folded(model, fold(wrapped), x)
    model.train()
    fold(model)
    assert model.training and model[0].training  # fold does not change the input model


def test_fold_bad_inputs():
    with pytest.raises(TypeError, match="model: expected an nn.Module, got dict"):
        fold({"weight": torch.zeros(1)})

    class DendriticConvTranspose2d(DendriteMixin, nn.ConvTranspose2d):
        def __init__(self):
            nn.ConvTranspose2d.__init__(self, 2, 3, 3)
            self._init_dendrites(1, "sigmoid")

    model = nn.Sequential(nn.Linear(2, 2), nn.Sequential(DendriticConvTranspose2d()))
    with pytest.raises(UnfoldableModuleError, match=r"module '1\.0'.*ConvTranspose2d"):
        fold(model)


@pytest.fixture
def perforatedai(tmp_path, monkeypatch):
    """perforatedai 3.2.9 with fresh globals, non-interactive settings and its files under tmp_path."""
    gpa = pytest.importorskip("perforatedai.globals_perforatedai", reason="needs perforatedai==3.2.9 (pip --no-deps)")
    upa = pytest.importorskip("perforatedai.utils_perforatedai")
    monkeypatch.chdir(tmp_path)
    old = gpa.pc, gpa.pai_tracker
    gpa.pc, gpa.pai_tracker = gpa.PAIConfig(), []
    pc = gpa.pc
    pc.set_configuration_confirmed(True)
    pc.set_unwrapped_modules_confirmed(True)
    pc.set_silent(True)
    pc.set_device("cpu")
    pc.set_testing_dendrite_capacity(False)
    pc.set_switch_mode(pc.DOING_SWITCH_EVERY_TIME)
    pc.set_retain_all_dendrites(True)
    pc.set_max_dendrites(100)
    yield gpa, upa
    gpa.pc, gpa.pai_tracker = old


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_fold_perforatedai_model(perforatedai):
    gpa, upa = perforatedai
    torch.manual_seed(0)
    model = upa.perforate_model(
        nn.Sequential(nn.Linear(7, 9), nn.ReLU(), nn.Linear(9, 4)), save_name="PAI", making_graphs=False
    )
    gpa.pai_tracker.set_optimizer_instance(torch.optim.SGD(model.parameters(), lr=0.01))
    model(torch.randn(3, 7)).sum().backward()
    for _ in range(3):
        model, restructured, _ = gpa.pai_tracker.add_validation_score(0.5, model)
        assert restructured
        gpa.pai_tracker.set_optimizer_instance(torch.optim.SGD(model.parameters(), lr=0.01))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    x = torch.randn(5, 7)
    with torch.no_grad():
        ref = model.eval()(x)
        for folded in (fold(model), fold(pai_fast.convert.from_perforatedai(model))):
            assert isinstance(folded[0], FoldedDendriticLinear) and folded[0].dendrites == 3
            assert _max_err(folded(x), ref) <= FOLD_ATOL


# ---------------------------------------------------------------------------------------------------------------
# export: round trips with a dynamic batch


def _onnx_ops(path):
    import onnx

    return {(n.domain, n.op_type) for n in onnx.load(path).graph.node}


def test_onnx_round_trip_mlp(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = randomise_dendrites(mlp(3, "sigmoid"))
    path = str(tmp_path / "sub" / "mlp.onnx")
    res = export(model, (torch.randn(1, 64),), path)  # batch 1 example: traced at 2, still dynamic
    assert isinstance(res, ExportResult) and res.format == "onnx" and res.path == path
    assert res.size_bytes == os.path.getsize(path) > 0
    assert res.max_abs_error <= 1e-5 and res.latency_ms > 0
    assert all(domain in ("", "ai.onnx") for domain, _ in _onnx_ops(path))  # standard ops only
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    for b in (1, 7):
        x = torch.randn(b, 64)
        (y,) = sess.run(None, {name: x.numpy()})
        assert _max_err(torch.from_numpy(y), model(x)) <= 1e-5


def test_onnx_round_trip_convnet(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = randomise_dendrites(ConvNet(2, "tanh"))
    path = str(tmp_path / "conv.onnx")
    res = export(model, (torch.randn(3, 3, 6, 8),), path, format="onnx", opset=18)
    assert res.max_abs_error <= 1e-5
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for b in (2, 5):
        x = torch.randn(b, 3, 6, 8)
        (y,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
        assert _max_err(torch.from_numpy(y), model(x)) <= 1e-5


@pytest.mark.parametrize("d", [0, 1, 3])
def test_pt2_round_trip(tmp_path, d):
    model = randomise_dendrites(ConvNet(d, ["relu", "sigmoid", "tanh"][d % 3]))
    path = str(tmp_path / "conv.pt2")
    res = export(model, (torch.randn(2, 3, 6, 8),), path, format="pt2")
    assert res.max_abs_error <= 1e-5 and res.size_bytes == os.path.getsize(path)
    ep = torch.export.load(path)
    assert not any("pai_fast" in str(n.target) for n in ep.graph.nodes)  # no custom ops left
    prog = ep.module()
    for b in (1, 6):
        x = torch.randn(b, 3, 6, 8)
        with torch.no_grad():
            assert _max_err(prog(x), model(x)) <= 1e-5


def test_pt2_static_batch_and_no_check(tmp_path):
    model = randomise_dendrites(mlp(2))
    path = str(tmp_path / "static.pt2")
    res = export(model, (torch.randn(4, 64),), path, format="pt2", check=False, dynamic_batch=False)
    assert res.max_abs_error is None and res.latency_ms is None and res.size_bytes > 0
    prog = torch.export.load(path).module()
    x = torch.randn(4, 64)
    with torch.no_grad():
        assert _max_err(prog(x), model(x)) <= 1e-5
    with pytest.raises(Exception, match="4"):
        prog(torch.randn(3, 64))  # the batch dim is static


def test_custom_activation_pt2_ok_onnx_clear_error(tmp_path):
    # torch.special.bessel_j0 has no ONNX translation but torch.export keeps it.
    model = randomise_dendrites(nn.Sequential(DendriticLinear(5, 4, dendrites=2, activation=torch.special.bessel_j0)))
    res = export(model, (torch.randn(3, 5),), tmp_path / "j0.pt2", format="pt2")
    assert res.max_abs_error <= 1e-5
    with pytest.raises(ExportError, match="(?s)format='onnx'.*bessel_j0.*format='pt2'"):
        export(model, (torch.randn(3, 5),), tmp_path / "j0.onnx", format="onnx")


def test_check_failure_raises_with_error(tmp_path, monkeypatch):
    import pai_fast.exporting as ex

    real = ex._runner

    def off_by_a_bit(fmt, path, aoti):
        run = real(fmt, path, aoti)
        return lambda inputs: [t + 1e-3 for t in run(inputs)]

    monkeypatch.setattr(ex, "_runner", off_by_a_bit)
    with pytest.raises(ExportCheckError, match=r"max \|error\| = 0\.001") as info:
        export(randomise_dendrites(mlp(1)), (torch.randn(2, 64),), tmp_path / "m.pt2", format="pt2")
    assert abs(info.value.max_abs_error - 1e-3) < 1e-6 and os.path.exists(info.value.path)


@pytest.mark.skipif(not HAS_EXECUTORCH, reason="executorch not installed (pip install pai-fast[executorch])")
def test_executorch_round_trip(tmp_path):
    from executorch.runtime import Runtime

    model = randomise_dendrites(mlp(3, "sigmoid"))
    path = str(tmp_path / "mlp.pte")
    res = export(model, (torch.randn(2, 64),), path, format="executorch")
    assert res.max_abs_error <= 1e-5 and res.size_bytes == os.path.getsize(path)
    method = Runtime.get().load_program(path).load_method("forward")
    for b in (1, 5):
        x = torch.randn(b, 64)
        assert _max_err(method.execute([x])[0], model(x)) <= 1e-5


def test_pt2_aoti_package(tmp_path):
    model = randomise_dendrites(mlp(2))
    path = str(tmp_path / "mlp_aoti.pt2")
    res = export(model, (torch.randn(3, 64),), path, format="pt2", aoti=True)
    assert res.max_abs_error <= 1e-5
    run = torch._inductor.aoti_load_package(path)
    for b in (1, 5):
        x = torch.randn(b, 64)
        assert _max_err(run(x), model(x)) <= 1e-5


def test_executorch_missing_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "executorch", None)  # as if not installed
    with pytest.raises(ImportError, match=r"pip install pai-fast\[executorch\]"):
        export(mlp(1), (torch.randn(2, 64),), tmp_path / "m.pte", format="executorch")


# ---------------------------------------------------------------------------------------------------------------
# export: bad inputs


@pytest.mark.parametrize(
    "kwargs,exc,pattern",
    [
        (dict(model="not a model"), TypeError, "model: expected an nn.Module, got str"),
        (dict(example_inputs=[1.0, 2.0]), TypeError, r"example_inputs\[0\]: expected a torch.Tensor, got float"),
        (dict(example_inputs={"x": torch.randn(2, 64)}), TypeError, "example_inputs: expected a tuple of tensors"),
        (dict(example_inputs=()), ValueError, "example_inputs: expected at least one tensor"),
        (dict(example_inputs=(torch.randn(2, 63),)), ValueError, r"example_inputs: .*\[2, 63\]"),
        (dict(example_inputs=(torch.randn(2, 64, dtype=torch.float64),)), ValueError, "example_inputs: .*float64"),
        (dict(format="tflite"), ValueError, r"format: expected one of \['onnx', 'pt2', 'executorch'\], got 'tflite'"),
        (dict(opset=13), ValueError, "opset: expected an int >= 18"),
        (dict(format="pt2", opset=18), ValueError, "opset: only used with format='onnx'"),
        (dict(aoti=True), ValueError, "aoti: only used with format='pt2'"),
        (dict(path=123), TypeError, "path: expected a file path"),
        (dict(max_batch=0), ValueError, "max_batch: expected a positive int"),
        (dict(tol=-1.0), ValueError, "tol: expected a positive number"),
        (dict(max_batch=1), ValueError, "max_batch: 1 is smaller than the example batch 2"),
        (dict(example_inputs=(torch.randn(2, 5),), check=False), ValueError, r"example_inputs: .*\[2, 5\]"),
    ],
)
def test_export_bad_inputs(tmp_path, kwargs, exc, pattern):
    args = dict(model=mlp(1), example_inputs=(torch.randn(2, 64),), path=str(tmp_path / "m.onnx"))
    args.update(kwargs)
    with pytest.raises(exc, match=pattern):
        export(args.pop("model"), args.pop("example_inputs"), args.pop("path"), **args)
    assert not os.path.exists(tmp_path / "m.onnx")


def test_export_path_is_a_folder(tmp_path):
    with pytest.raises(ValueError, match="path: expected a file name"):
        export(mlp(1), (torch.randn(2, 64),), tmp_path, format="pt2")


# ---------------------------------------------------------------------------------------------------------------
# CLI: pai-fast export


def _cli(args, capsys):
    from pai_fast.cli import main

    rc = main(["export", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_export_onnx_end_to_end(tmp_path, capsys):
    ort = pytest.importorskip("onnxruntime")
    out = str(tmp_path / "digits.onnx")
    rc, stdout, stderr = _cli(
        ["--model", "tests.fixtures_export:dendritic_mlp", "--input-shape", "1,64", "--format", "onnx", "--out", out],
        capsys,
    )
    assert rc == 0, stderr
    assert f"{os.path.getsize(out)} bytes" in stdout and "max abs error" in stdout and "latency" in stdout
    from tests.fixtures_export import dendritic_mlp

    sess = ort.InferenceSession(out, providers=["CPUExecutionProvider"])
    x = torch.randn(9, 64)
    (y,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    assert _max_err(torch.from_numpy(y), dendritic_mlp()(x)) <= 1e-5


@pytest.mark.parametrize(
    "kind", ["state_dict_pt", "state_dict_safetensors", "pai_fast_checkpoint", "pai_fast_plain_factory", "perforatedai"]
)
def test_cli_export_pt2_with_checkpoint(tmp_path, capsys, kind):
    act = "tanh" if kind == "state_dict_safetensors" else "sigmoid"
    trained = nn.Sequential(
        DendriticLinear(64, 16, dendrites=2, activation=act), nn.Tanh(), DendriticLinear(16, 10, dendrites=3)
    )
    # as in the factory's model; a pai_fast checkpoint records each layer's activation (no --activation needed)
    trained[2].activation = "tanh" if kind.startswith("pai_fast") else act
    randomise_dendrites(trained, seed=3)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # differs from what the factory builds
    ckpt = str(tmp_path / ("ckpt.safetensors" if kind != "state_dict_pt" else "ckpt.pt"))
    if kind == "state_dict_pt":
        torch.save(trained.state_dict(), ckpt)
    elif kind == "state_dict_safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, ckpt)
    elif kind == "perforatedai":  # keys as perforatedai's save_system writes them (PAINeuronModule layout)
        from safetensors.torch import save_file

        sd = pai_fast.convert.to_perforatedai_state_dict(trained)
        save_file({k: v.contiguous() for k, v in sd.items()}, ckpt)
    else:
        pai_fast.save_checkpoint(trained, ckpt)
    out = str(tmp_path / "m.pt2")
    # A plain nn.Linear model from the factory: the dendrites (and, from a pai_fast checkpoint, their
    # activations) come from the checkpoint.
    factory = f"{FIXTURES}:plain_mlp" if kind == "state_dict_pt" else "tests.fixtures_export:plain_mlp"
    if kind == "pai_fast_checkpoint":
        factory = "tests.fixtures_export:dendritic_mlp"  # other dendrite counts: the checkpoint resizes them
    args = ["--model", factory, "--checkpoint", ckpt, "--input-shape", "3,64", "--format", "pt2", "--out", out]
    if act != "sigmoid":
        args += ["--activation", act]
    rc, stdout, stderr = _cli(args, capsys)
    assert rc == 0, stderr
    assert "max abs error" in stdout
    prog = torch.export.load(out).module()
    for b in (1, 4):
        x = torch.randn(b, 64)
        with torch.no_grad():
            assert _max_err(prog(x), trained(x)) <= 1e-5


@pytest.mark.parametrize(
    "args,pattern",
    [
        (["--model", "tests.fixtures_export", "--input-shape", "1,64"], "--model: expected 'module:factory'"),
        (["--model", "no_such_module_xyz:f", "--input-shape", "1,64"], "--model: cannot import module"),
        (["--model", "tests.fixtures_export:nope", "--input-shape", "1,64"], "--model: .* has no attribute 'nope'"),
        (["--model", "tests.fixtures_export:not_a_model", "--input-shape", "1,64"], "--model: .*returned a dict"),
        (["--model", "tests.fixtures_export:dendritic_mlp", "--input-shape", "1,x"], "--input-shape: expected"),
        (["--model", "tests.fixtures_export:dendritic_mlp", "--input-shape", "1,63"], r"example_inputs: .*\[1, 63\]"),
        (
            ["--model", "tests.fixtures_export:dendritic_mlp", "--input-shape", "1,64", "--checkpoint", "nofile.pt"],
            "--checkpoint: no such file",
        ),
    ],
)
def test_cli_export_errors(tmp_path, capsys, args, pattern):
    rc, _, stderr = _cli([*args, "--format", "pt2", "--out", str(tmp_path / "m.pt2")], capsys)
    assert rc == 2
    assert re.search(pattern, stderr), stderr


# ---------------------------------------------------------------------------------------------------------------
# inference.optimize


def test_optimize_cpu_returns_folded_model_without_warnings():
    from pai_fast.inference import optimize

    model = randomise_dendrites(ConvNet(2))
    x = torch.randn(3, 3, 6, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fast = optimize(model, (x,))
        y = fast(x)
    assert isinstance(fast.c2, FoldedDendriticConv)
    assert _max_err(y, model(x)) <= FOLD_ATOL
    with pytest.raises(TypeError, match=r"example_inputs\[0\]"):
        optimize(model, ("x",))
    with pytest.raises(TypeError, match="dtype"):
        optimize(model, (x,), dtype=torch.int32)
    half = optimize(model, (x,), dtype=torch.float64)
    assert _max_err(half(x.double()), model(x)) <= 1e-5


def test_inference_copy_cpu_matches_eager():
    """The GPU path's layer wrappers (fused-op calls with an explicit backend) on the CPU, where "auto" resolves to
    the torch backend: same parameters, padding modes and grouping decisions as the original layers."""
    from pai_fast.inference import _FusedConv, _FusedLinear, _inference_copy

    model = randomise_dendrites(ConvNet(3))
    circ = randomise_dendrites(DendriticConv2d(3, 5, 3, padding=1, padding_mode="circular", dendrites=2))
    for m, x in ((model, torch.randn(2, 3, 6, 8)), (circ, torch.randn(2, 3, 6, 7)), (circ, torch.randn(3, 6, 7))):
        inf = _inference_copy(m, "auto")
        assert not any(isinstance(t, DendriteMixin) for t in inf.modules())
        assert not any(p.requires_grad for p in inf.parameters())
        with torch.no_grad():
            assert _max_err(inf(x), m(x)) <= FOLD_ATOL
    inf = _inference_copy(model, "auto")
    assert type(inf.c1) is _FusedConv and type(inf.head) is _FusedLinear
    assert type(inf.c2) is FoldedDendriticConv  # groups=2: no fused kernel, the folded plain-torch form
    assert type(_inference_copy(mlp(0), "auto")[0]) is nn.Linear


def _gpu_models():
    return {
        "mlp": (lambda d: mlp(d, "sigmoid"), (64,)),
        "convnet": (lambda d: ConvNet(d, "tanh"), (3, 6, 8)),
        "custom_act": (lambda d: mlp(d, torch.nn.functional.silu), (64,)),
    }


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["mlp", "convnet", "custom_act"])
@pytest.mark.parametrize("d", [0, 1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("fused_convs", [False, True])
def test_optimize_gpu_cuda_graph_matches_eager(name, d, dtype, fused_convs):
    from pai_fast.inference import CUDAGraphInference, optimize

    make, shape = _gpu_models()[name]
    model = randomise_dendrites(make(d)).cuda().to(dtype)
    atol, rtol = TOL[dtype]
    example = torch.randn(8, *shape, device="cuda", dtype=dtype)
    fast = optimize(model, (example,), dtype=dtype, fused_convs=fused_convs)
    assert isinstance(fast, CUDAGraphInference) and len(fast._graphs) == 1
    outs = []
    for _ in range(3):  # fresh data each call: the static input buffer is refilled every time
        x = torch.randn(8, *shape, device="cuda", dtype=dtype)
        y = fast(x)
        with torch.no_grad():
            ref = model.eval()(x)
        torch.testing.assert_close(y, ref, atol=5 * atol, rtol=5 * rtol)
        outs.append((y, ref))
    for y, ref in outs:  # earlier outputs are copies: not overwritten by later replays
        torch.testing.assert_close(y, ref, atol=5 * atol, rtol=5 * rtol)
    # A new batch size is captured on first use; inputs on the CPU are copied in.
    x = torch.randn(3, *shape, dtype=dtype)
    torch.testing.assert_close(fast(x), model(x.cuda()), atol=5 * atol, rtol=5 * rtol)
    assert len(fast._graphs) == 2
    assert all(p.requires_grad for p in model.parameters())  # the input model is not modified


@pytest.mark.gpu
def test_optimize_gpu_no_graph_and_no_clone():
    from pai_fast.inference import optimize

    model = randomise_dendrites(mlp(2)).cuda()
    x1, x2 = torch.randn(4, 64, device="cuda"), torch.randn(4, 64, device="cuda")
    eager = optimize(model, (x1,), cuda_graph=False)
    atol, rtol = TOL[torch.float32]
    torch.testing.assert_close(eager(x2), model(x2), atol=5 * atol, rtol=5 * rtol)
    raw = optimize(model, (x1,), clone_outputs=False)
    y1 = raw(x1)
    y1_copy = y1.clone()
    y2 = raw(x2)
    assert y1.data_ptr() == y2.data_ptr()  # the static output buffer, overwritten by the second call
    torch.testing.assert_close(y1_copy, model(x1), atol=5 * atol, rtol=5 * rtol)
    torch.testing.assert_close(y2, model(x2), atol=5 * atol, rtol=5 * rtol)
    with torch.no_grad():
        assert not raw(x1).requires_grad


def test_top_level_fold_and_export_are_the_functions(tmp_path):
    """pai_fast.fold / pai_fast.export are functions even after their module was imported (a submodule named
    ``export`` would replace the attribute with itself)."""
    import pai_fast.exporting  # noqa: F401
    import pai_fast.inference  # noqa: F401  (imports the exporting module too)

    assert callable(pai_fast.export) and callable(pai_fast.fold) and pai_fast.export is pai_fast.exporting.export
    model = randomise_dendrites(mlp(1))
    res = pai_fast.export(pai_fast.fold(model), (torch.randn(2, 64),), tmp_path / "m.pt2", format="pt2")
    assert res.max_abs_error <= 1e-5
