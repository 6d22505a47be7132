# ruff: noqa: B023  (benchmark closures are called at once, inside the loop)
"""Probe (GPU machine): does a TMA mainloop bring the fused Linear forward closer to cuBLAS?

Variant: x through a 2-D TMA descriptor [M, K], the stacked weight through ONE 3-D descriptor over
Wcat = [1 + D, N, K] (W and V adjacent in memory) with box [P, BN, BK]: rows of branches past D are out of
bounds and come back as zeros (no masks), and the [P, BN, BK] tile is reshaped to [P*BN, BK] for one wgmma of
width P*BN. Same epilogue as the production kernel. Checked against it, then timed beside cuBLAS and it.

    python benchmarks/probe_fwd_tma.py [--ds 0,1,3] [--shape 8192x4096x4096]
"""

from __future__ import annotations

import argparse
import json

import torch
import triton
import triton.language as tl
from pai_fast.kernels import _common as C
from pai_fast.kernels import dendritic_linear as L
from pai_fast.kernels._common import _dendritic_epilogue
from triton.testing import do_bench
from triton.tools.tensor_descriptor import TensorDescriptor


@triton.jit
def _fwd_tma_kernel(
    x_desc,
    w_desc,
    b_ptr,
    c_ptr,
    g_ptr,
    cas_ptr,
    y_ptr,
    h_ptr,
    M,
    N,
    K,
    stride_cd,
    stride_gd,
    stride_ai,
    stride_aj,
    stride_ym,
    stride_hm,
    stride_hd,
    D: tl.constexpr,
    P: tl.constexpr,
    ACT: tl.constexpr,
    SAVE_H: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    BN: tl.constexpr = BLOCK_C // P
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BN)
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m
    off_m = pid_m * BLOCK_M
    off_n = pid_n * BN
    acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)
    for kk in range(0, tl.cdiv(K, BLOCK_K)):
        a = x_desc.load([off_m, kk * BLOCK_K])
        b = tl.reshape(w_desc.load([0, off_n, kk * BLOCK_K]), (BLOCK_C, BLOCK_K))
        acc = tl.dot(a, b.T, acc)
    offs_m = off_m + tl.arange(0, BLOCK_M)
    offs_n = off_n + tl.arange(0, BN)
    rows = offs_m.to(tl.int64)
    _dendritic_epilogue(
        acc,
        offs_n,
        offs_n < N,
        offs_m < M,
        y_ptr + rows * stride_ym,
        h_ptr + rows * stride_hm,
        1,
        stride_hd,
        1,
        b_ptr,
        1,
        c_ptr,
        stride_cd,
        1,
        g_ptr,
        stride_gd,
        1,
        cas_ptr,
        stride_ai,
        stride_aj,
        1,
        D,
        P,
        BN,
        BLOCK_M,
        ACT,
        True,
        SAVE_H,
        tl.float32,
    )


def fwd_tma(x, wcat3, bias, dbias, gate, cascade, save, cfg):
    d = wcat3.shape[0] - 1
    n, k = wcat3.shape[1:]
    m = x.shape[0]
    p = C.next_pow2(1 + d)
    bm, bc, bk = cfg["BLOCK_M"], cfg["BLOCK_C"], cfg["BLOCK_K"]
    bn = bc // p
    y = torch.empty((m, n), device=x.device, dtype=x.dtype)
    h = torch.empty((m, d, n), device=x.device, dtype=x.dtype) if save else y
    xd = TensorDescriptor.from_tensor(x, [bm, bk])
    wd = TensorDescriptor(wcat3, list(wcat3.shape), list(wcat3.stride()), [p, bn, bk])
    grid = (triton.cdiv(m, bm) * triton.cdiv(n, bn),)
    _fwd_tma_kernel[grid](
        xd, wd, bias, dbias if d else bias, gate, cascade, y, h, m, n, k,
        dbias.stride(0) if d else 0, gate.stride(0), cascade.stride(0), cascade.stride(1),
        y.stride(0), h.stride(0) if save else 0, h.stride(1) if save else 0,
        D=d, P=p, ACT=1, SAVE_H=save and d > 0, BLOCK_M=bm, BLOCK_C=bc, BLOCK_K=bk, GROUP_M=8,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )  # fmt: skip
    return y, h


