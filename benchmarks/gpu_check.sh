#!/usr/bin/env bash
# One call on the GPU machine: build, test, benchmark. Full results go under $OUT; a short table is printed last.
#   bash benchmarks/gpu_check.sh [build] [test] [bench] [quickbench] [profile] [probe] [probehost] [probeconv] [probeconvbwd] [probedz] [probebwd] [probesm90] [ctest]
#     [sanitize] [export] [cutlass]
#   (default: build test bench). probe: the TMA-forward and host-overhead probes; ctest: the standalone CMake build
#   of csrc/ (no Python), its C++ test program under ctest and compute-sanitizer (memcheck/racecheck/synccheck/initcheck).
# Carry .whl/ (perforatedai's cp312 wheel, pytest-xdist) for the differential/baseline parts.
# Test selection: PAI_TEST_PATHS (files), PAI_TEST_K (a -k expression), PAI_TEST_TIMEOUT, PAI_TEST_WORKERS.
# Probe arguments: PAI_PROBE_HOST_ARGS, PAI_PROBE_SM90_ARGS, PAI_PROBE_ARGS; bench cases: PAI_BENCH_ARGS.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/pai_fast_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
stages=${*:-build test bench}
has() { [[ " $stages " == *" $1 "* ]]; }
summary=()

if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"

# A fresh machine has nothing installed: build whenever the package (kernels + extension) is not importable.
if ! has build && ! python3 -c "import pai_fast.kernels, pai_fast._C" >/dev/null 2>&1; then
  stages="build $stages"
fi
if has ctest; then  # standalone CMake build in the background, beside the pip build
  ( cmake -S . -B build -G Ninja -DCMAKE_CUDA_ARCHITECTURES=90 -DPAI_FAST_PYTHON=OFF -DCMAKE_BUILD_TYPE=Release \
      && cmake --build build -j8 ) >"$OUT/ctest_build.log" 2>&1 &
  ctest_build_pid=$!
fi
if has cutlass; then  # nvcc of the CUTLASS probe in the background, niced to 2 jobs (the csrc library, then one
  # ~2-minute translation unit) so host-timed stages keep their cores; timed at its stage below on an idle GPU
  PAI_CUTLASS_JOBS=2 nice -n 19 bash benchmarks/cutlass_probe/run.sh "$OUT" --build-only >"$OUT/cutlass_build.log" 2>&1 &
  cutlass_build_pid=$!
fi
if has build; then
  t0=$(date +%s)
  # PAI_FAST_CUTLASS=ON: the Hopper forward must build here (its headers come from .whl/'s nvidia-cutlass).
  PAI_FAST_CUTLASS=ON MAX_JOBS=${MAX_JOBS:-8} python3 -m pip install -q --no-build-isolation --no-deps -e . \
    >"$OUT/build.log" 2>&1
  rc=$?
  summary+=("build rc=$rc in $(( $(date +%s) - t0 ))s (log: build.log)")
  [ $rc -ne 0 ] && tail -40 "$OUT/build.log"
fi
python3 -m pai_fast doctor | tee "$OUT/doctor.txt"

if has test; then
  t0=$(date +%s)
  # pytest-xdist (its wheel in .whl/) spreads the suite over CPU workers (14 of the 16 cores): Triton's compiles
  # dominate its time.
  workers=""
  python3 -c "import xdist" >/dev/null 2>&1 && workers="-n ${PAI_TEST_WORKERS:-14}"
  timeout "${PAI_TEST_TIMEOUT:-420}" python3 -m pytest -q -m "gpu and not slow" -p no:cacheprovider $workers \
    --junitxml="$OUT/gpu_tests.xml" ${PAI_TEST_PATHS:-tests} ${PAI_TEST_K:+-k "$PAI_TEST_K"} ${PAI_TEST_ARGS:-} \
    >"$OUT/gpu_tests.log" 2>&1
  rc=$?
  tail -25 "$OUT/gpu_tests.log"
  summary+=("gpu tests rc=$rc in $(( $(date +%s) - t0 ))s: $(tail -1 "$OUT/gpu_tests.log")")
fi

if has probe; then
  timeout 300 python3 benchmarks/probe_fwd_tma.py --out "$OUT/probe_fwd_tma.json" >"$OUT/probe_fwd_tma.log" 2>&1
  summary+=("probe_fwd_tma rc=$? (probe_fwd_tma.log)")
fi
if has probe || has probehost; then
  timeout 200 python3 benchmarks/probe_host_overhead.py ${PAI_PROBE_HOST_ARGS:-} >"$OUT/probe_host.log" 2>&1
  summary+=("probe_host rc=$? (probe_host.log)")
fi

if has ctest; then
  wait $ctest_build_pid; rc=$?
  summary+=("ctest build rc=$rc")
  if [ $rc -eq 0 ]; then
    ctest --test-dir build --output-on-failure >"$OUT/ctest.log" 2>&1
    summary+=("ctest rc=$? ($(grep -E 'tests passed|tests failed' "$OUT/ctest.log"))")
    for tool in memcheck racecheck synccheck initcheck; do
      timeout 120 compute-sanitizer --tool $tool --error-exitcode 1 build/pai_fast_ctest >"$OUT/ctest_$tool.log" 2>&1
      summary+=("ctest $tool rc=$? ($(grep -m1 -E '(ERROR|RACECHECK) SUMMARY' "$OUT/ctest_$tool.log"))")
    done
  else
    tail -30 "$OUT/ctest_build.log"
  fi
fi

if has profile; then
  timeout 200 python3 benchmarks/profile_kernels.py >"$OUT/profile.txt" 2>&1
  summary+=("profile rc=$? (profile.txt)")
