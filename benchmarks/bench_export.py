"""Inference latency of exported / optimized pai_fast models against perforatedai 3.2.9's own models.

Two networks, each with D = 3 dendrites on every Linear/Conv layer:
  digits  the demo MLP 64 -> 16 -> 10 (ReLU)                                           input [B, 64]
  mnist   the PyTorch MNIST CNN: conv 1->32->64 3x3, max-pool 2, fc 9216->128->10       input [B, 1, 28, 28]

The dendritic network is built by perforatedai itself: ``perforate_model``, then 3 dendrites in its capacity-test
mode (one forward+backward before each ``add_validation_score``), every parameter then randomised (the fresh
dendrites' output weights are zero, which would make them free in a fused runtime). pai_fast gets the very same
weights through ``pai_fast.convert.from_perforatedai``; the check column is max |output - perforatedai's output|.

CPU mode (default; writes benchmarks/results/export_cpu.{json,png}), median latency at batch 1 and 64 of:
  perforatedai        perforatedai's inference model in eager torch: its clean model (UPA.prepare_final_model:
                      blockwise + clean modules) when that runs and matches, else the training model in eval()
  pai_fast eager      the converted pai_fast model in eager torch (torch backend on CPU)
  pai_fast folded     pai_fast.fold(model) in eager torch
  pai_fast onnx/ort   pai_fast.export(..., format="onnx") run in onnxruntime (CPUExecutionProvider)
  no dendrites onnx/ort  the same network without dendrites in onnxruntime (the cost floor)
torch and onnxruntime use the same number of threads (--threads, default 1; 0 = all cores).

GPU mode (``--gpu``, for the GPU machine; writes benchmarks/results/export_gpu.{json,png}), batch 1 and 256:
  perforatedai        as above, on the GPU, eager
  pai_fast eager      converted model, auto backend (fused kernels)
  optimize            pai_fast.inference.optimize(model, x, cuda_graph=False)
  optimize+graph      pai_fast.inference.optimize(model, x) (CUDA graph replay)

Usage:
  python benchmarks/bench_export.py                 # CPU, ~1-2 min
  python benchmarks/bench_export.py --gpu           # on the GPU machine
  python benchmarks/bench_export.py --quick         # fewer runs (smoke test)
perforatedai is installed with ``pip install --no-deps perforatedai==3.2.9`` (plus pandas, pyyaml, matplotlib,
safetensors, requests, cryptography); without it only the pai_fast rows are measured (random dendrites).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pai_fast  # noqa: E402
from pai_fast.exporting import export, fold  # noqa: E402

D = 3


# ---------------------------------------------------------------------------------------------------------------
# Networks


class DigitsMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 16)
        self.fc2 = nn.Linear(16, 10)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x)))


class MnistCNN(nn.Module):
    """pytorch/examples mnist/main.py (dropout is inactive in eval)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.max_pool2d(x, 2)
        x = self.dropout1(x)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = self.dropout2(x)
        return F.log_softmax(self.fc2(x), dim=1)


NETS = {"digits": (DigitsMLP, (64,)), "mnist": (MnistCNN, (1, 28, 28))}


