"""Per-kernel GPU time of the fused linear forward and backward (torch.profiler), to see where time goes.

    python benchmarks/profile_kernels.py [--shape 8192x4096x4096] [--ds 1,3] [--backend triton]

Prints, for each D, the CUDA kernels of one forward (training: h saved) and one backward with their times.
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="8192x4096x4096")
    ap.add_argument("--ds", default="1,3")
    ap.add_argument("--backend", default="triton")
    ap.add_argument("--dtype", default="bfloat16")
    args = ap.parse_args()
    import pai_fast.functional as PF

    m, k, n = (int(v) for v in args.shape.split("x"))
    dt = getattr(torch, args.dtype)
    for d in (int(v) for v in args.ds.split(",")):
        g = torch.Generator(device="cuda").manual_seed(0)
        x = torch.randn(m, k, device="cuda", dtype=dt, generator=g).requires_grad_()
        w = (torch.randn(n, k, device="cuda", dtype=dt, generator=g) * k**-0.5).requires_grad_()
        b = torch.randn(n, device="cuda", dtype=dt, generator=g).requires_grad_()
        dw = (torch.randn(d, n, k, device="cuda", dtype=dt, generator=g) * k**-0.5).requires_grad_()
        db = torch.randn(d, n, device="cuda", dtype=dt, generator=g).requires_grad_()
        gate = torch.randn(d, n, device="cuda", dtype=dt, generator=g).requires_grad_()
        cas = (torch.randn(d, d, n, device="cuda", dtype=dt, generator=g) * 0.1).requires_grad_()
        dy = torch.randn(m, n, device="cuda", dtype=dt, generator=g)

        def step(x=x, w=w, b=b, dw=dw, db=db, gate=gate, cas=cas, dy=dy):
            y = PF.dendritic_linear(x, w, b, dw, db, gate, cas, activation="sigmoid", backend=args.backend)
            y.backward(dy)

        for _ in range(3):
            step()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                step()
            torch.cuda.synchronize()
        print(f"\n=== {args.backend} {args.shape} D={d} {args.dtype}: per-step CUDA time by kernel (5 steps) ===")
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=70))


if __name__ == "__main__":
    main()
