"""The cuda backend's Hopper forward (csrc/sm90_linear.cuh) alone (GPU machine), bf16, side by side in one run:

- device time (CUDA-graph replay, triton.testing.do_bench_cudagraph) of the fused forward over packed weights, in
  inference and in training (writing h), for the library's choice and each mainloop schedule (PAI_FAST_SM90_SCHEDULE:
  cooperative 256x128, ping-pong 128x128);
- each epilogue (PAI_FAST_SM90_EPILOGUE: staged through shared memory, the default, or direct register stores) with
  --epilogues staged,direct;
- the weight pack it needs after each weight update, csrc's generic forward, and the limit (one cuBLAS GEMM of
  width (1+D)N);
- the kernels of one cuda-backend forward+backward step (torch.profiler), to see where the step's time goes.

    python benchmarks/probe_sm90.py [--out probe_sm90.json] [--quick] [--ds 1,3] [--schedules default,cooperative]
        [--epilogues staged,direct] [--shapes 256x1024x1024,64x784x128] [--no-steps]

--quick: 8192x4096->4096 only, D = 0, 1, 3, 7, the library's choice of schedule only, and the step's kernels.
--ds: 8192x4096->4096 only, these D; --schedules: these schedules (either overrides what --quick picks).
"""

from __future__ import annotations

import argparse
import json
import os

import torch
from triton.testing import do_bench_cudagraph

from pai_fast import cuda_backend as CB
from pai_fast import functional
from pai_fast.bench import _linear_case, environment, limit_weight

SHAPES = [(8192, 4096, 4096), (256, 1024, 1024), (64, 784, 128)]
SCHEDULES = ("default", "cooperative", "pingpong")
EPILOGUES = ("staged", "direct")


def _bench(fn) -> float:
    return do_bench_cudagraph(fn, rep=100, return_mode="median")


def measure(m: int, k: int, n: int, d: int, schedules=SCHEDULES) -> dict:
    dt, lib = torch.bfloat16, CB._C
    x, params = _linear_case(m, k, n, d, dt, "cuda")
    w, b, dw, db, gate, cas = params
    wcat = limit_weight("linear", params)
    v = dw if d else None
    tensors = [CB._t(x), CB._t(w), CB._t(b), CB._t(v), CB._t(db), CB._t(gate), CB._t(cas)]
    nbytes = lib.linear_packed_bytes(2, CB._t(w), CB._t(v))
    packed = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    y = torch.empty(m, n, device="cuda", dtype=dt)
    h = torch.empty(m, d, n, device="cuda", dtype=dt)
    act = CB._act_code("sigmoid")

    def stream() -> int:
        return torch.cuda.current_stream().cuda_stream

    def pack():
        lib.linear_pack(2, CB._t(w), CB._t(v), packed.data_ptr(), nbytes, stream())

    def fwd(train: bool):
        outs = [CB._t(y), CB._t(h) if train and d else None]
        lib.linear_forward_packed(2, act, *tensors, packed.data_ptr(), nbytes, *outs, stream())

    def generic():
        lib.linear_forward(2, act, 0, *tensors, CB._t(y), None, stream())

    generic()
    y_ref = y.float().clone()
    pack()
    row = {"shape": f"{m}x{k}->{n}", "D": d, "limit_ms": _bench(lambda: torch.mm(x, wcat.t()))}
    for variant in schedules:  # "schedule" or "schedule+epilogue"
        sched, _, epi = variant.partition("+")
        os.environ["PAI_FAST_SM90_SCHEDULE"] = sched  # "default": the library's own choice
        os.environ["PAI_FAST_SM90_EPILOGUE"] = epi or "staged"
        y.zero_()
        fwd(True)
        err = ((y.float() - y_ref).norm() / y_ref.norm()).item()
        assert err < 1e-2, f"{m}x{k}->{n} D={d} {variant}: differs from the generic kernel by {err:.3g}"
        row[f"{variant}_infer_ms"] = _bench(lambda: fwd(False))
        row[f"{variant}_train_ms"] = _bench(lambda: fwd(True))
        row[f"{variant}_rel_err"] = err
    os.environ.pop("PAI_FAST_SM90_SCHEDULE")
    os.environ.pop("PAI_FAST_SM90_EPILOGUE")
    row["pack_ms"] = _bench(pack)
    row["generic_infer_ms"] = _bench(generic)
    return row


