"""Command line: ``pai-fast demo | doctor | bench | export`` (also ``python -m pai_fast``)."""

from __future__ import annotations

import argparse
import importlib
import platform
import sys


def doctor() -> int:
    """Print versions, the GPU, and which backends are available (and why not)."""
    import torch

    import pai_fast
    from pai_fast import backends

    lines = [
        f"pai_fast   {pai_fast.__version__}",
        f"python     {platform.python_version()} ({sys.executable})",
        f"torch      {torch.__version__} (CUDA {torch.version.cuda or 'none'})",
    ]
    try:
        import triton

        lines.append(f"triton     {triton.__version__}")
    except Exception as e:
        lines.append(f"triton     not importable ({type(e).__name__})")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            cap = torch.cuda.get_device_capability(i)
            lines.append(f"gpu {i}      {torch.cuda.get_device_name(i)} (sm_{cap[0]}{cap[1]})")
    else:
        lines.append("gpu        none visible (CPU only: the torch backend runs everything)")
    try:
        from pai_fast import _C

        lines.append(f"_C         {_C.build_info()}")
    except Exception as e:
        lines.append(f"_C         not loaded ({type(e).__name__}: {e})")
    lines.append(f"backend    requested: {backends.get_backend()}")
    for name, reasons in backends.report().items():
        lines.append(f"  {name:7s}  " + ("available" if not reasons else "unavailable: " + "; ".join(reasons)))
    print("\n".join(lines))
    return 0


def _run_module(module: str, argv: list[str]) -> int:
    mod = importlib.import_module(module)
    return int(mod.main(argv) or 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pai-fast", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser(
        "demo", help="train a small dendritic network on sklearn's digits, growing dendrites", add_help=False
    )
    sub.add_parser("doctor", help="versions, GPU and available backends")
    sub.add_parser("bench", help="time dendrite overhead on this machine (JSON + PNG)", add_help=False)
    sub.add_parser("export", help="fold and export a model (onnx, pt2, executorch)", add_help=False)
    args, rest = parser.parse_known_args(argv)
    if args.command == "doctor":
        return doctor()
    # pai_fast.export is the export *function* (pai_fast/__init__); its module is pai_fast.exporting.
    module = {"export": "exporting"}.get(args.command, args.command)
    return _run_module(f"pai_fast.{module}", rest)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
