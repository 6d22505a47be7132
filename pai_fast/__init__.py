"""pai_fast: fast artificial-dendrite layers for PyTorch, a drop-in for Perforated AI (perforatedai 3.2.9).

    import pai_fast
    layer = pai_fast.DendriticLinear(784, 128, dendrites=3)    # nn.Linear + 3 dendrites
    model = pai_fast.perforate_model(model)                     # or let the tracker grow them

Backends: "torch" (everywhere), "triton" and "cuda" (fused kernels on NVIDIA sm_80+); see pai_fast.backends.
"""

from __future__ import annotations

import importlib

from . import functional, ops  # noqa: F401  (ops registers torch.ops.pai_fast.*)
from ._version import __version__
from .backends import BackendUnavailableError, get_backend, set_backend
from .backends import warm as _warm_backends
from .nn import DendriteMismatchError, DendriticConv1d, DendriticConv2d, DendriticConv3d, DendriticLinear

_warm_backends()

# Heavier parts load on first use, so `import pai_fast` stays cheap.
_LAZY = {
    "perforate_model": ("pai_fast.tracker", "perforate_model"),
    "tracker": ("pai_fast.tracker", None),
    "convert": ("pai_fast.convert", None),
    "compat": ("pai_fast.compat", None),
    "fold": ("pai_fast.exporting", "fold"),
    "export": ("pai_fast.exporting", "export"),
    "inference": ("pai_fast.inference", None),
    "save_checkpoint": ("pai_fast.checkpoint", "save_checkpoint"),
    "load_checkpoint": ("pai_fast.checkpoint", "load_checkpoint"),
}


def __getattr__(name: str):
    if name in _LAZY:
        module, attr = _LAZY[name]
        mod = importlib.import_module(module)
        return mod if attr is None else getattr(mod, attr)
    raise AttributeError(f"module 'pai_fast' has no attribute {name!r}")


__all__ = [
    "BackendUnavailableError",
    "DendriteMismatchError",
    "DendriticConv1d",
    "DendriticConv2d",
    "DendriticConv3d",
    "DendriticLinear",
    "__version__",
    "functional",
    "get_backend",
    "set_backend",
    *_LAZY,
]
