#!/usr/bin/env bash
# GPU pass: the inference-path GPU tests, the export/inference benchmark, and the linear shapes not in the
# quick bench (64x784->128 D=3; 8192x4096->4096 D=0 and 8). Pass PAI_FAST_COMMIT so results name the commit.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/pai_fast_out}
bash benchmarks/gpu_check.sh none >/dev/null 2>&1  # builds when needed, installs the carried wheels
export PYTHONPATH=/tmp/site
timeout 120 python3 -m pytest -q -n 4 -m gpu -p no:cacheprovider tests/test_export.py >"$OUT/inference_tests.log" 2>&1
echo "inference tests rc=$?: $(tail -1 "$OUT/inference_tests.log")"
grep -E "^FAILED" "$OUT/inference_tests.log" | head -5
timeout 90 python3 benchmarks/bench_export.py --gpu --out "$OUT/export_gpu" >"$OUT/export_gpu.log" 2>&1
echo "export bench rc=$?"; grep -E "B=" "$OUT/export_gpu.log" | head -24
timeout 60 python3 -m pai_fast bench --kinds linear --dtypes bfloat16 --dendrites 3 --shapes "64x784->128" \
  --out "$OUT/bench_small" >"$OUT/bench_small.log" 2>&1
echo "small bench rc=$?"; grep -E "^(case|linear)" "$OUT/bench_small.log" | cut -c1-150
timeout 110 python3 -m pai_fast bench --kinds linear --dtypes bfloat16 --dendrites 0,8 --shapes "8192x4096->4096" \
  --out "$OUT/bench_d08" >"$OUT/bench_d08.log" 2>&1
echo "D=0,8 bench rc=$?"; grep -E "^linear" "$OUT/bench_d08.log" | cut -c1-150