@torch.no_grad()
def randomise(model: nn.Module, seed: int) -> None:
    """Every parameter random with O(1)-scaled activations, so the dendrite terms matter."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if p.numel() == 0:
            continue
        if "dendrites_to_top" in name or "dendrites_to_dendrites" in name or "candidate" in name:
            v = torch.randn(p.shape, generator=g) * 0.5
        elif p.dim() >= 2:
            v = torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5
        else:
            v = torch.randn(p.shape, generator=g) * 0.1
        p.copy_(v.to(p))


def perforatedai_models(name: str, device: str, workdir: str):
    """(training model in eval, clean model or None, note) built by perforatedai with D=3 (capacity mode)."""
    import perforatedai.globals_perforatedai as GPA
    import perforatedai.utils_perforatedai as UPA

    cls, shape = NETS[name]
    old_cwd = os.getcwd()
    os.chdir(workdir)  # perforatedai writes its checkpoints and graphs into the working directory
    try:
        GPA.pc = GPA.PAIConfig()
        GPA.pai_tracker = []
        pc = GPA.pc
        pc.set_configuration_confirmed(True)
        pc.set_unwrapped_modules_confirmed(True)
        pc.set_silent(True)
        pc.set_making_graphs(False)
        pc.set_device(device)
        pc.set_testing_dendrite_capacity(True)
        torch.manual_seed(0)
        with contextlib.redirect_stdout(open(os.devnull, "w")):
            model = UPA.perforate_model(cls(), save_name=f"bench_{name}", making_graphs=False, maximizing_score=True)
            model = model.to(device)
            for _ in range(D):
                GPA.pai_tracker.set_optimizer_instance(torch.optim.SGD(model.parameters(), lr=0.01))
                x = torch.randn(4, *shape, device=device)
                model(x).sum().backward()
                model, restructured, _ = GPA.pai_tracker.add_validation_score(0.5, model)
                model = model.to(device)
                if not restructured:
                    raise RuntimeError("perforatedai did not add a dendrite in capacity mode")
        model.zero_grad(set_to_none=True)
        randomise(model, seed=1)
        model.eval()
        clean, note = None, "training model in eval()"
        try:
            with contextlib.redirect_stdout(open(os.devnull, "w")):
                clean = UPA.prepare_final_model(model).to(device).eval()
            note = "clean model (UPA.prepare_final_model)"
        except Exception as exc:  # the clean path is fragile in 3.2.9; fall back to the training model
            note = f"training model in eval() (prepare_final_model failed: {type(exc).__name__}: {exc})"
        return model, clean, note
    finally:
        os.chdir(old_cwd)


def pai_fast_model(name: str, pai_model: nn.Module | None, device: str) -> nn.Module:
    """The pai_fast model: converted from perforatedai's, or (without perforatedai) built with random dendrites."""
    if pai_model is not None:
        return pai_fast.convert.from_perforatedai(pai_model).to(device).eval()
    cls, _ = NETS[name]
    torch.manual_seed(0)
    model = cls()
    for mod_name, m in list(model.named_modules()):
        if type(m) in (nn.Linear, nn.Conv2d):
            new = (pai_fast.DendriticLinear if type(m) is nn.Linear else pai_fast.DendriticConv2d).from_module(
                m, dendrites=D
            )
            setattr(model, mod_name, new)
    randomise(model, seed=1)
    return model.to(device).eval()


def plain_model(name: str, device: str) -> nn.Module:
    torch.manual_seed(0)
    return NETS[name][0]().to(device).eval()


# ---------------------------------------------------------------------------------------------------------------
# Timing


def time_interleaved(fns: dict, runs: int, sync: bool = False) -> dict:
    """Median ms per function, timing them in turns (one call each per round) so that a change of machine load
    during the measurement hits every provider alike."""
    for fn in fns.values():
        for _ in range(max(3, runs // 10)):
            fn()
    times: dict = {k: [] for k in fns}
    for _ in range(runs):
        for k, fn in fns.items():
            if sync:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if sync:
                torch.cuda.synchronize()
            times[k].append((time.perf_counter() - t0) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def runs_for(batch: int, net: str, quick: bool) -> int:
    n = 200 if batch == 1 else (100 if net == "digits" else 20)
    return max(5, n // 10) if quick else n


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.detach().double().cpu() - b.detach().double().cpu()).abs().max().item()


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(threads: int | None) -> dict:
    def version(mod: str) -> str | None:
        try:
            return __import__(mod).__version__
        except Exception:
            return None

    try:
        from importlib.metadata import version as dist_version

        pai_version = dist_version("perforatedai")
    except Exception:
        pai_version = None
    try:
        commit = (
            os.environ.get("PAI_FAST_COMMIT")
            or subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
            ).stdout.strip()
        )
    except Exception:
        commit = None
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": commit or None,
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "onnx": version("onnx"),
        "onnxruntime": version("onnxruntime"),
        "pai_fast": pai_fast.__version__,
        "perforatedai": pai_version,
    }


# ---------------------------------------------------------------------------------------------------------------
# Modes


def ort_session(path: str, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x.numpy()})[0]


