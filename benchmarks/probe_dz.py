"""The backward's dZ kernel alone (GPU machine): device time (CUDA-graph replay) of the row kernel and the tiled
kernel, its partial sums finished by torch.sum or inside the launch (with --all also finisher blocks of 64 values
and a budget of 256 programs), at the ResNet convs' and the large Linear's shapes (bf16, the layouts the backward
launches with).

    python benchmarks/probe_dz.py [--out probe_dz.json] [--cases linear,14x14] [--all]
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
from triton.testing import do_bench_cudagraph

from pai_fast.bench import environment

# name: (batch, spatial positions, channels); the conv ones channels_last as a channels_last model runs them.
CASES = {"conv 32x64x56x56->64": (32, 56 * 56, 64), "conv 32x256x14x14->256": (32, 14 * 14, 256),
         "linear 8192x4096->4096": (8192, 1, 4096)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="probe_dz.json")
    ap.add_argument("--cases", default="", help="comma-separated substrings of the case names to run (default all)")
    ap.add_argument("--all", action="store_true", help="also finisher blocks of 64 values and 256 programs")
    args = ap.parse_args()
    picked = [c for c in args.cases.split(",") if c]
    import pai_fast.kernels  # noqa: F401

    common = sys.modules["pai_fast.kernels._common"]
    dt, rows_out = torch.bfloat16, []
    for name, (b, s, n) in CASES.items():
        if picked and not any(c in name for c in picked):
            continue
        for d in (1, 3):
            g = torch.Generator(device="cuda").manual_seed(0)
            dy = torch.randn(b, s, n, device="cuda", dtype=dt, generator=g)
            h = torch.rand(b, s, d, n, device="cuda", dtype=dt, generator=g)
            gate = torch.randn(d, n, device="cuda", dtype=dt, generator=g)
            cas = torch.randn(d, d, n, device="cuda", dtype=dt, generator=g)
            dz = torch.empty(b, s, 1 + d, n, device="cuda", dtype=dt)
            act = common.ACT_CODES["sigmoid"]
            want = None
            # (kernel, programs, finish of the partial sums, values per finisher program)
            variants = [("row", 2048, "torch", None), ("tiled", 512, "torch", None), ("tiled", 512, "kernel", None)]
            if args.all:  # the other finisher width and program budget
                variants += [("tiled", 512, "kernel", 64)] + [("tiled", 256, f, None) for f in ("torch", "kernel")]
            for kind, programs, finish, fin_w in variants:
                launch = common.DzLaunch(dy.stride(), h.stride(), dz.stride(), gate, cas, b * s, n, s, act, dt,
                                         programs=programs, tiled=kind == "tiled", finish=finish,
                                         fin_w=fin_w)  # fmt: skip
                red = launch(dy, h, gate, cas, dz)
                if want is None:
                    want = (dz.clone(), red.clone())
                else:  # time only what agrees with the row kernel, which rounds ds_k to bf16 before the cascade
                    for got, ref in ((dz, want[0]), (red, want[1])):
                        err = ((got.float() - ref.float()).norm() / ref.float().norm()).item()
                        assert err < 2e-2, f"{name} D={d} {kind} {programs} {finish}: relative error {err:.3g}"

                def call(launch=launch, args=(dy, h, gate, cas, dz)):
                    launch(*args)

                ms = do_bench_cudagraph(call, rep=100)
                mb = (dy.numel() + h.numel() + dz.numel()) * dt.itemsize / 1e6
                meta = {k: v for k, v in launch.meta.items() if k != "ACC_DTYPE"}
                row = dict(case=name, D=d, kernel=kind, programs=programs, finish=finish,
                           grid=launch.grid, meta=meta, ms=ms, mbytes=mb, tbps=mb / ms / 1e3)  # fmt: skip
                rows_out.append(row)
                print(
                    f"{name:24} D={d} {kind:5} programs={programs:5} block_r={meta.get('BLOCK_R')} "
                    f"finish={finish:6} fin_w={meta['FIN_W']:3} grid={launch.grid}: "
                    f"{ms * 1e3:7.1f} us ({row['tbps']:.2f} TB/s of {mb:.0f} MB)",
                    flush=True,
                )
    with open(args.out, "w") as f:
        json.dump(dict(environment=environment(), rows=rows_out), f, indent=1)


if __name__ == "__main__":
    main()
