"""One cuda-backend Linear backward per path, for Nsight Compute (stall reasons of csrc's GEMM cores).

    ncu --kernel-name regex:"onepass|dgrad" --section WarpStateStats ... \
        python benchmarks/ncu_linear_bwd.py 64x784x128 3

Runs the backward under PAI_FAST_CUDA_BACKWARD=onepass, then =split, twice each (the second call is the one to read).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pai_fast import bench as pbench  # noqa: E402
from pai_fast import cuda_backend as CB  # noqa: E402


def main() -> None:
    m, k, n = (int(v) for v in (sys.argv[1] if len(sys.argv) > 1 else "64x784x128").split("x"))
    d = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    dtype = getattr(torch, sys.argv[3] if len(sys.argv) > 3 else "bfloat16")
    x, (w, b, dw, db, gate, cas) = pbench._linear_case(m, k, n, d, dtype, "cuda")
    _, h = CB.linear_fwd(x, w, b, dw, db, gate, cas, "sigmoid", True)
    gy = torch.randn(m, n, device="cuda", dtype=dtype)
    for path in ("onepass", "split"):
        os.environ["PAI_FAST_CUDA_BACKWARD"] = path
        for _ in range(2):
            CB.linear_bwd_packed(gy, x, w, dw, gate, cas, h, "sigmoid", True)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
