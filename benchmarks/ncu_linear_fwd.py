"""One cuda-backend Linear forward (training: h written) and the cuBLAS GEMM of width (1+D)N beside it, for Nsight
Compute: where a small layer's forward spends its device time against the GEMM's.

    ncu --section SpeedOfLight --section LaunchStats --section WarpStateStats \
        python benchmarks/ncu_linear_fwd.py 64x784x128 3

Each runs twice (read the second): the first forward also packs the weights for the Hopper path.
"""

from __future__ import annotations

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
    x, params = pbench._linear_case(m, k, n, d, dtype, "cuda")
    wcat = pbench.limit_weight("linear", params)
    for _ in range(2):
        CB.linear_fwd(x, *params, "sigmoid", True)
    for _ in range(2):
        torch.mm(x, wcat.t())
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
