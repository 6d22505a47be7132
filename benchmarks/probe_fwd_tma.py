# ruff: noqa: B023  (benchmark closures are called at once, inside the loop)
"""Probe (GPU machine): the fused Linear forward's TMA kernel against its pointer-gather kernel and cuBLAS.

The launcher takes the TMA kernel (kernels/dendritic_linear.py: _linear_fwd_tma_kernel) when weight and
dendrite_weight are views of one buffer, and the pointer kernel when they are separate tensors; each is timed
under every TMA autotune candidate forced in turn, with and without saving h. (The first version of this probe,
6828d45, held its own copy of the TMA kernel; its results are benchmarks/results/h100_probe_fwd_tma.json.)

    python benchmarks/probe_fwd_tma.py [--ds 1,3] [--shape 8192x4096x4096] [--out probe.json]
"""

from __future__ import annotations

import argparse
import json

import torch
from pai_fast.kernels import dendritic_linear as L
from pai_fast.kernels import use_config
from triton.testing import do_bench

from pai_fast.bench import environment


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="8192x4096x4096")
    ap.add_argument("--ds", default="1,3")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    m, k, n = (int(v) for v in args.shape.split("x"))
    dt = torch.bfloat16
    rows = []
    for d in (int(v) for v in args.ds.split(",")):
        g = torch.Generator(device="cuda").manual_seed(0)
        x = torch.randn(m, k, device="cuda", dtype=dt, generator=g)
        wcat = torch.randn(1 + d, n, k, device="cuda", dtype=dt, generator=g) * k**-0.5
        apart = (wcat[0].clone(), wcat[1:].clone())
        rest = [torch.randn(s, device="cuda", dtype=dt, generator=g) for s in ((n,), (d, n), (d, n))]
        cas = torch.randn(d, d, n, device="cuda", dtype=dt, generator=g) * 0.1

        def fwd(w, v, save):
            return L.linear_fwd(x, w, rest[0], v, rest[1], rest[2], cas, "sigmoid", save)

        t = {"cublas_cat": do_bench(lambda: torch.mm(x, wcat.flatten(0, 1).t()), return_mode="median")}
        y_ref = fwd(*apart, False)[0].float()
        for save in (False, True):
            for i, cfg in enumerate(L.tma_configs(dt)):
                with use_config(cfg):
                    for name, (w, v) in (("tma", (wcat[0], wcat[1:])), ("ptr", apart)):
                        err = (fwd(w, v, save)[0].float() - y_ref).abs().max().item()
                        ms = do_bench(lambda: fwd(w, v, save), return_mode="median")
                        t[f"{name}{i}_save{int(save)}"] = ms
                        print(f"D={d} save={save} {name} {cfg.kwargs} w{cfg.num_warps} s{cfg.num_stages}: {ms:.4f} ms "
                              f"(max |y - y_ptr| {err:.3g})")  # fmt: skip
        rows.append({"D": d, **t})
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"shape": args.shape, "environment": environment(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
