"""``pai-fast demo``: train a small dendritic network on scikit-learn's handwritten digits.

(Layer demo; the tracker-driven demo replaces it once the tracker lands.)
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import pai_fast


def _data(device):
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # optional extra
        raise ImportError("pai-fast demo needs scikit-learn: pip install 'pai-fast[demo]'") from e
    x, y = load_digits(return_X_y=True)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(x), generator=g)
    x = torch.tensor(x, dtype=torch.float32)[perm] / 16.0
    y = torch.tensor(y)[perm]
    n = int(0.8 * len(x))
    return (x[:n].to(device), y[:n].to(device)), (x[n:].to(device), y[n:].to(device))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="pai-fast demo")
    p.add_argument("--epochs-per-stage", type=int, default=15)
    p.add_argument("--max-dendrites", type=int, default=2)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    (xt, yt), (xv, yv) = _data(device)
    model = nn.Sequential(pai_fast.DendriticLinear(64, 16), nn.ReLU(), pai_fast.DendriticLinear(16, 10)).to(device)
    rows = []
    for d in range(args.max_dendrites + 1):
        if d:
            for m in model.modules():
                if isinstance(m, pai_fast.nn.DendriteMixin):
                    m.add_dendrite()
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        best = 0.0
        t0 = time.perf_counter()
        for _ in range(args.epochs_per_stage):
            for i in range(0, len(xt), 128):
                opt.zero_grad()
                nn.functional.cross_entropy(model(xt[i : i + 128]), yt[i : i + 128]).backward()
                opt.step()
            with torch.no_grad():
                best = max(best, (model(xv).argmax(1) == yv).float().mean().item())
        rows.append((d, sum(p.numel() for p in model.parameters()), best, time.perf_counter() - t0))
    print(f"device {device}")
    print(f"{'dendrites':>9} {'params':>7} {'best val acc':>12} {'seconds':>8}")
    for d, n, acc, t in rows:
        print(f"{d:>9} {n:>7} {acc:>12.4f} {t:>8.2f}")
    return 0
