"""Cost of one non-restructuring ``add_validation_score`` call with graphs, CSVs and checkpoints on (the default).

perforatedai 3.2.9 renders its PNG and writes latest.pt inside the call (0.5-2.5 s per call, spec §9.3); here
the PNG is rendered in a child process and only the checkpoint is written inline. Model: the demo's 64-12-10 MLP.

    python benchmarks/bench_tracker.py [--calls 60] [--out benchmarks/results/tracker_cpu.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=60)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    import pai_fast
    from pai_fast.compat import globals_perforatedai as GPA

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    old = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        try:
            GPA.pc.set_testing_dendrite_capacity(False)
            GPA.pc.set_silent(True)
            GPA.pc.set_n_epochs_to_switch(10**6)  # never restructure: time the plain call
            net = torch.nn.Sequential(torch.nn.Linear(64, 12), torch.nn.ReLU(), torch.nn.Linear(12, 10))
            model = pai_fast.perforate_model(net, save_name="bench", maximizing_score=True)
            GPA.pai_tracker.set_optimizer_instance(torch.optim.Adam(model.parameters()))
            times = []
            for i in range(args.calls):
                t0 = time.perf_counter()
                model, restructured, complete = GPA.pai_tracker.add_validation_score(float(i % 7), model)
                times.append((time.perf_counter() - t0) * 1e3)
                assert not restructured and not complete
                time.sleep(0.05)  # an epoch of training between calls
            t0 = time.perf_counter()
            GPA.pai_tracker.outputs.flush()
            flush_ms = (time.perf_counter() - t0) * 1e3
            files = sorted(os.listdir("bench"))
        finally:
            os.chdir(old)
    srt = sorted(times)
    res = {
        "environment": {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "commit": subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
            ).stdout.strip(),  # fmt: skip
            "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "calls": args.calls,
        "ms_median": statistics.median(times),
        "ms_p90": srt[int(0.9 * (len(srt) - 1))],
        "ms_max": srt[-1],
        "ms_first": times[0],
        "flush_ms_at_end": flush_ms,
        "files_written": files,
    }
    print(json.dumps({k: v for k, v in res.items() if k != "files_written"}, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
