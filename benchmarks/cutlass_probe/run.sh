#!/usr/bin/env bash
# Build and run the CUTLASS vs hand-written mainloop probe (cutlass_probe.cu) on the GPU machine.
#   bash benchmarks/cutlass_probe/run.sh OUT_DIR [--build-only | --run-only] [--large-only]
# --build-only compiles (minutes of nvcc: start it in the background while the GPU does other work), --run-only
# times the binary built before (on an otherwise idle GPU).
# Needs: .whl/nvidia_cutlass-*.whl (headers; carried, the machine has no network), nvcc, cuBLAS headers and library
# (the CUDA toolkit's or the nvidia-cublas wheel torch depends on), and the static library of csrc/ (built here).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:?OUT_DIR}; shift || true
mode=all
case "${1:-}" in --build-only) mode=build; shift ;; --run-only) mode=run; shift ;; esac
mkdir -p "$out" build-cutlass
if [ $mode = run ]; then build-cutlass/cutlass_probe "$@" | tee "$out/cutlass_probe.log"; exit; fi
t0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --target /tmp/cutlass_pkg .whl/nvidia_cutlass-*.whl
C=/tmp/cutlass_pkg/cutlass_library/source
# cuBLAS: first the toolkit's, else the pip wheel's (nvidia/cublas or nvidia/cu13 layouts).
hdr=$(find /usr/local/cuda*/include /usr/local/cuda*/targets/*/include \
        "$(python3 -c 'import nvidia, os; print(os.path.dirname(list(nvidia.__path__)[0]))' 2>/dev/null)/nvidia" \
        -name cublas_v2.h 2>/dev/null | head -1)
inc=$(dirname "$hdr")
lib=$(find "$inc/.." /usr/local/cuda*/lib64 /usr/local/cuda*/targets/*/lib -name 'libcublas.so*' 2>/dev/null | head -1)
echo "cuBLAS: $hdr $lib"
cmake -S . -B build-cutlass -G Ninja -DCMAKE_CUDA_ARCHITECTURES=90 -DPAI_FAST_PYTHON=OFF -DPAI_FAST_TESTS=OFF \
  -DCMAKE_BUILD_TYPE=Release >"$out/cutlass_cmake.log" 2>&1
cmake --build build-cutlass --target pai_fast_kernels -j"${PAI_CUTLASS_JOBS:-16}" >>"$out/cutlass_cmake.log" 2>&1
# The library goes to the host linker by path (-Xlinker): nvcc refuses an input named libcublas.so.13.x.
nvcc -std=c++17 -O3 -arch=sm_90a --expt-relaxed-constexpr -I"$inc" -I$C/include -I$C/tools/util/include \
  -Icsrc/include benchmarks/cutlass_probe/cutlass_probe.cu build-cutlass/libpai_fast_kernels.a -Xlinker "$lib" \
  -Xlinker -rpath="$(dirname "$lib")" -o build-cutlass/cutlass_probe >"$out/cutlass_nvcc.log" 2>&1 \
  || { tail -40 "$out/cutlass_nvcc.log"; exit 1; }
echo "built in $(( $(date +%s) - t0 ))s"
[ $mode = build ] && exit 0
build-cutlass/cutlass_probe "$@" | tee "$out/cutlass_probe.log"
