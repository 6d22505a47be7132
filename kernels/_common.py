"""Pieces shared by the dendritic Linear and Conv Triton kernels: activations, the fused forward epilogue, and the
backward dZ kernel (with its deterministic reductions).

Notation (CONTRACT.md, spec §2.3). For one output channel n of one row m (a batch row, or a (batch, position) pair
of a convolution), branch 0 is the main layer and branches 1..D are the dendrites:

    z_0 = x W^T + b          u_i = x V_i^T + c_i
    s_i = u_i + sum_{j<i} B[i, j] a_j          a_i = act(s_i)          y = z_0 + sum_i G[i] a_i

Forward epilogue (``_dendritic_epilogue``): the GEMM main loop leaves the 1 + D branch pre-activations of a
[BLOCK_M, BLOCK_N] output tile in one accumulator of shape [BLOCK_M, P * BLOCK_N] (P = next_pow2(1 + D) row blocks
of the stacked weight, block d = branch d). The epilogue views it as [BLOCK_M, P, BLOCK_N], adds the biases, then
runs the cascade in registers: extract s_i, a_i = act(s_i), y += G[i] a_i, and push B[k, i] a_i into every later
branch k > i. Only y and (when training) the a_i reach memory.

Backward (``_dendritic_dz_tiled_kernel`` for D <= 7, ``_dendritic_dz_kernel`` beyond), with dy = dL/dy:

    dz_0 = dy
    for i = D-1 .. 0:   da_i = G[i] dy + sum_{k>i} B[k, i] ds_k        ds_i = da_i act'(a_i)        du_i = ds_i
    dG[i] = sum_rows dy a_i      dB[k, i] = sum_rows ds_k a_i (i < k)      db = sum_rows dy      dc_i = sum_rows ds_i

act' is computed from the saved a: sigmoid a(1-a), tanh 1-a^2, relu [a > 0], identity 1. The kernel writes
dZcat = [dz_0, ds_0 .. ds_{D-1}] (what the dX / dW GEMMs need) and per-program partial sums of the four
reductions over a fixed program count, summed in a fixed order (no float atomics) inside the same launch by
finisher programs that wait on an int arrival counter (``_finish_partials``; the default: the backward is then
three launches, this kernel and the dX and dW GEMMs or cuDNN's backward), or by torch.sum after it.
"""

from __future__ import annotations

import contextlib
import functools
import os

import torch
import triton
import triton.language as tl

from .._plans import aligned16, serial
from ._launch import Launcher

ACT_CODES = {"identity": 0, "sigmoid": 1, "tanh": 2, "relu": 3}
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# The fused path unrolls the cascade over D (constexpr) and stacks P = next_pow2(1 + D) weight blocks per tile.
# Beyond this the unrolled code and the padded MMA work stop making sense; supports() names the limit.
MAX_D = 31


# Read ONCE, at import: triton.jit decides at decoration time whether a kernel is interpreted, and the launchers
# must agree with how the kernels were decorated even if the environment changes later.
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_state = {
    "autotune": os.environ.get("PAI_FAST_TRITON_AUTOTUNE", "1") != "0",
    "config": None,
    "bwd_path": "auto",
    "dz_finish": "kernel",
}
BACKWARD_PATHS = ("auto", "onepass", "gemm")
DZ_FINISHES = ("torch", "kernel")


def interpreting() -> bool:
    """True when the kernels were decorated under the Triton CPU interpreter (TRITON_INTERPRET=1 at import)."""
    return INTERPRET


def autotuning() -> bool:
    """Autotune the forward kernels on the GPU (default) unless PAI_FAST_TRITON_AUTOTUNE=0 at import or
    set_autotune(False): then a fixed heuristic config (no benchmarking on the first call of a shape, so that call
    can be captured in a CUDA graph). Never under the interpreter (autotune with > 1 config fails there)."""
    return _state["autotune"] and not INTERPRET


def set_autotune(enabled: bool) -> None:
    """Turn first-call autotuning of the forward kernels on or off for this process."""
    _state["autotune"] = bool(enabled)


@contextlib.contextmanager
def _overriding(key: str, value):
    """_state[key] = value inside the block, restored after (the launch plans key on it, so no stale plan runs)."""
    old = _state[key]
    _state[key] = value
    try:
        yield
    finally:
        _state[key] = old


def use_config(config: triton.Config | None):
    """Force one launch config on the forward kernels inside the block (tests: check every autotune candidate)."""
    return _overriding("config", config)


def backward_path(path: str):
    """Choose the Linear backward inside the block: "onepass" (one launch, dZ recomputed inside the GEMMs),
    "gemm" (the dZ kernel, then cuBLAS) or "auto" (onepass for small layers). Tests run both. "onepass" runs where
    its kernel can: 1 <= D <= 7, a non-empty problem, weight and dendrite_weight with one K stride and column
    offsets within int32; other calls take the split backward as before."""
    if path not in BACKWARD_PATHS:
        raise ValueError(f"backward_path: path must be one of {BACKWARD_PATHS}, got {path!r}")
    return _overriding("bwd_path", path)


def dz_finish(mode: str):
    """Choose, inside the block, who sums the dZ kernel's per-program partial reductions (split backward of Linear
    and Conv): "kernel" (default; finisher programs at the end of the same launch, _finish_partials: the backward
    is then dZ and the two GEMMs or cuDNN's backward, three launches for contiguous dy and weights stacked in one
    buffer as the modules keep them) or "torch" (torch.sum and a cast after the launch). Both are deterministic;
    they may differ in the last bits (another summation tree). The backward plans key on the mode."""
    if mode not in DZ_FINISHES:
        raise ValueError(f"dz_finish: mode must be one of {DZ_FINISHES}, got {mode!r}")
    return _overriding("dz_finish", mode)


def dz_finish_mode() -> str:
    """The dz_finish mode in force (the backward plans key on it)."""
    return _state["dz_finish"]


