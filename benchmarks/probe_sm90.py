"""The cuda backend's Hopper forward (csrc/sm90_linear.cuh) alone (GPU machine): device time of the fused forward over
packed weights (inference, and training writing h), the weight pack it needs after each weight update, csrc's
generic forward kernel, and the limit (one cuBLAS GEMM of width (1+D)N), bf16, side by side in one run.

    python benchmarks/probe_sm90.py [--out probe_sm90.json]
"""

from __future__ import annotations

import argparse
import json
import os

import torch
from triton.testing import do_bench

from pai_fast import cuda_backend as CB
from pai_fast.bench import environment

SHAPES = [(8192, 4096, 4096), (256, 1024, 1024), (64, 784, 128)]


def measure(m: int, k: int, n: int, d: int) -> dict:
    dt, lib, stream = torch.bfloat16, CB._C, torch.cuda.current_stream().cuda_stream
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(m, k, device="cuda", dtype=dt, generator=g)
    wcat = torch.randn((1 + d) * n, k, device="cuda", dtype=dt, generator=g) / k**0.5
    w, dw = wcat[:n], wcat[n:].view(d, n, k)
    b = torch.randn(n, device="cuda", dtype=dt, generator=g)
    db = torch.randn(d, n, device="cuda", dtype=dt, generator=g)
    gate = torch.randn(d, n, device="cuda", dtype=dt, generator=g)
    cas = torch.randn(d, d, n, device="cuda", dtype=dt, generator=g)
    v = dw if d else None
    nbytes = lib.linear_packed_bytes(2, CB._t(w), CB._t(v))
    packed = torch.empty(nbytes, dtype=torch.uint8, device="cuda")

    def pack():
        lib.linear_pack(2, CB._t(w), CB._t(v), packed.data_ptr(), nbytes, stream)

    def fwd(train: bool):
        return CB.linear_fwd(x, w, b, dw, db, gate, cas, "sigmoid", train)

    os.environ["PAI_FAST_CUDA_SM90"] = "0"
    y_generic, _ = fwd(False)
    t_generic = do_bench(lambda: fwd(False), rep=200)
    os.environ["PAI_FAST_CUDA_SM90"] = "1"
    y, _ = fwd(False)
    err = ((y.float() - y_generic.float()).norm() / y_generic.float().norm()).item()
    assert err < 1e-2, f"{m}x{k}->{n} D={d}: Hopper path differs from the generic kernel by {err:.3g}"
    return {
        "shape": f"{m}x{k}->{n}",
        "D": d,
        "cublas_cat_gemm_ms": do_bench(lambda: torch.mm(x, wcat.t()), rep=200),
        "sm90_infer_ms": do_bench(lambda: fwd(False), rep=200),
        "sm90_train_ms": do_bench(lambda: fwd(True), rep=200),
        "pack_ms": do_bench(pack, rep=200),
        "generic_infer_ms": t_generic,
        "rel_err_vs_generic": err,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="probe_sm90.json")
    args = ap.parse_args()
    assert CB.sm90_enabled(), "pai_fast._C was built without the Hopper path"
    rows = []
    for m, k, n in SHAPES:
        for d in (0, 1, 3):
            row = measure(m, k, n, d)
            rows.append(row)
            lim, t_generic = row["cublas_cat_gemm_ms"], row["generic_infer_ms"]
            print(
                f"{row['shape']:>18} D={d}  cublas {lim:.4f}  sm90 {row['sm90_infer_ms']:.4f} "
                f"({row['sm90_infer_ms'] / lim:.2f}x)  train {row['sm90_train_ms']:.4f} "
                f"({row['sm90_train_ms'] / lim:.2f}x)  pack {row['pack_ms']:.4f}  generic {t_generic:.4f} "
                f"({t_generic / lim:.2f}x)",
                flush=True,
            )
    with open(args.out, "w") as f:
        json.dump({"environment": environment(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
