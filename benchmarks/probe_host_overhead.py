"""Where the host time of a small fused layer goes (GPU machine): per-call wall time without syncs, the CUDA
kernels launched, and a cProfile of the Python side, for each backend.

    python benchmarks/probe_host_overhead.py [--shape 256x1024x1024] [--d 3] [--backends triton,cuda]
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from pai_fast.bench import host_and_wall_ms, host_profile


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

    if "cuda" in steps:  # the cuda backend with its one-launch backward forced (csrc/onepass.cu, 1 <= D <= 3)
        import os

        def onepass(fn=steps["cuda"]):
            os.environ["PAI_FAST_CUDA_BACKWARD"] = "onepass"
            try:
                fn()
            finally:
                del os.environ["PAI_FAST_CUDA_BACKWARD"]

        steps["cuda_onepass"] = onepass
    side_by_side({k: v for k, v in steps.items() if k in ("plain", "triton", "cuda", "cuda_onepass")})
    micro(m, k, n, d, dt)
    for name, fn in steps.items():
        host, wall = host_and_wall_ms(fn, 200)
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
        print("\n".join(host_profile(fn, 100, 18).splitlines()[:40]))


def side_by_side(steps: dict, rounds: int = 7, n: int = 200) -> None:
    """Host ms per step of each step function, in interleaved rounds (the order rotated), median over the rounds:
    the host's speed drifts, so ratios are taken from one such table."""
    import statistics

    names = list(steps)
    per: dict = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            per[name].append(host_and_wall_ms(steps[name], n)[1])
    base = statistics.median(per["plain"]) if "plain" in per else None
    print(f"\n=== side by side: wall ms per step, median of {rounds} interleaved rounds of {n} steps")
    for name in names:
        med = statistics.median(per[name])
        print(f"   {name:18s} {med:.3f} ms" + (f"   {med / base:.2f}x plain" if base else ""))


def micro(m: int, k: int, n: int, d: int, dt: torch.dtype) -> None:
    """Host cost of the primitives a fused step is made of (µs per call, no sync inside the loop)."""
    import pai_fast.kernels as K
    from pai_fast.kernels import _common

    x = torch.randn(m, k, device="cuda", dtype=dt)
    wcat = torch.randn((1 + d) * n, k, device="cuda", dtype=dt)
    dz = torch.randn(m, (1 + d) * n, device="cuda", dtype=dt)
    part = torch.randn(64, 1 + 2 * d + d * d, n, device="cuda")
    red = part.sum(0)
    gate, cas = torch.randn(d, n, device="cuda", dtype=dt), torch.randn(d, d, n, device="cuda", dtype=dt)
    h = torch.rand(m, d, n, device="cuda", dtype=dt)
    gy = torch.randn(m, n, device="cuda", dtype=dt)

    dz_plan = _common.DzLaunch(
        (gy.stride(0), 0, gy.stride(1)),
        (h.stride(0), 0, h.stride(1), h.stride(2)),
        (dz.stride(0), 0, n * dz.stride(1), dz.stride(1)),
        gate, cas, m, n, 1, 1, dt,
    )  # fmt: skip

    def dz_launch():
        dz_plan(gy, h, gate, cas, dz)

    cases = {
        "torch.empty": lambda: torch.empty((m, n), device="cuda", dtype=dt),
        "torch.mm dX": lambda: torch.mm(dz, wcat),
        "torch.mm dW": lambda: torch.mm(dz.t(), x),
        "part.sum(0)": lambda: part.sum(0),
        "red.to(dt)": lambda: red.to(dt),
        "x.reshape": lambda: x.reshape(-1, k),
        "dz kernel+sum (fast launch)": dz_launch,
    }

    def plain_dz():
        K.set_fast_launch(False)
        dz_launch()
        K.set_fast_launch(True)

    cases["dz kernel+sum (Triton launch)"] = plain_dz
    print("\n=== host µs per call (primitives)")
    for name, fn in cases.items():
        print(f"   {name:32s} {host_and_wall_ms(fn, 1000)[0] * 1e3:7.1f} µs")


if __name__ == "__main__":
    main()
