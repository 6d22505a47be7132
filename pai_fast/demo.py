"""``pai-fast demo``: grow dendrites on a small network for scikit-learn's handwritten digits.

The perforatedai 5-step loop (seed 1), with pai_fast's imports: perforate the model, register the
optimizer, train until the tracker says training is complete, rebuilding the optimizer whenever dendrites
were added. Prints one row per architecture (dendrites, parameters, best validation accuracy) and writes
the tracker's graph and CSVs under ``--save-name``. Runs on the GPU when there is one; about a minute on CPU.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from torch import nn

import pai_fast


def load_digits_tensors(device: str | torch.device = "cpu", seed: int = 0):
    """sklearn's 8x8 digits (ships inside scikit-learn: no download), split 80/20, scaled to [0, 1]."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # optional extra
        raise ImportError("pai-fast demo needs scikit-learn: pip install 'pai-fast[demo]'") from e
    x, y = load_digits(return_X_y=True)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    x = torch.tensor(x, dtype=torch.float32)[perm] / 16.0
    y = torch.tensor(y)[perm]
    n = int(0.8 * len(x))
    return (x[:n].to(device), y[:n].to(device)), (x[n:].to(device), y[n:].to(device))


def make_model(hidden: int = 12) -> nn.Module:
    return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="pai-fast demo", description=__doc__)
    p.add_argument("--save-name", default="pai_fast_demo", help="folder for the graph, CSVs and checkpoints")
    p.add_argument("--epochs-to-switch", type=int, default=6, help="patience before dendrites are added")
    p.add_argument("--max-dendrites", type=int, default=3)
    p.add_argument("--max-epochs", type=int, default=300, help="safety cap on epochs")
    p.add_argument("--hidden", type=int, default=12)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)

    from pai_fast.compat import globals_perforatedai as GPA

    torch.manual_seed(0)
    (xt, yt), (xv, yv) = load_digits_tensors(args.device)
    GPA.pc.set_testing_dendrite_capacity(False)
    GPA.pc.set_n_epochs_to_switch(args.epochs_to_switch)
    GPA.pc.set_max_dendrites(args.max_dendrites)
    GPA.pc.set_silent(True)
    model = pai_fast.perforate_model(make_model(args.hidden), save_name=args.save_name, maximizing_score=True)
    model = model.to(args.device)

    def new_optimizer(m):
        opt = torch.optim.Adam(m.parameters(), lr=1e-2)
        GPA.pai_tracker.set_optimizer_instance(opt)
        return opt

    optimizer = new_optimizer(model)
    rows: list[list] = []  # [dendrites, params, best acc]

    def note(acc: float) -> None:
        d = max((m.num_dendrites for m in model.modules() if hasattr(m, "num_dendrites")), default=0)
        if not rows or rows[-1][0] != d:
            rows.append([d, count_parameters(model), acc])
        rows[-1][2] = max(rows[-1][2], acc)

    try:
        from tqdm.auto import tqdm

        bar = tqdm(total=args.max_epochs, desc="epochs", disable=args.no_progress, unit="ep")
    except ImportError:
        bar = None
    t0 = time.perf_counter()
    for _ in range(args.max_epochs):
        model.train()
        for i in range(0, len(xt), 64):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(xt[i : i + 64]), yt[i : i + 64]).backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            acc = (model(xv).argmax(1) == yv).float().mean().item() * 100
        note(acc)
        model, restructured, complete = GPA.pai_tracker.add_validation_score(acc, model)
        model = model.to(args.device)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(acc=f"{acc:.1f}", dendrites=rows[-1][0])
        if complete:
            break
        if restructured:
            optimizer = new_optimizer(model)
    if bar is not None:
        bar.close()
    final_d = max((m.num_dendrites for m in model.modules() if hasattr(m, "num_dendrites")), default=0)
    print(f"\ndevice {args.device}, {time.perf_counter() - t0:.1f} s, final model: {final_d} dendrites per layer")
    print(f"{'dendrites':>9} {'parameters':>10} {'best val acc %':>15}")
    for d, n, acc in rows:
        print(f"{d:>9} {n:>10} {acc:>15.2f}")
    graph = os.path.join(args.save_name, f"{args.save_name}.png")
    print(f"graph: {graph}" if os.path.exists(graph) else f"outputs under {args.save_name}/")
    return 0