def launch_config(heuristic) -> dict | None:
    """The explicit config for a forward launch: a forced one, else None when autotuning, else heuristic()."""
    forced = _state["config"]
    if forced is not None:
        return {**forced.kwargs, "num_warps": forced.num_warps, "num_stages": forced.num_stages}
    return None if autotuning() else heuristic()


def plan_state(dtype: torch.dtype) -> tuple:
    """The process state that changes a launch, which every launch plan keys on: TF32 for fp32 inputs, the autotune
    switch, a forced config."""
    return dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32, _state["autotune"], _state["config"]


def cdiv(a: int, b: int) -> int:
    """Host-side ceil(a / b); triton.cdiv is a constexpr function whose Python call costs ~10 µs in Triton 3.6."""
    return -(-a // b)


def next_pow2(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def acc_dtype(dtype: torch.dtype):
    """Accumulate in fp64 for fp64 inputs (lets the interpreter pass gradcheck), fp32 otherwise."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def torch_acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def dot_precision(dtype: torch.dtype) -> str:
    """tf32 in tl.dot only for fp32 inputs and only when torch allows it for matmuls (same rule as cuBLAS)."""
    if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32 and not interpreting():
        return "tf32"
    return "ieee"


def check_common(name: str, x: torch.Tensor, weight: torch.Tensor, activation: str) -> int:
    """Validate what every launcher needs; returns the activation code."""
    if activation not in ACT_CODES:
        raise ValueError(f"activation: expected one of {sorted(ACT_CODES)}, got {activation!r}")
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{name}: x dtype must be one of {list(SUPPORTED_DTYPES)}, got {x.dtype}")
    if weight.dtype != x.dtype:
        raise TypeError(f"{name}: weight dtype must equal x dtype {x.dtype}, got {weight.dtype}")
    if weight.device != x.device:
        raise ValueError(f"{name}: weight must be on {x.device} like x, got {weight.device}")
    return ACT_CODES[activation]


# --------------------------------------------------------------------------------------------------------------
# Forward autotune candidates (shared by Linear and Conv; ptxas-checked for sm_90: no spills for bf16 D <= 8)
# --------------------------------------------------------------------------------------------------------------


def _cfg(block_m: int, block_c: int, block_k: int, warps: int, stages: int) -> triton.Config:
    kw = {"BLOCK_M": block_m, "BLOCK_C": block_c, "BLOCK_K": block_k, "GROUP_M": 8}
    return triton.Config(kw, num_warps=warps, num_stages=stages)


# (large problem?, element size) -> candidates. BLOCK_C = P * BN is the stacked tile width: 256 = a Hopper
# 128 x 256 GEMM tile (D=3: 4 branches x 64 channels). Few candidates per key keep first-call autotuning short.
CONFIG_POOLS: dict[tuple[bool, int], list] = {
    (True, 2): [_cfg(128, 256, 64, 8, 3), _cfg(128, 256, 32, 8, 4), _cfg(256, 128, 64, 8, 3), _cfg(128, 128, 64, 4, 4)],
    (False, 2): [_cfg(64, 128, 64, 4, 4), _cfg(64, 64, 64, 4, 4), _cfg(32, 64, 128, 4, 3), _cfg(128, 128, 64, 4, 3)],
    # 4-byte tiles: 128 x 256 fp32 spills, so at most 128 x 128.
    (True, 4): [_cfg(128, 128, 32, 8, 3), _cfg(128, 128, 32, 4, 4), _cfg(64, 128, 32, 4, 4)],
    (False, 4): [_cfg(64, 64, 32, 4, 4), _cfg(64, 128, 32, 4, 4), _cfg(32, 64, 64, 4, 3)],
    (True, 8): [_cfg(64, 64, 16, 4, 2), _cfg(32, 64, 32, 4, 2)],
}
CONFIG_POOLS[(False, 8)] = CONFIG_POOLS[(True, 8)]
ALL_CONFIGS = [c for pool in CONFIG_POOLS.values() for c in pool]
ALL_CONFIGS = [c for i, c in enumerate(ALL_CONFIGS) if all(c is not o for o in ALL_CONFIGS[:i])]


def select_configs(configs: list, rows: int, n: int, k: int, p: int, elem_size: int) -> list:
    """The candidates worth timing for one problem (early_config_prune): the pool for its size class and dtype,
    minus tiles that overflow shared memory or reduce far past K."""
    pool = CONFIG_POOLS[(rows >= 1024 and n * p >= 256, elem_size)]
    out = []
    for c in configs:
        if all(c is not q for q in pool):
            continue
        bm, bc, bk = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_C"], c.kwargs["BLOCK_K"]
        if c.num_stages * (bm + bc) * bk * elem_size > 200 * 1024 or bk > 2 * max(16, next_pow2(k)):
            continue
        out.append(c)
    return out or [pool[-1]]


# --------------------------------------------------------------------------------------------------------------
# Device helpers
# --------------------------------------------------------------------------------------------------------------


@triton.jit
def _stacked_weight_rows(
    w_ptr, v_ptr, pid_n, N, stride_wn, stride_vd, stride_vn, D: tl.constexpr, BN: tl.constexpr, BLOCK_C: tl.constexpr
):
    """Row pointers of the stacked weight tile [P * BN, .] (row block d = branch d: W for d = 0, V_{d-1} after;
    channels past N wrap around, their results are never stored) and the mask of the branches that exist."""
    offs_c = tl.arange(0, BLOCK_C)
    branch = offs_c // BN
    chan = ((pid_n * BN + offs_c % BN) % N).to(tl.int64)
    if D == 0:
        w_rows = w_ptr + chan * stride_wn
    else:
        dend = tl.maximum(branch - 1, 0).to(tl.int64)
        w_rows = tl.where(branch == 0, w_ptr + chan * stride_wn, v_ptr + dend * stride_vd + chan * stride_vn)
    return w_rows, branch <= D


def autotuned(kernel, configs: list, key: list[str], prune):
    """kernel wrapped in triton.autotune over configs (pruned per problem by prune), or None under the interpreter,
    where autotuning cannot run. Wrappers of one JIT function share its compile cache."""
    if INTERPRET:
        return None
    return triton.autotune(configs=configs, key=key, prune_configs_by={"early_config_prune": prune})(kernel)


def rows_of_128_bytes(configs: list, element_size: int) -> list:
    """The TMA candidates whose K rows (BLOCK_K elements) are 128 bytes, the swizzle width, for this element size."""
    return [c for c in configs if c.kwargs["BLOCK_K"] * element_size == 128]


@triton.jit
def _grouped_tile(M, N, BLOCK_M: tl.constexpr, BN: tl.constexpr, GROUP_M: tl.constexpr):
    """(pid_m, pid_n) of this program in grouped order: GROUP_M row tiles walk the N tiles together, so their
    weight tiles stay in L2."""
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BN)
    num_pid_in_group = GROUP_M * num_pid_n
    first_pid_m = (pid // num_pid_in_group) * GROUP_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m
    return pid_m, pid_n


@triton.jit
def _act(s, ACT: tl.constexpr):
    """act(s) for the fused activations; tanh through exp of a non-positive argument (never overflows)."""
    if ACT == 1:
        out = 1.0 / (1.0 + tl.exp(-s))
    elif ACT == 2:
        t = tl.exp(-2.0 * tl.abs(s))
        r = (1.0 - t) / (1.0 + t)
        out = tl.where(s < 0, -r, r)
    elif ACT == 3:
        out = tl.maximum(s, 0.0)
    else:
        out = s
    return out


@triton.jit
def _act_grad(a, ACT: tl.constexpr):
    """act'(s) written as a function of the activated output a = act(s)."""
    if ACT == 1:
        out = a * (1.0 - a)
    elif ACT == 2:
        out = 1.0 - a * a
    elif ACT == 3:
        out = tl.where(a > 0, 1.0, 0.0).to(a.dtype)
    else:
        out = tl.full(a.shape, 1.0, a.dtype)
    return out


@triton.jit
def _dendritic_epilogue(
    acc,  # [BLOCK_M, P * BN] accumulator, branch-major columns (block d = branch d)
    offs_n,  # [BN] output channels of this tile
    n_mask,  # [BN]
    row_mask,  # [BLOCK_M]
    y_rows,  # [BLOCK_M] pointers to y[row, 0]
    h_rows,  # [BLOCK_M] pointers to h[row, 0, 0]
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
    D: tl.constexpr,
    P: tl.constexpr,
    BN: tl.constexpr,
    BLOCK_M: tl.constexpr,
    ACT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SAVE_H: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
):
    out_mask = row_mask[:, None] & n_mask[None, :]
    y_ptrs = y_rows[:, None] + offs_n[None, :] * stride_yn
    if D == 0:
        y = tl.reshape(acc, (BLOCK_M, BN)).to(ACC_DTYPE)
        if HAS_BIAS:
            y += tl.load(b_ptr + offs_n * stride_b, mask=n_mask, other=0.0).to(ACC_DTYPE)[None, :]
        tl.store(y_ptrs, y.to(y_ptrs.dtype.element_ty), mask=out_mask)
    else:
        # Branch-major columns: splitting the column index into (branch, channel) is a pure relabeling of the
        # accumulator's registers (the branch bits are the high column bits).
        z = tl.reshape(acc, (BLOCK_M, P, BN)).to(ACC_DTYPE)
        p = tl.arange(0, P)
        p3 = p[None, :, None]
        if HAS_BIAS:
            b_main = tl.load(b_ptr + offs_n * stride_b, mask=n_mask, other=0.0).to(ACC_DTYPE)
            pc = tl.maximum(p - 1, 0)
            c_mask = ((p >= 1) & (p <= D))[:, None] & n_mask[None, :]
            b_dend = tl.load(c_ptr + pc[:, None] * stride_cd + offs_n[None, :] * stride_cn, mask=c_mask, other=0.0)
            z += tl.where(p[:, None] == 0, b_main[None, :], b_dend.to(ACC_DTYPE))[None, :, :]
        y = tl.sum(tl.where(p3 == 0, z, 0.0), axis=1)
        for i in tl.static_range(D):
            s_i = tl.sum(tl.where(p3 == i + 1, z, 0.0), axis=1)
            a_i = _act(s_i, ACT)
            if SAVE_H:
                h_ptrs = h_rows[:, None] + i * stride_hd + offs_n[None, :] * stride_hn
                tl.store(h_ptrs, a_i.to(h_ptrs.dtype.element_ty), mask=out_mask)
            g_i = tl.load(g_ptr + i * stride_gd + offs_n * stride_gn, mask=n_mask, other=0.0).to(ACC_DTYPE)
            y += g_i[None, :] * a_i
            if i + 1 < D:
                # Push a_i into every later branch k > i (row block p = k + 1): z_k += B[k, i] * a_i.
                k_of_p = tl.maximum(p - 1, 0)
                b_mask = ((p - 1 > i) & (p <= D))[:, None] & n_mask[None, :]
                b_col = tl.load(
                    cas_ptr + k_of_p[:, None] * stride_ai + i * stride_aj + offs_n[None, :] * stride_an,
                    mask=b_mask,
                    other=0.0,
                ).to(ACC_DTYPE)
                z += b_col[None, :, :] * a_i[:, None, :]
        tl.store(y_ptrs, y.to(y_ptrs.dtype.element_ty), mask=out_mask)


@triton.jit
def _arrive(cnt_ptr):
    """A dZ program's partial row is stored (by all its threads): a CTA barrier, then one thread's release
    increment of the done counter (the CUTLASS semaphore's pattern; the barrier makes the release cover the other
    threads' stores)."""
    tl.debug_barrier()
    tl.atomic_add(cnt_ptr, 1, sem="release", scope="gpu")


@triton.jit
def _finish_partials(
    part_ptr,  # [SPLIT, R, N] partial rows, one per dZ program row slot, in the accumulation dtype
    cnt_ptr,  # int32 [2]: dZ programs done, finishers done; zero at launch and again when it ends
    out_ptr,  # dsmall [R, N], contiguous, in DzLaunch's out_dtype
    fin,  # this finisher's index
    work,  # the number of dZ programs (program ids below it)
    SPLIT,
    TOTAL,  # R * N
    NFIN,  # finisher programs (program ids work .. work + NFIN - 1)
    FIN_S: tl.constexpr,
    FIN_W: tl.constexpr,
):
    """Finisher `fin` of NFIN: once every dZ program has arrived, out[c] = sum_s part[s, c] over the flattened
    columns c of [R, N] in its FIN_W-wide blocks (fin, fin + NFIN, ...), FIN_S slots per load, each chunk summed as
    one [FIN_S, FIN_W] tile and the chunks in slot order: a fixed tree (FIN_S and FIN_W follow the shapes only), so
    the bits depend on the partials alone, not on the arrival order or the GPU. Spread over up to 128 programs,
    where a last-arriver sum left one program per level latency-bound (h200_probe_dz_df22e16).
    The wait polls with volatile loads, then one acquire load orders the partials' loads after the count (an
    acquire in the loop measured 40 % slower at 8192x4096 D = 3: each one invalidates the SM's L1, under the dZ
    programs sharing it). It cannot deadlock: NFIN <= the SM count (DzLaunch), and any program of <= 4 warps fits
    twice on an SM (255 registers x 128 threads is half the register file), so even finishers dispatched first
    leave room for the dZ programs, which wait on nothing.
    The loads bypass L1 (.cg): other SMs wrote the partials. The last finisher to leave sets both counters back to
    zero, so launches in one stream's order, a CUDA graph's replays included, share them with no memset."""
    seen = tl.load(cnt_ptr, volatile=True)
    while seen < work:
        seen = tl.load(cnt_ptr, volatile=True)
    seen = tl.atomic_add(cnt_ptr, 0, sem="acquire", scope="gpu")  # an ld.acquire: orders the loads below
    tl.debug_barrier()  # every thread's loads after the acquiring thread saw the count
    q = tl.arange(0, FIN_S)
    for blk in range(fin, tl.cdiv(TOTAL, FIN_W), NFIN):
        cols = blk * FIN_W + tl.arange(0, FIN_W)
        cmask = cols < TOTAL
        acc = tl.zeros((FIN_W,), part_ptr.dtype.element_ty)
        for s0 in range(0, SPLIT, FIN_S):
            slots = s0 + q
            vals = tl.load(
                part_ptr + (slots * TOTAL)[:, None] + cols[None, :],
                mask=(slots < SPLIT)[:, None] & cmask[None, :],
                other=0.0,
                cache_modifier=".cg",
            )
            acc += tl.sum(vals, axis=0)
        tl.store(out_ptr + cols, acc.to(out_ptr.dtype.element_ty), mask=cmask)
    tl.debug_barrier()
    gone = tl.atomic_add(cnt_ptr + 1, 1, sem="acq_rel", scope="gpu")
    if gone == NFIN - 1:
        tl.atomic_xchg(cnt_ptr, 0, sem="relaxed", scope="gpu")
        tl.atomic_xchg(cnt_ptr + 1, 0, sem="relaxed", scope="gpu")


@triton.jit
def _dz_program(pid, SPLIT, N, BLOCK_N: tl.constexpr):
    """dZ program pid's row slot pid_m (it walks row tiles pid_m, pid_m + SPLIT, ...) and its N tile's channels
    (program ids run through the SPLIT row slots of each N tile in turn)."""
    offs_n = (pid // SPLIT) * BLOCK_N + tl.arange(0, BLOCK_N)
    return pid % SPLIT, offs_n, offs_n < N


@triton.jit
def _dendritic_dz_kernel(
    dy_ptr,
    h_ptr,
    g_ptr,
    cas_ptr,
    dz_ptr,
    part_ptr,  # [SPLIT, 1 + 2D + D*D, N]: rows db, ddb_i, dg_i, dB[k, i] (pai_fast._layout's dsmall)
    cnt_ptr,  # int32 [2] arrival counters (_finish_partials)
    out_ptr,  # dsmall [1 + 2D + D*D, N], contiguous
    ROWS,
    N,
    S,
    SPLIT,  # dZ programs per N tile
    NFIN,  # finisher programs after the dZ programs (FINISH)
    stride_dyb,
    stride_dys,
    stride_dyn,
    stride_hb,
    stride_hs,
    stride_hd,
    stride_hn,
    stride_gd,
    stride_gn,
    stride_ai,
    stride_aj,
    stride_an,
    stride_zb,
    stride_zs,
    stride_zd,
    stride_zn,
    D: tl.constexpr,
    PD: tl.constexpr,
    ACT: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    FIN_S: tl.constexpr,
    FIN_W: tl.constexpr,
    FINISH: tl.constexpr,  # sum the partials into out in this launch (_finish_partials), else leave them
):
    """The row dZ kernel, for D > 7 (the tiled kernel below takes D <= 7): dendrites outer (i = D-1 .. 0,
    unrolled), rows inner, one row per step.

    Every tensor is [BLOCK_N] or [PD, BLOCK_N] with the PD axis inside each thread, so no reduction crosses
    threads inside the row loop (the [rows, PD, N] formulation did, and was latency-bound for D > 1). Pass i
    reads the ds_k (k > i) that earlier passes wrote to dZ to push them back through the cascade:
        da_i = g_i * dy + sum_{k>i} B[k, i] ds_k,   ds_i = da_i * act'(a_i),
        dB[k, i] += sum_rows ds_k a_i,   dg_i += sum_rows dy a_i,   ddb_i += sum_rows ds_i.
    """
    pid = tl.program_id(0)  # dZ programs first, then (FINISH) the finishers
    work = SPLIT * tl.cdiv(N, BLOCK_N)
    if pid < work:
        pid_m, offs_n, n_mask = _dz_program(pid, SPLIT, N, BLOCK_N)
        p = tl.arange(0, PD)
        acc_db = tl.zeros((BLOCK_N,), ACC_DTYPE)
        for r in range(pid_m, ROWS, SPLIT):
            bb = r // S
            ss = r - bb * S
            dy_row = dy_ptr + bb.to(tl.int64) * stride_dyb + ss * stride_dys
            dy = tl.load(dy_row + offs_n * stride_dyn, mask=n_mask, other=0.0)
            z_row = dz_ptr + bb.to(tl.int64) * stride_zb + ss * stride_zs
            tl.store(z_row + offs_n * stride_zn, dy, mask=n_mask)
            acc_db += dy.to(ACC_DTYPE)
        part_row = part_ptr + pid_m.to(tl.int64) * ((1 + 2 * D + D * D) * N)
        tl.store(part_row + offs_n, acc_db, mask=n_mask)
        for ii in tl.static_range(D):
            i = D - 1 - ii
            g_i = tl.load(g_ptr + i * stride_gd + offs_n * stride_gn, mask=n_mask, other=0.0).to(ACC_DTYPE)
            later = (p > i)[:, None] & (p < D)[:, None] & n_mask[None, :]
            # B[k, i] for every later dendrite k (zero elsewhere)
            b_col = tl.load(
                cas_ptr + p[:, None] * stride_ai + i * stride_aj + offs_n[None, :] * stride_an, mask=later, other=0.0
            ).to(ACC_DTYPE)
            acc_dg = tl.zeros((BLOCK_N,), ACC_DTYPE)
            acc_dc = tl.zeros((BLOCK_N,), ACC_DTYPE)
            acc_cas = tl.zeros((PD, BLOCK_N), ACC_DTYPE)
            # Pass i reads ds_k that other threads of this program may have written in pass k.
            tl.debug_barrier()
            for r in range(pid_m, ROWS, SPLIT):
                bb = r // S
                ss = r - bb * S
                dy_row = dy_ptr + bb.to(tl.int64) * stride_dyb + ss * stride_dys
                dy = tl.load(dy_row + offs_n * stride_dyn, mask=n_mask, other=0.0).to(ACC_DTYPE)
                h_row = h_ptr + bb.to(tl.int64) * stride_hb + ss * stride_hs
                a_i = tl.load(h_row + i * stride_hd + offs_n * stride_hn, mask=n_mask, other=0.0).to(ACC_DTYPE)
                z_row = dz_ptr + bb.to(tl.int64) * stride_zb + ss * stride_zs
                da = g_i * dy
                if i < D - 1:
                    ds_k = tl.load(
                        z_row + (p[:, None] + 1) * stride_zd + offs_n[None, :] * stride_zn, mask=later, other=0.0
                    ).to(ACC_DTYPE)
                    da += tl.sum(b_col * ds_k, axis=0)
                    acc_cas += ds_k * a_i[None, :]
                ds_i = da * _act_grad(a_i, ACT)
                tl.store(
                    z_row + (i + 1) * stride_zd + offs_n * stride_zn, ds_i.to(dz_ptr.dtype.element_ty), mask=n_mask
                )
                acc_dc += ds_i
                acc_dg += dy * a_i
            tl.store(part_row + (1 + i) * N + offs_n, acc_dc, mask=n_mask)
            tl.store(part_row + (1 + D + i) * N + offs_n, acc_dg, mask=n_mask)
            # dB[k, i] for every k: zero where k <= i (acc_cas only gathers ds_k of later k), so no memset is needed.
            cas_row = part_row + (1 + 2 * D + i) * N
            tl.store(cas_row + p[:, None] * (D * N) + offs_n[None, :], acc_cas, mask=(p < D)[:, None] & n_mask[None, :])
        if FINISH:
            _arrive(cnt_ptr)
    elif FINISH:
        _finish_partials(
            part_ptr, cnt_ptr, out_ptr, pid - work, work, SPLIT, (1 + 2 * D + D * D) * N, NFIN, FIN_S, FIN_W
        )


_launch_dz = Launcher(_dendritic_dz_kernel)
# Beyond this the tiled dZ kernel's 1 + 2D + D(D-1)/2 register accumulators and P = 16 branch tiles do not fit.
TILED_DZ_MAX_D = 7


@triton.jit
def _dz_branches(
    dy,  # [BM, BN] grad_y tile in ACC_DTYPE (zero outside the problem)
    h_ptrs,  # [BM, BN] pointers to h[row, 0, n]
    h_mask,  # [BM, BN]
    stride_hd,
    g_ptr,
    stride_gd,
    stride_gn,
    cas_ptr,
    stride_ai,
    stride_aj,
    stride_an,
    offs_n,
    n_mask,
    D: tl.constexpr,
    P: tl.constexpr,  # 2, 4 or 8
    ACT: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
):
    """dZcat of one [BM, BN] tile in registers, as a tuple of P [BM, BN] tensors (dz_0 = dy, then ds_0 ..
    ds_{D-1}, then zeros), and the tuple of the D activations a_i it read: the dZ recursion (da_i = G[i] dy +
    sum_{k>i} B[k, i] ds_k, ds_i = da_i act'(a_i)), for the one-pass backward (which recomputes it where a GEMM
    needs it instead of reading it from memory) and the tiled dZ kernel. Rows and channels where dy is zero get
    dZ = 0, so masked tiles add nothing to the GEMMs.
    Separate 2-D tensors (not one [P, BM, BN] tensor): every one has the same layout, so the cascade is plain
    FMAs, with no reduction across a branch axis that Triton may spread over warps (measured 30x slower at D = 3).
    """
    z = tl.zeros_like(dy)
    dz = (dy, z)
    if P >= 4:
        dz = dz + (z, z)
    if P >= 8:
        dz = dz + (z, z, z, z)
    acts = ()
    for i in tl.static_range(D - 1, -1, -1):
        a_i = tl.load(h_ptrs + i * stride_hd, mask=h_mask, other=0.0).to(ACC_DTYPE)
        g_i = tl.load(g_ptr + i * stride_gd + offs_n * stride_gn, mask=n_mask, other=0.0).to(ACC_DTYPE)
        da = g_i[None, :] * dy
        for k in tl.static_range(i + 1, D):
            b_ki = tl.load(cas_ptr + k * stride_ai + i * stride_aj + offs_n * stride_an, mask=n_mask, other=0.0)
            da += b_ki.to(ACC_DTYPE)[None, :] * dz[k + 1]
        dz = dz[: i + 1] + (da * _act_grad(a_i, ACT),) + dz[i + 2 :]
        acts = (a_i,) + acts
    return dz, acts


@triton.jit
def _dendritic_dz_tiled_kernel(
    dy_ptr,
    h_ptr,
    g_ptr,
    cas_ptr,
    dz_ptr,
    part_ptr,  # [SPLIT, 1 + 2D + D*D, N]: rows db, ddb_i, dg_i, dB[k, i] at 1 + 2D + k*D + i (_layout's dsmall)
    cnt_ptr,  # int32 [2] arrival counters (_finish_partials)
    out_ptr,  # dsmall [1 + 2D + D*D, N], contiguous
    ROWS,
    N,
    S,
    SPLIT,  # dZ programs per N tile
    NFIN,  # finisher programs after the dZ programs (FINISH)
    stride_dyb,
    stride_dys,
    stride_dyn,
    stride_hb,
    stride_hs,
    stride_hd,
    stride_hn,
    stride_gd,
    stride_gn,
    stride_ai,
    stride_aj,
    stride_an,
    stride_zb,
    stride_zs,
    stride_zd,
    stride_zn,
    D: tl.constexpr,  # 1 .. 7
    P: tl.constexpr,  # next_pow2(1 + D)
    ACT: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    FIN_S: tl.constexpr,
    FIN_W: tl.constexpr,
    FINISH: tl.constexpr,  # sum the partials into out in this launch (_finish_partials), else leave them
    BLOCK_R: tl.constexpr,
    ROWS64: tl.constexpr,
):
    """The dZ kernel for D <= 7: each step takes a [BLOCK_R rows, BLOCK_N channels] tile, reads dy and the D
    activations once, runs the whole recursion in registers (_dz_branches) and writes the 1 + D dZ blocks, so dy, h
    and dZ each cross memory once. The row-at-a-time kernel above moved one row of BLOCK_N channels per step (one
    warp when N = 64) and re-read dy and dZ once per dendrite: at a ResNet conv's 100k rows x 64 channels it ran
    at a fraction of the memory bandwidth (probe_conv_bwd). The reductions stay [BLOCK_R, BLOCK_N] register
    accumulators over the program's row tiles (program pid_m takes tiles pid_m, pid_m + SPLIT, ...: a fixed order),
    summed over rows once at the end into the program's partial row: no atomics, so the same inputs give the same
    bits on every run. The order of that last sum follows the register layout Triton picks, which depends on the
    strides and pointer alignment (and the Triton version), so e.g. an NCHW and a channels_last dy of the same
    values may differ in the last bits.
    Accumulator order: db, dc_0 .. dc_{D-1}, dg_0 .. dg_{D-1}, then dB[k, i] for k = 1 .. D-1, i < k."""
    pid = tl.program_id(0)  # dZ programs first, then (FINISH) the finishers
    work = SPLIT * tl.cdiv(N, BLOCK_N)
    if pid < work:
        pid_m, offs_n, n_mask = _dz_program(pid, SPLIT, N, BLOCK_N)
        zero = tl.zeros((BLOCK_R, BLOCK_N), ACC_DTYPE)
        acc = (zero,)
        for _ in tl.static_range(2 * D + D * (D - 1) // 2):
            acc = acc + (zero,)
        start = pid_m * BLOCK_R
        if ROWS64:  # within SPLIT * BLOCK_R of 2^31 rows int32 tile starts would wrap (int64 costs ~40 registers)
            start = start.to(tl.int64)
        for r0 in range(start, ROWS, SPLIT * BLOCK_R):
            rows = r0 + tl.arange(0, BLOCK_R)
            bb = rows // S
            ss = (rows - bb * S).to(tl.int64)
            bb = bb.to(tl.int64)
            mask = (rows < ROWS)[:, None] & n_mask[None, :]
            dy_rows = dy_ptr + bb * stride_dyb + ss * stride_dys
            dy = tl.load(dy_rows[:, None] + offs_n[None, :] * stride_dyn, mask=mask, other=0.0).to(ACC_DTYPE)
            h_ptrs = (h_ptr + bb * stride_hb + ss * stride_hs)[:, None] + offs_n[None, :] * stride_hn
            dz, a = _dz_branches(dy, h_ptrs, mask, stride_hd, g_ptr, stride_gd, stride_gn, cas_ptr, stride_ai,
                                 stride_aj, stride_an, offs_n, n_mask, D, P, ACT, ACC_DTYPE)  # fmt: skip
            z_ptrs = (dz_ptr + bb * stride_zb + ss * stride_zs)[:, None] + offs_n[None, :] * stride_zn
            for b in tl.static_range(D + 1):
                tl.store(z_ptrs + b * stride_zd, dz[b].to(dz_ptr.dtype.element_ty), mask=mask)
            new = (acc[0] + dy,)
            for i in tl.static_range(D):
                new = new + (acc[1 + i] + dz[1 + i],)
            for i in tl.static_range(D):
                new = new + (acc[1 + D + i] + dy * a[i],)
            for k in tl.static_range(1, D):
                for i in tl.static_range(k):
                    new = new + (acc[1 + 2 * D + k * (k - 1) // 2 + i] + dz[1 + k] * a[i],)
            acc = new
        part_row = part_ptr + pid_m.to(tl.int64) * ((1 + 2 * D + D * D) * N) + offs_n
        for j in tl.static_range(1 + 2 * D):
            tl.store(part_row + j * N, tl.sum(acc[j], axis=0), mask=n_mask)
        for k in tl.static_range(D):
            for i in tl.static_range(D):
                if i < k:
                    val = tl.sum(acc[1 + 2 * D + k * (k - 1) // 2 + i], axis=0)
                else:  # dB is strictly lower triangular: these rows of the partial buffer are zeros
                    val = tl.zeros((BLOCK_N,), ACC_DTYPE)
                tl.store(part_row + (1 + 2 * D + k * D + i) * N, val, mask=n_mask)
        if FINISH:
            _arrive(cnt_ptr)
    elif FINISH:
        _finish_partials(
            part_ptr, cnt_ptr, out_ptr, pid - work, work, SPLIT, (1 + 2 * D + D * D) * N, NFIN, FIN_S, FIN_W
        )


@triton.jit
def _stack_branches(dz, P: tl.constexpr):
    """The P branch tiles [BM, BN] of _dz_branches as one [BM, BN, 2, ..] tensor whose flattened trailing index is
    the branch: reshaped to [BM, BN * P] its column n * P + b is branch b of channel n (channel-major). tl.join
    adds its new axis inside each thread, so the stacking and the reshape move no data between threads."""
    if P == 2:
        t = tl.join(dz[0], dz[1])
    elif P == 4:
        t = tl.join(tl.join(dz[0], dz[2]), tl.join(dz[1], dz[3]))
    else:
        t = tl.join(
            tl.join(tl.join(dz[0], dz[4]), tl.join(dz[2], dz[6])), tl.join(tl.join(dz[1], dz[5]), tl.join(dz[3], dz[7]))
        )
    return t


_launch_dz_tiled = Launcher(_dendritic_dz_tiled_kernel)


_counter_buffers: dict[tuple, list[torch.Tensor]] = {}


@functools.cache
def _sm_count(device: torch.device) -> int:
    """The device's SM count (the CPU interpreter: 128, as many finishers as an H100 would get)."""
    if device.type != "cuda":
        return 128
    index = device.index if device.index is not None else torch.cuda.current_device()
    return torch.cuda.get_device_properties(index).multi_processor_count


def counter_buffer(device: torch.device, need: int) -> torch.Tensor:
    """int32 zeros for _finish_partials' arrival counters, one buffer per (device, current stream), grown on demand.
    Every launch leaves the counters it used at zero, so launches in one stream's order (a CUDA graph's replays
    included) share the buffer with no memset between them. A buffer that is outgrown stays allocated (a CUDA graph
    may have captured its address), so the memory is never handed to anyone else. A buffer first made during a
    capture is zeroed by a memset the graph replays (harmless). Launches that may overlap must come from different
    streams (each gets its own buffer); two CUDA graphs captured on one stream and replayed at the same time on two
    streams would share one and must not run concurrently."""
    stream = torch._C._cuda_getCurrentRawStream(device.index) if device.type == "cuda" else 0
    bufs = _counter_buffers.setdefault((device, stream), [])
    if not bufs or bufs[-1].numel() < need:
        bufs.append(torch.zeros(max(need, 4096), dtype=torch.int32, device=device))
    return bufs[-1]


class DzLaunch:
    """One dZ-kernel launch as fixed by its call signature: the kernel (tiled for 1 <= D <= 7, else the row kernel),
    its integer arguments, constexprs, grid and partial-sum buffer. dy/h/dz strides are over (b, s, [d,] n), dz's
    d-stride being the offset between branch blocks."""

    __slots__ = ("serial", "ints", "meta", "grid", "part_shape", "acc_t", "out_dtype", "counters", "launcher")

    def __init__(
        self, dy_strides, h_strides, dz_strides, gate, cascade, rows, n, s, act, dtype, programs=None, tiled=None,
        finish=None, fin_w=None, out_dtype=None,
    ):  # fmt: skip
        """programs: the program budget (default 512 for the tiled kernel, 2048 for the row kernel; tests lower it
        so that each program walks several row tiles); tiled: False runs the row kernel at any D (probes compare
        the two), None picks by D; finish: "torch" sums the partials with torch.sum after the launch, "kernel"
        inside it (_finish_partials, by extra finisher programs), None as dz_finish() set it; fin_w: dsmall
        values per finisher program (a power of two; default so that ~128 finishers share the sum); out_dtype:
        dsmall's dtype (default the gate's)."""
        finish = finish or dz_finish_mode()
        if finish not in DZ_FINISHES:
            raise ValueError(f"DzLaunch: finish must be one of {DZ_FINISHES}, got {finish!r}")
        d = gate.shape[0]
        if tiled is None:
            tiled = 1 <= d <= TILED_DZ_MAX_D
        elif tiled and not 1 <= d <= TILED_DZ_MAX_D:
            raise ValueError(f"DzLaunch: the tiled kernel takes 1 <= D <= {TILED_DZ_MAX_D}, got D = {d}")
        self.serial = serial()
        self.acc_t = torch_acc_dtype(dtype)
        self.launcher = _launch_dz_tiled if tiled else _launch_dz
        vec = max(1, 16 // torch.empty((), dtype=dtype).element_size())
        if tiled:
            # [BLOCK_R, BLOCK_N] tiles, 16 bytes per thread along N, one warp across at most 32 * vec channels; the
            # rows fill 4 warps x e elements per thread, e shrinking as the 1 + 2D + D(D-1)/2 accumulators grow.
            # ptxas, sm_90, bf16 with channels innermost: 90-96 registers at D = 1, 116-127 at D = 3, ~210 at
            # D = 7; none spilled (tests/test_triton_compile.py; fp64 at D = 7 spills a little). e = 8 at D = 3
            # took 242-249, a quarter of the occupancy.
            block_n, num_warps, programs = min(32 * vec, max(16, next_pow2(n))), 4, programs or 512
        else:
            # [PD, BLOCK_N] tiles with PD inside each thread: a load puts 16 bytes per thread along N, so BLOCK_N =
            # 32 * vec * num_warps keeps every warp along N (ptxas: no shuffles in the row loop).
            pd = next_pow2(max(d, 1))
            num_warps = 4 if pd <= 4 else 2
            block_n = min(32 * vec * num_warps, max(32, next_pow2(n)))
            num_warps = max(1, min(num_warps, block_n // (32 * vec)))
            programs = programs or 2048
        num_n = cdiv(n, block_n)
        r = 1 + 2 * d + d * d
        # A fixed program count (not the device's SM count) keeps the partial sums, hence the result, identical on
        # every GPU for the same shapes, strides and alignment. The tiled kernel's 512 (x N tiles) measured best
        # or near it at the ResNet convs and at 8192x4096 (probe_dz: 2048 cost up to 1.5x, 256 up to 1.4x). The
        # [split, R, N] partials stay under 8M floats, which also keeps _finish_partials' int32 offsets in range.
        cap = max(1, min(cdiv(programs, num_n), (8 << 20) // max(1, r * n)))
        if tiled:
            # Each program ends with 1 + 2D + D(D-1)/2 sums across its warps and a partial-row store: with fewer
            # than 8 row tiles to walk, that tail dominates (probe_dz, 14x14 convs: 46 us at 1 tile per program, 6
            # us at 12), so smaller tiles.
            per_thread = 8 if d == 1 else 4 if d <= 3 else 2
            rows_each = cdiv(rows, max(1, min(rows, cap)))
            while per_thread > 2 and rows_each < 8 * max(1, 32 * num_warps * per_thread // block_n):
                per_thread //= 2
            block_r = max(1, 32 * num_warps * per_thread // block_n)
            split = max(1, min(cdiv(rows, block_r), cap))
            meta = dict(P=next_pow2(1 + d), BLOCK_R=block_r, ROWS64=rows + split * block_r >= 1 << 31)
        else:
            split, meta = max(1, min(rows, cap)), dict(PD=pd)
        if fin_w is not None and (fin_w < 1 or fin_w & (fin_w - 1)):
            raise ValueError(f"DzLaunch: fin_w must be a power of two, got {fin_w}")
        work = split * num_n
        if finish == "kernel":
            # [FIN_S, FIN_W] finisher tiles of <= 16 values per thread, sized from the shapes alone (they fix the
            # summation tree): ~128 column blocks, which up to 128 finishers (no more than the device's SMs, which
            # _finish_partials' deadlock argument needs) share. Many short programs hide the load latency that one
            # last-arriving program per N tile could not; volatile polling keeps the dZ programs' L1 intact.
            fin_w = fin_w or max(16, min(512, next_pow2(cdiv(r * n, 128))))
            fin_s = max(1, min(next_pow2(split), 16 * 32 * num_warps // fin_w))
            nfin = max(1, min(cdiv(r * n, fin_w), 128, _sm_count(gate.device)))
            self.counters = 2
            self.grid = (work + nfin,)
            meta.update(FINISH=True, FIN_S=fin_s, FIN_W=fin_w)
        else:
            self.counters, nfin = 0, 0
            self.grid = (work,)
            meta.update(FINISH=False, FIN_S=1, FIN_W=1)
        self.part_shape = (split, r, n)
        self.out_dtype = out_dtype or gate.dtype
        self.ints = (rows, n, s, split, nfin, *dy_strides, *h_strides, *gate.stride(), *cascade.stride(), *dz_strides)
        self.meta = dict(D=d, ACT=act, ACC_DTYPE=acc_dtype(dtype), BLOCK_N=block_n, num_warps=num_warps, **meta)

    @property
    def tiled(self) -> bool:
        return self.launcher is _launch_dz_tiled

    @property
    def finishes_in_kernel(self) -> bool:
        return self.meta["FINISH"]

    def launch_into(self, dy, h, gate, cascade, dz, part, counters=None, out=None) -> None:
        """The kernel alone, into caller-made buffers (probes, tests): dZcat into dz, the per-program partial sums
        into part [split, R, N] and, when it finishes in the kernel, their sum into out (dsmall) through the zeroed
        int32 counters (counter_buffer)."""
        # The launch cache keys on this plan, not on the pointers' dtypes: check what it was compiled for (__call__
        # makes its own buffers and skips this).
        if part.dtype != self.acc_t or tuple(part.shape) != self.part_shape or not part.is_contiguous():
            raise ValueError(f"DzLaunch.launch_into: part must be a contiguous {self.acc_t} tensor of shape "
                             f"{self.part_shape}, got {part.dtype} {tuple(part.shape)}")  # fmt: skip
        if counters is None or out is None:
            if self.finishes_in_kernel:
                raise ValueError("DzLaunch.launch_into: finish='kernel' needs counters and out")
            counters = out = part  # never dereferenced without FINISH
        elif self.finishes_in_kernel:
            if out.dtype != self.out_dtype or tuple(out.shape) != self.part_shape[1:] or not out.is_contiguous():
                raise ValueError(f"DzLaunch.launch_into: out must be a contiguous {self.out_dtype} tensor of shape "
                                 f"{self.part_shape[1:]}, got {out.dtype} {tuple(out.shape)}")  # fmt: skip
            if counters.dtype != torch.int32 or counters.numel() < self.counters:
                raise ValueError(f"DzLaunch.launch_into: counters must be int32 with >= {self.counters} entries, "
                                 f"got {counters.dtype} with {counters.numel()}")  # fmt: skip
        self._launch((dy, h, gate, cascade, dz, part, counters, out))

    def _launch(self, ptrs: tuple) -> None:
        self.launcher(self.grid, ptrs + self.ints, self.meta, (self.serial, aligned16(ptrs)))

    def __call__(self, dy, h, gate, cascade, dz) -> torch.Tensor:
        """Launch; returns the reductions packed as pai_fast._layout's dsmall [1 + 2D + D*D, N] (dbias,
        ddendrite_bias, dgate, dcascade) in out_dtype, summed over a fixed number of programs in a fixed order (no
        float atomics) by torch.sum (and a cast when out_dtype is not the accumulation dtype) or inside the
        launch."""
        dev = dy.device
        part = torch.empty(self.part_shape, device=dev, dtype=self.acc_t)
        if not self.finishes_in_kernel:
            self._launch((dy, h, gate, cascade, dz, part, part, part))  # counters and out unused without FINISH
            return part.sum(0).to(self.out_dtype)
        out = torch.empty(self.part_shape[1:], device=dev, dtype=self.out_dtype)
        self._launch((dy, h, gate, cascade, dz, part, counter_buffer(dev, self.counters), out))
        return out