fi

if has sanitize && [ -f benchmarks/sanitize.sh ]; then
  timeout "${SANITIZE_TIMEOUT:-300}" bash benchmarks/sanitize.sh ${SANITIZE_TOOLS:-} >"$OUT/sanitize.log" 2>&1
  summary+=("sanitize rc=$? ($(grep -E '^== .*: (PASS|FAIL)' "$OUT/sanitize.log" | tr '\n' ' '))")
fi

if has probebwd; then
  timeout "${PAI_PROBE_TIMEOUT:-400}" python3 benchmarks/probe_linear_bwd.py --out "$OUT/probe_linear_bwd.json" ${PAI_PROBE_ARGS:-} \
    >"$OUT/probe_linear_bwd.log" 2>&1
  summary+=("probe_linear_bwd rc=$? (probe_linear_bwd.log)")
fi

if has probeconv; then
  timeout "${PAI_PROBE_TIMEOUT:-400}" python3 benchmarks/probe_conv.py --out "$OUT/probe_conv.json" >"$OUT/probe_conv.log" 2>&1
  summary+=("probe_conv rc=$? (probe_conv.log)")
  timeout 200 python3 benchmarks/probe_conv_host.py --calls 300 >"$OUT/probe_conv_host.log" 2>&1
  summary+=("probe_conv_host rc=$? (probe_conv_host.log)")
fi

if has probesm90; then  # the cuda backend's Hopper forward alone: vs cuBLAS, the pack, the generic kernel
  timeout "${PAI_PROBE_TIMEOUT:-300}" python3 benchmarks/probe_sm90.py --out "$OUT/probe_sm90.json" ${PAI_PROBE_SM90_ARGS:-} >"$OUT/probe_sm90.log" 2>&1
  summary+=("probe_sm90 rc=$? (probe_sm90.log)")
  tail -40 "$OUT/probe_sm90.log"
fi
if has probedz; then  # the dZ kernel alone: row vs tiled kernel, program budgets, with and without the partials' sum
  timeout "${PAI_PROBE_TIMEOUT:-400}" python3 benchmarks/probe_dz.py --out "$OUT/probe_dz.json" >"$OUT/probe_dz.log" 2>&1
  summary+=("probe_dz rc=$? (probe_dz.log)")
fi

if has probeconvbwd; then  # the conv's forward+backward, piece by piece: device, wall and host time
  timeout "${PAI_PROBE_TIMEOUT:-400}" python3 benchmarks/probe_conv_bwd.py --out "$OUT/probe_conv_bwd.json" \
    >"$OUT/probe_conv_bwd.log" 2>&1
  summary+=("probe_conv_bwd rc=$? (probe_conv_bwd.log)")
fi

if has cutlass; then  # CUTLASS sm90 GEMMs vs cuBLAS vs the hand-written csrc mainloop (needs .whl/nvidia_cutlass-*.whl)
  wait $cutlass_build_pid; rc=$?
  summary+=("cutlass build rc=$rc ($(tail -1 "$OUT/cutlass_build.log"))")
  if [ $rc -eq 0 ]; then
    timeout "${PAI_CUTLASS_TIMEOUT:-200}" bash benchmarks/cutlass_probe/run.sh "$OUT" --run-only ${PAI_CUTLASS_ARGS:-} \
      >"$OUT/cutlass_run.log" 2>&1
    summary+=("cutlass probe rc=$? (cutlass_probe.log)")
    tail -25 "$OUT/cutlass_run.log"
  else
    tail -30 "$OUT/cutlass_build.log"
  fi
fi

if has quickbench; then
  # PAI_BENCH_ARGS replaces the case list (words split on spaces; no quoting needed for shapes like 64x784->128).
  bench_args=${PAI_BENCH_ARGS:---kinds linear --dtypes bfloat16 --dendrites 1,3 --shapes 64x784->128,256x1024->1024,8192x4096->4096}
  timeout "${PAI_BENCH_TIMEOUT:-400}" python3 -m pai_fast bench $bench_args --out "$OUT/bench_quick" >"$OUT/bench_quick.log" 2>&1
  summary+=("quickbench rc=$?")
  tail -30 "$OUT/bench_quick.log"
fi

if has bench; then
  timeout 560 python3 -m pai_fast bench --kinds linear,conv --out "$OUT/bench" >"$OUT/bench.log" 2>&1
  summary+=("bench rc=$?")
fi

if has export && [ -f benchmarks/bench_export.py ]; then
  timeout 300 python3 benchmarks/bench_export.py --gpu --out "$OUT/export_gpu" >"$OUT/export_gpu.log" 2>&1
  summary+=("export bench rc=$?")
  tail -10 "$OUT/export_gpu.log"
fi

for f in probe_fwd_tma.log probe_host.log probe_conv.log probe_conv_host.log probe_linear_bwd.log; do [ -f "$OUT/$f" ] && { echo "---- $f"; grep -vE '^\s*$' "$OUT/$f" | cut -c1-160 | tail -70; }; done
echo "================ summary ================"
printf '%s\n' "${summary[@]}" | tee "$OUT/summary.txt"
[ -f "$OUT/bench.log" ] && grep -E "^(case|linear|conv)" "$OUT/bench.log" | cut -c1-150
# The device tool returns at most 8 files: pack everything into one archive (plus the summary beside it).
(cd "$OUT" && tar czf /tmp/pai_fast_results.tgz --exclude=summary.txt . && find . -mindepth 1 ! -name summary.txt -delete \
  && mv /tmp/pai_fast_results.tgz results.tgz)
exit 0
