"""Build script: the pure-Python package, plus the CUDA extension pai_fast._C built by CMake when nvcc is found.

The extension (csrc/, see CMakeLists.txt) is torch-free: it builds with plain nvcc and pybind11 on machines
with a CPU-only torch, and one build serves every torch version.

Environment:
  PAI_FAST_BUILD_CUDA   auto (default): build pai_fast._C if nvcc is found, else install pure Python
                        1: build it, and fail if nvcc is missing ; 0: skip it
  PAI_FAST_CUDA_ARCHS   CMAKE_CUDA_ARCHITECTURES (default "80;90")
  MAX_JOBS              parallel compile jobs (default: min(CPU count, 5); there are 5 translation units)
  CUDA_HOME / CUDACXX   where to find nvcc (else PATH, then /usr/local/cuda/bin/nvcc)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).parent.resolve()


def _log(msg: str) -> None:
    print(f"pai_fast setup: {msg}", file=sys.stderr, flush=True)


def _mode() -> str:
    v = os.environ.get("PAI_FAST_BUILD_CUDA", "auto").strip().lower()
    if v in ("", "auto"):
        return "auto"
    if v in ("0", "false", "no", "off"):
        return "0"
    if v in ("1", "true", "yes", "on"):
        return "1"
    raise SystemExit(f"PAI_FAST_BUILD_CUDA: expected auto, 0 or 1, got {v!r}")


def _find_nvcc() -> str | None:
    cands = [os.environ.get("CUDACXX")]
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            cands.append(str(Path(os.environ[var]) / "bin" / "nvcc"))
    cands += [shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"]
    for c in cands:
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return c
    return None


def _cutlass_include() -> str | None:
    """The CUTLASS headers for the Hopper forward: PAI_FAST_CUTLASS_INCLUDE, else the nvidia-cutlass package's copy."""
    if os.environ.get("PAI_FAST_CUTLASS_INCLUDE"):
        return os.environ["PAI_FAST_CUTLASS_INCLUDE"]
    try:
        import cutlass_library  # nvidia-cutlass: headers only, no GPU needed
    except ImportError:
        return None
    inc = Path(cutlass_library.__file__).parent / "source" / "include"
    return str(inc) if (inc / "cutlass" / "cutlass.h").exists() else None


def _tool(name: str) -> str:
    """cmake/ninja from PATH, next to this Python (a venv not on PATH), or the PyPI wheels' bin dirs."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found:
        return found
    try:
        mod = __import__(name)
        bindir = getattr(mod, "CMAKE_BIN_DIR", None) or getattr(mod, "BIN_DIR", None)
        if bindir and (Path(bindir) / name).exists():
            return str(Path(bindir) / name)
    except ImportError:
        pass
    raise RuntimeError(f"{name} not found: pip install {name} (pyproject.toml lists it in [build-system] requires)")


class CMakeExtension(Extension):
    def __init__(self, name: str, nvcc: str):
        super().__init__(name, sources=[])
        self.nvcc = nvcc


class CMakeBuild(build_ext):
    """Configure + build CMakeLists.txt with Ninja and copy the module where setuptools expects it.

    In editable installs (pip install -e .) setuptools sets inplace, so _C*.so lands in pai_fast/ of the
    source tree, where `import pai_fast._C` finds it.
    """

    def build_extension(self, ext: Extension) -> None:
        if not isinstance(ext, CMakeExtension):
            return super().build_extension(ext)
        build_dir = Path(self.build_temp).resolve() / "cmake"
        build_dir.mkdir(parents=True, exist_ok=True)
        cmake, ninja = _tool("cmake"), _tool("ninja")
        archs = os.environ.get("PAI_FAST_CUDA_ARCHS", "80;90")
        jobs = os.environ.get("MAX_JOBS") or str(min(os.cpu_count() or 2, 5))
        cache = build_dir / "CMakeCache.txt"
        if cache.exists() and "CMAKE_GENERATOR:INTERNAL=Ninja" not in cache.read_text(errors="replace"):
            shutil.rmtree(build_dir)  # configured by another generator: start over
            build_dir.mkdir(parents=True)
        configure = [
            cmake,
            "-S",
            str(ROOT),
            "-B",
            str(build_dir),
            "-G",
            "Ninja",
            f"-DCMAKE_MAKE_PROGRAM={ninja}",
            "-DCMAKE_BUILD_TYPE=Release",
            f"-DCMAKE_CUDA_COMPILER={ext.nvcc}",
            f"-DCMAKE_CUDA_ARCHITECTURES={archs}",
            f"-DPython_EXECUTABLE={sys.executable}",
            "-DPAI_FAST_PYTHON=ON",
            f"-DPAI_FAST_TESTS={'ON' if os.environ.get('PAI_FAST_BUILD_CTEST') == '1' else 'OFF'}",
            f"-DPAI_FAST_CUTLASS={os.environ.get('PAI_FAST_CUTLASS', 'AUTO').upper()}",
        ]
        cutlass_inc = _cutlass_include()
        if cutlass_inc:
            configure.append(f"-DPAI_FAST_CUTLASS_INCLUDE={cutlass_inc}")
        _log(f"building the CUDA extension pai_fast._C with CMake ({ext.nvcc}, archs {archs}, -j{jobs})")
        subprocess.run(configure, check=True)
        subprocess.run([cmake, "--build", str(build_dir), "--target", "_C", "-j", jobs], check=True)
        built = sorted(build_dir.glob("_C*.so")) + sorted(build_dir.glob("_C*.pyd"))
        if not built:
            raise RuntimeError(f"CMake finished but no _C module was found in {build_dir}")
        dest = Path(self.get_ext_fullpath(ext.name))
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(built[0], dest)
        _log(f"installed {dest}")


def _extensions() -> list[Extension]:
    mode = _mode()
    if mode == "0":
        _log("PAI_FAST_BUILD_CUDA=0: skipping the CUDA extension pai_fast._C (pure-Python install)")
        return []
    nvcc = _find_nvcc()
    if nvcc is None:
        if mode == "1":
            raise SystemExit(
                "pai_fast setup: PAI_FAST_BUILD_CUDA=1 but nvcc was not found (set CUDA_HOME or CUDACXX, or put nvcc "
                "on PATH); use PAI_FAST_BUILD_CUDA=0 or auto for a pure-Python install"
            )
        _log("nvcc not found: installing pure Python without the CUDA extension pai_fast._C")
        return []
    return [CMakeExtension("pai_fast._C", nvcc)]


setup(
    packages=find_packages(include=["pai_fast", "pai_fast.*"]) + ["pai_fast.kernels"],
    package_dir={"pai_fast.kernels": "kernels"},
    ext_modules=_extensions(),
    cmdclass={"build_ext": CMakeBuild},
    zip_safe=False,
)
