"""Fused dendritic Linear: Triton forward kernel and launcher, backward launcher.

Math (CONTRACT.md, spec §2.3), x [M, K], W [N, K], V [D, N, K], G [D, N], B [D, D, N] (entries j < i used):

    z_0 = x W^T + b          u_i = x V_i^T + c_i
    s_i = u_i + sum_{j<i} B[i, j] a_j          a_i = act(s_i)          y = z_0 + sum_i G[i] a_i

Backward, with dy = dL/dy and the saved a_i (h [M, D, N]):

    dz_0 = dy
    for i = D-1 .. 0:   da_i = G[i] dy + sum_{k>i} B[k, i] ds_k        ds_i = da_i act'(a_i)
    dG[i] = sum_m dy a_i     dB[k, i] = sum_m ds_k a_i (i < k)     db = sum_m dy     dc_i = sum_m ds_i
    dX = dZcat Wcat          dWcat = dZcat^T X          (dZcat = [dz_0, ds_0, ..], Wcat = [W; V_0; ..])

Forward: ONE kernel. Every program owns a [BLOCK_M, BN] tile of y. Its K-loop loads one x tile [BLOCK_M, BLOCK_K]
and one stacked weight tile [P * BN, BLOCK_K] whose row block d is W (d = 0) or V_{d-1} (1 <= d <= D, masked
beyond: P = next_pow2(1 + D)), and issues ONE tl.dot into a [BLOCK_M, P * BN] accumulator: the MMA is as wide as a
plain GEMM tile (P * BN = 128..256 columns), so the mainloop runs like a GEMM of width (1+D)N. The epilogue
(_common._dendritic_epilogue) adds the biases and runs the cascade, activation and gated sum in registers. It
writes y, and h = the a_i in x's dtype only when saving for backward: in inference no (1+D)MN intermediate
reaches memory. Cost of the padding: when 1 + D is not a power of two the masked row blocks still cost MMA work
(D = 2 runs like D = 3, D = 4..6 like D = 7).

On Hopper, when W and V sit back to back in one storage (DendriticLinear keeps them so) and the problem is large,
_linear_fwd_tma_kernel runs instead: the same tile and epilogue, but x and the stacked weight arrive by TMA bulk
copies (one 3-D descriptor over Wcat [1 + D, N, K] whose [P, BN, BLOCK_K] box IS the stacked tile; rows past D
come back as zeros). Measured on the H100 (bf16 8192x4096->4096, benchmarks/probe_fwd_tma.py): 9-10 % faster
than the pointer-gather kernel at D = 1 and 3. (With D = 0 the op layer runs cuBLAS instead: pai_fast.ops.)

Backward of a small layer (1 <= D <= 3 and M (1+D) N K up to onepass_max_macs: 2 GMAC for 16-bit types, less for
fp32): ONE launch, _linear_bwd_onepass_kernel. Its first programs own tiles of dWcat, the others tiles of dX; each
recomputes the dZcat tiles it needs in registers from dy and h (_common._dz_branches) and feeds them straight into
its MMAs, and the dWcat programs of the first K block also sum the reductions (db, dc, dG, dB) over all rows, in a
fixed order. No dZ buffer, no partial sums, no torch sum or cast: one launch and three allocations, where the split
backward below makes six host-side calls; small layers are host-bound, so that is what they feel (measured on the
H200: 25 vs 169 µs per eager backward call at 64x784->128 D = 3, bf16; benchmarks/probe_linear_bwd.py). The
recomputation repeats the elementwise dZ work once per K block, so past the threshold the split backward wins.

Backward otherwise: ONE elementwise Triton kernel (_common's dZ kernel) writes dZcat [M, (1+D)N] in x's dtype
and per-program partial sums of db, dc, dG, dB into one buffer (one torch sum: deterministic), then cuBLAS:
dWcat = dZcat^T X is one GEMM, already the packed weight gradient (pai_fast._layout); dX = dZcat Wcat is
one GEMM when weight and dendrite_weight are adjacent in one storage (DendriticLinear), else two
(dz_0 W + dZ_dend V_flat, no copy of the weights).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._layout import seven_grads, small_rows, stacked_view
from .._plans import PlanCache, aligned16, serial
from ..backends import device_capability

try:  # Triton >= 3.2: host-side TMA descriptors
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover
    TensorDescriptor = None

from ._common import (
    ALL_CONFIGS,
    DzLaunch,
    _dendritic_epilogue,
    _dz_branches,
    _grouped_tile,
    _stack_branches,
    _stacked_weight_rows,
    _state,
    acc_dtype,
    autotuned,
    cdiv,
    check_common,
    dot_precision,
    dz_finish_mode,
    interpreting,
    launch_config,
    next_pow2,
    plan_state,
    rows_of_128_bytes,
    select_configs,
    torch_acc_dtype,
)
from ._launch import Launcher

# --------------------------------------------------------------------------------------------------------------
# Reference (float64 oracle lives in pai_fast.reference; this is the same math, kept beside the kernel)
# --------------------------------------------------------------------------------------------------------------


def linear_ref(x, weight, bias, dendrite_weight, dendrite_bias, gate, cascade, activation="sigmoid"):
    """Plain-torch dendritic Linear (loops over dendrites); differentiable, any dtype."""
    act = {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu, "identity": lambda t: t}[activation]
    y = torch.nn.functional.linear(x, weight, bias)
    acts = []
    for i in range(dendrite_weight.shape[0]):
        s = torch.nn.functional.linear(x, dendrite_weight[i], None if dendrite_bias is None else dendrite_bias[i])
        for j in range(i):
            s = s + cascade[i, j] * acts[j]
        acts.append(act(s))
        y = y + gate[i] * acts[i]
    return y


# --------------------------------------------------------------------------------------------------------------
# Forward kernel
# --------------------------------------------------------------------------------------------------------------


@triton.jit
def _linear_fwd_kernel(
    x_ptr,
    w_ptr,
    v_ptr,
    b_ptr,
    c_ptr,
    g_ptr,
    cas_ptr,
    y_ptr,
    h_ptr,
    M,
    N,
    K,
    M_KEY,  # bucketed M, only for the autotune key
    stride_xm,
    stride_xk,
    stride_wn,
    stride_vd,
    stride_vn,
    stride_wk,  # K stride shared by weight and dendrite_weight (the launcher makes it so)
    stride_b,
    stride_cd,
    stride_cn,
    stride_gd,
    stride_gn,
    stride_ai,
    stride_aj,
    stride_an,
    stride_ym,
    stride_yn,
    stride_hm,
    stride_hd,
    stride_hn,
    D: tl.constexpr,
    P: tl.constexpr,
    ACT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SAVE_H: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    EVEN_K: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_C: tl.constexpr,  # stacked tile width P * BN
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    BN: tl.constexpr = BLOCK_C // P
    pid_m, pid_n = _grouped_tile(M, N, BLOCK_M, BN, GROUP_M)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BN + tl.arange(0, BN)
    offs_k = tl.arange(0, BLOCK_K)
    # Rows / channels past the end wrap around (their results are never stored), so the loads need no row mask.
    rows_in = tl.max_contiguous(tl.multiple_of(offs_m % M, BLOCK_M), BLOCK_M).to(tl.int64)
    x_ptrs = x_ptr + rows_in[:, None] * stride_xm + offs_k[None, :] * stride_xk

    w_rows, c_mask = _stacked_weight_rows(w_ptr, v_ptr, pid_n, N, stride_wn, stride_vd, stride_vn, D, BN, BLOCK_C)
    w_ptrs = w_rows[:, None] + offs_k[None, :] * stride_wk
    PADDED: tl.constexpr = P != D + 1

    acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=ACC_DTYPE)
    for kk in range(0, tl.cdiv(K, BLOCK_K)):
        if EVEN_K:
            a = tl.load(x_ptrs)
            if PADDED:
                b = tl.load(w_ptrs, mask=c_mask[:, None], other=0.0)
            else:
                b = tl.load(w_ptrs)
        else:
            k_mask = offs_k < K - kk * BLOCK_K
            a = tl.load(x_ptrs, mask=k_mask[None, :], other=0.0)
            b = tl.load(w_ptrs, mask=c_mask[:, None] & k_mask[None, :], other=0.0)
        acc = tl.dot(a, tl.trans(b), acc, input_precision=DOT_PRECISION, out_dtype=ACC_DTYPE)
        x_ptrs += BLOCK_K * stride_xk
        w_ptrs += BLOCK_K * stride_wk

    rows = offs_m.to(tl.int64)
    _dendritic_epilogue(
        acc,
        offs_n,
        offs_n < N,
        offs_m < M,
        y_ptr + rows * stride_ym,
        h_ptr + rows * stride_hm,
        stride_yn,
        stride_hd,
        stride_hn,
        b_ptr,
        stride_b,
        c_ptr,
        stride_cd,
        stride_cn,
        g_ptr,
        stride_gd,
        stride_gn,
        cas_ptr,
        stride_ai,
        stride_aj,
        stride_an,
        D,
        P,
        BN,
        BLOCK_M,
        ACT,
        HAS_BIAS,
        SAVE_H,
        ACC_DTYPE,
    )


@triton.jit
def _linear_fwd_tma_kernel(
    x_desc,  # TMA descriptor over x [M, K], box [BLOCK_M, BLOCK_K]
    w_desc,  # TMA descriptor over Wcat [1 + D, N, K] (W and V adjacent), box [P, BN, BLOCK_K]
    b_ptr,
    c_ptr,
    g_ptr,
    cas_ptr,
    y_ptr,
    h_ptr,
    M,
    N,
    K,
    M_KEY,  # bucketed M, only for the autotune key
    stride_b,
    stride_cd,
    stride_cn,
    stride_gd,
    stride_gn,
    stride_ai,
    stride_aj,
    stride_an,
    stride_ym,
    stride_yn,
    stride_hm,
    stride_hd,
    stride_hn,
    D: tl.constexpr,
    P: tl.constexpr,
    ACT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SAVE_H: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """The forward on Hopper's TMA: the same tile and epilogue as _linear_fwd_kernel, but the K-loop's tiles are
    bulk copies. The [P, BN, BLOCK_K] box of the 3-D weight descriptor is the stacked tile: rows of branches past
    D and of channels/K past the end come back as zeros (no masks), and it is used as [P * BN, BLOCK_K]."""
    BN: tl.constexpr = BLOCK_C // P
    pid_m, pid_n = _grouped_tile(M, N, BLOCK_M, BN, GROUP_M)
    off_m = pid_m * BLOCK_M
    off_n = pid_n * BN
    acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)
    for kk in range(0, tl.cdiv(K, BLOCK_K)):
        a = x_desc.load([off_m, kk * BLOCK_K])
        b = tl.reshape(w_desc.load([0, off_n, kk * BLOCK_K]), (BLOCK_C, BLOCK_K))
        acc = tl.dot(a, b.T, acc, input_precision=DOT_PRECISION)
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
        stride_yn,
        stride_hd,
        stride_hn,
        b_ptr,
        stride_b,
        c_ptr,
        stride_cd,
        stride_cn,
        g_ptr,
        stride_gd,
        stride_gn,
        cas_ptr,
        stride_ai,
        stride_aj,
        stride_an,
        D,
        P,
        BN,
        BLOCK_M,
        ACT,
        HAS_BIAS,
        SAVE_H,
        tl.float32,
    )


def _prune(configs, named_args, **kwargs):
    a = named_args
    return select_configs(configs, a["M"], a["N"], a["K"], kwargs["P"], a["x_ptr"].element_size())


_heuristics = triton.heuristics({"EVEN_K": lambda a: a["K"] % a["BLOCK_K"] == 0})
_fwd_kernel = _heuristics(_linear_fwd_kernel)
# The autotuned variant wraps the same JIT function (one compile cache); never built under the interpreter.
_TUNE_KEY = ["M_KEY", "N", "K", "D", "SAVE_H", "HAS_BIAS"]
_fwd_kernel_tuned = autotuned(_fwd_kernel, ALL_CONFIGS, _TUNE_KEY, _prune)
_launch_fwd = Launcher(_fwd_kernel)
_launch_fwd_tuned = Launcher(_fwd_kernel_tuned)


def _tma_block_shapes(nargs: dict) -> None:
    """Autotune pre-hook: the descriptors' boxes follow the config's tile."""
    p, bk = nargs["P"], nargs["BLOCK_K"]
    nargs["x_desc"].block_shape = [nargs["BLOCK_M"], bk]
    nargs["w_desc"].block_shape = [p, nargs["BLOCK_C"] // p, bk]


# Measured on the H100 (benchmarks/probe_fwd_tma.py, bf16 8192x4096->4096): 128x256 with 4 stages wins without
# saving h, 3 stages when h is written too (the epilogue's stores); 256x128 came within 1-4 % of the best.
# fp32 (tf32 when torch allows it) keeps the same 128-byte K rows, so BLOCK_K halves: 48 KB per stage.
TMA_CONFIGS = [
    triton.Config(
        {"BLOCK_M": bm, "BLOCK_C": bc, "BLOCK_K": bk, "GROUP_M": 8}, num_warps=8, num_stages=st,
        pre_hook=_tma_block_shapes,
    )
    for bk in (64, 32)
    for bm, bc, st in ((128, 256, 3), (128, 256, 4), (256, 128, 3))
]  # fmt: skip


def tma_configs(dtype: torch.dtype) -> list:
    """The TMA autotune candidates for an input dtype: K rows of 128 bytes."""
    return rows_of_128_bytes(TMA_CONFIGS, torch.empty((), dtype=dtype).element_size())


def _prune_tma(configs, named_args, **kwargs):
    return rows_of_128_bytes(configs, named_args["x_desc"].base.element_size())


_fwd_tma_tuned = autotuned(_linear_fwd_tma_kernel, TMA_CONFIGS, _TUNE_KEY, _prune_tma)


_launch_tma_tuned = Launcher(_fwd_tma_tuned)
_launch_tma = Launcher(_linear_fwd_tma_kernel)


# --------------------------------------------------------------------------------------------------------------
# One-pass backward kernel (small layers)
# --------------------------------------------------------------------------------------------------------------


@triton.jit
def _onepass_dz(
    rows64, r_mask, offs_n, n_mask, dy_ptr, stride_dym, stride_dyn, h_ptr, stride_hm, stride_hd, stride_hn,
    g_ptr, stride_gd, stride_gn, cas_ptr, stride_ai, stride_aj, stride_an,
    D: tl.constexpr, P: tl.constexpr, ACT: tl.constexpr, ACC_DTYPE: tl.constexpr,
):  # fmt: skip
    """(dy, h row pointers, tile mask, dZcat branches) of one tile of rows x channels (_dz_branches)."""
    mn = r_mask[:, None] & n_mask[None, :]
    dy = tl.load(dy_ptr + rows64[:, None] * stride_dym + offs_n[None, :] * stride_dyn, mask=mn, other=0.0)
    dy = dy.to(ACC_DTYPE)
    h_ptrs = h_ptr + rows64[:, None] * stride_hm + offs_n[None, :] * stride_hn
    dz, _ = _dz_branches(dy, h_ptrs, mn, stride_hd, g_ptr, stride_gd, stride_gn, cas_ptr, stride_ai, stride_aj,
                         stride_an, offs_n, n_mask, D, P, ACT, ACC_DTYPE)  # fmt: skip
    return dy, h_ptrs, mn, dz


@triton.jit
def _onepass_dw(
    pid, num_n, dy_ptr, x_ptr, g_ptr, cas_ptr, h_ptr, dw_ptr, ds_ptr, M, N, K,
    stride_dym, stride_dyn, stride_xm, stride_xk, stride_gd, stride_gn, stride_ai, stride_aj, stride_an,
    stride_hm, stride_hd, stride_hn,
    D: tl.constexpr, P: tl.constexpr, ACT: tl.constexpr, ACC_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BN: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr,
):  # fmt: skip
    """One [BN * P, BK] tile of dWcat (every branch of BN channels; row n * P + b = branch b of channel n):
    += dZcat[rows, tile]^T x[rows, k-block] over all rows; k-block 0 also writes the channels' reductions."""
    BLOCK_C: tl.constexpr = P * BN
    pid_n = pid % num_n
    pid_k = pid // num_n  # k-block 0 first: those programs also run the reductions
    offs_n = pid_n * BN + tl.arange(0, BN)
    n_mask = offs_n < N
    offs_k = pid_k * BK + tl.arange(0, BK)
    k_mask = offs_k < K
    acc = tl.zeros((BLOCK_C, BK), dtype=ACC_DTYPE)
    for m0 in range(0, M, BM):
        rows = m0 + tl.arange(0, BM)
        r_mask = rows < M
        rows64 = rows.to(tl.int64)
        _, _, _, dz = _onepass_dz(rows64, r_mask, offs_n, n_mask, dy_ptr, stride_dym, stride_dyn, h_ptr, stride_hm,
                                  stride_hd, stride_hn, g_ptr, stride_gd, stride_gn, cas_ptr, stride_ai, stride_aj,
                                  stride_an, D, P, ACT, ACC_DTYPE)  # fmt: skip
        dzc = tl.reshape(_stack_branches(dz, P), (BM, BLOCK_C)).to(x_ptr.dtype.element_ty)
        xt = tl.load(
            x_ptr + rows64[:, None] * stride_xm + offs_k[None, :] * stride_xk,
            mask=r_mask[:, None] & k_mask[None, :],
            other=0.0,
        )
        acc = tl.dot(tl.trans(dzc), xt, acc, input_precision=DOT_PRECISION, out_dtype=ACC_DTYPE)
    offs_c = tl.arange(0, BLOCK_C)
    branch = offs_c % P
    chan = pid_n * BN + offs_c // P
    w_rows = (branch * N + chan).to(tl.int64)
    w_mask = ((branch <= D) & (chan < N))[:, None] & k_mask[None, :]
    tl.store(dw_ptr + w_rows[:, None] * K + offs_k[None, :], acc.to(dw_ptr.dtype.element_ty), mask=w_mask)
    if pid_k == 0:
        p = tl.arange(0, P)
        red_z = tl.zeros((P, BN), dtype=ACC_DTYPE)  # row 0: db, row i + 1: dc_i (= sum ds_i)
        red_g = tl.zeros((P, BN), dtype=ACC_DTYPE)  # row i + 1: dG[i]
        red_b = tl.zeros((P, P, BN), dtype=ACC_DTYPE)  # [k + 1, i]: dB[k, i], k > i
        for m0 in range(0, M, BM):
            rows = m0 + tl.arange(0, BM)
            dy, h_ptrs, mn, dz = _onepass_dz(rows.to(tl.int64), rows < M, offs_n, n_mask, dy_ptr, stride_dym,
                                             stride_dyn, h_ptr, stride_hm, stride_hd, stride_hn, g_ptr, stride_gd,
                                             stride_gn, cas_ptr, stride_ai, stride_aj, stride_an, D, P, ACT,
                                             ACC_DTYPE)  # fmt: skip
            red_z += tl.where(p[:, None] == 0, tl.sum(dy, axis=0)[None, :], 0.0)
            for i in tl.static_range(D):
                a_i = tl.load(h_ptrs + i * stride_hd, mask=mn, other=0.0).to(ACC_DTYPE)
                red_z += tl.where(p[:, None] == i + 1, tl.sum(dz[i + 1], axis=0)[None, :], 0.0)
                red_g += tl.where(p[:, None] == i + 1, tl.sum(dy * a_i, axis=0)[None, :], 0.0)
                for k in tl.static_range(i + 1, D):
                    s_ki = tl.sum(dz[k + 1] * a_i, axis=0)
                    red_b += tl.where((p[:, None, None] == k + 1) & (p[None, :, None] == i), s_ki[None, None, :], 0.0)
        out_t = ds_ptr.dtype.element_ty
        # dsmall rows: row p <= D of red_z is row p (db, then dc_i); dG[i] is row 1 + D + i; dB[k, i] is
        # row 1 + 2D + k D + i (zero where k <= i: those entries are unused by the forward).
        pn = (p <= D)[:, None] & n_mask[None, :]
        tl.store(ds_ptr + p[:, None] * N + offs_n[None, :], red_z.to(out_t), mask=pn)
        g_mask = ((p >= 1) & (p <= D))[:, None] & n_mask[None, :]
        tl.store(ds_ptr + (D + p)[:, None] * N + offs_n[None, :], red_g.to(out_t), mask=g_mask)
        pk = p[:, None, None]
        pi = p[None, :, None]
        b_rows = 1 + 2 * D + (pk - 1) * D + pi
        b_mask = (pk >= 1) & (pk <= D) & (pi < D) & n_mask[None, None, :]
        tl.store(ds_ptr + b_rows * N + offs_n[None, None, :], red_b.to(out_t), mask=b_mask)


