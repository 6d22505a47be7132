"""Low-overhead launches of compiled Triton kernels.

``kernel[grid](*args, **meta)`` makes Triton re-bind every argument, re-compute its specialization key and (through
an autotuner) re-resolve the config on each call: about 0.09 ms of host time per launch on the H100 machine, more
than the GPU time of a small layer. A ``Launcher`` goes through Triton once per key of its own and afterwards
calls the compiled kernel's launcher directly.

The key separates every two calls Triton could compile or configure differently: each int argument by value
(which covers Triton's ``== 1`` / ``% 16`` / int64 specializations and any autotune key), each tensor by dtype and
16-byte alignment of its data pointer (a TMA descriptor by its base's, plus its shape, strides and box), the
constexpr meta-parameters and the current device. A launch grid given as
a callable must be a function of the arguments and meta-parameters (it is computed once per key).

Falls back to the plain Triton call under the interpreter, when Triton's launch hooks are set (profilers), or with
``PAI_FAST_TRITON_FAST_LAUNCH=0``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

import torch
from triton import knobs
from triton.runtime.jit import JITFunction

try:  # Triton >= 3.2: host-side TMA descriptors
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover
    TensorDescriptor = None

_MAX_ENTRIES = 1024
_state = {"enabled": os.environ.get("PAI_FAST_TRITON_FAST_LAUNCH", "1") != "0"}


def set_fast_launch(enabled: bool) -> None:
    """Turn the direct-launch cache on or off for this process (benchmarks compare both)."""
    _state["enabled"] = bool(enabled)


def _hooks_set() -> bool:
    """Whether a profiler put launch hooks in Triton (3.6: HookChain objects whose .calls list is non-empty)."""
    for hook in (knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook):
        if hook is not None and getattr(hook, "calls", True):
            return True
    return False


def _spec(a: Any) -> Any:
    if isinstance(a, torch.Tensor):
        return a.dtype, a.data_ptr() & 15 == 0
    if TensorDescriptor is not None and isinstance(a, TensorDescriptor):
        # Compiled for its dtype and box; shape and strides travel in the tensor map (keyed anyway: cheap, safe).
        return a.base.dtype, a.base.data_ptr() & 15 == 0, tuple(a.shape), tuple(a.strides), tuple(a.block_shape)
    return a


class Launcher:
    """``Launcher(kernel)(grid, args, meta)`` runs ``kernel[grid](*args, **meta)``; kernel may be a JIT function or
    an autotuner / heuristics wrapper around one. args are the runtime arguments in signature order (passed
    positionally), meta the constexprs and launch options (passed by name)."""

    def __init__(self, kernel: Any) -> None:
        self.kernel = kernel
        jit = kernel
        while not isinstance(jit, JITFunction) and hasattr(jit, "fn"):
            jit = jit.fn
        self._jit = jit if isinstance(jit, JITFunction) else None  # None under the interpreter
        self._cache: dict[tuple, tuple] = {}
        self._seen = threading.local()
        self._driver = None
        if self._jit is not None:
            self._jit.pre_run_hooks.append(self._record)

    def _record(self, *args: Any, **kwargs: Any) -> None:
        # Called by JITFunction.run with exactly what reaches the compiled kernel (autotuned config included); kept
        # only while this launcher's own first call runs, so no other call's tensors are held.
        if getattr(self._seen, "armed", False):
            self._seen.call = (args, kwargs)

    def __call__(
        self, grid: tuple | Callable[[dict], tuple], args: tuple, meta: dict, key: tuple | None = None
    ) -> None:
        """key, when given, replaces the computed one: the caller vouches that it separates every two calls that
        the computed key would (pai_fast._plans: a plan's serial number, fixed by the shapes, strides, dtypes and
        constexprs it was built for, plus the call's pointer alignments)."""
        if self._jit is None or not _state["enabled"] or _hooks_set():
            self.kernel[grid](*args, **meta)
            return
        drv = self._driver
        if drv is None:
            from triton.runtime.driver import driver

            drv = self._driver = driver.active
        device = drv.get_current_device()
        key = (device, *[_spec(a) for a in args], *meta.items()) if key is None else (device, None, *key)
        hit = self._cache.get(key)
        if hit is None:
            self._seen.call, self._seen.armed = None, True
            try:
                compiled = self.kernel[grid](*args, **meta)
            finally:
                self._seen.armed = False
            hit = self._entry(compiled, grid, args)
            if hit is not None:
                if len(self._cache) >= _MAX_ENTRIES:
                    self._cache.clear()
                self._cache[key] = hit
            return
        compiled, fixed_grid, tail, pre_hook = hit
        if pre_hook is not None:  # what the autotuner does before every launch (e.g. set a descriptor's box)
            pre_hook(dict(zip(self._jit.arg_names, (*args, *tail))))
        g = fixed_grid if fixed_grid is not None else grid
        compiled.run(
            g[0],
            g[1] if len(g) > 1 else 1,
            g[2] if len(g) > 2 else 1,
            drv.get_current_stream(device),
            compiled.function,
            compiled.packed_metadata,
            None,
            None,
            None,
            *args,
            *tail,
        )

    def _entry(self, compiled: Any, grid: Any, args: tuple) -> tuple | None:
        """(compiled kernel, grid or None when the call's own grid tuple is used, constexpr tail, the chosen
        config's pre-hook or None) or None when this call cannot be replayed (nothing recorded, or the runtime args
        are not a prefix of the signature)."""
        seen = self._seen.call
        self._seen.call = None
        if compiled is None or seen is None:
            return None
        best = getattr(self.kernel, "best_config", None)  # an autotuner's pick for this call
        pre_hook = getattr(best, "pre_hook", None)
        if hasattr(compiled, "result"):
            compiled = compiled.result()
        s_args, s_kwargs = seen
        names = self._jit.arg_names
        if len(s_args) != len(args) or any(a is not b for a, b in zip(s_args, args)):
            return None
        try:
            tail = tuple(s_kwargs[name] for name in names[len(args) :])
        except KeyError:  # a parameter left to its default: replaying would need Triton's binder
            return None
        fixed = None
        if callable(grid):
            fixed = tuple(grid(dict(zip(names, (*args, *tail)))))
        compiled.run  # noqa: B018 (loads the module and function handles now, not inside a CUDA-graph capture)
        return compiled, fixed, tail, pre_hook
