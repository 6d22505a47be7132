"""Host time of the cuda backend's Python wrapper alone (any machine, no GPU): pai_fast._C replaced by a stub whose
calls return at once, so what is timed is the torch-side work of one call (checks, allocations, argument layout),
not the extension's validation or its launches.

    python benchmarks/probe_cuda_wrapper_host.py [--shape 256x1024x1024] [--d 3] [--calls 5000] [--rounds 5] [--sm90]
        [--conv 32x64x56x56x64]

Prints the median over rounds of µs per call of linear_fwd (training: h written) and linear_bwd_packed, and of
conv_fwd and conv_bwd_packed for a 3x3 conv (stride 1, padding 1) of shape BxCinxHxWxCout. --sm90: the forward takes
the Hopper path's wrapper (pack lookup, linear_forward_packed), as 16-bit layers do on an H100/H200.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from pai_fast import cuda_backend as CB
from pai_fast.bench import host_and_wall_ms


class _StubC:
    """Every _C function returns at once; the backwards' size queries (workspace=None) answer 1024 bytes and
    linear_packed_bytes 4096."""

    EMULATED = False

    def __getattr__(self, name: str):
        def call(*args):
            if name == "linear_packed_bytes":
                return 4096
            return 1024 if name in ("linear_backward", "conv_backward") and args[-3] is None else 0

        return call


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="256x1024x1024")
    ap.add_argument("--d", type=int, default=3)
    ap.add_argument("--calls", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--conv", default="32x64x56x56x64", help="BxCinxHxWxCout of the 3x3 conv")
    ap.add_argument("--sm90", action="store_true", help="the forward's Hopper (packed-weight) wrapper")
    args = ap.parse_args()
    m, k, n = (int(v) for v in args.shape.split("x"))
    d, dt = args.d, torch.bfloat16
    CB._C = _StubC()
    CB.sm90_enabled = lambda: args.sm90
    if not torch.cuda.is_available():  # the pack cache asks whether a CUDA graph is being captured
        torch.cuda.is_current_stream_capturing = lambda: False
    x, w, b = torch.randn(m, k, dtype=dt), torch.randn(n, k, dtype=dt), torch.randn(n, dtype=dt)
    dw, db, g = torch.randn(d, n, k, dtype=dt), torch.randn(d, n, dtype=dt), torch.randn(d, n, dtype=dt)
    c, gy, h = torch.randn(d, d, n, dtype=dt), torch.randn(m, n, dtype=dt), torch.randn(m, d, n, dtype=dt)
    calls = {
        "linear_fwd": lambda: CB.linear_fwd(x, w, b, dw, db, g, c, "sigmoid", True),
        "linear_bwd_packed": lambda: CB.linear_bwd_packed(gy, x, w, dw, g, c, h, "sigmoid", True),
    }
    bb, ci, hh, ww, co = (int(v) for v in args.conv.split("x"))
    cx, cw = torch.randn(bb, ci, hh, ww, dtype=dt), torch.randn(co, ci, 3, 3, dtype=dt)
    cdw, cg, cc = torch.randn(d, co, ci, 3, 3, dtype=dt), torch.randn(d, co, dtype=dt), torch.randn(d, d, co, dtype=dt)
    cb, cdb = torch.randn(co, dtype=dt), torch.randn(d, co, dtype=dt)
    cy, ch = CB.conv_fwd(cx, cw, cb, cdw, cdb, cg, cc, 1, 1, 1, "sigmoid", True)
    calls["conv_fwd"] = lambda: CB.conv_fwd(cx, cw, cb, cdw, cdb, cg, cc, 1, 1, 1, "sigmoid", True)
    calls["conv_bwd_packed"] = lambda: CB.conv_bwd_packed(cy, cx, cw, cdw, cg, cc, ch, 1, 1, 1, "sigmoid", True)
    for name, fn in calls.items():
        per = [1e3 * host_and_wall_ms(fn, args.calls)[0] for _ in range(args.rounds)]
        path = " (Hopper wrapper)" if args.sm90 and name == "linear_fwd" else ""
        med = statistics.median(per)
        shape = args.conv if name.startswith("conv") else args.shape
        print(f"{name:18s} {shape} D={d}: {med:6.1f} us per call (median of {args.rounds}){path}")


if __name__ == "__main__":
    main()