def bench_cpu(args, workdir: str) -> list[dict]:
    threads = args.threads or os.cpu_count() or 1  # 0 = all cores
    torch.set_num_threads(threads)
    rows = []
    for net in args.nets:
        _, shape = NETS[net]
        pai_train = pai_clean = None
        note = "perforatedai not installed"
        if not args.no_perforatedai:
            try:
                pai_train, pai_clean, note = perforatedai_models(net, "cpu", workdir)
            except ImportError as exc:
                note = f"perforatedai not importable ({exc})"
        fast = pai_fast_model(net, pai_train, "cpu")
        folded = fold(fast)
        onnx_path = os.path.join(workdir, f"{net}.onnx")
        plain_path = os.path.join(workdir, f"{net}_plain.onnx")
        res = export(fast, (torch.randn(2, *shape),), onnx_path, format="onnx")
        export(plain_model(net, "cpu"), (torch.randn(2, *shape),), plain_path, format="onnx")
        ort_fast, ort_plain = ort_session(onnx_path, threads), ort_session(plain_path, threads)
        for batch in args.batches:
            x = torch.randn(batch, *shape)
            runs = runs_for(batch, net, args.quick)
            with torch.no_grad():
                ref = pai_train(x) if pai_train is not None else fast(x)
                err_clean = 0.0
                if pai_clean is not None:
                    err_clean = max_err(pai_clean(x), ref)
                    if err_clean > 1e-4:  # a clean model that computes something else is not a fair baseline
                        note = f"training model in eval() (clean model differs by {err_clean:.3g})"
                        pai_clean, err_clean = None, 0.0
                pai_ref = pai_clean if pai_clean is not None else pai_train
                providers = {}
                if pai_ref is not None:
                    providers["perforatedai"] = (partial(pai_ref, x), err_clean)
                providers["pai_fast eager"] = (partial(fast, x), max_err(fast(x), ref))
                providers["pai_fast folded"] = (partial(folded, x), max_err(folded(x), ref))
                providers["pai_fast onnx/ort"] = (partial(ort_fast, x), max_err(torch.from_numpy(ort_fast(x)), ref))
                providers["no dendrites onnx/ort"] = (partial(ort_plain, x), None)
                timings = time_interleaved({k: fn for k, (fn, _) in providers.items()}, runs)
                for prov, (_, err) in providers.items():
                    rows.append(_row(net, batch, prov, timings[prov], err, note))
        rows.append({"net": net, "artefact": "onnx", "size_bytes": res.size_bytes, "perforatedai_model": note})
    return rows


def _row(net: str, batch: int, prov: str, ms: float, err: float | None, note: str) -> dict:
    """One timing row (printed as it is made); the perforatedai row carries how its model was obtained."""
    print(f"{net:7s} B={batch:<4d} {prov:20s} {ms:9.4f} ms   err={err}", flush=True)
    return {
        "net": net,
        "batch": batch,
        "D": D,
        "provider": prov,
        "ms": ms,
        "max_abs_error_vs_perforatedai": err,
        "note": note if prov == "perforatedai" else None,
    }


def bench_gpu(args, workdir: str) -> list[dict]:
    from pai_fast.inference import optimize

    if not torch.cuda.is_available():
        raise SystemExit("--gpu: no CUDA device visible")
    rows = []
    for net in args.nets:
        _, shape = NETS[net]
        pai_train = pai_clean = None
        note = "perforatedai not installed"
        if not args.no_perforatedai:
            try:
                pai_train, pai_clean, note = perforatedai_models(net, "cuda", workdir)
            except ImportError as exc:
                note = f"perforatedai not importable ({exc})"
        fast = pai_fast_model(net, pai_train, "cuda")
        for batch in args.gpu_batches:
            x = torch.randn(batch, *shape, device="cuda")
            runs = 20 if args.quick else 200
            with torch.no_grad():
                ref = pai_train(x) if pai_train is not None else fast(x)
                if pai_clean is not None and max_err(pai_clean(x), ref) > 1e-3:
                    note, pai_clean = "training model in eval() (clean model differs)", None
                pai_ref = pai_clean if pai_clean is not None else pai_train
                eager_graphless = optimize(fast, (x,), cuda_graph=False)
                graphed = optimize(fast, (x,))
                providers = {}
                if pai_ref is not None:
                    providers["perforatedai"] = partial(pai_ref, x)
                providers["pai_fast eager"] = partial(fast, x)
                providers["optimize"] = partial(eager_graphless, x)
                providers["optimize+graph"] = partial(graphed, x)
                timings = time_interleaved(providers, runs, sync=True)
                for prov, fn in providers.items():
                    rows.append(_row(net, batch, prov, timings[prov], max_err(fn(), ref), note))
    return rows


