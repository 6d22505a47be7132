"""Benchmark of the triton backend (pai_fast.kernels) on a GPU, against the limits and the baselines.

Providers, each timed with triton.testing.do_bench (median ms), in modes "fwd" (inference: no h written) and
"fwd+bwd" (training: forward saving h, then the backward producing all seven gradients):
  triton        the fused launchers (pai_fast.kernels.linear_fwd / linear_bwd, conv_fwd / conv_bwd)
  pai_fast      the user path: pai_fast.functional with backend="triton" (op dispatch + autograd included)
  gemm          the limit: ONE cuBLAS GEMM of width (1+D)N (fwd); the 3-GEMM equivalent z, dX, dW (fwd+bwd).
                For convs: one cuDNN conv of width (1+D)Cout / conv + convolution_backward(dX, dW).
  eager         pai_fast.reference (stacked GEMM + per-dendrite elementwise ops), autograd
  compile       torch.compile(pai_fast.reference, dynamic=False)
  plain         nn.Linear / nn.Conv2d of width N (what the layer costs without dendrites)

Targets (H100, bf16, 8192x4096->4096, D=1,3): triton fwd <= 1.10x gemm, fwd+bwd <= 1.15x gemm; faster than
compile everywhere.

Usage (GPU):
  python benchmarks/bench_triton.py --out $OUT/bench_triton.jsonl            # everything (~10+ min; split it:)
  python benchmarks/bench_triton.py --kind linear --dtypes bf16 --out ...
  python benchmarks/bench_triton.py --kind linear --dtypes fp32 --out ...
  python benchmarks/bench_triton.py --kind conv --out ...
  python benchmarks/bench_triton.py --quick --out ...                        # a few shapes, ~2-3 min
Options: --ds 0,1,3,8  --providers triton,gemm,...  --shapes 8192x4096x4096  --tf32  --no-compile
No GPU needed:
  TRITON_INTERPRET=1 python benchmarks/bench_triton.py --smoke   # every provider once on tiny CPU shapes
  python benchmarks/bench_triton.py --ptxas     # compile the kernels for sm_90: registers, spills, shared memory
Output: one JSON object per line (kind, shape, dtype, D, provider, mode, ms, + gpu / versions), then a table.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
LINEAR_SHAPES = [(64, 784, 128), (256, 1024, 1024), (8192, 4096, 4096)]
CONV_SHAPES = [(32, 64, 56, 56, 64), (32, 256, 14, 14, 256)]  # B, Cin, H, W, Cout; 3x3, stride 1, padding 1
PROVIDERS = ["triton", "pai_fast", "gemm", "eager", "compile", "plain"]


def load_kernels():
    """pai_fast.kernels (installed by `pip install -e .`, which maps kernels/ to it)."""
    return importlib.import_module("pai_fast.kernels")


def _params(n, wshape, d, dtype, dev, fan_in):
    g = dict(device=dev, dtype=dtype)
    w = torch.randn(wshape, **g) / fan_in**0.5
    dw = torch.randn((d, *wshape), **g) / fan_in**0.5
    b = torch.randn(n, **g) * 0.1
    db = torch.randn(d, n, **g) * 0.1
    gate = torch.randn(d, n, **g) * 0.5
    cas = torch.randn(d, d, n, **g) * 0.5
    return [w, b, dw, db, gate, cas]


def _bench(fn, grad_to_none=None, smoke=False):
    if smoke:  # CPU smoke run: one timed call, only to prove the script runs
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3
    import triton

    return triton.testing.do_bench(fn, warmup=25, rep=100, grad_to_none=grad_to_none, return_mode="median")


def linear_cases(K, PF, ref, m, k, n, d, dtype, providers, act="sigmoid", dev="cuda"):
    """Yield (provider, mode, callable, grad_to_none) for one Linear problem."""
    x = torch.randn(m, k, device=dev, dtype=dtype)
    w, b, dw, db, g, c = _params(n, (n, k), d, dtype, dev, k)
    gy = torch.randn(m, n, device=dev, dtype=dtype)
    if "triton" in providers:

        def tri_fb():
            _, h = K.linear_fwd(x, w, b, dw, db, g, c, act, True)
            return K.linear_bwd(gy, x, w, dw, g, c, h, act, True)

        yield "triton", "fwd", lambda: K.linear_fwd(x, w, b, dw, db, g, c, act, False), None
        yield "triton", "fwd+bwd", tri_fb, None
    leaves = [t.detach().clone().requires_grad_() for t in (x, w, b, dw, db, g, c)]
    if "pai_fast" in providers and PF is not None:

        def pf_f():
            with torch.no_grad():
                return PF.dendritic_linear(*leaves, activation=act, backend="triton")

        yield "pai_fast", "fwd", pf_f, None
        yield (
            "pai_fast",
            "fwd+bwd",
            lambda: PF.dendritic_linear(*leaves, activation=act, backend="triton").backward(gy),
            leaves,
        )
    if "gemm" in providers:
        wcat = torch.cat([w.unsqueeze(0), dw]).reshape((1 + d) * n, k)
        dz = torch.randn(m, (1 + d) * n, device=dev, dtype=dtype)

        def gemm3():
            F.linear(x, wcat)
            torch.mm(dz, wcat)
            torch.mm(dz.t(), x)

        yield "gemm", "fwd", lambda: F.linear(x, wcat), None
        yield "gemm", "fwd+bwd", gemm3, None
    for name, fn in (("eager", ref), ("compile", None)):
        if name not in providers:
            continue
        if name == "compile":
            fn = torch.compile(ref, dynamic=False)

        def f_fwd(fn=fn):
            with torch.no_grad():
                return fn(*leaves, activation=act)

        yield name, "fwd", f_fwd, None
        yield name, "fwd+bwd", lambda fn=fn: fn(*leaves, activation=act).backward(gy), leaves
    if "plain" in providers:
        xl, wl, bl = leaves[0], leaves[1], leaves[2]

        def pl_f():
            with torch.no_grad():
                return F.linear(xl, wl, bl)

        yield "plain", "fwd", pl_f, None
        yield "plain", "fwd+bwd", lambda: F.linear(xl, wl, bl).backward(gy), [xl, wl, bl]


def conv_cases(
    K, PF, ref, bsz, cin, hgt, wid, cout, d, dtype, providers, act="sigmoid", layout="channels_last", dev="cuda"
):
    mf = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(bsz, cin, hgt, wid, device=dev, dtype=dtype).contiguous(memory_format=mf)
    w, b, dw, db, g, c = _params(cout, (cout, cin, 3, 3), d, dtype, dev, cin * 9)
    w = w.contiguous(memory_format=mf)
    dw = torch.stack([t.contiguous(memory_format=mf) for t in dw]) if layout == "channels_last" and d else dw
    geo = ((1, 1), (1, 1), (1, 1))
    gy = torch.randn(bsz, cout, hgt, wid, device=dev, dtype=dtype)
    if "triton" in providers:

        def tri_fb():
            _, h = K.conv_fwd(x, w, b, dw, db, g, c, *geo, act, True)
            return K.conv_bwd(gy, x, w, dw, g, c, h, *geo, act, True)

        yield "triton", "fwd", lambda: K.conv_fwd(x, w, b, dw, db, g, c, *geo, act, False), None
        yield "triton", "fwd+bwd", tri_fb, None
    leaves = [t.detach().clone().requires_grad_() for t in (x, w, b, dw, db, g, c)]
    kw = dict(stride=1, padding=1, activation=act)
    if "pai_fast" in providers and PF is not None:

        def pf_f():
            with torch.no_grad():
                return PF.dendritic_conv2d(*leaves, backend="triton", **kw)

        yield "pai_fast", "fwd", pf_f, None
        yield "pai_fast", "fwd+bwd", lambda: PF.dendritic_conv2d(*leaves, backend="triton", **kw).backward(gy), leaves
    if "gemm" in providers:
        wcat = torch.cat([w.unsqueeze(0), dw]).reshape((1 + d) * cout, cin, 3, 3).contiguous(memory_format=mf)
        dz = torch.randn(bsz, (1 + d) * cout, hgt, wid, device=dev, dtype=dtype).contiguous(memory_format=mf)

        def conv3():
            F.conv2d(x, wcat, padding=1)
            torch.ops.aten.convolution_backward(dz, x, wcat, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
                                                [True, True, False])  # fmt: skip

        yield "gemm", "fwd", lambda: F.conv2d(x, wcat, padding=1), None
        yield "gemm", "fwd+bwd", conv3, None
    for name in ("eager", "compile"):
        if name not in providers:
            continue
        fn = ref if name == "eager" else torch.compile(ref, dynamic=False)

        def f_fwd(fn=fn):
            with torch.no_grad():
                return fn(*leaves, **kw)

        yield name, "fwd", f_fwd, None
        yield name, "fwd+bwd", lambda fn=fn: fn(*leaves, **kw).backward(gy), leaves
    if "plain" in providers:
        xl, wl, bl = leaves[0], leaves[1], leaves[2]

        def pl_f():
            with torch.no_grad():
                return F.conv2d(xl, wl, bl, padding=1)

        yield "plain", "fwd", pl_f, None
        yield "plain", "fwd+bwd", lambda: F.conv2d(xl, wl, bl, padding=1).backward(gy), [xl, wl, bl]


def print_table(rows):
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["kind"], r["shape"], r["dtype"], r["D"]), {})[(r["provider"], r["mode"])] = r["ms"]
    provs = [p for p in PROVIDERS if any(p == k[0] for g in groups.values() for k in g)]
    for mode in ("fwd", "fwd+bwd"):
        head = f"{'kind':6} {'shape':22} {'dtype':5} {'D':>2} " + " ".join(f"{p:>9}" for p in provs)
        head += f" {'tri/gemm':>8} {'cmp/tri':>8}"
        print(f"\n== {mode} (median ms) ==\n{head}")
        for (kind, shape, dt, d), g in groups.items():
            vals = [g.get((p, mode)) for p in provs]
            cells = " ".join(f"{v:9.4f}" if isinstance(v, float) else f"{'-':>9}" for v in vals)
            tri, gemm, cmp_ = g.get(("triton", mode)), g.get(("gemm", mode)), g.get(("compile", mode))
            r1 = f"{tri / gemm:8.3f}" if tri and gemm else f"{'-':>8}"
            r2 = f"{cmp_ / tri:8.3f}" if tri and cmp_ else f"{'-':>8}"
            print(f"{kind:6} {shape:22} {dt:5} {d:>2} {cells} {r1} {r2}")


def ptxas_report():
    """Compile the forward kernels for sm_90 without a GPU and report registers / spills / shared memory."""
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    K = load_kernels()
    lin = sys.modules["pai_fast.kernels.dendritic_linear"]
    common = sys.modules["pai_fast.kernels._common"]
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    tys = {torch.bfloat16: "bf16", torch.float32: "fp32", torch.float16: "fp16"}
    fn = lin._linear_fwd_kernel
    n = k = 4096
    for dtype in (torch.bfloat16, torch.float32):
        for d in (0, 1, 3, 8):
            p = common.next_pow2(1 + d)
            for cfg in common.select_configs(
                common.ALL_CONFIGS, 8192, n, k, p, torch.empty(0, dtype=dtype).element_size()
            ):
                vals = dict(M=8192, N=n, K=k, M_KEY=8192, stride_xm=k, stride_xk=1, stride_wn=k, stride_vd=n * k,
                            stride_vn=k, stride_wk=1, stride_b=1, stride_cd=n, stride_cn=1, stride_gd=n, stride_gn=1,
                            stride_ai=d * n, stride_aj=n, stride_an=1, stride_ym=n, stride_yn=1, stride_hm=d * n,
                            stride_hd=n, stride_hn=1)  # fmt: skip
                prec = "tf32" if dtype == torch.float32 else "ieee"
                consts = dict(D=d, P=p, ACT=1, HAS_BIAS=True, SAVE_H=d > 0, ACC_DTYPE=tl.float32,
                              DOT_PRECISION=prec, EVEN_K=True, **cfg.kwargs)  # fmt: skip
                sig, attrs = {}, {}
                for i, name in enumerate(fn.arg_names):
                    if name in consts or vals.get(name) == 1:
                        sig[name] = "constexpr"
                        consts.setdefault(name, 1)
                    elif name.endswith("_ptr"):
                        sig[name], attrs[(i,)] = "*" + tys[dtype], [["tt.divisibility", 16]]
                    else:
                        sig[name] = "i32"
                        if vals[name] % 16 == 0:
                            attrs[(i,)] = [["tt.divisibility", 16]]
                src = ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs)
                opts = {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
                kern = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=opts)
                with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
                    f.write(kern.asm["ptx"])
                out = subprocess.run([ptxas, "-v", "--gpu-name=sm_90a", f.name, "-o", os.devnull],
                                     capture_output=True, text=True).stderr  # fmt: skip
                os.unlink(f.name)
                regs = re.search(r"Used (\d+) registers", out)
                spill = re.search(r"(\d+) bytes spill stores", out)
                print(f"linear_fwd {tys[dtype]} D={d} {cfg.kwargs} warps={cfg.num_warps} stages={cfg.num_stages}: "
                      f"regs={regs.group(1) if regs else '?'} spill={spill.group(1) if spill else '?'} "
                      f"smem={kern.metadata.shared} wgmma={kern.asm['ptx'].count('wgmma.mma_async')}")  # fmt: skip
    del K


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=None, help="JSON-lines output path")
    ap.add_argument("--quick", action="store_true", help="a few shapes only")
    ap.add_argument("--kind", choices=["linear", "conv", "all"], default="all")
    ap.add_argument("--dtypes", default=None, help="comma list of bf16,fp16,fp32 (linear; conv is bf16)")
    ap.add_argument("--ds", default=None, help="comma list of dendrite counts (default 0,1,3,8)")
    ap.add_argument("--shapes", default=None, help="linear MxKxN list, e.g. 8192x4096x4096,64x784x128")
    ap.add_argument("--providers", default=",".join(PROVIDERS))
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile provider (slow to compile)")
    ap.add_argument("--tf32", action="store_true", help="allow TF32 for fp32 (cuBLAS and the fused kernels)")
    ap.add_argument("--conv-layout", choices=["channels_last", "nchw"], default="channels_last")
    ap.add_argument("--ptxas", action="store_true", help="no GPU: compile for sm_90 and report regs/spills/smem")
    ap.add_argument("--smoke", action="store_true", help="CPU, TRITON_INTERPRET=1: tiny shapes, every provider once")
    args = ap.parse_args(argv)
    if args.ptxas:
        ptxas_report()
        return 0
    smoke = args.smoke
    if smoke and os.environ.get("TRITON_INTERPRET") != "1":
        print("--smoke runs the kernels in Triton's interpreter: set TRITON_INTERPRET=1", file=sys.stderr)
        return 2
    if not smoke and not torch.cuda.is_available():
        print("bench_triton.py needs a CUDA GPU (use --ptxas for the compile-only report)", file=sys.stderr)
        return 2

    import triton

    dev = "cpu" if smoke else "cuda"
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.allow_tf32 = args.tf32
    torch._dynamo.config.cache_size_limit = 1024
    torch._dynamo.config.accumulated_cache_size_limit = 4096
    K = load_kernels()
    try:
        from pai_fast import functional as PF
    except Exception as e:  # the op layer is optional for this benchmark
        print(f"pai_fast.functional unavailable ({e}); skipping provider pai_fast", file=sys.stderr)
        PF = None
    from pai_fast.reference import dendritic_conv_ref, dendritic_linear_ref

    providers = [p for p in args.providers.split(",") if p]
    if args.no_compile and "compile" in providers:
        providers.remove("compile")
    ds = [int(v) for v in args.ds.split(",")] if args.ds else ([1, 3] if args.quick else [0, 1, 3, 8])
    dtypes = args.dtypes.split(",") if args.dtypes else (["bf16"] if args.quick else ["bf16", "fp32"])
    shapes = (
        [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
        if args.shapes
        else ([LINEAR_SHAPES[0], LINEAR_SHAPES[2]] if args.quick else LINEAR_SHAPES)
    )
    conv_shapes = CONV_SHAPES[:1] if args.quick else CONV_SHAPES
    conv_dt, conv_dtype = "bf16", torch.bfloat16
    if smoke:
        shapes, conv_shapes, dtypes, ds = [(5, 12, 7)], [(2, 3, 5, 6, 4)], ["fp32"], [0, 2]
        conv_dt, conv_dtype = "fp32", torch.float32
    meta = dict(
        gpu=torch.cuda.get_device_name() if not smoke else "cpu-interpreter (smoke)",
        torch=torch.__version__,
        triton=triton.__version__,
        tf32=args.tf32,
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )
    print(json.dumps(meta))
    out = open(args.out, "a") if args.out else None
    rows = []

    def record(kind, shape, dt, d, prov, mode, ms, err=None):
        row = dict(kind=kind, shape=shape, dtype=dt, D=d, provider=prov, mode=mode, ms=ms, **meta)
        if err:
            row["error"] = err
        rows.append(row)
        if out:
            out.write(json.dumps(row) + "\n")
            out.flush()
        print(f"{kind:6} {shape:22} {dt:5} D={d} {prov:9} {mode:8} " + (f"{ms:.4f} ms" if ms else f"ERROR {err}"))

    def run(kind, shape, dt, d, cases):
        try:
            for prov, mode, fn, g2n in cases:
                try:
                    fn()  # compile / autotune outside the timed region
                    if not smoke:
                        torch.cuda.synchronize()
                    record(kind, shape, dt, d, prov, mode, _bench(fn, g2n, smoke))
                except Exception as e:
                    record(kind, shape, dt, d, prov, mode, None, f"{type(e).__name__}: {str(e)[:200]}")
        except torch.cuda.OutOfMemoryError as e:
            record(kind, shape, dt, d, "setup", "-", None, f"OOM: {str(e)[:120]}")
        if not smoke:
            torch.cuda.empty_cache()

    if args.kind in ("linear", "all"):
        for dt in dtypes:
            for m, k, n in shapes:
                for d in ds:
                    shape = f"{m}x{k}->{n}"
                    cases = linear_cases(K, PF, dendritic_linear_ref, m, k, n, d, DTYPES[dt], providers, dev=dev)
                    run("linear", shape, dt, d, cases)
    if args.kind in ("conv", "all"):
        for bsz, cin, hgt, wid, cout in conv_shapes:
            for d in ds:
                shape = f"{bsz}x{cin}x{hgt}x{wid}->{cout}"
                cases = conv_cases(K, PF, dendritic_conv_ref, bsz, cin, hgt, wid, cout, d, conv_dtype, providers,
                                   layout=args.conv_layout, dev=dev)  # fmt: skip
                run("conv", shape, conv_dt, d, cases)
    if out:
        out.close()
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
