#!/usr/bin/env bash
# The test command of the README: CPU tests, then the Triton kernels under the CPU interpreter.
# GPU tests (-m gpu) and benchmarks run on a GPU machine: benchmarks/gpu_check.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
# perforatedai 3.2.9 is the test oracle; --no-deps because its torchvision requirement would replace torch.
$PY -c "import perforatedai" 2>/dev/null || $PY -m pip install -q --no-deps perforatedai==3.2.9
# CUTLASS's headers for tests/test_cutlass_build.py; --no-deps: only the headers are used (not its cuda-python).
$PY -c "import cutlass_library" 2>/dev/null || $PY -m pip install -q --no-deps nvidia-cutlass==4.2.0.0
$PY -m pytest -q -n 2 -m "not gpu and not slow and not interpret" "$@"
TRITON_INTERPRET=1 $PY -m pytest -q -n 2 -m "interpret and not slow" "$@" || [ $? -eq 5 ]
