#!/usr/bin/env bash
# GPU pass: the cuda backend's GPU tests alone (launch-blocking, so a failing kernel is named), the D=0
# opcheck, compute-sanitizer memcheck, the export/inference GPU benchmark and the conv benchmark.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/pai_fast_out}
bash benchmarks/gpu_check.sh none >/dev/null 2>&1  # builds when needed, installs the carried wheels
export PYTHONPATH=/tmp/site
CUDA_LAUNCH_BLOCKING=1 timeout 170 python3 -m pytest -q -x -m gpu -p no:cacheprovider tests/test_cuda_backend.py \
  "tests/test_fused_ops.py::test_opcheck_linear_gpu" >"$OUT/cuda_tests.log" 2>&1
echo "cuda tests rc=$?: $(tail -1 "$OUT/cuda_tests.log")"
grep -E "^(FAILED|E  )" "$OUT/cuda_tests.log" | head -8
timeout 90 python3 benchmarks/bench_export.py --gpu --out "$OUT/export_gpu" >"$OUT/export_gpu.log" 2>&1
echo "export bench rc=$?"; grep -E "B=" "$OUT/export_gpu.log" | head -24
timeout 130 python3 -m pai_fast bench --kinds conv --dtypes bfloat16 --dendrites 1,3 --out "$OUT/bench_conv" \
  >"$OUT/bench_conv.log" 2>&1
echo "conv bench rc=$?"; grep -E "^(case|conv)" "$OUT/bench_conv.log" | cut -c1-150
OUT=$OUT timeout 100 bash benchmarks/sanitize.sh memcheck >/dev/null 2>&1
echo "memcheck rc=$? $(grep -c 'ERROR SUMMARY: 0 errors' "$OUT/sanitize.log" 2>/dev/null) clean summaries"
grep "ERROR SUMMARY" "$OUT/sanitize.log" | sort | uniq -c | head
