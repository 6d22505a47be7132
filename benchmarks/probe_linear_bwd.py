"""The two Linear backwards of a backend side by side, to place the one-pass threshold on measurements.

    python benchmarks/probe_linear_bwd.py [--backend triton|cuda] [--out probe_linear_bwd.json]

For each shape, dtype and D it times the backend's backward op under its two paths: triton
(pai_fast.kernels.linear_bwd_packed) under backward_path("onepass") and backward_path("gemm"); cuda
(pai_fast.cuda_backend.linear_bwd_packed) with PAI_FAST_CUDA_BACKWARD=onepass (csrc/onepass.cu) and =split:
  - device: the call captured in a CUDA graph and replayed (triton.testing.do_bench_cudagraph median): GPU time;
  - eager:  the eager call (do_bench median): what a training step pays, host time included where it dominates.
The two paths' results are checked against each other first; a case where they differ is reported, not timed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

import torch
from triton.testing import do_bench, do_bench_cudagraph

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pai_fast.kernels import dendritic_linear as L  # noqa: E402

from pai_fast import bench as pbench  # noqa: E402
from pai_fast import cuda_backend as CB  # noqa: E402
from pai_fast import kernels as K  # noqa: E402

SHAPES = [
    (64, 784, 128), (256, 1024, 1024), (1024, 1024, 1024), (2048, 2048, 2048), (4096, 512, 640), (8192, 4096, 4096)
]  # fmt: skip


# Largest relative difference (to each output's max) allowed between the two paths: their dZ and GEMM roundings differ.
TOLERANCE = {"bfloat16": 3e-2, "float16": 1e-2, "float32": 1e-4, "float64": 1e-10}


@contextlib.contextmanager
def _cuda_path(path: str):
    old = os.environ.get("PAI_FAST_CUDA_BACKWARD")
    os.environ["PAI_FAST_CUDA_BACKWARD"] = path
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("PAI_FAST_CUDA_BACKWARD")
        else:
            os.environ["PAI_FAST_CUDA_BACKWARD"] = old


# backend: (forward, backward, path context, (one-pass path, split path))
BACKENDS = {
    "triton": (K.linear_fwd, L.linear_bwd_packed, K.backward_path, ("onepass", "gemm")),
    "cuda": (CB.linear_fwd, CB.linear_bwd_packed, _cuda_path, ("onepass", "split")),
}


def case(fwd, m, k, n, d, dtype):
    """The backward's arguments for the bench's Linear case (same inputs as `pai-fast bench`)."""
    x, (w, b, dw, db, gate, cas) = pbench._linear_case(m, k, n, d, dtype, "cuda")
    _, h = fwd(x, w, b, dw, db, gate, cas, "sigmoid", True)
    return (torch.randn(m, n, device="cuda", dtype=dtype), x, w, dw, gate, cas, h, "sigmoid", True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--backend", default="triton", choices=sorted(BACKENDS))
    ap.add_argument("--dtypes", default="bfloat16,float32")
    ap.add_argument("--dendrites", default="1,3,7")
    ap.add_argument("--max-macs", type=float, default=float("inf"), help="skip shapes with more M (1+D) N K")
    args = ap.parse_args()
    K.set_autotune(False)
    fwd, bwd, path_of, paths = BACKENDS[args.backend]
    one, split = paths
    rows = []
    print(f"{'shape':>18} {'dtype':>9} {'D':>2} {'GMAC':>7} | {'device onepass':>14} {split:>8} {'ratio':>6} | "
          f"{'eager onepass':>13} {split:>8}")  # fmt: skip
    for dtype_name in args.dtypes.split(","):
        dtype = getattr(torch, dtype_name)
        for d in map(int, args.dendrites.split(",")):
            for m, k, n in SHAPES:
                if m * (1 + d) * n * k > args.max_macs:
                    continue
                a = case(fwd, m, k, n, d, dtype)
                outs = {}
                for path in paths:
                    with path_of(path):
                        outs[path] = bwd(*a)
                err = max(
                    ((u.float() - v.float()).abs().max() / v.float().abs().max().clamp_min(1e-30)).item()
                    for u, v in zip(outs[one], outs[split])
                )
                if not err <= TOLERANCE[dtype_name]:  # time only what is correct
                    print(f"{m}x{k}->{n} {dtype_name} D={d}: the paths differ by {err:.1e} (relative): not timed")
                    continue
                res = {}
                for path in paths:
                    with path_of(path):
                        fn = lambda a=a: bwd(*a)  # noqa: E731
                        device = do_bench_cudagraph(fn, rep=60, return_mode="median")
                        res[path] = (device, do_bench(fn, warmup=10, rep=60, return_mode="median"))
                macs = m * (1 + d) * n * k
                row = dict(backend=args.backend, shape=f"{m}x{k}->{n}", dtype=dtype_name, D=d, macs=macs, rel_diff=err,
                           onepass_device_ms=res[one][0], **{f"{split}_device_ms": res[split][0]},
                           onepass_eager_ms=res[one][1], **{f"{split}_eager_ms": res[split][1]})  # fmt: skip
                rows.append(row)
                print(f"{row['shape']:>18} {dtype_name:>9} {d:>2} {macs / 1e9:7.2f} | "
                      f"{res[one][0] * 1e3:11.1f} us {res[split][0] * 1e3:6.1f}us "
                      f"{res[one][0] / res[split][0]:6.2f} | {res[one][1] * 1e3:10.1f} us "
                      f"{res[split][1] * 1e3:6.1f}us  diff {err:.1e}")  # fmt: skip
                torch.cuda.empty_cache()
    if args.out:
        Path(args.out).write_text(json.dumps({"environment": pbench.environment(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
