"""Where the fused conv's forward+backward time goes (GPU machine). For each ResNet shape and D, side by side in one
run: device time (CUDA-graph replay, no host) and wall time (do_bench, host included) of

  limit_fb   cuDNN's conv of width (1 + D) * Cout, forward + backward (dx, dWcat) through autograd
  plain_fb   the plain layer (D = 0: one conv with bias), forward + backward
  triton_fb  the fused layer through autograd (7 gradients), as the bench times it
  triton_f   its training forward alone (saves h)
  dz         the dZ kernel alone (elementwise dZcat + the gate / cascade / bias reductions)
  cudnn_bwd  aten.convolution_backward over dZcat and the stacked weight alone (dx, dWcat)
  bwd_packed the fused backward launcher (dz + cudnn_bwd + casts) called directly, no autograd

then the host time of one triton_fb call and a cProfile of it (top functions by own time). The inputs are a
channels_last model's, as in `pai-fast bench` (pai_fast.bench._conv_case).

    python benchmarks/probe_conv_bwd.py [--ds 1,3] [--dtype bfloat16] [--out probe_conv_bwd.json]
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
import torch.nn.functional as F
from triton.testing import do_bench, do_bench_cudagraph

from pai_fast import functional
from pai_fast.bench import _conv_case, environment, host_and_wall_ms, host_profile, limit_weight

SHAPES = {"32x64x56x56->64": (32, 64, 56, 64), "32x256x14x14->256": (32, 256, 14, 256)}


def _grad(fn, inputs):
    out = fn()
    gy = torch.randn_like(out)
    return lambda: torch.autograd.grad(fn(), inputs, gy, allow_unused=True)


def _case(name: str, dims: tuple, d: int, dt: torch.dtype, rows: list, profile: bool) -> None:
    import pai_fast.kernels as K

    conv = sys.modules["pai_fast.kernels.dendritic_conv"]
    x, params = _conv_case(*dims, d, dt, "cuda")
    x = x.requires_grad_()
    ps = [p.detach().requires_grad_() for p in params]
    wcat = limit_weight("conv", params).requires_grad_()
    w_plain = params[0].detach().clone().requires_grad_()
    geo = ((1, 1), (1, 1), (1, 1))

    def fused():
        return functional.dendritic_conv2d(x, *ps, 1, 1, backend="triton")

    # The backward's own inputs, as the op saves them: y0 / h from a training forward, grad_y like y.
    with torch.no_grad():
        _, h = K.conv_fwd(x, *params, *geo, "sigmoid", True)
        gy = torch.randn_like(fused())
    plan_args = (gy, x.detach(), params[0], params[2], params[4], params[5], h)
    bwd_plan = conv._bwd_plans.get(plan_args, ("sigmoid",), lambda: conv._ConvBwdPlan(*plan_args, "sigmoid"))
    dz = torch.empty_strided(bwd_plan.z_shape, bwd_plan.z_strides, device="cuda", dtype=dt)
    gy_dz = gy.contiguous() if bwd_plan.dy_contig else gy  # what the launcher hands the dZ kernel
    wview = conv._stacked_weight(params[0], params[2])

    calls = {
        "limit_fb": _grad(lambda: F.conv2d(x, wcat, None, 1, 1), [x, wcat]),
        "plain_fb": _grad(lambda: F.conv2d(x, w_plain, ps[1], 1, 1), [x, w_plain, ps[1]]),
        "triton_fb": _grad(fused, [x, *ps]),
        "triton_f": lambda: K.conv_fwd(x.detach(), *params, *geo, "sigmoid", True),
        "dz": lambda: bwd_plan.dz_launch(gy_dz, h, params[4], params[5], dz),
        "cudnn_bwd": lambda: torch.ops.aten.convolution_backward(
            dz, x.detach(), wview, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, [True, True, False]
        ),
        "bwd_packed": lambda: K.conv_bwd_packed(
            gy, x.detach(), *(params[i] for i in (0, 2, 4, 5)), h, *geo, "sigmoid", True
        ),
    }
    for fn in calls.values():
        fn()
    torch.cuda.synchronize()
    for label, fn in calls.items():
        try:
            dev = do_bench_cudagraph(fn, rep=100)
        except Exception as e:  # a piece that cannot be captured still gets its wall and host time
            print(f"{name} D={d} {label}: no CUDA-graph time ({type(e).__name__}: {e})", flush=True)
            dev = float("nan")
        wall = do_bench(fn, warmup=25, rep=200)
        host, _ = host_and_wall_ms(fn, 200)
        rows.append(
            dict(
                shape=name,
                D=d,
                dtype=str(dt).replace("torch.", ""),
                what=label,
                device_ms=dev,
                wall_ms=wall,
                host_ms=host,
            )
        )
        print(f"{name:18} D={d} {label:10}: device {dev:.4f} ms  wall {wall:.4f} ms  host {host:.4f} ms", flush=True)
    if profile:
        print(host_profile(calls["triton_fb"], 200, 25)[:8000], flush=True)
    print(
        f"  triton_fb conv_bwd plan: dy_contig={bwd_plan.dy_contig} h_contig={bwd_plan.h_contig} "
        f"dz strides={bwd_plan.z_strides} wview strides={tuple(wview.stride())}",
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ds", default="1,3")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--out", default="probe_conv_bwd.json")
    args = ap.parse_args()
    dt = getattr(torch, args.dtype)
    rows: list = []
    for name, dims in SHAPES.items():
        for i, d in enumerate(int(v) for v in args.ds.split(",")):
            _case(name, dims, d, dt, rows, profile=i == 0)
    with open(args.out, "w") as f:
        json.dump(dict(environment=environment(), rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