def plot(rows: list[dict], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timed = [r for r in rows if "ms" in r]
    groups = sorted({(r["net"], r["batch"]) for r in timed}, key=lambda k: (k[0], k[1]))
    providers = list(dict.fromkeys(r["provider"] for r in timed))
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 4.5), squeeze=False)
    for ax, (net, batch) in zip(axes[0], groups):
        vals = {r["provider"]: r["ms"] for r in timed if r["net"] == net and r["batch"] == batch}
        names = [p for p in providers if p in vals]
        bars = ax.bar(range(len(names)), [vals[p] for p in names], color=[f"C{providers.index(p)}" for p in names])
        base = vals.get("perforatedai")
        for bar, p in zip(bars, names):
            label = f"{vals[p]:.3g} ms" + (f"\n{base / vals[p]:.1f}x" if base and p != "perforatedai" else "")
            ax.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", size=7)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{net}, batch {batch}, D={D}", fontsize=9)
        ax.set_ylabel("median latency (ms), lower is better")
        ax.set_yscale("log")
        lo, hi = ax.get_ylim()
        ax.set_ylim(lo, hi * 2.5)  # room for the labels
    fig.suptitle(title + "\n(labels: median ms, and speed-up over perforatedai)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _title(env: dict, gpu: bool) -> str:
    device = env["gpu"] if gpu else f"{env['cpu']} ({env['threads']} thread{'s' if env['threads'] != 1 else ''})"
    return (
        f"pai_fast {env['pai_fast']} vs perforatedai {env['perforatedai']} inference, {device}\n"
        f"torch {env['torch']}, onnxruntime {env['onnxruntime']}, commit {str(env['commit'])[:10]}, {env['date']}"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpu", action="store_true", help="GPU mode: inference.optimize vs perforatedai on the GPU")
    p.add_argument("--nets", default="digits,mnist", help="comma-separated: digits, mnist")
    p.add_argument("--batches", default="1,64", help="CPU batch sizes")
    p.add_argument("--gpu-batches", default="1,256", help="GPU batch sizes")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads for torch and onnxruntime (default 1: reproducible, and what a small edge CPU gives a "
        "model; 0 = all cores)",
    )
    p.add_argument("--quick", action="store_true", help="fewer timed runs")
    p.add_argument("--no-perforatedai", action="store_true", help="skip the perforatedai baseline")
    p.add_argument("--out", default=None, help="output stem (default benchmarks/results/export_{cpu,gpu})")
    p.add_argument("--plot-only", metavar="JSON", help="redraw the PNG of a results JSON (written next to it)")
    args = p.parse_args(argv)
    if args.plot_only:
        with open(args.plot_only) as f:
            data = json.load(f)
        stem = os.path.splitext(args.plot_only)[0]
        plot(data["rows"], stem + ".png", _title(data["environment"], "gpu" in os.path.basename(stem)))
        print(f"wrote {stem}.png")
        return 0
    args.nets = [n for n in args.nets.split(",") if n]
    for n in args.nets:
        if n not in NETS:
            p.error(f"--nets: unknown network {n!r} (choose from {sorted(NETS)})")
    args.batches = [int(b) for b in args.batches.split(",")]
    args.gpu_batches = [int(b) for b in args.gpu_batches.split(",")]
    mode = "gpu" if args.gpu else "cpu"
    stem = args.out or str(ROOT / "benchmarks" / "results" / f"export_{mode}")
    os.makedirs(os.path.dirname(os.path.abspath(stem)), exist_ok=True)
    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory() as workdir:
        rows = bench_gpu(args, workdir) if args.gpu else bench_cpu(args, workdir)
    env = environment(None if args.gpu else (args.threads or os.cpu_count()))
    env["load_average"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    with open(stem + ".json", "w") as f:
        json.dump({"environment": env, "D": D, "rows": rows}, f, indent=1)
    plot(rows, stem + ".png", _title(env, args.gpu))
    print(f"wrote {stem}.json and {stem}.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
