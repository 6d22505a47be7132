#!/usr/bin/env bash
# compute-sanitizer over the CUDA backend (csrc/ through pai_fast._C) on a small grid of shapes:
# memcheck (out-of-bounds / misaligned accesses), racecheck (shared-memory hazards), synccheck (barrier
# misuse) and initcheck (reads of uninitialised global memory), each failing on the first error.
# Every kernel runs: forward, dZ (register path D<=8 and generic D>8), the reduction, dX and dW GEMMs with
# and without split-K, the one-pass Linear backward (D = 1, 2, 3; scalar and 16-byte loads), for
# fp32/TF32/fp16/bf16/fp64, Linear and Conv1d/2d/3d, batch 0 and 1, odd sizes; on Hopper with CUTLASS, the sm90
# forward with each schedule and epilogue.
#
# Usage (GPU machine, after `pip install -e .`):  bash benchmarks/sanitize.sh [tools...]
#   default tools: memcheck racecheck synccheck initcheck ; output also goes to $OUT/sanitize.log if set.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
CS=${COMPUTE_SANITIZER:-$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)}
TOOLS=("$@")
[ ${#TOOLS[@]} -eq 0 ] && TOOLS=(memcheck racecheck synccheck initcheck)
LOG=${OUT:+$OUT/sanitize.log}
LOG=${LOG:-/dev/null}
export PYTORCH_NO_CUDA_MEMORY_CACHING=1  # every tensor its own allocation, so memcheck sees overruns

CASES=$(mktemp /tmp/pai_fast_sanitize_XXXX.py)
trap 'rm -f "$CASES"' EXIT
cat >"$CASES" <<'EOF'
import os

import torch
from pai_fast import cuda_backend as CB

assert CB.available(), CB.supports("linear", torch.empty(1, 1), torch.empty(1, 1), 1, "sigmoid")
dev = "cuda"
torch.manual_seed(0)


def params(wshape, d, bias, dtype):
    n = wshape[0]
    g = dict(device=dev, dtype=dtype)
    return (torch.randn(wshape, **g) * 0.2, torch.randn(n, **g) if bias else None, torch.randn((d, *wshape), **g) * 0.2,
            torch.randn(d, n, **g) if bias else None, torch.randn(d, n, **g), torch.randn(d, d, n, **g))


def linear(m, k, n, d, dtype, act="sigmoid", bias=True, tf32=False, contiguous=False):
    torch.backends.cuda.matmul.allow_tf32 = tf32
    w, b, dw, db, g, c = params((n, k), d, bias, dtype)
    x = torch.randn(m, k if contiguous else 2 * k, device=dev, dtype=dtype)[:, :: 1 if contiguous else 2]
    y, h = CB.linear_fwd(x, w, b, dw, db, g, c, act, True)
    for path in ("onepass", "split"):  # both backwards (onepass.cu applies to 1 <= D <= 3)
        os.environ["PAI_FAST_CUDA_BACKWARD"] = path
        CB.linear_bwd(torch.randn_like(y), x, w, dw, g, c, h, act, bias)


def hopper_forward(m, k, n, d, dtype):
    """The Hopper forward (where the build and device have it) with each schedule and epilogue: N % 8 == 0 takes
    the staged stores, N odd the direct ones."""
    w, b, dw, db, g, c = params((n, k), d, True, dtype)
    x = torch.randn(m, k, device=dev, dtype=dtype)
    calls = [(sched, epi) for sched in ("cooperative", "pingpong") for epi in ("staged", "direct")]
    for sched, epi in calls:
        os.environ["PAI_FAST_SM90_SCHEDULE"], os.environ["PAI_FAST_SM90_EPILOGUE"] = sched, epi
        CB.linear_fwd(x, w, b, dw, db, g, c, "sigmoid", True)
    del os.environ["PAI_FAST_SM90_SCHEDULE"], os.environ["PAI_FAST_SM90_EPILOGUE"]
    return len(calls)


def conv(b, cin, cout, sp, k, st, pad, dil, d, dtype, channels_last=False):
    w, bb, dw, db, g, c = params((cout, cin, *k), d, True, dtype)
    x = torch.randn(b, cin, *sp, device=dev, dtype=dtype)
    if channels_last and len(sp) == 2:
        x = x.contiguous(memory_format=torch.channels_last)
    y, h = CB.conv_fwd(x, w, bb, dw, db, g, c, st, pad, dil, "tanh", True)
    CB.conv_bwd(torch.randn_like(y), x, w, dw, g, c, h, st, pad, dil, "tanh", True)


n = 0
for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
    for d in (0, 1, 3, 9):
        for m, k, n_ in ((1, 1, 1), (37, 33, 19), (0, 5, 3), (70, 128, 129)):
            linear(m, k, n_, d, dtype); n += 1
    linear(70, 128, 129, 2, dtype, contiguous=True); n += 1  # 16-byte loads of x too
    linear(600, 24, 8, 2, dtype); n += 1          # split-K in dW
    linear(8, 40, 300, 2, dtype, bias=False); n += 1  # split-K in dX
    conv(2, 3, 5, (9,), (3,), (2,), (1,), (2,), 2, dtype); n += 1
    conv(2, 3, 7, (9, 8), (3, 3), (1, 2), (1, 1), (1, 1), 3, dtype, channels_last=True); n += 1
    conv(1, 2, 3, (4, 5, 6), (3, 3, 2), (1, 2, 1), (1, 0, 1), (1, 1, 2), 9, dtype); n += 1
    conv(0, 3, 4, (6, 6), (3, 3), (1, 1), (1, 1), (1, 1), 2, dtype); n += 1
for dtype in (torch.float16, torch.bfloat16):
    for d in (0, 1, 3):
        n += hopper_forward(70, 128, 136, d, dtype) + hopper_forward(9, 64, 21, d, dtype)
linear(45, 64, 40, 3, torch.float32, tf32=True); n += 1
linear(9, 7, 2, 127, torch.float32, act="relu"); n += 1
torch.cuda.synchronize()
print(f"sanitize cases: {n} fwd+bwd calls OK")
EOF

status=0
for tool in "${TOOLS[@]}"; do
  echo "== compute-sanitizer --tool $tool" | tee -a "$LOG"
  start=$(date +%s)
  if "$CS" --tool "$tool" --error-exitcode 1 "$PY" "$CASES" 2>&1 | tee -a "$LOG" | tail -30; then
    echo "== $tool: PASS ($(( $(date +%s) - start )) s)" | tee -a "$LOG"
  else
    echo "== $tool: FAIL" | tee -a "$LOG"
    status=1
  fi
done
if [ -x build/pai_fast_ctest ]; then
  "$CS" --tool memcheck --error-exitcode 1 build/pai_fast_ctest | tail -3 || status=1
fi
exit $status