def step_kernels(m: int, k: int, n: int, d: int) -> list[dict]:
    """Device time per kernel of one cuda-backend forward+backward step (the mean over 10 steps)."""
    x, params = _linear_case(m, k, n, d, torch.bfloat16, "cuda")
    params = [p.requires_grad_() for p in params]
    x.requires_grad_()
    gy = torch.randn(m, n, device="cuda", dtype=torch.bfloat16)

    def step():
        functional.dendritic_linear(x, *params, backend="cuda").backward(gy)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(10):
            step()
        torch.cuda.synchronize()
    rows = []
    for e in prof.key_averages():
        if e.device_type == torch.autograd.DeviceType.CUDA and e.count:
            rows.append({"kernel": e.key[:90], "calls_per_step": e.count / 10, "us_per_call": e.device_time})
    rows.sort(key=lambda r: -r["us_per_call"] * r["calls_per_step"])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="probe_sm90.json")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--ds", default=None, help="comma list of D (default: 0..7 at 8192x4096, else 0, 1, 3, 7)")
    ap.add_argument("--schedules", default=None, help=f"comma list of {', '.join(SCHEDULES)} (default: all)")
    ap.add_argument("--shapes", default=None, help="comma list of MxKxN (default: the three of SHAPES)")
    ap.add_argument("--no-steps", action="store_true", help="skip the fb step's kernels")
    ap.add_argument("--epilogues", default=None, help=f"comma list of {', '.join(EPILOGUES)} (default: staged)")
    args = ap.parse_args()
    shapes = SHAPES[:1] if args.quick or args.ds else SHAPES
    if args.shapes:
        shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    schedules = args.schedules.split(",") if args.schedules else SCHEDULES[:1] if args.quick else SCHEDULES
    ds = [int(v) for v in args.ds.split(",")] if args.ds else None
    if args.epilogues:
        schedules = [f"{s}+{e}" for s in schedules for e in args.epilogues.split(",")]
    assert CB.sm90_enabled(), "pai_fast._C was built without the Hopper path"
    rows, steps = [], {}
    print(f"{'shape':>18} D  limit   " + "  ".join(f"{s:>24}" for s in schedules) + "   pack  generic", flush=True)
    for m, k, n in shapes:
        for d in ds or (range(8) if m >= 4096 and not args.quick else (0, 1, 3, 7)):
            row = measure(m, k, n, d, schedules)
            rows.append(row)
            lim = row["limit_ms"]
            cells = "  ".join(
                f"{row[f'{s}_infer_ms'] / lim:7.3f}x/{row[f'{s}_train_ms'] / lim:6.3f}x train" for s in schedules
            )
            print(
                f"{row['shape']:>18} {d}  {lim:.4f}  {cells}  {row['pack_ms']:.4f}  "
                f"{row['generic_infer_ms'] / lim:.2f}x",
                flush=True,
            )
    for d in () if args.no_steps else (1, 3):
        key = f"8192x4096->4096 D={d}"
        steps[key] = step_kernels(8192, 4096, 4096, d)
        print(f"-- kernels of one cuda fb step, {key} (us per call x calls per step)")
        for r in steps[key][:8]:
            print(f"   {r['us_per_call']:9.1f} x{r['calls_per_step']:.0f}  {r['kernel']}")
    with open(args.out, "w") as f:
        json.dump({"environment": environment(), "rows": rows, "fb_step_kernels": steps}, f, indent=1)


if __name__ == "__main__":
    main()
