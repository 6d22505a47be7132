"""Where the host time of a small fused layer goes (GPU machine): per-call wall time without syncs, the CUDA
kernels launched, and a cProfile of the Python side, for each backend.

    python benchmarks/probe_host_overhead.py [--shape 256x1024x1024] [--d 3] [--backends triton,cuda]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time

import torch
from torch.profiler import ProfilerActivity, profile


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="256x1024x1024")
    ap.add_argument("--d", type=int, default=3)
    ap.add_argument("--backends", default="triton,cuda")
    ap.add_argument("--dtype", default="bfloat16")
    args = ap.parse_args()
    import pai_fast.functional as PF

    m, k, n = (int(v) for v in args.shape.split("x"))
    d = args.d
    dt = getattr(torch, args.dtype)
    g = torch.Generator(device="cuda").manual_seed(0)

    def r(*s, scale=1.0):
        return (torch.randn(s, device="cuda", dtype=dt, generator=g) * scale).requires_grad_()

    x = r(m, k)
    ps = [r(n, k, scale=k**-0.5), r(n), r(d, n, k, scale=k**-0.5), r(d, n), r(d, n), r(d, d, n, scale=0.1)]
    dy = torch.randn(m, n, device="cuda", dtype=dt, generator=g)
    lin = torch.nn.Linear(k, n, device="cuda", dtype=dt)

    def plain():
        torch.autograd.grad(lin(x), [x, lin.weight, lin.bias], dy)

    steps = {"plain": plain}
    for be in args.backends.split(","):

        def step(be=be):
            y = PF.dendritic_linear(x, *ps, activation="sigmoid", backend=be)
            torch.autograd.grad(y, [x, *ps], dy)

        def fwd(be=be):
            with torch.no_grad():
                PF.dendritic_linear(x, *ps, activation="sigmoid", backend=be)

        steps[be] = step
        steps[be + "_fwd_nograd"] = fwd
        if be == "triton":  # the same through Triton's own per-call launch path (no direct-launch cache)
            from pai_fast.kernels import set_fast_launch

            def plain_launch(fn=step):
                set_fast_launch(False)
                fn()
                set_fast_launch(True)

            steps["triton_plain_launch"] = plain_launch

    for name, fn in steps.items():
        for _ in range(20):
            fn()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(200):
            fn()
        host = (time.perf_counter() - t0) / 200 * 1e3
        torch.cuda.synchronize()
        wall = (time.perf_counter() - t0) / 200 * 1e3
        with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
            for _ in range(10):
                fn()
            torch.cuda.synchronize()
        kern = [e for e in prof.key_averages() if e.device_type.name == "CUDA"]
        gpu_us = sum(e.device_time_total for e in kern) / 10
        print(
            f"\n=== {name} {args.shape} D={d}: host {host:.3f} ms/step, wall {wall:.3f} ms/step, "
            f"GPU busy {gpu_us / 1e3:.3f} ms/step, {sum(e.count for e in kern) / 10:.0f} kernels/step"
        )
        for e in sorted(kern, key=lambda e: -e.device_time_total)[:8]:
            print(f"   {e.count / 10:4.0f}x {e.device_time_total / 10:8.1f} us  {e.key[:90]}")
        pr = cProfile.Profile()
        pr.enable()
        for _ in range(100):
            fn()
        pr.disable()
        torch.cuda.synchronize()
        s = io.StringIO()
        pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(18)
        print("\n".join(s.getvalue().splitlines()[:40]))


if __name__ == "__main__":
    main()
