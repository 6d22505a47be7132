"""The Triton kernels compile for sm_90 and sm_80 with no GPU present (Triton's ahead-of-time path down to a cubin
via the ptxas it ships). The interpreter runs kernels as Python, so it never sees what only the compiler rejects
(e.g. a variable with different shapes in the two branches of an `if`); this catches that in CI, before a GPU run.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile

import pytest
import torch

pytest.importorskip("triton", reason="the triton backend needs the triton package")

# Under TRITON_INTERPRET=1 the kernels are interpreted functions; CI's interpreter pass deselects these (no marker).
pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="interpreted, not compiled")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from pai_fast.kernels import _common as C  # noqa: E402
from pai_fast.kernels import dendritic_conv as V  # noqa: E402
from pai_fast.kernels import dendritic_linear as L  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.backends.nvidia.compiler import get_ptxas  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

TL_NAME = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32", torch.float64: "fp64",
           torch.int32: "i32"}  # fmt: skip
# The dZ kernels' partial sums (fp32) and arrival counters; DZ_FINISH compiles the in-launch finish out (the default).
DZ_POINTERS = {"part_ptr": torch.float32, "cnt_ptr": torch.int32}
DZ_FINISH = dict(FINISH=False, FIN_S=1, FIN_W=1)


def compile_for(
    fn, arch: int, dtype: torch.dtype, constexprs: dict, pointer_dtypes: dict | None = None, ints: dict | None = None,
    descriptors: dict | None = None, **opts,
):  # fmt: skip
    """Compile JIT function fn for sm_<arch> as a launch would: pointer arguments (named *_ptr) of dtype (or
    pointer_dtypes[name]) and 16-byte aligned, or TMA descriptors of dtype with the box descriptors[name]; the
    other runtime arguments i32 with the values in ints (default 7), specialized as Triton's launcher does (== 1
    becomes a constant, % 16 == 0 a divisibility hint); constexprs as given. Returns the compiled kernel."""
    while not isinstance(fn, JITFunction):  # through heuristics / autotune wrappers
        fn = fn.fn
    const_names = {fn.arg_names[i] for i in fn.constexprs}
    missing = const_names - set(constexprs)
    assert not missing, f"constexprs not given: {sorted(missing)}"
    sig, consts, attrs = {}, dict(constexprs), {}
    for i, name in enumerate(fn.arg_names):
        if name in const_names:
            sig[name] = "constexpr"
        elif name in (descriptors or {}):
            sig[name] = f"tensordesc<{TL_NAME[dtype]}[{', '.join(map(str, descriptors[name]))}]>"
        elif name.endswith("_ptr"):
            sig[name] = "*" + TL_NAME[(pointer_dtypes or {}).get(name, dtype)]
            attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            value = (ints or {}).get(name, 7)
            if value == 1:
                sig[name], consts[name] = "constexpr", 1
            else:
                sig[name] = "i32"
                if value % 16 == 0:
                    attrs[(i,)] = [["tt.divisibility", 16]]
    src = ASTSource(fn, sig, consts, attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=opts)


def acc(dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


@pytest.mark.parametrize(
    ("arch", "dtype", "d", "prec"),
    [
        (90, torch.bfloat16, 3, "ieee"),
        (90, torch.float32, 7, "tf32"),
        (90, torch.float32, 2, "ieee"),
        (80, torch.float16, 1, "ieee"),
        (90, torch.float64, 3, "ieee"),
    ],
)
def test_onepass_linear_backward_compiles(arch, dtype, d, prec):
    p = 1 << d.bit_length()  # next_pow2(1 + d)
    cfg = L._onepass_config(p, torch.empty((), dtype=dtype).element_size())
    opts = {k: cfg.pop(k) for k in ("num_warps", "num_stages") if k in cfg}
    meta = dict(D=d, P=p, ACT=1, ACC_DTYPE=acc(dtype), DOT_PRECISION=prec, **cfg)
    m, n, k = 256, 1024, 1024  # contiguous tensors: unit strides become constants, as in a launch
    ints = dict(M=m, N=n, K=k, stride_dym=n, stride_dyn=1, stride_xm=k, stride_xk=1, stride_wn=k, stride_vd=n * k,
                stride_vn=k, stride_wk=1, stride_gd=n, stride_gn=1, stride_ai=d * n, stride_aj=n, stride_an=1,
                stride_hm=d * n, stride_hd=n, stride_hn=1, stride_dxm=k, stride_dxk=1)  # fmt: skip
    compiled = compile_for(L._linear_bwd_onepass_kernel, arch, dtype, meta, ints=ints, **opts)
    assert compiled.asm["cubin"]
    # and with every stride a runtime value (a non-contiguous call)
    assert compile_for(L._linear_bwd_onepass_kernel, arch, dtype, meta, **opts).asm["cubin"]


@pytest.mark.parametrize("d", [0, 3])
def test_linear_forward_and_dz_kernels_compile(d):
    p = 1 << d.bit_length()
    meta = dict(
        D=d, P=p, ACT=2, HAS_BIAS=True, SAVE_H=d > 0, ACC_DTYPE=tl.float32, DOT_PRECISION="ieee", EVEN_K=False,
        BLOCK_M=64, BLOCK_C=max(64, 16 * p), BLOCK_K=64, GROUP_M=8,
    )  # fmt: skip
    assert compile_for(L._linear_fwd_kernel, 90, torch.bfloat16, meta, num_warps=4, num_stages=3).asm["cubin"]
    if d:
        dz_meta = dict(D=d, PD=4, ACT=2, ACC_DTYPE=tl.float32, BLOCK_N=256, **DZ_FINISH)
        k = compile_for(C._dendritic_dz_kernel, 90, torch.bfloat16, dz_meta, DZ_POINTERS, num_warps=4)
        assert k.asm["cubin"]


@pytest.mark.parametrize(
    ("d", "block_n", "block_r", "rows64"),
    [(1, 64, 16, False), (3, 256, 2, False), (3, 256, 1, False), (7, 64, 4, False), (3, 256, 2, True)],
)
def test_tiled_dz_kernel_compiles_without_spills(d, block_n, block_r, rows64):
    """The tiled dZ kernel as DzLaunch configures it (4 warps, bf16, channels innermost): its register accumulators
    (1 + 2D + D(D-1)/2 tiles) stay in registers, also with int64 row indices (past 2^31 - 32k rows)."""
    meta = dict(D=d, P=1 << d.bit_length(), ACT=1, ACC_DTYPE=tl.float32, BLOCK_N=block_n, BLOCK_R=block_r,
                ROWS64=rows64, **DZ_FINISH)  # fmt: skip
    unit = {f"stride_{s}": 1 for s in ("dyn", "hn", "zn", "gn", "an")}  # channels innermost, as the launches are
    k = compile_for(C._dendritic_dz_tiled_kernel, 90, torch.bfloat16, meta, DZ_POINTERS, unit, num_warps=4)
    assert _ptxas_usage(k)[0] == 0, f"D={d}: ptxas spilled registers"


@pytest.mark.parametrize(("b", "s", "n"), [(32, 56 * 56, 64), (32, 14 * 14, 256), (8192, 1, 4096)])
def test_dz_finish_in_kernel_keeps_registers(b, s, n):
    """DzLaunch's finish="kernel" (the default) sums the partials in finisher programs of the dZ launch; their
    code must not raise the whole kernel's registers past 128 (4 CTAs of 4 warps per SM) at D = 3: an earlier
    finisher's 64-value tiles took it to 255 registers, and the 8192x4096 dZ from 183 to 410 us (H200, probe_dz at
    09f41a3)."""
    unit = {f"stride_{x}": 1 for x in ("dyn", "hn", "zn", "gn", "an")}
    d, bf = 3, torch.bfloat16
    for finish in ("torch", "kernel"):
        launch = C.DzLaunch((s * n, n, 1), (s * d * n, d * n, n, 1), (s * (1 + d) * n, (1 + d) * n, n, 1),
                            torch.empty(d, n, dtype=bf), torch.empty(d, d, n, dtype=bf), b * s, n, s, 1, bf,
                            finish=finish)  # fmt: skip
        meta = dict(launch.meta)
        k = compile_for(launch.launcher.kernel, 90, bf, meta, DZ_POINTERS, unit, num_warps=meta.pop("num_warps"))
        spills, regs = _ptxas_usage(k)
        assert spills == 0, f"finish={finish}: {spills} bytes spilled"
        assert regs <= 128, f"finish={finish}: {regs} registers"


def _ptxas_usage(kernel) -> tuple[int, int]:
    """(bytes of spill stores, registers) that ptxas -v reports for the kernel's PTX (sm_90a)."""
    ptxas = get_ptxas(90).path
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(kernel.asm["ptx"])
        out = subprocess.run(
            [ptxas, "-v", "--gpu-name=sm_90a", src, "-o", os.path.join(tmp, "k.cubin")],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
    spills = sum(int(m) for m in re.findall(r"(\d+) bytes spill stores", out.stderr))
    return spills, max(int(m) for m in re.findall(r"Used (\d+) registers", out.stderr))


def test_conv_forward_kernel_compiles():
    meta = dict(
        KD=1, KH=3, KW=3, D=3, P=4, ACT=1, HAS_BIAS=True, SAVE_H=True, ACC_DTYPE=tl.float32, DOT_PRECISION="ieee",
        W_TMA=False, X_TMA=0, EVEN_C=True, BW=1, BLOCK_M=64, BLOCK_C=128, BLOCK_K=64, GROUP_M=8,
    )  # fmt: skip
    assert compile_for(V._conv_fwd_kernel, 90, torch.bfloat16, meta, num_warps=4, num_stages=3).asm["cubin"]


@pytest.mark.parametrize(("x_tma", "bw"), [(1, 1), (2, 8), (2, 64)])
def test_conv_forward_tma_mainloops_compile(x_tma, bw):
    """The Hopper mainloops with both tiles by TMA, as their largest autotune candidate (128 x 256, 4 stages): both
    operands of wgmma come straight from shared memory (no local_load; a reshaped box stays there only as wgmma's
    B operand, which is why the spatial box is B), one wgmma per step, all pipelined."""
    meta = dict(
        KD=1, KH=3, KW=3, D=3, P=4, ACT=1, HAS_BIAS=True, SAVE_H=False, ACC_DTYPE=tl.float32, DOT_PRECISION="ieee",
        W_TMA=True, X_TMA=x_tma, EVEN_C=True, BW=bw, BLOCK_M=128, BLOCK_C=256, BLOCK_K=64, GROUP_M=8,
    )  # fmt: skip
    oh, ow = 128 // bw, bw  # an output plane that box_width tiles with exactly this box
    assert V.box_width(oh, ow, 128) == bw or x_tma == 1
    w_box, x_box = V.tma_boxes(x_tma, 4, 128, 256, 64, oh, ow)
    boxes = {"x_ptr": x_box, "w_ptr": w_box}
    k = compile_for(V._conv_fwd_kernel, 90, torch.bfloat16, meta, descriptors=boxes, num_warps=8, num_stages=4)
    ttgir = k.asm["ttgir"]
    assert ttgir.count("async_tma_copy_global_to_local") >= 2, "both tiles arrive by TMA"
    assert ttgir.count("warp_group_dot ") == 1 and "local_load" not in ttgir