CFGS = [
    dict(BLOCK_M=128, BLOCK_C=256, BLOCK_K=64, num_warps=8, num_stages=3),
    dict(BLOCK_M=128, BLOCK_C=256, BLOCK_K=64, num_warps=8, num_stages=4),
    dict(BLOCK_M=128, BLOCK_C=128, BLOCK_K=64, num_warps=4, num_stages=4),
    dict(BLOCK_M=128, BLOCK_C=128, BLOCK_K=64, num_warps=8, num_stages=5),
    dict(BLOCK_M=256, BLOCK_C=128, BLOCK_K=64, num_warps=8, num_stages=3),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="8192x4096x4096")
    ap.add_argument("--ds", default="0,1,3")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    m, k, n = (int(v) for v in args.shape.split("x"))
    dt = torch.bfloat16
    rows = []
    for d in (int(v) for v in args.ds.split(",")):
        g = torch.Generator(device="cuda").manual_seed(0)
        x = torch.randn(m, k, device="cuda", dtype=dt, generator=g)
        wcat3 = torch.randn(1 + d, n, k, device="cuda", dtype=dt, generator=g) * k**-0.5
        bias = torch.randn(n, device="cuda", dtype=dt, generator=g)
        dbias = torch.randn(max(d, 1), n, device="cuda", dtype=dt, generator=g)[:d]
        gate = torch.randn(d, n, device="cuda", dtype=dt, generator=g)
        cas = torch.randn(d, d, n, device="cuda", dtype=dt, generator=g) * 0.1
        wflat = wcat3.flatten(0, 1)
        ref = lambda save: L.linear_fwd(x, wcat3[0], bias, wcat3[1:], dbias, gate, cas, "sigmoid", save)  # noqa
        y0, h0 = ref(True)
        t = {"cublas_cat": do_bench(lambda: torch.mm(x, wflat.t()), warmup=25, rep=200, return_mode="median")}
        for save in (False, True):
            t[f"triton_tuned_save{int(save)}"] = do_bench(lambda: ref(save), warmup=25, rep=200, return_mode="median")
            for i, cfg in enumerate(CFGS):
                try:
                    y1, h1 = fwd_tma(x, wcat3, bias, dbias, gate, cas, save, cfg)
                    err = (y1.float() - y0.float()).abs().max().item()
                    if save and d:
                        err = max(err, (h1.float() - h0.float()).abs().max().item())
                    ok = err < 5e-2
                    ms = do_bench(lambda: fwd_tma(x, wcat3, bias, dbias, gate, cas, save, cfg), warmup=25, rep=200,
                                  return_mode="median") if ok else None  # fmt: skip
                    t[f"tma{i}_save{int(save)}"] = ms
                    print(f"D={d} save={save} tma cfg{i} {cfg}: err {err:.3g} ms {ms}")
                except Exception as e:  # report, keep probing
                    print(f"D={d} save={save} tma cfg{i} failed: {type(e).__name__}: {str(e)[:300]}")
            for i, cfg in enumerate(CFGS[:2]):
                tc = triton.Config({**{kk: v for kk, v in cfg.items() if kk.startswith("BLOCK")}, "GROUP_M": 8},
                                   num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])  # fmt: skip
                with C.use_config(tc):
                    t[f"ptr{i}_save{int(save)}"] = do_bench(lambda: ref(save), warmup=25, rep=200, return_mode="median")
        print(f"D={d}: " + ", ".join(f"{kk} {v:.4f}" for kk, v in t.items() if v is not None))
        rows.append({"D": d, **t})
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"shape": args.shape, "gpu": torch.cuda.get_device_name(0), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