@triton.jit
def _onepass_dx(
    pid, dy_ptr, w_ptr, v_ptr, g_ptr, cas_ptr, h_ptr, dx_ptr, M, N, K,
    stride_dym, stride_dyn, stride_wn, stride_vd, stride_vn, stride_wk, stride_gd, stride_gn,
    stride_ai, stride_aj, stride_an, stride_hm, stride_hd, stride_hn, stride_dxm, stride_dxk,
    D: tl.constexpr, P: tl.constexpr, ACT: tl.constexpr, ACC_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BN: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr,
):  # fmt: skip
    """One [BM, BK] tile of dX: += dZcat[rows, c] Wcat[c, k-block] over all stacked channels c."""
    BLOCK_C: tl.constexpr = P * BN
    num_k = tl.cdiv(K, BK)
    pid_m = pid // num_k
    pid_k = pid % num_k
    rows = pid_m * BM + tl.arange(0, BM)
    r_mask = rows < M
    rows64 = rows.to(tl.int64)
    offs_k = pid_k * BK + tl.arange(0, BK)
    k_mask = offs_k < K
    offs_c = tl.arange(0, BLOCK_C)
    branch = offs_c % P  # stacked column n * P + b: branch b of channel n
    dend = tl.maximum(branch - 1, 0).to(tl.int64)
    acc = tl.zeros((BM, BK), dtype=ACC_DTYPE)
    for n0 in range(0, N, BN):
        offs_n = n0 + tl.arange(0, BN)
        n_mask = offs_n < N
        _, _, _, dz = _onepass_dz(rows64, r_mask, offs_n, n_mask, dy_ptr, stride_dym, stride_dyn, h_ptr, stride_hm,
                                  stride_hd, stride_hn, g_ptr, stride_gd, stride_gn, cas_ptr, stride_ai, stride_aj,
                                  stride_an, D, P, ACT, ACC_DTYPE)  # fmt: skip
        dzc = tl.reshape(_stack_branches(dz, P), (BM, BLOCK_C)).to(w_ptr.dtype.element_ty)
        chan = (n0 + offs_c // P).to(tl.int64)
        w_rows = tl.where(branch == 0, w_ptr + chan * stride_wn, v_ptr + dend * stride_vd + chan * stride_vn)
        c_mask = (branch <= D) & (chan < N)
        wt = tl.load(w_rows[:, None] + offs_k[None, :] * stride_wk, mask=c_mask[:, None] & k_mask[None, :], other=0.0)
        acc = tl.dot(dzc, wt, acc, input_precision=DOT_PRECISION, out_dtype=ACC_DTYPE)
    tl.store(
        dx_ptr + rows64[:, None] * stride_dxm + offs_k[None, :] * stride_dxk,
        acc.to(dx_ptr.dtype.element_ty),
        mask=r_mask[:, None] & k_mask[None, :],
    )


@triton.jit
def _linear_bwd_onepass_kernel(
    dy_ptr,
    x_ptr,
    w_ptr,
    v_ptr,
    g_ptr,
    cas_ptr,
    h_ptr,
    dx_ptr,
    dw_ptr,  # dWcat [(1 + D) N, K], contiguous
    ds_ptr,  # dsmall [1 + 2D + D*D, N], contiguous
    M,
    N,
    K,
    stride_dym,
    stride_dyn,
    stride_xm,
    stride_xk,
    stride_wn,
    stride_vd,
    stride_vn,
    stride_wk,
    stride_gd,
    stride_gn,
    stride_ai,
    stride_aj,
    stride_an,
    stride_hm,
    stride_hd,
    stride_hn,
    stride_dxm,
    stride_dxk,
    D: tl.constexpr,
    P: tl.constexpr,
    ACT: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BN: tl.constexpr,
    BM_W: tl.constexpr,
    BK_W: tl.constexpr,
    BM_X: tl.constexpr,
    BK_X: tl.constexpr,
):
    """The whole backward in one launch; dZcat never reaches memory. Programs [0, T_W) own a [P * BN, BK_W] tile
    of dWcat (every branch of BN channels) and walk all rows: dWcat tile += dZcat[rows, tile]^T x[rows, k-block],
    with dZcat recomputed in registers from dy and h (_dz_branches); the ones with k-block 0 also walk the rows for the
    four reductions (db, dc, dG, dB: sums over rows per channel, in a fixed order, so deterministic with no
    atomics). Programs past T_W own a [BM_X, BK_X] tile of dX and walk all channels: dX tile += dZcat[rows, c]
    Wcat[c, k-block], recomputing dZcat per channel block. The recomputation repeats the elementwise dZ work once
    per k-block: cheap next to the launches it saves where a layer is small (the launcher's threshold)."""
    pid = tl.program_id(0)
    num_n = tl.cdiv(N, BN)
    tiles_w = num_n * tl.cdiv(K, BK_W)
    # Each part in its own function: Triton merges same-named variables across the two branches.
    if pid < tiles_w:
        _onepass_dw(pid, num_n, dy_ptr, x_ptr, g_ptr, cas_ptr, h_ptr, dw_ptr, ds_ptr, M, N, K, stride_dym,
                    stride_dyn, stride_xm, stride_xk, stride_gd, stride_gn, stride_ai, stride_aj, stride_an,
                    stride_hm, stride_hd, stride_hn, D, P, ACT, ACC_DTYPE, DOT_PRECISION, BN, BM_W, BK_W)  # fmt: skip
    else:
        _onepass_dx(pid - tiles_w, dy_ptr, w_ptr, v_ptr, g_ptr, cas_ptr, h_ptr, dx_ptr, M, N, K, stride_dym,
                    stride_dyn, stride_wn, stride_vd, stride_vn, stride_wk, stride_gd, stride_gn, stride_ai,
                    stride_aj, stride_an, stride_hm, stride_hd, stride_hn, stride_dxm, stride_dxk, D, P, ACT,
                    ACC_DTYPE, DOT_PRECISION, BN, BM_X, BK_X)  # fmt: skip


_launch_onepass = Launcher(_linear_bwd_onepass_kernel)
_TMA_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _tma_weight(x2d: torch.Tensor, weight: torch.Tensor, dendrite_weight: torch.Tensor, p: int, shape_only=False):
    """Wcat [1 + D, N, K] for the TMA kernel, or None where the pointer kernel runs: the interpreter, before
    Hopper, fp64 and fp32 without TF32, small problems (building descriptors costs host time), P > 8, or tensors
    TMA cannot address (x rows not 16-byte aligned, W and V not adjacent in one storage: DendriticLinear keeps
    them so). shape_only: only the checks a call signature settles, as a bool (the plan's part)."""
    m, k = x2d.shape
    n = weight.shape[0]
    if TensorDescriptor is None or interpreting() or p > 8 or x2d.dtype not in _TMA_DTYPES:
        return None
    if x2d.dtype == torch.float32 and dot_precision(x2d.dtype) != "tf32":
        return None  # true-fp32 products have no wgmma form: the pointer kernel runs them
    if m < 1024 or n * p < 1024 or not x2d.is_cuda or device_capability(x2d.device) < (9, 0):
        return None
    esz = x2d.element_size()
    if x2d.stride(1) != 1 or (x2d.stride(0) * esz) % 16 or (k * esz) % 16 or dendrite_weight.shape[0] == 0:
        return None
    if shape_only:
        return True
    wcat = stacked_view(weight, dendrite_weight)
    if wcat is None or wcat.data_ptr() % 16 or x2d.data_ptr() % 16:
        return None
    return wcat


def _heuristic_config(m: int, n: int, k: int, p: int, dtype: torch.dtype) -> dict:
    """Fixed config when not autotuning (interpreter, or PAI_FAST_TRITON_AUTOTUNE=0)."""
    if interpreting():
        # Interpreter cost ~ number of programs: few, large tiles.
        bn = min(max(1, next_pow2(n)), 32)
        return dict(
            BLOCK_M=min(64, max(16, next_pow2(m))),
            BLOCK_C=max(16, p * bn),
            BLOCK_K=32,
            GROUP_M=8,
            num_warps=4,
            num_stages=1,
        )
    if dtype == torch.float64:
        return dict(BLOCK_M=64, BLOCK_C=64, BLOCK_K=16, GROUP_M=8, num_warps=4, num_stages=2)
    if m >= 1024 and n * p >= 1024:
        if dtype == torch.float32:  # 4-byte tiles: a 128 x 256 fp32 tile spills (ptxas, sm_90)
            return dict(BLOCK_M=128, BLOCK_C=128, BLOCK_K=32, GROUP_M=8, num_warps=8, num_stages=3)
        return dict(BLOCK_M=128, BLOCK_C=256, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=3)
    return dict(BLOCK_M=64, BLOCK_C=max(64, min(128, p * 16)), BLOCK_K=64, GROUP_M=8, num_warps=4, num_stages=3)


# --------------------------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------------------------


_plans = PlanCache(strides=True)  # _FwdPlan per call signature (host time: pai_fast._plans)
_bwd_plans = PlanCache(strides=True)  # _BwdPlan per call signature


def _check_linear(x2d, weight, bias, dendrite_weight, dendrite_bias, gate, cascade, activation):
    act = check_common("linear_fwd", x2d, weight, activation)
    if x2d.dim() != 2:
        raise ValueError(f"linear_fwd: x2d must be 2-D [M, K], got shape {list(x2d.shape)}")
    if weight.dim() != 2 or weight.shape[1] != x2d.shape[1]:
        raise ValueError(f"linear_fwd: weight must be [N, {x2d.shape[1]}], got {list(weight.shape)}")
    n, k = weight.shape
    d = dendrite_weight.shape[0] if dendrite_weight.dim() == 3 else -1
    if dendrite_weight.dim() != 3 or tuple(dendrite_weight.shape[1:]) != (n, k):
        raise ValueError(f"linear_fwd: dendrite_weight must be [D, {n}, {k}], got {list(dendrite_weight.shape)}")
    if dendrite_weight.dtype != x2d.dtype:
        raise TypeError(f"linear_fwd: dendrite_weight dtype must be {x2d.dtype}, got {dendrite_weight.dtype}")
    if tuple(gate.shape) != (d, n):
        raise ValueError(f"linear_fwd: gate must be [{d}, {n}], got {list(gate.shape)}")
    if tuple(cascade.shape) != (d, d, n):
        raise ValueError(f"linear_fwd: cascade must be [{d}, {d}, {n}], got {list(cascade.shape)}")
    if (bias is None) != (dendrite_bias is None):
        raise ValueError("linear_fwd: dendrite_bias must be given exactly when bias is given")
    if bias is not None and (tuple(bias.shape) != (n,) or tuple(dendrite_bias.shape) != (d, n)):
        raise ValueError(
            f"linear_fwd: bias must be [{n}] and dendrite_bias [{d}, {n}], got {list(bias.shape)} and "
            f"{list(dendrite_bias.shape)}"
        )
    return act, n, k, d


class _FwdPlan:
    """What one forward call signature (shapes, strides, dtypes, devices, activation, flags) fixes: output
    shapes, the kernel's integer arguments and constexprs, the launch config and grid."""

    __slots__ = ("serial", "m", "n", "d", "p", "has_bias", "save", "copy_w", "tma", "ints", "meta", "grid",
                 "launch", "tma_meta", "tma_launch", "x_box", "w_box")  # fmt: skip

    def __init__(self, x2d, weight, bias, dendrite_weight, dendrite_bias, gate, cascade, activation, save):
        act, n, k, d = _check_linear(x2d, weight, bias, dendrite_weight, dendrite_bias, gate, cascade, activation)
        m = x2d.shape[0]
        p = next_pow2(1 + d)
        self.serial, self.m, self.n, self.d, self.p = serial(), m, n, d, p
        self.has_bias = has_bias = bias is not None
        self.save = save = bool(save)
        # The kernel walks K with one stride for W and V: true for any contiguous weights; otherwise copy.
        self.copy_w = d > 0 and weight.stride(1) != dendrite_weight.stride(2)
        ws = (k, 1) if self.copy_w else weight.stride()
        vs = (n * k, k, 1) if self.copy_w else (dendrite_weight.stride() if d > 0 else (0, 0, 0))
        cs = dendrite_bias.stride() if has_bias else (0, 0)
        self.ints = (
            m, n, k, min(next_pow2(m), 8192),
            x2d.stride(0), x2d.stride(1),
            ws[0], vs[0], vs[1], ws[1],
            bias.stride(0) if has_bias else 0, cs[0], cs[1],
            gate.stride(0), gate.stride(1),
            cascade.stride(0), cascade.stride(1), cascade.stride(2),
            n, 1,
            *((d * n, n, 1) if save else (0, 0, 0)),
        )  # fmt: skip
        self.meta = dict(
            D=d,
            P=p,
            ACT=act,
            HAS_BIAS=has_bias,
            SAVE_H=save and d > 0,
            ACC_DTYPE=acc_dtype(x2d.dtype),
            DOT_PRECISION=dot_precision(x2d.dtype),
        )
        cfg = launch_config(lambda: _heuristic_config(m, n, k, p, x2d.dtype))
        self.grid = self._grid if cfg is None else self._grid(cfg)
        self.launch = _launch_fwd_tuned if cfg is None else _launch_fwd
        if cfg is not None:
            self.meta.update(cfg)
        # Whether the TMA kernel may run (the per-call part, storage adjacency and alignment, is _tma_weight's).
        self.tma = _tma_weight(x2d, weight, dendrite_weight, p, shape_only=True)
        if self.tma:
            self.tma_meta = {key: v for key, v in self.meta.items() if key != "ACC_DTYPE"}
            self.tma_launch = _launch_tma_tuned if cfg is None else _launch_tma
            box = cfg or tma_configs(x2d.dtype)[0].kwargs  # the autotuner's pre-hook re-sets the boxes per config
            self.x_box = [box["BLOCK_M"], box["BLOCK_K"]]
            self.w_box = [p, box["BLOCK_C"] // p, box["BLOCK_K"]]

    def _grid(self, meta: dict) -> tuple[int]:
        return (cdiv(self.m, meta["BLOCK_M"]) * cdiv(self.n, meta["BLOCK_C"] // self.p),)


def linear_fwd(
    x2d: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    dendrite_weight: torch.Tensor,
    dendrite_bias: torch.Tensor | None,
    gate: torch.Tensor,
    cascade: torch.Tensor,
    activation: str,
    save_for_backward: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """y [M, N] in x's dtype, and h [M, D, N] (the a_i in x's dtype) when save_for_backward else empty(0)."""
    tensors = (x2d, weight, bias, dendrite_weight, dendrite_bias, gate, cascade)
    plan = _plans.get(
        tensors,
        (activation, save_for_backward, *plan_state(x2d.dtype)),
        lambda: _FwdPlan(*tensors, activation, save_for_backward),
    )
    m, n, d = plan.m, plan.n, plan.d
    dev, dt = x2d.device, x2d.dtype
    y = torch.empty((m, n), device=dev, dtype=dt)
    h = torch.empty((m, d, n) if plan.save else (0,), device=dev, dtype=dt)
    if m == 0 or n == 0:
        return y, h
    if plan.copy_w:
        weight, dendrite_weight = weight.contiguous(), dendrite_weight.contiguous()
    has_bias = plan.has_bias
    ptrs = (
        x2d, weight, dendrite_weight if d > 0 else weight,
        bias if has_bias else y, dendrite_bias if has_bias else y,
        gate, cascade, y, h,
    )  # fmt: skip
    wcat3 = _tma_weight(x2d, weight, dendrite_weight, plan.p) if plan.tma else None
    if wcat3 is not None:
        k = x2d.shape[1]
        descs = (
            TensorDescriptor(x2d, [m, k], [x2d.stride(0), 1], plan.x_box),
            TensorDescriptor(wcat3, [d + 1, n, k], list(wcat3.stride()), plan.w_box),
        )
        ints = plan.ints
        # The plan fixes the descriptors' boxes and dtypes too: the key is the pointer launch's (a key computed
        # from every argument cost ~50 µs per call in the conv's TMA launch, h200_probe_conv_host_31fe866).
        key = (plan.serial, aligned16(ptrs[3:]))
        plan.tma_launch(plan.grid, descs + ptrs[3:] + ints[:4] + ints[10:], plan.tma_meta, key)
        return y, h
    # The plan fixes every integer argument and constexpr: the launch key adds only the pointers' alignment.
    plan.launch(plan.grid, ptrs + plan.ints, plan.meta, (plan.serial, aligned16(ptrs)))
    return y, h


def _stacked_view(weight: torch.Tensor, dendrite_weight: torch.Tensor) -> torch.Tensor | None:
    """Wcat [(1+D)N, K] as a zero-copy view when W and V sit back to back in one storage."""
    return stacked_view(weight, dendrite_weight, flat=True)


def _like(t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """t with exactly the strides torch.empty_like(ref) has (what the op's fake kernel promises)."""
    if t.stride() == ref.stride() or ref.numel() <= 1:
        return t
    out = torch.empty_like(ref)
    if out.stride() == t.stride():
        return t
    out.copy_(t)
    return out


# The one-pass backward (one launch, dZ recomputed inside both GEMMs) runs up to this many multiply-adds per GEMM
# (M (1 + D) N K), by how its GEMMs run. Measured on the H200 (benchmarks/probe_linear_bwd.py, D = 1 and 3): its
# device time passes the split backward's (dZ kernel + two cuBLAS GEMMs) near 0.3 GMAC, but the split backward's
# host-side ops cost ~130-190 µs per call there against ~10-100 µs, so in eager mode the one-pass one is ahead:
#   bf16 (tensor cores) up to ~2 GMAC: 1024x1024->1024 D = 1 77 vs 178 µs; 4096x512->640 D = 1 (2.7 GMAC) 212 vs
#   178 µs; 256x1024->1024 D = 3 (1.07 GMAC) 97 vs 177 µs;
#   true fp32 (FMA dots, TF32 off) up to ~0.5 GMAC: 256x1024->1024 D = 1 103 vs 194 µs, D = 3 237 vs 127 µs.
# TF32 sits between (tensor cores at half the bf16 rate): 2^30, where the bench's 256x1024->1024 D = 3 row lies.
# fp64 shares true fp32's limit (not probed; its dots are no faster).
# The choice does not depend on CUDA-graph capture (a path first taken inside a capture would compile there); a
# graph-captured model of mid-size layers pays the one-pass device time.
ONEPASS_MAX_MACS = {"16-bit": 1 << 31, "tf32": 1 << 30, "ieee": 1 << 29}


def onepass_max_macs(dtype: torch.dtype) -> int:
    """The auto threshold for an input dtype (see ONEPASS_MAX_MACS): by the dot its GEMMs run."""
    return ONEPASS_MAX_MACS["16-bit" if dtype.itemsize == 2 else dot_precision(dtype)]


ONEPASS_MAX_P = 4  # auto: D <= 3 (P = 8 spills registers; backward_path("onepass") still runs D <= 7)


def _columns_fit_int32(grad_y, x2d, weight, dendrite_weight, gate, cascade, h) -> bool:
    """Whether every offset the one-pass kernel computes in int32 fits: it widens row (and weight-row) offsets to
    int64 but indexes columns, branches and K in int32 (cheaper address math). True for dense layers within the
    MAC threshold; a forced call on huge strided views may fail it (and take the split backward)."""

    def span(t, first):
        return sum((size - 1) * abs(st) for size, st in zip(t.shape[first:], t.stride()[first:]))

    rows_wide = (grad_y, x2d, weight, dendrite_weight, h)  # dim 0 offsets are int64 in the kernel
    return max(*(span(t, 1) for t in rows_wide), span(gate, 0), span(cascade, 0)) < 1 << 31


def _onepass_config(p: int, elem_size: int) -> dict:
    """Tiles of the one-pass backward: BN * P = 128 stacked dZ columns (the MMA width); K blocks of 64 elements for
    2-byte types up to P = 4, else 32; row blocks of 64 for dW at P = 2, else 32 (register pressure grows with P),
    and 32 for dX (twice the programs). ptxas (sm_90): no spills up to P = 4 (bf16, fp16, fp32; fp64 at P = 2:
    16 bytes); P = 8 spills a little (forced only)."""
    bn = max(16, 128 // p)
    if interpreting():  # interpreter cost ~ programs x tile ops: few, mid-size tiles
        return dict(BN=bn, BM_W=32, BK_W=32, BM_X=16, BK_X=32, num_warps=4)
    bk = 64 if elem_size <= 2 and p <= 4 else 32
    return dict(BN=bn, BM_W=64 if p <= 2 else 32, BK_W=bk, BM_X=32, BK_X=bk, num_warps=4, num_stages=2)


class _BwdPlan:
    """What one backward call signature fixes: sizes, which backward runs (onepass: its integer arguments,
    constexprs and grid; else whether grad_y needs a cast, whether dx must be restrided to x's layout, and the dZ
    launch)."""

    __slots__ = ("serial", "m", "n", "k", "d", "cast_dy", "dz_shape", "restride_dx", "dz_launch", "small_dtype",
                 "onepass", "op_ints", "op_meta", "op_grid")  # fmt: skip

    def __init__(self, grad_y, x2d, weight, dendrite_weight, gate, cascade, h, activation, has_bias):
        act = check_common("linear_bwd", x2d, weight, activation)
        m, k = x2d.shape
        n = weight.shape[0]
        d = dendrite_weight.shape[0]
        if tuple(grad_y.shape) != (m, n):
            raise ValueError(f"linear_bwd: grad_y must be [{m}, {n}], got {list(grad_y.shape)}")
        if d > 0 and tuple(h.shape) != (m, d, n):
            raise ValueError(
                f"linear_bwd: h must be [{m}, {d}, {n}] (forward run with save_for_backward), got {list(h.shape)}"
            )
        self.serial = serial()
        self.m, self.n, self.k, self.d = m, n, k, d
        self.cast_dy = grad_y.dtype != x2d.dtype  # cast to a contiguous tensor of x's dtype
        self.small_dtype = gate.dtype
        self.dz_shape = (m, (1 + d) * n)
        self.restride_dx = not (x2d.is_contiguous() or x2d.numel() <= 1)
        self.dz_launch = None
        p = next_pow2(1 + d)
        path = _state["bwd_path"]
        self.onepass = (
            path != "gemm"
            and 1 <= d
            and p <= 8
            and m * n * k > 0
            and weight.stride(1) == dendrite_weight.stride(2)
            and _columns_fit_int32(grad_y, x2d, weight, dendrite_weight, gate, cascade, h)
            and (path == "onepass" or (p <= ONEPASS_MAX_P and m * (1 + d) * n * k <= onepass_max_macs(x2d.dtype)))
        )
        if self.onepass:
            dx_strides = torch.empty_like(x2d).stride()  # the op's dx is empty_like(x) (its fake kernel's promise)
            self.op_ints = (
                m, n, k,
                *grad_y.stride(), *x2d.stride(),
                weight.stride(0), dendrite_weight.stride(0), dendrite_weight.stride(1), weight.stride(1),
                *gate.stride(), *cascade.stride(), *h.stride(), *dx_strides,
            )  # fmt: skip
            cfg = _onepass_config(p, x2d.element_size())
            self.op_meta = dict(
                D=d, P=p, ACT=act, ACC_DTYPE=acc_dtype(x2d.dtype), DOT_PRECISION=dot_precision(x2d.dtype), **cfg
            )
            tiles_w = cdiv(n, cfg["BN"]) * cdiv(k, cfg["BK_W"])
            self.op_grid = (tiles_w + cdiv(m, cfg["BM_X"]) * cdiv(k, cfg["BK_X"]),)
        elif d > 0 and m > 0 and n > 0:
            gs = (n, 1) if self.cast_dy else grad_y.stride()
            self.dz_launch = DzLaunch(
                (gs[0], 0, gs[1]),
                (h.stride(0), 0, h.stride(1), h.stride(2)),
                ((1 + d) * n, 0, n, 1),
                gate,
                cascade,
                m,
                n,
                1,
                act,
                x2d.dtype,
            )


def linear_bwd_packed(
    grad_y: torch.Tensor,
    x2d: torch.Tensor,
    weight: torch.Tensor,
    dendrite_weight: torch.Tensor,
    gate: torch.Tensor,
    cascade: torch.Tensor,
    h: torch.Tensor,
    activation: str,
    has_bias: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dwcat, dsmall), packed as pai_fast._layout says; see the module docstring."""
    tensors = (grad_y, x2d, weight, dendrite_weight, gate, cascade, h)
    plan = _bwd_plans.get(
        tensors,
        (activation, has_bias, _state["bwd_path"], dz_finish_mode(), *plan_state(x2d.dtype)),
        lambda: _BwdPlan(*tensors, activation, has_bias),
    )
    m, n, d = plan.m, plan.n, plan.d
    dev, dt = x2d.device, x2d.dtype
    if plan.onepass:
        dx = torch.empty_like(x2d)
        dwcat = torch.empty(((1 + d) * n, plan.k), device=dev, dtype=dt)
        dsmall = torch.empty((small_rows(d), n), device=dev, dtype=plan.small_dtype)
        ptrs = (grad_y, x2d, weight, dendrite_weight, gate, cascade, h, dx, dwcat, dsmall)
        _launch_onepass(plan.op_grid, ptrs + plan.op_ints, plan.op_meta, (plan.serial, aligned16(ptrs)))
        return dx, dwcat, dsmall
    if plan.cast_dy:
        grad_y = grad_y.to(dt, memory_format=torch.contiguous_format)
    if m == 0 or n == 0:
        return (
            torch.zeros_like(x2d),
            torch.zeros(((1 + d) * n, plan.k), device=dev, dtype=dt),
            torch.zeros((small_rows(d), n), device=dev, dtype=plan.small_dtype),
        )
    if d == 0:
        # No dendrites: dZcat is dy itself; nothing to fuse.
        dz = grad_y
        red = grad_y.sum(0, dtype=torch_acc_dtype(dt))[None].to(plan.small_dtype)
    else:
        dz = torch.empty(plan.dz_shape, device=dev, dtype=dt)
        red = plan.dz_launch(grad_y, h, gate, cascade, dz)  # already in the parameters' dtype
    # dWcat = dZcat^T X: one GEMM, already in the packed layout.
    dwcat = torch.mm(dz.t(), x2d)
    wcat = _stacked_view(weight, dendrite_weight) if d > 0 else weight
    if wcat is not None:
        dx = torch.mm(dz, wcat)
    else:
        dx = torch.mm(dz.narrow(1, 0, n), weight)
        dx.addmm_(dz.narrow(1, n, d * n), dendrite_weight.reshape(d * n, plan.k))
    if plan.restride_dx:
        dx = _like(dx, x2d)
    return dx, dwcat, red


linear_bwd = seven_grads(linear_bwd_packed)
