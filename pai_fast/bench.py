"""``pai-fast bench``: what dendrites cost on this machine, against the plain layer and the compute limit.

Providers, timed side by side in one run (medians):
  plain      nn.Linear / nn.Conv2d of width N (what the layer costs without dendrites)
  cat_gemm   one cuBLAS GEMM (cuDNN conv) of width (1+D)*N: the compute limit of the fused layer
             (forward+backward: the same GEMM plus the two backward GEMMs)
  eager      the torch backend (pai_fast.reference) in eager mode
  compiled   torch.compile of the torch backend
  triton     the fused Triton kernels
  cuda       the fused CUDA C++ kernels
Modes: ``f`` (forward) and ``fb`` (forward + backward). GPU timings use triton.testing.do_bench (CUDA events,
median); CPU timings use torch.utils.benchmark (median). Writes JSON (with GPU, versions, commit, date)
and a PNG of the overhead over the plain layer and of the ratio to the limit.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import time
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F

from . import backends, functional, reference

LINEAR_SHAPES = {  # name: (batch, in, out)
    "64x784->128": (64, 784, 128),
    "256x1024->1024": (256, 1024, 1024),
    "8192x4096->4096": (8192, 4096, 4096),
}
CONV_SHAPES = {  # name: (batch, c_in, hw, c_out)
    "32x64x56x56->64": (32, 64, 56, 64),
    "32x256x14x14->256": (32, 256, 14, 256),
}


def _timer(device: str):
    if device == "cuda":
        from triton.testing import do_bench

        return lambda fn: do_bench(fn, warmup=10, rep=40, return_mode="median")

    from torch.utils import benchmark

    def cpu(fn):
        return benchmark.Timer("fn()", globals={"fn": fn}).blocked_autorange(min_run_time=0.2).median * 1e3

    return cpu


def host_and_wall_ms(fn: Callable[[], object], n: int) -> tuple[float, float]:
    """(host ms per call with no sync inside the loop, wall ms per call once the GPU has caught up), after a warm-up
    of max(10, n // 10) calls."""
    for _ in range(max(10, n // 10)):
        fn()
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    host = (time.perf_counter() - t0) / n * 1e3
    sync()
    return host, (time.perf_counter() - t0) / n * 1e3


def host_profile(fn: Callable[[], object], calls: int = 200, top: int = 25) -> str:
    """cProfile of `calls` calls of fn (the GPU synchronized after): the `top` functions by own time, blank lines
    dropped. The probes use it to show where a call's host time goes."""
    import cProfile
    import io
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    for _ in range(calls):
        fn()
    prof.disable()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(top)
    return "\n".join(line for line in out.getvalue().splitlines() if line.strip())


def environment() -> dict:
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception:
        info["triton"] = None
    try:
        # The GPU machine gets a copy of the working tree whose .git may lag: the caller can pass the commit.
        info["commit"] = os.environ.get("PAI_FAST_COMMIT") or (
            subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10).stdout.strip()
            or None
        )
    except Exception:
        info["commit"] = None
    return info


def _linear_case(b, k, n, d, dtype, device):
    g = torch.Generator(device="cpu").manual_seed(0)

    def r(*s, scale=1.0):
        return (torch.randn(s, generator=g) * scale).to(device=device, dtype=dtype)

    x = r(b, k)
    # weight and dendrite_weight as views of one buffer, as DendriticLinear keeps them (the TMA forward needs it)
    wcat = r(1 + d, n, k, scale=k**-0.5)
    params = [wcat[0], r(n, scale=0.1), wcat[1:], r(d, n, scale=0.1), r(d, n), r(d, d, n, scale=0.1)]
    return x, params


def _conv_case(b, cin, hw, cout, d, dtype, device):
    g = torch.Generator(device="cpu").manual_seed(0)
    fan = cin * 9

    def r(*s, scale=1.0):
        return (torch.randn(s, generator=g) * scale).to(device=device, dtype=dtype)

    # A channels_last model (model.to(memory_format=torch.channels_last)): x and every conv weight channels-innermost,
    # weight and dendrite_weight views of one such buffer, as DendriticConv2d keeps them.
    x = r(b, cin, hw, hw).contiguous(memory_format=torch.channels_last)
    wcat = r(1 + d, cout, 3, 3, cin, scale=fan**-0.5).movedim(-1, 2)
    params = [wcat[0], r(cout, scale=0.1), wcat[1:], r(d, cout, scale=0.1), r(d, cout), r(d, d, cout, scale=0.1)]
    return x, params


def limit_weight(kind: str, params: list) -> torch.Tensor:
    """The limit's weight: W and the D dendrite weights stacked into one of (1+D)*N rows, in the layout the case's
    model keeps (channels_last for convs)."""
    wcat = torch.cat([params[0][None], params[2]]).flatten(0, 1)
    return wcat if kind == "linear" else wcat.contiguous(memory_format=torch.channels_last)


def _providers(kind: str, x, params, d: int, device: str, want: list[str]):
    """name -> forward callable over (x, params); params[6] is the stacked weight of width (1+D)*N."""
    w, b, dw, db, gate, casc = params[:6]
    out: dict = {}
    if kind == "linear":
        out["plain"] = lambda x, p: F.linear(x, p[0], p[1])
        out["cat_gemm"] = lambda x, p: F.linear(x, p[6])
        out["eager"] = lambda x, p: reference.dendritic_linear_ref(x, *p[:6])
        fused = lambda name: lambda x, p: functional.dendritic_linear(x, *p[:6], backend=name)  # noqa: E731
    else:
        out["plain"] = lambda x, p: F.conv2d(x, p[0], p[1], 1, 1)
        out["cat_gemm"] = lambda x, p: F.conv2d(x, p[6], None, 1, 1)
        out["eager"] = lambda x, p: reference.dendritic_conv_ref(x, *p[:6], 1, 1)
        fused = lambda name: lambda x, p: functional.dendritic_conv2d(x, *p[:6], 1, 1, backend=name)  # noqa: E731
    if "compiled" in want:
        # Every case's provider wraps the same lambda code object, and Dynamo's cache is per code object: without
        # a reset, cases past its recompile limit (8) silently run eager under the "compiled" name.
        torch._dynamo.reset()
        out["compiled"] = torch.compile(out["eager"], dynamic=False)
    for name in ("triton", "cuda"):
        if name in want and not backends.input_reasons(name, kind, x, w, d, "sigmoid"):
            out[name] = fused(name)
    return {k: v for k, v in out.items() if k in want}


def run(
    kinds=("linear",),
    dtypes=("bfloat16",),
    ds=(0, 1, 3, 8),
    shapes=None,
    modes=("f", "fb"),
    providers=("plain", "cat_gemm", "eager", "compiled", "triton", "cuda"),
    device=None,
    progress=True,
    rounds=5,
):
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    timer = _timer(device)
    rows = []
    cases = []
    for kind in kinds:
        table = LINEAR_SHAPES if kind == "linear" else CONV_SHAPES
        for shape_name, dims in table.items():
            if shapes and shape_name not in shapes:
                continue
            for dtype_name in dtypes:
                for d in ds:
                    cases.append((kind, shape_name, dims, dtype_name, d))
    try:
        from tqdm.auto import tqdm

        it = tqdm(cases, disable=not progress, desc="bench")
    except ImportError:
        it = cases
    for kind, shape_name, dims, dtype_name, d in it:
        dtype = getattr(torch, dtype_name)
        make = _linear_case if kind == "linear" else _conv_case
        x, params = make(*dims, d, dtype, device)
        params.append(limit_weight(kind, params))
        provs = _providers(kind, x, params, d, device, list(providers))
        for mode in modes:
            calls = {}
            for name, fn in provs.items():
                if d == 0 and name in ("cat_gemm",):
                    continue
                xs = x.detach().requires_grad_(mode == "fb")
                # The fused layers read weight/dendrite_weight as views of one buffer (as the modules keep them);
                # the torch providers get storage-disjoint copies, so nothing about aliasing can slow them down.
                src = params if name in ("triton", "cuda") else [p.clone() for p in params]
                ps = [p.detach().requires_grad_(mode == "fb") for p in src]
                if mode == "f":

                    def call(fn=fn, xs=xs, ps=ps):
                        with torch.no_grad():
                            return fn(xs, ps)
                else:
                    y0 = fn(xs, ps)
                    gy = torch.randn_like(y0)

                    def call(fn=fn, xs=xs, ps=ps, gy=gy):
                        return torch.autograd.grad(
                            fn(xs, ps), [xs] + [p for p in ps if p.requires_grad], gy, allow_unused=True
                        )

                try:
                    call()  # compiles / autotunes outside the timed rounds
                except Exception as e:  # a provider that fails is reported, not fatal
                    warnings.warn(f"bench: {name} {kind} {shape_name} {dtype_name} D={d} {mode}: {e}", stacklevel=1)
                    continue
                calls[name] = call
            # Small layers are host-bound and the host's speed drifts: time the providers in interleaved rounds
            # (rotating the order) and keep each one's median over the rounds, so every ratio is side by side.
            times: dict[str, list[float]] = {name: [] for name in calls}
            names = list(calls)
            for r in range(rounds):
                for name in names[r % len(names) :] + names[: r % len(names)]:
                    times[name].append(timer(calls[name]))
            for name, ts in times.items():
                ms = statistics.median(ts)
                rows.append(dict(kind=kind, shape=shape_name, dtype=dtype_name, D=d, mode=mode, provider=name, ms=ms))
    return rows


def summarize(rows) -> str:
    """A compact table: per case, each provider's median ms, the best fused provider's ratios to the limit and to
    torch.compile, and the eager reference's speedup over each fused backend (the small-layer target)."""
    keyed: dict = {}
    for r in rows:
        keyed.setdefault((r["kind"], r["shape"], r["dtype"], r["D"], r["mode"]), {})[r["provider"]] = r["ms"]
    cols = ["plain", "cat_gemm", "eager", "compiled", "triton", "cuda"]
    head = "  best/limit  best/compiled  eager/triton  eager/cuda"
    lines = [f"{'case':44s} " + " ".join(f"{c:>9s}" for c in cols) + head]

    def ratio(num, den, width):
        return f"{num / den:{width}.2f}" if num and den else f"{'-':>{width}s}"

    for key, vals in keyed.items():
        fused = [vals[p] for p in ("triton", "cuda") if p in vals]
        best = min(fused) if fused else None
        lim = vals.get("cat_gemm") or vals.get("plain")
        eager = vals.get("eager")
        name = "{} {} {} D={} {}".format(*key)
        lines.append(
            f"{name:44s} "
            + " ".join(f"{vals[c]:9.4f}" if c in vals else f"{'-':>9s}" for c in cols)
            + f"  {ratio(best, lim, 10)}  {ratio(best, vals.get('compiled'), 13)}"
            + f"  {ratio(eager, vals.get('triton'), 12)}  {ratio(eager, vals.get('cuda'), 10)}"
        )
    return "\n".join(lines)


def plot(rows, path: str, title: str) -> None:
    """Grouped bars, one group per (kind, shape, dtype, D) case, one bar per provider: the top row times the
    dendritic layer over the plain one (dendrite overhead, log scale), the bottom row over the limit (one GEMM or
    cuDNN conv of width (1+D)N, with the issue's forward / forward+backward targets drawn); forward left,
    forward+backward right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_case: dict = {}
    for r in rows:
        if r.get("D", 0) == 0:  # D = 0 has no dendrite overhead to show
            continue
        case = (r["mode"], f"{r['kind']} {r['shape']}\n{r['dtype']} D={r['D']}")
        by_case.setdefault(case, {})[r["provider"]] = r["ms"]
    modes = [m for m in ("f", "fb") if any(c[0] == m for c in by_case)]
    provs = [p for p in ("triton", "cuda", "compiled", "eager") if any(p in v for v in by_case.values())]
    if not modes or not provs:
        return
    n_cases = max(sum(c[0] == m for c in by_case) for m in modes)
    fig, axes = plt.subplots(2, len(modes), figsize=(max(8, 0.9 * n_cases * len(modes) + 2), 9), squeeze=False)
    width = 0.8 / len(provs)
    for col, mode in enumerate(modes):
        cases = [c for c in by_case if c[0] == mode]
        for row, (ref, label) in enumerate((("plain", "time / plain layer"), ("cat_gemm", "time / limit"))):
            ax = axes[row][col]
            for k, prov in enumerate(provs):
                xs, ys = [], []
                for i, c in enumerate(cases):
                    t = by_case[c]
                    if prov in t and t.get(ref):
                        xs.append(i + (k - (len(provs) - 1) / 2) * width)
                        ys.append(t[prov] / t[ref])
                ax.bar(xs, ys, width, label=prov)
            ax.set_xticks(range(len(cases)), [c[1] for c in cases], fontsize=7, rotation=60, ha="right")
            ax.set(ylabel=label, yscale="log", title=f"{'forward' if mode == 'f' else 'forward+backward'}: {label}")
            ax.axhline(1.0, color="k", lw=0.6)
            if ref == "cat_gemm":
                target = 1.10 if mode == "f" else 1.15
                ax.axhline(target, color="r", lw=0.8, ls="--", label=f"target {target:.2f} (8192x4096)")
            ax.grid(axis="y", which="both", lw=0.3)
            ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="pai-fast bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--kinds", default="linear", help="comma list: linear,conv")
    p.add_argument("--dtypes", default=None, help="comma list (default: bfloat16,float32 on GPU; float32 on CPU)")
    p.add_argument("--dendrites", default="0,1,3,8")
    p.add_argument("--shapes", default=None, help="comma list of shape names (default: all; CPU: the small ones)")
    p.add_argument("--providers", default="plain,cat_gemm,eager,compiled,triton,cuda")
    p.add_argument("--modes", default="f,fb")
    p.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds (default: 5 on GPU, 1 on CPU)")
    p.add_argument("--out", default="pai_fast_bench", help="output prefix: writes PREFIX.json and PREFIX.png")
    a = p.parse_args(argv)
    gpu = torch.cuda.is_available()
    dtypes = a.dtypes.split(",") if a.dtypes else (["bfloat16", "float32"] if gpu else ["float32"])
    shapes = (
        a.shapes.split(",") if a.shapes else (None if gpu else ["64x784->128", "256x1024->1024", "32x256x14x14->256"])
    )
    if gpu:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    rows = run(
        kinds=a.kinds.split(","),
        dtypes=dtypes,
        ds=[int(v) for v in a.dendrites.split(",")],
        shapes=shapes,
        modes=a.modes.split(","),
        providers=a.providers.split(","),
        rounds=a.rounds or (5 if gpu else 1),
    )
    env = environment()
    env["rounds"] = a.rounds or (5 if gpu else 1)
    with open(a.out + ".json", "w") as f:
        json.dump({"environment": env, "rows": rows}, f, indent=1)
    try:
        where = f"{env['gpu'] or env['cpu']} | torch {env['torch']} | triton {env.get('triton') or '-'}"
        plot(rows, a.out + ".png", f"{where} | {env['commit'] or ''} | {env['date'][:10]}")
    except ImportError:
        warnings.warn("matplotlib not installed: no PNG written", stacklevel=1)
    print(summarize(rows))
    print(f"wrote {a.out}.json and {a.out}.png")
    return 0
