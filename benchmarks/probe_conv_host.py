"""Where the fused conv forward's host time goes (GPU machine): wall time per call of each mainloop next to its
device time, then cProfile of many calls of the TMA mainloop (top functions by own time).

    python benchmarks/probe_conv_host.py [--calls 300]
"""

from __future__ import annotations

import argparse
import sys

import torch

from pai_fast.bench import host_and_wall_ms, host_profile


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=300)
    args = ap.parse_args()
    import pai_fast.kernels as K

    conv = sys.modules["pai_fast.kernels.dendritic_conv"]
    dt = torch.bfloat16
    for b, c, hw, n, d in ((32, 256, 14, 256, 1), (32, 64, 56, 64, 1)):
        x = torch.randn(b, c, hw, hw, device="cuda", dtype=dt).contiguous(memory_format=torch.channels_last)
        w = torch.randn(n, c, 3, 3, device="cuda", dtype=dt) * 0.05
        dw = torch.randn(d, n, c, 3, 3, device="cuda", dtype=dt) * 0.05
        bias, db = torch.randn(n, device="cuda", dtype=dt), torch.randn(d, n, device="cuda", dtype=dt)
        gate, cas = torch.randn(d, n, device="cuda", dtype=dt), torch.zeros(d, d, n, device="cuda", dtype=dt)
        geo = ((1, 1), (1, 1), (1, 1))

        def call(args=(x, w, bias, dw, db, gate, cas, *geo, "sigmoid", False)):
            return K.conv_fwd(*args)

        for label, wt, xt in (("ptr", False, False), ("tma_w", True, False), ("box", True, True)):
            conv._state.update(weight_tma=wt, x_tma=xt)
            host, total = (1e3 * t for t in host_and_wall_ms(call, args.calls))
            print(
                f"{b}x{c}x{hw}x{hw}->{n} D={d} {label:6}: host {host:7.1f} us/call, with the GPU {total:7.1f} us/call"
            )
            if label == "box":
                print(host_profile(call, args.calls, 18)[:6000])
        conv._state.update(weight_tma="auto", x_tma="auto")


if __name__ == "__main__":
    main()
