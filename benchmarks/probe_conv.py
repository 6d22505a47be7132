"""Where the fused conv forward's time goes (GPU machine): device time (CUDA-graph replay, no host) and wall time
(do_bench, host included) of the Triton forward with each mainloop, against cuDNN's conv of width (1 + D) * Cout;
the registers / spills of the compiled kernels; channels_last vs NCHW inputs; every spatial-box candidate forced.
Mainloops: ptr (x and weight by pointers), tma_w (weight by TMA), box (both by TMA, x as a spatial box per tap),
flat (both by TMA, x as rows shifted per tap; forced, 1x1 / unpadded convs only).

    python benchmarks/probe_conv.py [--ds 1,3] [--dtype bfloat16] [--out probe_conv.json]
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
import torch.nn.functional as F
import triton
from triton.testing import do_bench, do_bench_cudagraph

from pai_fast.bench import environment

# name: (batch, Cin, H = W, Cout, kernel size); 3x3 convs have padding 1, 1x1 convs none.
SHAPES = {
    "32x64x56x56->64": (32, 64, 56, 64, 3),
    "32x256x14x14->256": (32, 256, 14, 256, 3),
    "32x256x56x56->64 1x1": (32, 256, 56, 64, 1),
}


def _compiled_info(launcher) -> list[str]:
    out = []
    for compiled, *_ in launcher._cache.values():
        meta = getattr(compiled, "metadata", None)
        cfg = f"w{getattr(meta, 'num_warps', '?')}s{getattr(meta, 'num_stages', '?')}"
        out.append(f"{cfg} regs={getattr(compiled, 'n_regs', '?')} spills={getattr(compiled, 'n_spills', '?')}")
    return out


def _case(name: str, b: int, c: int, hw: int, n: int, k: int, d: int, dt: torch.dtype, rows: list) -> None:
    import pai_fast.kernels as K

    conv = sys.modules["pai_fast.kernels.dendritic_conv"]
    g = torch.Generator(device="cuda").manual_seed(0)

    def r(*s, scale=1.0, g=g):
        return torch.randn(s, device="cuda", dtype=dt, generator=g) * scale

    x = r(b, c, hw, hw).contiguous(memory_format=torch.channels_last)
    fan = (c * k * k) ** -0.5
    pad = k // 2
    w, bias, dw = r(n, c, k, k, scale=fan), r(n, scale=0.1), r(d, n, c, k, k, scale=fan)
    db, gate, cas = r(d, n, scale=0.1), r(d, n), r(d, d, n, scale=0.1)
    wcat = torch.cat([w[None], dw]).flatten(0, 1)
    geo = ((1, 1), (pad, pad), (1, 1))
    ref = F.conv2d(x.float(), wcat.float(), None, 1, pad)
    ref = ref[:, :n] + bias.float()[None, :, None, None]  # only checks the mainloop's main branch below
    fns = {
        "cudnn_plain": lambda: F.conv2d(x, w, bias, 1, pad),
        "cudnn_cat": lambda: F.conv2d(x, wcat, None, 1, pad),
    }
    # label: (weight_tma, x_tma, input). "box": both tiles by TMA, x as a spatial box (X_TMA 2); "flat": x as
    # rows shifted per tap (X_TMA 1, forced; no padding only).
    variants = {
        "ptr": (False, False, x),
        "tma_w": (True, False, x),
        "box": (True, "auto", x),
        "box_nchw": (True, "auto", x.contiguous()),
    }
    if pad == 0:
        variants["flat"] = (True, True, x)

    def setting(label):
        tma, xt, _ = variants.get(label, ("auto", "auto", x))
        conv._state.update(weight_tma=tma, x_tma=xt)

    for label, (_, _, xin) in variants.items():

        def fwd(label=label, xin=xin):
            setting(label)
            return K.conv_fwd(xin, w, bias, dw, db, gate, cas, *geo, "sigmoid", False)[0]

        fns[label] = fwd
    want = None
    for label, fn in fns.items():
        setting(label)
        try:
            y = fn()
            torch.cuda.synchronize()
            if label in variants:
                # gate 0: y is the main conv alone, comparable to cuDNN's
                zero = K.conv_fwd(x, w, bias, dw, db, gate * 0, cas, *geo, "sigmoid", False)[0].float()
                err = (zero - ref).abs().max().item() / ref.abs().max().item()
                if want is None:
                    want = y.float()
                err_y = (y.float() - want).abs().max().item() / want.abs().max().item()
            else:
                err = err_y = 0.0
            dev = do_bench_cudagraph(fn, rep=60, return_mode="median")
            wall = do_bench(fn, warmup=10, rep=60, return_mode="median")
        except Exception as e:  # a failing variant is reported, the probe goes on
            print(f"{name} D={d} {label}: FAILED {type(e).__name__}: {e}")
            continue
        rows.append(dict(shape=name, D=d, variant=label, device_ms=dev, wall_ms=wall, rel_err=err, vs_ptr=err_y))
    conv._state.update(weight_tma="auto", x_tma="auto")
    info = {
        "ptr": _compiled_info(conv._launch_fwd_tuned),
        "tma_w": _compiled_info(conv._launch_tma_tuned),
        "box": _compiled_info(conv._launch_box_tuned),
        "ptr_cfg": str(getattr(conv._fwd_kernel_tuned, "best_config", None)),
        "tma_w_cfg": str(getattr(conv._fwd_tma_tuned, "best_config", None)),
        "box_cfg": str(getattr(conv._fwd_box_tuned, "best_config", None)),
    }
    print(f"{name} D={d} compiled: {json.dumps(info)}")
    # Every spatial-box candidate forced, device time only: how much the autotuner's pick leaves.
    for base in conv.rows_of_128_bytes(conv.BOX_CONFIGS, x.element_size()):
        for bc in (128, 256):
            if not conv.box_config_fits(base.kwargs["BLOCK_M"], bc, base.num_warps, 1 << d.bit_length()):
                continue
            cfg = triton.Config({**base.kwargs, "BLOCK_C": bc}, num_warps=base.num_warps, num_stages=base.num_stages)
            with K.use_config(cfg):
                fn = fns["box"]
                try:
                    fn()
                    dev = do_bench_cudagraph(fn, rep=40, return_mode="median")
                except Exception as e:
                    print(f"  forced {cfg}: FAILED {type(e).__name__}: {e}")
                    continue
            rows.append(dict(shape=name, D=d, variant=f"box[{cfg}]", device_ms=dev, wall_ms=None))
    conv._state.update(weight_tma="auto", x_tma="auto")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ds", default="1,3")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--out", default="probe_conv.json")
    args = ap.parse_args()
    dt = getattr(torch, args.dtype)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    rows: list = []
    for name, (b, c, hw, n, k) in SHAPES.items():
        for d in (int(v) for v in args.ds.split(",")):
            _case(name, b, c, hw, n, k, d, dt, rows)
    head = f"{'shape':20} {'D':>2} {'variant':60} {'device ms':>10} {'wall ms':>9} {'x cudnn_cat':>11}"
    print(f"{head} {'err':>8} {'vs ptr':>8}")
    for row in rows:
        cat = next(
            q["device_ms"]
            for q in rows
            if q["shape"] == row["shape"] and q["D"] == row["D"] and q["variant"] == "cudnn_cat"
        )
        wall = "" if row["wall_ms"] is None else f"{row['wall_ms']:.4f}"
        print(
            f"{row['shape']:20} {row['D']:>2} {row['variant'][:60]:60} {row['device_ms']:10.4f} {wall:>9} "
            f"{row['device_ms'] / cat:11.2f} {row.get('rel_err', 0.0):8.1e} {row.get('vs_ptr', 0.0):8.1e}"
        )
    with open(args.out, "w") as f:
        json.dump({"environment": environment(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
