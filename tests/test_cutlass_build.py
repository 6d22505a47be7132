"""The cuda backend's Hopper kernels (csrc/sm90_*.cu, CUTLASS 3, sm_90a) compile with warnings as errors.

The package's own build in CI has no CUTLASS headers, so these translation units are built here by CMake from the
headers of the nvidia-cutlass package (tests/run.sh installs it, without its Python dependencies): the same target,
flags and -Werror that `PAI_FAST_CUTLASS=ON` builds on a GPU machine, where tests/test_cuda_sm90.py runs them. Only
nvcc is needed, no GPU. It is the longest CPU test (a few minutes of nvcc on two cores).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ("nvcc", "cmake", "ninja")


@pytest.mark.skipif(
    any(shutil.which(t) is None for t in TOOLS), reason=f"needs {', '.join(TOOLS)} on PATH (the CUDA toolkit)"
)
def test_hopper_kernels_compile(tmp_path):
    try:
        import cutlass_library
    except ImportError:
        pytest.fail("needs the CUTLASS headers: pip install --no-deps nvidia-cutlass==4.2.0.0 (tests/run.sh does)")

    include = Path(cutlass_library.__file__).parent / "source" / "include"
    assert (include / "cutlass" / "cutlass.h").is_file(), f"no CUTLASS headers under {include}"
    configure = [
        "cmake",
        "-S",
        str(ROOT),
        "-B",
        str(tmp_path),
        "-G",
        "Ninja",
        "-DCMAKE_CUDA_ARCHITECTURES=90",
        "-DPAI_FAST_CUTLASS=ON",
        f"-DPAI_FAST_CUTLASS_INCLUDE={include}",
        "-DPAI_FAST_PYTHON=OFF",
        "-DPAI_FAST_TESTS=OFF",
    ]
    out = subprocess.run(configure, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "CUTLASS Hopper forward ON" in out.stdout, out.stdout[-3000:]
    build = ["cmake", "--build", str(tmp_path), "--target", "pai_fast_sm90", "-j2"]
    out = subprocess.run(build, capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-3000:]
    objects = sorted(p.name for p in tmp_path.rglob("sm90_*.o"))
    expected = sorted(f"{p.name}.o" for p in (ROOT / "csrc").glob("sm90_*.cu"))
    assert objects == expected, f"built {objects}, expected {expected}"
