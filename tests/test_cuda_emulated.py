"""The CUDA kernels of csrc/ executed on the CPU by the SIMT emulator in csrc/emu/ (no GPU needed).

The kernel sources are compiled by g++ with -DPF_EMULATE into a second pybind11 module (_C_emu): every CUDA
thread of a block becomes an OS thread, __syncthreads a barrier, and mma.sync is emulated from the PTX
fragment tables. pai_fast.cuda_backend then runs unchanged on CPU tensors through it, and the results are
compared with the float64 reference. This checks indexing, tiling, masking, split-K, the fragment layouts
and the epilogue/backward math in CI; it cannot check races, timing or the real tensor-core rounding (the
GPU tests in test_cuda_backend.py and benchmarks/sanitize.sh do).
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import pytest
import torch

from pai_fast import cuda_backend as CB

from .test_cuda_backend import _inputs, check_conv, check_linear

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"
KERNELS = ["fwd.cu", "dgrad.cu", "wgrad.cu", "dz.cu", "onepass.cu"]


def _cuda_root() -> Path | None:
    cands = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if Path("/usr/local/cuda/bin/nvcc").exists() else None)
    if nvcc:
        cands.append(str(Path(nvcc).resolve().parents[1]))
    cands.append("/usr/local/cuda")
    for c in cands:
        if c and (Path(c) / "include" / "cuda_fp16.h").exists():
            return Path(c)
    return None


def _cudart_static(root: Path) -> Path | None:
    for sub in ("lib64", "lib", "targets/x86_64-linux/lib", "targets/sbsa-linux/lib"):
        p = root / sub / "libcudart_static.a"
        if p.exists():
            return p
    return None


def build_emulator() -> object:
    """Compile csrc/ with -DPF_EMULATE into _C_emu (cached by source hash; safe under pytest-xdist)."""
    cxx = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("g++")
    root = _cuda_root()
    if cxx is None or root is None:
        pytest.skip("the CUDA emulator needs g++ and the CUDA headers (cuda_fp16.h)")
    cudart = _cudart_static(root)
    if cudart is None:
        pytest.skip(f"libcudart_static.a not found under {root}")
    import pybind11

    srcs = sorted(p for p in CSRC.rglob("*") if p.suffix in (".cu", ".cuh", ".h", ".cpp"))
    key = hashlib.sha256(b"".join(p.read_bytes() for p in srcs) + sys.version.encode()).hexdigest()[:16]
    out_dir = Path(tempfile.gettempdir()) / f"pai_fast_emu_{key}"
    out_dir.mkdir(parents=True, exist_ok=True)
    ext = sysconfig.get_config_var("EXT_SUFFIX")
    so = out_dir / f"_C_emu{ext}"
    with open(out_dir / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not so.exists():
            common = [
                "-std=c++20",
                "-O1",
                "-fPIC",
                "-fno-strict-aliasing",
                "-DPF_EMULATE",
                "-w",
                f"-I{CSRC}",
                f"-I{CSRC / 'include'}",
                f"-I{root / 'include'}",
            ]
            jobs = []
            for name in KERNELS:
                jobs.append([cxx, "-x", "c++", *common, "-c", str(CSRC / name), "-o", str(out_dir / (name + ".o"))])
            jobs.append([cxx, *common, "-c", str(CSRC / "api.cpp"), "-o", str(out_dir / "api.o")])
            jobs.append(
                [
                    cxx,
                    *common,
                    "-DPF_MODULE_NAME=_C_emu",
                    f"-I{pybind11.get_include()}",
                    f"-I{sysconfig.get_paths()['include']}",
                    "-c",
                    str(CSRC / "bindings.cpp"),
                    "-o",
                    str(out_dir / "bindings.o"),
                ]
            )
            procs = [subprocess.Popen(j, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for j in jobs]
            for j, p in zip(jobs, procs):
                log = p.communicate()[0].decode(errors="replace")
                assert p.returncode == 0, f"emulator build failed: {' '.join(j)}\n{log}"
            objs = [str(out_dir / (n + ".o")) for n in KERNELS] + [str(out_dir / "api.o"), str(out_dir / "bindings.o")]
            tmp = out_dir / f"tmp_{os.getpid()}{ext}"
            link = [cxx, "-shared", "-o", str(tmp), *objs, str(cudart), "-lpthread", "-ldl", "-lrt"]
            r = subprocess.run(link, capture_output=True, text=True)
            assert r.returncode == 0, f"emulator link failed: {r.stdout}{r.stderr}"
            os.replace(tmp, so)
    spec = importlib.util.spec_from_file_location("_C_emu", so)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def emu_module():
    return build_emulator()


@pytest.fixture
def emu(emu_module, monkeypatch):
    assert emu_module.EMULATED is True
    monkeypatch.setattr(CB, "_C", emu_module)
    return emu_module


def test_emu_ctest_program(emu_module, tmp_path):
    """csrc/ctest.cpp (the C++ program that calls the C header, run by ctest on a GPU) built against the emulated
    kernels: the Linear forward, both backward paths and a conv against its double-precision CPU loops, and a bad
    argument reported by name."""
    cxx = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("g++")
    root = _cuda_root()
    objs_dir = Path(emu_module.__file__).parent
    exe = tmp_path / "pai_fast_ctest_emu"
    flags = ["-std=c++20", "-O1", "-DPF_EMULATE", "-Wall", "-Wextra", "-Werror", f"-I{CSRC}", f"-I{CSRC / 'include'}",
             f"-I{root / 'include'}"]  # fmt: skip
    objs = [str(objs_dir / (n + ".o")) for n in KERNELS] + [str(objs_dir / "api.o")]
    build = [cxx, *flags, str(CSRC / "ctest.cpp"), *objs, str(_cudart_static(root)), "-lpthread", "-ldl", "-lrt"]
    r = subprocess.run([*build, "-o", str(exe)], capture_output=True, text=True)
    assert r.returncode == 0, f"ctest build failed: {r.stderr}"
    r = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "PASSED" in r.stdout, r.stdout + r.stderr
    for path in ("onepass", "split"):
        assert f"linear dcascade ({path})" in r.stdout


# ---- Linear: dtype x D x shape (small: every CUDA thread is an OS thread)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("d", [0, 1, 2, 3])
def test_emu_linear_dtypes(emu, bwd_path, dtype, d):
    check_linear("cpu", dtype, 37, 45, 19, d)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("scalar", [False, True], ids=["vector", "scalar"])
def test_emu_linear_vector_paths(emu, bwd_path, monkeypatch, dtype, scalar):
    """K, N multiples of 8 and aligned rows: every GEMM operand takes the 16-byte vector path (and,
    with PAI_FAST_CUDA_SCALAR_LOADS=1, the element-wise path); partial K and N tiles included."""
    if scalar:
        monkeypatch.setenv("PAI_FAST_CUDA_SCALAR_LOADS", "1")
    check_linear("cpu", dtype, 70, 40, 24, 3)
    check_linear("cpu", dtype, 9, 16, 8, 0, act="tanh")


def test_emu_linear_vector_tf32(emu, bwd_path):
    check_linear("cpu", torch.float32, 33, 24, 16, 1, tf32=True)


@pytest.mark.parametrize("shape", [(1, 1, 1), (0, 5, 3), (1, 7, 2), (65, 3, 130)], ids=str)
def test_emu_linear_edge_shapes(emu, bwd_path, shape):
    m, k, n = shape
    check_linear("cpu", torch.float32, m, k, n, 2)


@pytest.mark.parametrize("act", ["sigmoid", "tanh", "relu", "identity"])
@pytest.mark.parametrize("bias", [True, False])
def test_emu_linear_activations(emu, bwd_path, act, bias):
    check_linear("cpu", torch.float64, 9, 10, 11, 3, act=act, bias=bias)


@pytest.mark.parametrize("d", [8, 9, 12])
def test_emu_linear_many_dendrites(emu, d):
    """D <= 8 runs the register-resident dZ kernel, larger D the generic one."""
    check_linear("cpu", torch.float64, 7, 6, 5, d)


def test_emu_linear_backward_plan_reused(emu):
    """The backward's per-signature plan (cuda_backend._LinearBwd) serves later calls with other inputs and outputs:
    a second round of the same shapes adds no plan and is still right against float64 (check_linear draws fresh
    tensors); a bad dtype is rejected on every call, not remembered as a plan."""
    CB._linear_bwd_plans.clear()
    check_linear("cpu", torch.float32, 21, 24, 13, 2)
    plans = len(CB._linear_bwd_plans._plans)
    assert plans >= 1
    check_linear("cpu", torch.float32, 21, 24, 13, 2)
    assert len(CB._linear_bwd_plans._plans) == plans
    (x, w, _, dw, _, g, c), _ = _inputs((13, 24), (21, 24), 2, True, torch.float32, "cpu")
    gy, h = torch.randn(21, 13), torch.rand(21, 2, 13)
    for _ in range(2):
        with pytest.raises(ValueError, match="gate: expected dtype torch.float32"):
            CB.linear_bwd_packed(gy, x, w, dw, g.double(), c, h, "sigmoid", True)
    assert len(CB._linear_bwd_plans._plans) == plans


def _asked_workspace(lib, m, k, n, d, dtype, tf32=False) -> int:
    """The workspace _C's backward asks for (a query: no kernel runs, so the shapes may be large): the one-pass
    path needs none beyond the 256 bytes every backward asks for, the split one holds dZcat there."""
    meta = dict(device="meta", dtype=dtype)
    ins = (torch.empty(m, n, **meta), torch.empty(m, k, **meta), torch.empty(n, k, **meta),
           torch.empty(d, n, k, **meta), torch.empty(d, n, **meta), torch.empty(d, d, n, **meta),
           torch.empty(m, d, n, **meta))  # fmt: skip
    plan = CB._LinearBwd(*ins, "sigmoid", True)
    args = [None if s is None else (1 << 20, s[2], s[3]) for s in plan.slots]
    return lib.linear_backward(plan.dt, plan.act, tf32, *args, None, 0, 0)


def test_emu_linear_backward_path_choice(emu, monkeypatch):
    """_C takes the one-pass backward for Linear layers with 1 <= D <= 3 up to M (1+D) N K = 2^24 multiply-adds,
    the split one otherwise; PAI_FAST_CUDA_BACKWARD forces either where the one-pass kernel applies."""
    monkeypatch.delenv("PAI_FAST_CUDA_BACKWARD", raising=False)
    one = 256
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        assert _asked_workspace(emu, 64, 784, 128, 1, dtype) == one  # 12.8M MACs
        assert _asked_workspace(emu, 64, 784, 128, 3, dtype) > one  # 25.7M
    assert _asked_workspace(emu, 64, 1024, 128, 1, torch.float16) == one  # exactly 2^24
    assert _asked_workspace(emu, 65, 1024, 128, 1, torch.float16) > one
    assert _asked_workspace(emu, 64, 1024, 128, 1, torch.float32, tf32=True) == one
    for d in (0, 4):
        assert _asked_workspace(emu, 8, 64, 16, d, torch.float32) > one
    monkeypatch.setenv("PAI_FAST_CUDA_BACKWARD", "split")
    assert _asked_workspace(emu, 64, 784, 128, 1, torch.float32) > one
    monkeypatch.setenv("PAI_FAST_CUDA_BACKWARD", "onepass")
    assert _asked_workspace(emu, 256, 1024, 1024, 3, torch.float32) == one
    assert _asked_workspace(emu, 64, 784, 128, 4, torch.float32) > one  # D = 4: no one-pass kernel


def test_emu_linear_d127(emu):
    check_linear("cpu", torch.float32, 3, 4, 2, 127, grads=False)


def test_emu_linear_noncontiguous(emu, bwd_path):
    check_linear("cpu", torch.float32, 13, 20, 9, 2, noncontig_x=True)
    (x, w, b, dw, db, g, c), ref = _inputs((9, 20), (20, 13), 2, True, torch.float64, "cpu")
    from pai_fast import reference as R

    y, _ = CB.linear_fwd(x.t(), w.t().contiguous().t(), b, dw, db, g, c, "tanh", False)
    torch.testing.assert_close(y, R.dendritic_linear_ref(ref[0].t(), *ref[1:], activation="tanh"))


def test_emu_linear_tf32(emu, bwd_path):
    check_linear("cpu", torch.float32, 21, 40, 17, 2, tf32=True)


def test_emu_linear_splitk(emu, bwd_path):
    """Few output tiles and a long reduction: both backward GEMMs split K (partials summed in order)."""
    check_linear("cpu", torch.float64, 600, 3, 2, 1)  # wgrad: 600 rows / BK 16 = 38 k-tiles
    check_linear("cpu", torch.float64, 2, 5, 300, 1)  # dgrad: R*N = 600 reduction


def test_emu_errors_name_the_argument(emu):
    (x, w, b, dw, db, g, c), _ = _inputs((6, 5), (4, 5), 2, True, torch.float32, "cpu")
    with pytest.raises(ValueError, match="'gate': expected shape \\[2, 6\\], got \\[2, 3\\]"):
        CB.linear_fwd(x, w, b, dw, db, g[:, :3], c, "sigmoid", False)
    with pytest.raises(ValueError, match="dendrite_bias"):
        CB.linear_fwd(x, w, b, dw, None, g, c, "sigmoid", False)
    (x, w, b, dw, db, g, c), _ = _inputs((3, 4), (2, 4), 128, True, torch.float32, "cpu")
    with pytest.raises(RuntimeError, match="at most 127"):
        CB.linear_fwd(x, w, b, dw, db, g, c, "sigmoid", False)


# ---- Conv
CONV = [
    (2, 3, 5, (9,), (3,), (1,), (1,), (1,)),
    (1, 4, 6, (13,), (4,), (2,), (0,), (2,)),
    (2, 3, 7, (7, 6), (3, 3), (1, 1), (1, 1), (1, 1)),
    (2, 5, 4, (8, 7), (3, 2), (2, 1), (1, 0), (1, 2)),
    (1, 2, 3, (4, 5, 6), (3, 3, 2), (1, 2, 1), (1, 0, 1), (1, 1, 2)),
    (0, 3, 4, (6, 6), (3, 3), (1, 1), (1, 1), (1, 1)),
]


@pytest.mark.parametrize("case", CONV, ids=str)
def test_emu_conv_fp64(emu, case):
    check_conv("cpu", torch.float64, *case, 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_emu_conv_dtypes(emu, dtype):
    check_conv("cpu", dtype, *CONV[3], 3, act="tanh")


def test_emu_conv_backward_plan_reused(emu):
    """The conv backward's per-signature plan (cuda_backend._ConvBwd: checks, geometry, workspace size) serves later
    calls with fresh tensors, and a different geometry gets its own plan; bad input is rejected on every call."""
    CB._conv_bwd_plans.clear()
    check_conv("cpu", torch.float32, *CONV[3], 2)
    plans = len(CB._conv_bwd_plans._plans)
    assert plans >= 1
    check_conv("cpu", torch.float32, *CONV[3], 2)
    assert len(CB._conv_bwd_plans._plans) == plans
    b, cin, cout, sp, k, st, pad, dil = CONV[3]
    check_conv("cpu", torch.float32, b, cin, cout, sp, k, (1, 1), pad, dil, 2)
    assert len(CB._conv_bwd_plans._plans) == plans + 1, "another stride is another plan"
    (x, w, _, dw, _, g, c), _ = _inputs((cout, cin, *k), (b, cin, *sp), 2, True, torch.float32, "cpu")
    y, h = CB.conv_fwd(x, w, None, dw, None, g, c, st, pad, dil, "sigmoid", True)
    for _ in range(2):
        with pytest.raises(ValueError, match="gate: expected dtype torch.float32"):
            CB.conv_bwd_packed(y, x, w, dw, g.double(), c, h, st, pad, dil, "sigmoid", True)
        with pytest.raises(ValueError, match="stride: expected an int or 2 ints"):
            CB.conv_bwd_packed(y, x, w, dw, g, c, h, (1, 1, 1), pad, dil, "sigmoid", True)
    assert len(CB._conv_bwd_plans._plans) == plans + 1


def test_emu_conv_channels_last_and_d0(emu):
    check_conv("cpu", torch.float32, *CONV[2], 2, channels_last=True)
    check_conv("cpu", torch.float64, *CONV[3], 0, bias=False)
    check_conv("cpu", torch.float64, *CONV[1], 9, act="relu")


# ---- the GPU grid's shapes, emulated (slow: minutes)
@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("d", [0, 5, 9])
@pytest.mark.parametrize("shape", [(130, 100, 70), (5, 257, 300)], ids=str)
def test_emu_linear_grid_slow(emu, dtype, d, shape):
    check_linear("cpu", dtype, *shape, d)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("case", CONV, ids=str)
def test_emu_conv_grid_slow(emu, dtype, case):
    check_conv("cpu", dtype, *case, 3, act="sigmoid")
    check_conv("cpu", dtype, *case, 1, channels_last=True, bias=False, tf32=True)


# ---- through the op layer (torch.ops.pai_fast.*, backend="cuda"): fake/real agreement and gradients
@pytest.mark.parametrize("d", [0, 2])
def test_emu_opcheck_cuda_backend(emu, d):
    import pai_fast  # noqa: F401  (registers torch.ops.pai_fast)

    from .helpers import dendrite_params

    ops = torch.ops.pai_fast
    w, b, dw, db, g, c = dendrite_params((6, 8), d, dtype=torch.float64)
    x = torch.randn(5, 8, dtype=torch.float64)
    p = [w, b, dw, db, g, c]
    torch.library.opcheck(ops.dendritic_linear_fwd.default, (x, *p, "sigmoid", "cuda", True))
    y, h = ops.dendritic_linear_fwd(x, *p, "sigmoid", "cuda", True)
    bwd = (torch.randn_like(y), x, w, dw, g, c, h, "sigmoid", "cuda", True)
    torch.library.opcheck(ops.dendritic_linear_bwd.default, bwd)
    wc, bc, dwc, dbc, gc, cc = dendrite_params((4, 3, 3, 3), d, dtype=torch.float64)
    xc = torch.randn(2, 3, 7, 6, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    geo = ([1, 2], [1, 1], [1, 1])
    args = (xc, wc, bc, dwc, dbc, gc, cc, *geo, "tanh", "cuda", True)
    torch.library.opcheck(ops.dendritic_conv_fwd.default, args)
    yc, hc = ops.dendritic_conv_fwd(*args)
    bwd = (torch.randn_like(yc), xc, wc, dwc, gc, cc, hc, *geo, "tanh", "cuda", True)
    torch.library.opcheck(ops.dendritic_conv_bwd.default, bwd)


def test_emu_gradcheck_cuda_backend(emu):
    from pai_fast import ops

    from .helpers import dendrite_params

    x = torch.randn(4, 5, 8, dtype=torch.float64, requires_grad=True)
    params = [t.requires_grad_() for t in dendrite_params((6, 8), 3, dtype=torch.float64)]
    fn = ops.DendriticLinearFunction.apply
    assert torch.autograd.gradcheck(lambda *a: fn(*a, "sigmoid", "cuda"), (x, *params), eps=1e-6, atol=1e-6)
