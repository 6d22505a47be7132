"""Fused dendritic Conv1d / Conv2d / Conv3d (groups = 1, zero padding): Triton implicit-GEMM forward, backward
launcher.

Math (CONTRACT.md, spec §2.3), per output channel n and output position (b, o), with f = conv(x, W) + b and
h_i = conv(x, V_i) + c_i:

    z_0 = f(x)               u_i = h_i(x)
    s_i = u_i + sum_{j<i} B[i, j] a_j          a_i = act(s_i)          y = z_0 + sum_i G[i] a_i

Backward, with dy = dL/dy and the saved a_i (h [B, D, Cout, *out]):

    dz_0 = dy
    for i = D-1 .. 0:   da_i = G[i] dy + sum_{k>i} B[k, i] ds_k        ds_i = da_i act'(a_i)
    dG[i] = sum_{b,o} dy a_i     dB[k, i] = sum_{b,o} ds_k a_i (i < k)     db = sum dy     dc_i = sum ds_i
    dX = conv_transpose(dZcat, Wcat)         dWcat = conv_weight_grad(X, dZcat)

Forward: ONE kernel, an implicit GEMM. Rows are the B * prod(out) output positions, the reduction runs over the
kernel positions (outer) and input-channel blocks (inner), so the x address of a row is computed once per kernel
position and the channel block is a contiguous run (x is made channels-innermost first). The stacked weight tile
and the epilogue are the Linear kernel's (see dendritic_linear.py and _common.py): one tl.dot into a
[BLOCK_M, P * BN] accumulator, cascade / activation / gated sum in registers, y and (training only) h written.
On Hopper (W_TMA) the weight tile arrives by TMA from Wpack [1 + D, Cout, KD*KH*KW*Cin] (one [P, BN, BLOCK_K]
box is the stacked tile, as in the Linear's TMA kernel). For stride 1 and dense channels-innermost x, x's tile comes
by TMA too (X_TMA 2): a program owns a BH x BW block of one output plane, and tap (kd, kh, kw) of the whole block is
one [1, 1, BH, BW, BLOCK_K] box of x [B, ID, IH, IW, Cin] at a fixed offset, its parts in the padding returned as
zeros by the TMA unit (no masks, no address arithmetic). The box is then wgmma's B operand against the weight tile
packed per N-tile (one 2-D box, A), and the accumulator is transposed for the epilogue. X_TMA 1 (opt-in, not yet
measured on hardware): without padding, rows are the B * prod(in) input positions and a tap is a fixed row shift.
Conv1d and Conv2d run as Conv3d with unit leading dims. x may have any strides (NCHW, channels_last, slices). y and
h keep x's memory format (pai_fast._layout.conv_empty, as the op's fake kernel promises): with channels_last x the
epilogue's stores run along the channels, contiguous; with NCHW they are strided by the spatial size.

Backward: the shared dZ kernel (_common.py) writes dZcat [B, (1+D)Cout, *out] (x's memory format) and the
per-program partial sums,
then ONE aten.convolution_backward call over the stacked weights (cuDNN on the GPU) gives dX and dWcat; dweight
and ddendrite_weight are views of dWcat.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._layout import conv_empty, seven_grads, small_rows, stacked_view, weight_rows_like
from .._plans import PlanCache, aligned16, serial
from ..backends import device_capability
from ._common import (
    ALL_CONFIGS,
    DzLaunch,
    _dendritic_epilogue,
    _grouped_tile,
    _stacked_weight_rows,
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

try:  # Triton >= 3.2: host-side TMA descriptors
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover
    TensorDescriptor = None

# --------------------------------------------------------------------------------------------------------------
# Reference (the float64 oracle is pai_fast.reference.dendritic_conv_ref; same math, kept beside the kernel)
# --------------------------------------------------------------------------------------------------------------


def conv_ref(
    x, weight, bias, dendrite_weight, dendrite_bias, gate, cascade, stride, padding, dilation, activation="sigmoid"
):
    """Plain-torch dendritic conv (one convolution per branch); differentiable, any dtype."""
    act = {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu, "identity": lambda t: t}[activation]
    conv = {1: torch.nn.functional.conv1d, 2: torch.nn.functional.conv2d, 3: torch.nn.functional.conv3d}
    conv = conv[weight.dim() - 2]
    view = (-1,) + (1,) * (weight.dim() - 2)
    y = conv(x, weight, bias, stride, padding, dilation)
    acts = []
    for i in range(dendrite_weight.shape[0]):
        s = conv(x, dendrite_weight[i], None if dendrite_bias is None else dendrite_bias[i], stride, padding, dilation)
        for j in range(i):
            s = s + cascade[i, j].view(view) * acts[j]
        acts.append(act(s))
        y = y + gate[i].view(view) * acts[i]
    return y


# --------------------------------------------------------------------------------------------------------------
# Forward kernel
# --------------------------------------------------------------------------------------------------------------


@triton.jit
def _grid_position(r, PLANE, HW, W):
    """(image, depth, row, column) of the flat position r on a [*, D, H, W] grid; PLANE = D * H * W, HW = H * W."""
    b = r // PLANE
    rem = r - b * PLANE
    d = rem // HW
    rem = rem - d * HW
    h = rem // W
    return b, d, h, rem - h * W


@triton.jit
def _conv_fwd_kernel(
    x_ptr,
    # x_ptr: X_TMA 1, a descriptor over x as [B * ID * IH * IW, CIN], box [BLOCK_M, BLOCK_K]; X_TMA 2, over x as
    # [B, ID, IH, IW, CIN], box [1, 1, BH, BW, BLOCK_K]; else x's pointer. w_ptr: X_TMA 2, a descriptor over
    # Wtiles [N-tiles * P * BN, KD*KH*KW*CIN] (_pack_tiles), box [BLOCK_C, BLOCK_K]; W_TMA, over Wpack
    # [1 + D, Cout, KD*KH*KW*CIN], box [P, BN, BLOCK_K]; else W's pointer.
    w_ptr,
    v_ptr,
    b_ptr,
    c_ptr,
    g_ptr,
    cas_ptr,
    y_ptr,
    h_ptr,
    ROWS,  # B * OS (X_TMA 1: B * ID * IH * IW)
    N,  # output channels
    CIN,
    OS,  # OD * OH * OW
    OH,
    OW,
    ID,
    IH,
    IW,
    ROWS_KEY,  # bucketed ROWS, only for the autotune key
    stride_xb,
    stride_xc,
    stride_xd,
    stride_xh,
    stride_xw,
    stride_wn,
    stride_vd,
    stride_vn,
    stride_wc,  # the c / kd / kh / kw strides are shared by weight and dendrite_weight (the launcher makes it so)
    stride_wkd,
    stride_wkh,
    stride_wkw,
    conv_sd,
    conv_sh,
    conv_sw,
    pad_d,
    pad_h,
    pad_w,
    dil_d,
    dil_h,
    dil_w,
    stride_b,
    stride_cd,
    stride_cn,
    stride_gd,
    stride_gn,
    stride_ai,
    stride_aj,
    stride_an,
    stride_yb,
    stride_ys,
    stride_yn,
    stride_hb,
    stride_hs,
    stride_hd,
    stride_hn,
    KD: tl.constexpr,
    KH: tl.constexpr,
    KW: tl.constexpr,
    D: tl.constexpr,
    P: tl.constexpr,
    ACT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SAVE_H: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    W_TMA: tl.constexpr,
    X_TMA: tl.constexpr,  # 0: x tile by pointers; 1: by TMA, flat rows (stride 1, no padding); 2: TMA spatial box
    EVEN_C: tl.constexpr,
    BW: tl.constexpr,  # X_TMA 2: the box is BLOCK_M // BW output rows by BW output columns
    BLOCK_M: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    BN: tl.constexpr = BLOCK_C // P
    ohw = OH * OW
    if X_TMA == 2:
        # A tile is a BH x BW block of one output plane; tap (kd, kh, kw) reads the input block at a fixed offset,
        # one [1, 1, BH, BW, BLOCK_K] box of x [B, ID, IH, IW, CIN] whose parts in the padding (or past the end)
        # TMA returns as zeros: no masks, both wgmma operands straight from shared memory.
        BH: tl.constexpr = BLOCK_M // BW
        tiles_w = tl.cdiv(OW, BW)
        tiles_h = tl.cdiv(OH, BH)
        od_n = OS // ohw
        pid_m, pid_n = _grouped_tile((ROWS // OS) * od_n * tiles_h * tiles_w, N, 1, BN, GROUP_M)
        tw = pid_m % tiles_w
        t_ = pid_m // tiles_w
        th = t_ % tiles_h
        t_ = t_ // tiles_h
        od = t_ % od_n
        b_i = t_ // od_n
        bb = b_i.to(tl.int64)
        oh = th * BH + tl.arange(0, BLOCK_M) // BW
        ow = tw * BW + tl.arange(0, BLOCK_M) % BW
        row_out = (oh < OH) & (ow < OW)
        sp = (od * ohw + oh * OW + ow).to(tl.int64)  # int64: the epilogue multiplies it by h's stride D * N
    else:
        pid_m, pid_n = _grouped_tile(ROWS, N, BLOCK_M, BN, GROUP_M)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BN + tl.arange(0, BN)
    offs_k = tl.arange(0, BLOCK_K)
    if X_TMA == 1:
        # Rows are positions of the INPUT grid (stride 1, no padding, ROWS = B * ID * IH * IW < 2**31): the tap
        # (kd, kh, kw) of every row is the row `shift` further on, so x's tile is one TMA box of the [ROWS, CIN]
        # matrix. A row is an output only where its position lies inside the output grid, and there every tap
        # lies inside the input.
        ihw = IH * IW
        bb, od, oh, ow = _grid_position(offs_m, ID * ihw, ihw, IW)
        row_out = (offs_m < ROWS) & (od < OS // ohw) & (oh < OH) & (ow < OW)
        sp = (od * ohw + oh * OW + ow).to(tl.int64)
        bb = bb.to(tl.int64)
    elif X_TMA == 0:
        # Output position of every row (rows past the end wrap around; they are never stored).
        rows = (offs_m % ROWS).to(tl.int64)
        bb, od, oh, ow = _grid_position(rows, OS, ohw, OW)
        sp = rows - bb * OS
        row_out = offs_m < ROWS
        id0 = od * conv_sd - pad_d
        ih0 = oh * conv_sh - pad_h
        iw0 = ow * conv_sw - pad_w
        x_rows = x_ptr + bb * stride_xb

    if not W_TMA:
        w_rows, c_mask = _stacked_weight_rows(w_ptr, v_ptr, pid_n, N, stride_wn, stride_vd, stride_vn, D, BN, BLOCK_C)

    if X_TMA == 2:
        # x's tile is wgmma's B operand here (acc transposed): Triton keeps a reshaped TMA box in shared memory
        # only as B, and the stacked weight tile, one plain 2-D box, is A.
        acc = tl.zeros((BLOCK_C, BLOCK_M), dtype=ACC_DTYPE)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=ACC_DTYPE)
    ncb = tl.cdiv(CIN, BLOCK_K)
    KK: tl.constexpr = KD * KH * KW
    for t in range(0, KK * ncb):
        kpos = t // ncb
        cb = t - kpos * ncb
        kd = kpos // (KH * KW)
        kh = (kpos // KW) % KH
        kw = kpos % KW
        ci = cb * BLOCK_K + offs_k
        k_ok = ci < CIN
        # TMA returns channels past CIN as zeros, and rows before the first or past the last.
        if X_TMA == 2:
            i_h = th * BH + kh * dil_h - pad_h
            i_w = tw * BW + kw * dil_w - pad_w
            a = x_ptr.load([b_i, od + kd * dil_d - pad_d, i_h, i_w, cb * BLOCK_K])
            a = tl.reshape(a, (BLOCK_M, BLOCK_K))
        elif X_TMA == 1:
            shift = kd * dil_d * ihw + kh * dil_h * IW + kw * dil_w
            a = x_ptr.load([pid_m * BLOCK_M + shift, cb * BLOCK_K])
        else:
            i_d = id0 + kd * dil_d
            i_h = ih0 + kh * dil_h
            i_w = iw0 + kw * dil_w
            row_ok = (i_d >= 0) & (i_d < ID) & (i_h >= 0) & (i_h < IH) & (i_w >= 0) & (i_w < IW)
            x_ptrs = (x_rows + i_d * stride_xd + i_h * stride_xh + i_w * stride_xw)[:, None] + ci[None, :] * stride_xc
            if EVEN_C:
                a = tl.load(x_ptrs, mask=row_ok[:, None], other=0.0)
            else:
                a = tl.load(x_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        if X_TMA == 2:
            # Wtiles [N-tiles * P * BN, KK * CIN]: the stacked tile of N-tile pid_n is BLOCK_C consecutive rows.
            b = w_ptr.load([pid_n * BLOCK_C, kpos * CIN + cb * BLOCK_K])
        elif W_TMA:
            # The [P, BN, BLOCK_K] box is the stacked tile; branch rows past D come back as zeros. Where BLOCK_K
            # does not divide Cin the box runs into the next kernel position's channels, which meet the zeroed
            # (masked) x columns.
            b = tl.reshape(w_ptr.load([0, pid_n * BN, kpos * CIN + cb * BLOCK_K]), (BLOCK_C, BLOCK_K))
        else:
            w_ptrs = w_rows[:, None] + ci[None, :] * stride_wc + (kd * stride_wkd + kh * stride_wkh + kw * stride_wkw)
            if EVEN_C:
                b = tl.load(w_ptrs, mask=c_mask[:, None], other=0.0)
            else:
                b = tl.load(w_ptrs, mask=c_mask[:, None] & k_ok[None, :], other=0.0)
        if X_TMA == 2:
            acc = tl.dot(b, tl.trans(a), acc, input_precision=DOT_PRECISION, out_dtype=ACC_DTYPE)
        else:
            acc = tl.dot(a, tl.trans(b), acc, input_precision=DOT_PRECISION, out_dtype=ACC_DTYPE)
    if X_TMA == 2:
        acc = tl.trans(acc)

    _dendritic_epilogue(
        acc,
        offs_n,
        offs_n < N,
        row_out,
        y_ptr + bb * stride_yb + sp * stride_ys,
        h_ptr + bb * stride_hb + sp * stride_hs,
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


def _prune(configs, named_args, **kwargs):
    a = named_args
    return select_configs(configs, a["ROWS"], a["N"], a["CIN"], kwargs["P"], a["x_ptr"].element_size())


def box_width(oh: int, ow: int, block_m: int) -> int:
    """BW of the spatial box (X_TMA 2): the power of two (>= 8 unless BLOCK_M is smaller) whose BLOCK_M // BW by
    BW tiles cover the OH x OW output plane with the fewest wasted rows; ties go to the wider box."""
    best = None
    bw = min(8, block_m)
    while bw <= block_m:
        bh = block_m // bw
        cost = cdiv(oh, bh) * bh * cdiv(ow, bw) * bw
        if best is None or cost <= best[0]:
            best = (cost, bw)
        bw *= 2
    return best[1]


_heuristics = triton.heuristics(
    {
        "EVEN_C": lambda a: a["CIN"] % a["BLOCK_K"] == 0,
        "BW": lambda a: box_width(a["OH"], a["OW"], a["BLOCK_M"]) if a["X_TMA"] == 2 else 1,
    }
)
_fwd_kernel = _heuristics(_conv_fwd_kernel)
# The autotuned variant wraps the same JIT function (one compile cache); never built under the interpreter.
_TUNE_KEY = ["ROWS_KEY", "N", "CIN", "KD", "KH", "KW", "D", "SAVE_H", "HAS_BIAS", "X_TMA"]
_fwd_kernel_tuned = autotuned(_fwd_kernel, ALL_CONFIGS, _TUNE_KEY, _prune)
_launch_fwd = Launcher(_fwd_kernel)
_launch_fwd_tuned = Launcher(_fwd_kernel_tuned)


def tma_boxes(x_tma: int, p: int, block_m: int, block_c: int, block_k: int, oh: int, ow: int) -> tuple[list, list]:
    """(weight box, x box) of a config's tile: X_TMA 2, the packed tile [BLOCK_C, BLOCK_K] and the spatial box
    [1, 1, BH, BW, BLOCK_K]; else the stacked tile [P, BN, BLOCK_K] and (X_TMA 1) x's rows [BLOCK_M, BLOCK_K]."""
    if x_tma == 2:
        bw = box_width(oh, ow, block_m)
        return [block_c, block_k], [1, 1, block_m // bw, bw, block_k]
    return [p, block_c // p, block_k], [block_m, block_k]


def _w_box(nargs: dict) -> None:
    """Autotune pre-hook of the TMA variants: the descriptors' boxes follow the config's tile."""
    a = nargs
    w_box, x_box = tma_boxes(a["X_TMA"], a["P"], a["BLOCK_M"], a["BLOCK_C"], a["BLOCK_K"], a["OH"], a["OW"])
    a["w_ptr"].block_shape = w_box
    if a["X_TMA"]:
        a["x_ptr"].block_shape = x_box


def _tma_cfg(block_m: int, block_c: int | None, block_k: int, warps: int, stages: int) -> triton.Config:
    """A TMA candidate; block_c None leaves BLOCK_C to the launch (the spatial box packs its weights for it)."""
    kw = {"BLOCK_M": block_m, "BLOCK_K": block_k, "GROUP_M": 8}
    if block_c is not None:
        kw["BLOCK_C"] = block_c
    return triton.Config(kw, num_warps=warps, num_stages=stages, pre_hook=_w_box)


# The weight tile arrives by TMA, so only x's [BLOCK_M, BLOCK_K] tile needs registers for addresses: 128 x 256
# tiles fit for 2-byte and 4-byte (tf32) inputs. K rows of 128 bytes (BLOCK_K 64 / 32).
TMA_CONFIGS = [
    _tma_cfg(bm, bc, bk, warps, stages)
    for bk in (64, 32)
    for bm, bc, warps, stages in ((128, 256, 8, 3), (128, 256, 8, 4), (128, 128, 4, 4), (64, 128, 4, 4))
]


def tma_configs(dtype: torch.dtype) -> list:
    """The TMA-weight autotune candidates for an input dtype."""
    return rows_of_128_bytes(TMA_CONFIGS, torch.empty((), dtype=dtype).element_size())


def _prune_tma(configs, named_args, **kwargs):
    return rows_of_128_bytes(configs, named_args["y_ptr"].element_size())


_fwd_tma_tuned = autotuned(_fwd_kernel, TMA_CONFIGS, _TUNE_KEY, _prune_tma)
_launch_tma_tuned = Launcher(_fwd_tma_tuned)


# The spatial-box mainloop (X_TMA 2): BLOCK_C is the plan's (the weight tiles are packed for it), so the candidates
# vary the rest. A 3x3 conv's reduction is short (9 taps x Cin / BLOCK_K steps), so 2-3 stages that let two CTAs
# share an SM (one's epilogue under the other's mainloop) compete with deeper pipelines.
BOX_CONFIGS = [
    _tma_cfg(bm, None, bk, warps, stages)
    for bk in (64, 32)
    for bm, warps, stages in ((64, 4, 2), (64, 4, 3), (64, 4, 4), (128, 4, 2), (128, 4, 3), (128, 8, 3), (128, 8, 4))
]


def box_config_fits(block_m: int, block_c: int, warps: int, p: int) -> bool:
    """A spatial-box candidate worth timing: at most 128 accumulator registers per thread, and 8 warps only where
    each warpgroup's channel half lies in one branch (BN >= 128). Measured on the H200 (h200_probe_conv_28accee):
    with BN = 64 the epilogue's branch sums then cross warpgroups and the kernel runs 2-3x slower."""
    return block_m * block_c <= 4096 * warps and (warps == 4 or block_c // p >= 128)


def _prune_box(configs, named_args, **kwargs):
    keep = rows_of_128_bytes(configs, named_args["y_ptr"].element_size())
    return [c for c in keep if box_config_fits(c.kwargs["BLOCK_M"], kwargs["BLOCK_C"], c.num_warps, kwargs["P"])]


_fwd_box_tuned = autotuned(_fwd_kernel, BOX_CONFIGS, _TUNE_KEY + ["BLOCK_C"], _prune_box)
_launch_box_tuned = Launcher(_fwd_box_tuned)


def box_block_c(n: int, p: int) -> int:
    """BLOCK_C of the spatial-box mainloop: 256 stacked columns when the layer has them, else 128 (or 64)."""
    return max(64, min(256, next_pow2(n * p)))


_TMA_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# "auto": the weight-TMA mainloop where the problem is large enough to repay its per-call host work (packing the
# weights, building a descriptor); True: wherever it can run (tests, probes); False: never.
_state = {"weight_tma": "auto", "x_tma": "auto"}
# Measured on the H100 (h100_probe_conv_9e32f1b): at batch 32 the weight-only TMA mainloop saves <= 10 % of the
# kernel's 50-100 µs while its host work costs ~35 µs per call; it pays from about 5e10 MACs (~0.3 ms of kernel
# time). With x by TMA too the kernel runs 1.2-1.6x faster than the pointer one (h200_probe_conv_28accee), which
# repays the host work from a few 1e9 MACs (~10 µs of kernel time).
_TMA_MIN_MACS = 5e10
_X_TMA_MIN_MACS = 4e9


def _tma_capable(x: torch.Tensor, cin: int, kk: int, p: int, rows: int) -> bool:
    """Whether the weight tiles can come by TMA (not turned off): Hopper, 2-byte or TF32 inputs, P <= 8, Wpack rows
    (kk * Cin elements) 16-byte aligned. Whether they do is the plan's call: forced, or a problem large enough to
    repay the per-call host work (_TMA_MIN_MACS, _X_TMA_MIN_MACS)."""
    mode = _state["weight_tma"]
    if not mode or TensorDescriptor is None or p > 8:
        return False
    if interpreting():  # only when forced (tests: the index math of the TMA mainloops on the CPU)
        return mode is True and (kk * cin * x.element_size()) % 16 == 0
    if not x.is_cuda:
        return False
    if x.dtype not in _TMA_DTYPES or (x.dtype == torch.float32 and dot_precision(x.dtype) != "tf32"):
        return False
    return rows >= 1024 and (kk * cin * x.element_size()) % 16 == 0 and device_capability(x.device) >= (9, 0)


def _x_tma_mode(x: torch.Tensor, st: tuple, pd: tuple, ins: tuple) -> int:
    """How x's tile comes with the weight's by TMA (the kernel's X_TMA): 0, by pointers; 2, as a spatial box of
    [B, ID, IH, IW, Cin] (what "auto" takes); 1, only when forced (x_tma=True; not yet measured on hardware), as
    rows of the [B * ID * IH * IW, Cin] matrix, a fixed shift per tap (no padding, input-grid rows < 2**31; the
    rows off the output grid are computed and dropped). Both need stride 1 and x dense channels-innermost with
    16-byte rows."""
    if _state["x_tma"] is False or max(st) != 1 or (x.shape[1] * x.element_size()) % 16:
        return 0
    if not x.movedim(1, -1).is_contiguous():
        return 0
    rows_in = x.shape[0] * ins[0] * ins[1] * ins[2]
    if _state["x_tma"] is True and max(pd) == 0 and 2 * rows_in + 1024 < 2**31:
        return 1
    return 2


def _pack_tiles(wpack: torch.Tensor, p: int, bn: int) -> torch.Tensor:
    """Wtiles [N-tiles * P * BN, K] from Wpack [1 + D, Cout, K]: N-tile t's stacked tile (branch-major, P blocks
    of BN rows, zeros past D and Cout) is rows t * P * BN onwards, one 2-D TMA box. Wpack itself when it already is
    (one N-tile, P = 1 + D, Cout = BN)."""
    branches, n, k = wpack.shape
    tiles = cdiv(n, bn)
    if branches != p or n % bn:  # zero rows for the branches past D and the channels past Cout
        full = wpack.new_zeros((p, tiles * bn, k))
        full[:branches, :n].copy_(wpack)
        wpack = full
    # N-tile-major: one copy, or a view when there is one N-tile.
    return wpack.view(p, tiles, bn, k).transpose(0, 1).reshape(tiles * p * bn, k)


def _pack_weights(weight: torch.Tensor, dendrite_weight: torch.Tensor) -> torch.Tensor:
    """Wpack [1 + D, Cout, KD*KH*KW*Cin]: every branch's weights with the channels innermost (one row per output
    channel, kernel positions outer), the layout the TMA box walks. A free view of weights stacked channels_last
    (module.to(memory_format=torch.channels_last)); one copy otherwise."""
    d, n = dendrite_weight.shape[0], weight.shape[0]
    stacked = stacked_view(weight, dendrite_weight) if d > 0 else weight[None]
    if stacked is not None:
        return stacked.movedim(2, -1).reshape(1 + d, n, -1)
    wpack = weight.new_empty((1 + d, n, *weight.shape[2:], weight.shape[1]))
    wpack[0].copy_(weight.movedim(1, -1))
    if d > 0:
        wpack[1:].copy_(dendrite_weight.movedim(2, -1))
    return wpack.view(1 + d, n, -1)


def _heuristic_config(rows: int, n: int, cin: int, p: int, dtype: torch.dtype) -> dict:
    """Fixed config when not autotuning (interpreter, or PAI_FAST_TRITON_AUTOTUNE=0)."""
    if interpreting():
        bn = min(max(1, next_pow2(n)), 32)
        return dict(
            BLOCK_M=min(128, max(16, next_pow2(rows))),
            BLOCK_C=max(16, p * bn),
            BLOCK_K=min(32, max(16, next_pow2(cin))),
            GROUP_M=8,
            num_warps=4,
            num_stages=1,
        )
    if dtype == torch.float64:
        return dict(BLOCK_M=64, BLOCK_C=64, BLOCK_K=16, GROUP_M=8, num_warps=4, num_stages=2)
    bk = 64 if dtype in (torch.float16, torch.bfloat16) and cin >= 64 else 32
    if rows >= 4096 and n * p >= 512:
        bc = 256 if dtype != torch.float32 else 128
        return dict(BLOCK_M=128, BLOCK_C=bc, BLOCK_K=bk, GROUP_M=8, num_warps=8, num_stages=3)
    return dict(BLOCK_M=64, BLOCK_C=max(64, min(128, p * 16)), BLOCK_K=bk, GROUP_M=8, num_warps=4, num_stages=3)


# --------------------------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------------------------


def _tuple3(v, nd: int, name: str, fill: int) -> tuple[int, int, int]:
    v = tuple(int(t) for t in v)
    if len(v) != nd:
        raise ValueError(f"conv: {name} must have {nd} entries for a Conv{nd}d, got {v}")
    return (fill,) * (3 - nd) + v


def _out_size(i: int, k: int, s: int, p: int, d: int) -> int:
    return (i + 2 * p - d * (k - 1) - 1) // s + 1


_plans = PlanCache(strides=True)  # _ConvFwdPlan per call signature (host time: pai_fast._plans)
_bwd_plans = PlanCache(strides=True)  # _ConvBwdPlan per call signature


def _check_conv(x, weight, bias, dendrite_weight, dendrite_bias, gate, cascade, stride, padding, dilation, activation):
    act = check_common("conv_fwd", x, weight, activation)
    nd = weight.dim() - 2
    if nd not in (1, 2, 3):
        raise ValueError(f"conv_fwd: weight must be [Cout, Cin, *k] with 1..3 spatial dims, got {list(weight.shape)}")
    if x.dim() != nd + 2:
        raise ValueError(f"conv_fwd: x must be batched [B, Cin, *spatial] ({nd + 2}-D), got {list(x.shape)}")
    if x.shape[1] != weight.shape[1]:
        raise ValueError(
            f"conv_fwd: groups=1 only: x has {x.shape[1]} channels, weight expects {weight.shape[1]} (groups > 1 "
            "runs on the torch backend)"
        )
    n = weight.shape[0]
    if dendrite_weight.dim() != weight.dim() + 1 or tuple(dendrite_weight.shape[1:]) != tuple(weight.shape):
        raise ValueError(
            f"conv_fwd: dendrite_weight must be [D, {', '.join(map(str, weight.shape))}], got "
            f"{list(dendrite_weight.shape)}"
        )
    if dendrite_weight.dtype != x.dtype:
        raise TypeError(f"conv_fwd: dendrite_weight dtype must be {x.dtype}, got {dendrite_weight.dtype}")
    d = dendrite_weight.shape[0]
    if tuple(gate.shape) != (d, n) or tuple(cascade.shape) != (d, d, n):
        raise ValueError(
            f"conv_fwd: gate must be [{d}, {n}] and cascade [{d}, {d}, {n}], got {list(gate.shape)} and "
            f"{list(cascade.shape)}"
        )
    if (bias is None) != (dendrite_bias is None):
        raise ValueError("conv_fwd: dendrite_bias must be given exactly when bias is given")
    if bias is not None and (tuple(bias.shape) != (n,) or tuple(dendrite_bias.shape) != (d, n)):
        raise ValueError(
            f"conv_fwd: bias must be [{n}] and dendrite_bias [{d}, {n}], got {list(bias.shape)} and "
            f"{list(dendrite_bias.shape)}"
        )
    st = _tuple3(stride, nd, "stride", 1)
    pd = _tuple3(padding, nd, "padding", 0)
    dl = _tuple3(dilation, nd, "dilation", 1)
    if min(st) < 1 or min(dl) < 1 or min(pd) < 0:
        raise ValueError(f"conv_fwd: stride and dilation must be >= 1 and padding >= 0, got {st}, {dl}, {pd}")
    ks = (1,) * (3 - nd) + tuple(weight.shape[2:])
    ins = (1,) * (3 - nd) + tuple(x.shape[2:])
    outs = tuple(_out_size(ins[i], ks[i], st[i], pd[i], dl[i]) for i in range(3))
    if min(outs) < 1:
        raise ValueError(
            f"conv_fwd: output size {outs[3 - nd :]} is too small (input {tuple(x.shape[2:])}, kernel "
            f"{tuple(weight.shape[2:])}, stride {st[3 - nd :]}, padding {pd[3 - nd :]}, dilation {dl[3 - nd :]})"
        )
    return act, nd, n, d, st, pd, dl, ks, ins, outs


def _x_strides(x: torch.Tensor, nd: int) -> tuple[int, ...]:
    """(b, c, d, h, w) strides of x viewed as a Conv3d input."""
    s = x.stride()
    return (s[0], s[1]) + (0,) * (3 - nd) + tuple(s[2:])


def _w_strides(w: torch.Tensor, nd: int) -> tuple[int, ...]:
    """(n, c, kd, kh, kw) strides of a [Cout, Cin, *k] weight viewed as 3-D."""
    s = w.stride()
    return (s[0], s[1]) + (0,) * (3 - nd) + tuple(s[2:])


def _channels_last(t: torch.Tensor, cdim: int) -> torch.Tensor:
    """Same values and shape, channel dim ``cdim`` made the innermost (stride 1) dimension in memory."""
    return t.movedim(cdim, -1).contiguous().movedim(-1, cdim)


class _ConvFwdPlan:
    """What one forward call signature (shapes, strides, dtypes, devices, geometry, activation, flags) fixes: the
    output layout, which operands get re-laid out per call, the kernel's integer arguments, constexprs and grid.
    Built by running the layout decisions on the first call's tensors; later calls repeat them (same strides in,
    same strides out) and launch with the recorded integers."""

    __slots__ = (
        "serial", "rows", "n", "d", "p", "y_shape", "y_strides", "h_shape", "h_strides", "x_cl", "w_tma",
        "w_cl", "v_cl", "w_contig", "has_bias", "ints", "meta", "grid", "launch", "box", "x_tma", "xbox", "geo",
        "x_desc",
    )  # fmt: skip

    def __init__(self, x, weight, bias, dendrite_weight, dendrite_bias, gate, cascade, geo, save):
        act, nd, n, d, st, pd, dl, ks, ins, outs = _check_conv(
            x, weight, bias, dendrite_weight, dendrite_bias, gate, cascade, *geo
        )
        self.serial = serial()
        bsz, cin = x.shape[0], x.shape[1]
        out_sp = outs[3 - nd :]
        y = conv_empty(x, (bsz, n), out_sp)
        h = conv_empty(x, (bsz, d, n), out_sp) if save else x.new_empty((0,))
        self.y_shape, self.y_strides, self.h_shape, self.h_strides = y.shape, y.stride(), h.shape, h.stride()
        os_ = outs[0] * outs[1] * outs[2]
        self.rows = rows = bsz * os_
        self.n, self.d = n, d
        self.p = p = next_pow2(1 + d)
        self.has_bias = has_bias = bias is not None
        # The reduction walks channels innermost: with channel stride 1 x's tile is rows of contiguous runs that
        # the pipeliner fetches with cp.async (checked on sm_90). NCHW inputs pay one transposing copy per call
        # (for x about a fifth of a 3x3 conv's time at 64 channels); feed channels_last to skip it.
        self.x_cl = x.is_cuda and cin > 1 and x.stride(1) != 1
        if self.x_cl:
            x = _channels_last(x, 1)
        kk = ks[0] * ks[1] * ks[2]
        self.w_tma = self.x_tma = 0
        if _tma_capable(x, cin, kk, p, rows):
            x_tma = _x_tma_mode(x, st, pd, ins)
            min_macs = _X_TMA_MIN_MACS if x_tma else _TMA_MIN_MACS
            if _state["weight_tma"] is True or rows * n * p * kk * cin >= min_macs:
                self.w_tma, self.x_tma = True, x_tma
        # x as a TMA tensor: X_TMA 1, the [B * ID * IH * IW, Cin] matrix it is in memory; X_TMA 2, [B, ID, IH, IW, Cin]
        rows_in = bsz * ins[0] * ins[1] * ins[2]
        self.x_desc = None
        if self.x_tma == 1:  # the rows are the input grid's positions (see the kernel)
            self.rows = rows = rows_in
            self.x_desc = ([rows_in, cin], [cin, 1])
        elif self.x_tma == 2:
            hwc = ins[1] * ins[2] * cin
            self.x_desc = ([bsz, *ins, cin], [ins[0] * hwc, hwc, ins[2] * cin, cin, 1])
        self.geo = (bsz * outs[0], outs[1], outs[2])
        self.w_cl = self.v_cl = self.w_contig = False
        if self.w_tma:
            ws, vs = (0,) * 5, (0, 0)
        else:
            if x.is_cuda and cin > 1:  # the weight tile's channel runs contiguous too (see above)
                self.w_cl = weight.stride(1) != 1
                self.v_cl = d > 0 and dendrite_weight.stride(2) != 1
            weight, dendrite_weight = self.weights(weight, dendrite_weight)
            if d > 0 and _w_strides(dendrite_weight[0], nd)[1:] != _w_strides(weight, nd)[1:]:
                self.w_contig = True
                weight, dendrite_weight = weight.contiguous(), dendrite_weight.contiguous()
            ws = _w_strides(weight, nd)
            vs = dendrite_weight.stride()[:2] if d > 0 else (0, 0)
        cs = dendrite_bias.stride() if has_bias else (0, 0)
        ys = _merged_strides(y, 2)  # (b, n, spatial)
        hs = _merged_strides(h, 3) if save else (0, 0, 0, 0)  # (b, d, n, spatial)
        self.ints = (
            rows, n, cin, os_, outs[1], outs[2], ins[0], ins[1], ins[2], min(next_pow2(rows), 65536),
            *_x_strides(x, nd),
            ws[0], vs[0], vs[1], *ws[1:],
            *st, *pd, *dl,
            bias.stride(0) if has_bias else 0, cs[0], cs[1],
            gate.stride(0), gate.stride(1),
            cascade.stride(0), cascade.stride(1), cascade.stride(2),
            ys[0], ys[2], ys[1],
            hs[0], hs[3], hs[1], hs[2],
        )  # fmt: skip
        self.meta = dict(
            KD=ks[0],
            KH=ks[1],
            KW=ks[2],
            D=d,
            P=p,
            ACT=act,
            HAS_BIAS=has_bias,
            SAVE_H=bool(save) and d > 0,
            ACC_DTYPE=acc_dtype(x.dtype),
            DOT_PRECISION=dot_precision(x.dtype),
            W_TMA=self.w_tma,
            X_TMA=self.x_tma,
        )
        cfg = launch_config(lambda: _heuristic_config(rows, n, cin, p, x.dtype))
        self.launch = _launch_fwd if cfg is not None else _launch_tma_tuned if self.w_tma else _launch_fwd_tuned
        if self.x_tma == 2 and cfg is None:
            self.launch = _launch_box_tuned
        # BLOCK_C is the plan's for the spatial box (Wtiles are packed for it), and for a forced config without one
        # (a spatial-box candidate forced on any plan).
        if (self.x_tma == 2 and cfg is None) or (cfg is not None and "BLOCK_C" not in cfg):
            self.meta["BLOCK_C"] = box_block_c(n, p)
        if cfg is not None:
            self.meta.update(cfg)
        self.grid = self._grid if cfg is None else self._grid(self.meta)
        self.box = self.xbox = None
        if self.w_tma:  # the boxes of the default (or forced) config; the autotuner's pre-hook re-sets them
            box = {**(cfg or tma_configs(x.dtype)[0].kwargs), **self.meta}
            self.box, self.xbox = tma_boxes(
                self.x_tma, p, box["BLOCK_M"], box["BLOCK_C"], box["BLOCK_K"], outs[1], outs[2]
            )

    def _grid(self, meta: dict) -> tuple[int]:
        n_tiles = cdiv(self.n, meta["BLOCK_C"] // self.p)
        if self.x_tma == 2:
            planes, oh, ow = self.geo
            bw = box_width(oh, ow, meta["BLOCK_M"])
            return (planes * cdiv(oh, meta["BLOCK_M"] // bw) * cdiv(ow, bw) * n_tiles,)
        return (cdiv(self.rows, meta["BLOCK_M"]) * n_tiles,)

    def weights(self, weight, dendrite_weight):
        """The pointer mainloop's weights, re-laid out as this signature needs."""
        if self.w_cl:
            weight = _channels_last(weight, 1)
        if self.v_cl:
            dendrite_weight = _channels_last(dendrite_weight, 2)
        if self.w_contig:
            weight, dendrite_weight = weight.contiguous(), dendrite_weight.contiguous()
        return weight, dendrite_weight


def conv_fwd(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    dendrite_weight: torch.Tensor,
    dendrite_bias: torch.Tensor | None,
    gate: torch.Tensor,
    cascade: torch.Tensor,
    stride: tuple,
    padding: tuple,
    dilation: tuple,
    activation: str,
    save_for_backward: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """y [B, Cout, *out] and h [B, D, Cout, *out] (or empty(0) when not saving) in x's dtype, channels innermost
    when x is channels_last (pai_fast._layout.conv_empty), else contiguous."""
    tensors = (x, weight, bias, dendrite_weight, dendrite_bias, gate, cascade)
    geo = (stride, padding, dilation, activation)
    plan = _plans.get(
        tensors,
        (*geo, save_for_backward, *plan_state(x.dtype), _state["weight_tma"], _state["x_tma"]),
        lambda: _ConvFwdPlan(*tensors, geo, save_for_backward),
    )
    dev, dt = x.device, x.dtype
    y = torch.empty_strided(plan.y_shape, plan.y_strides, device=dev, dtype=dt)
    h = torch.empty_strided(plan.h_shape, plan.h_strides, device=dev, dtype=dt)
    if plan.rows == 0 or plan.n == 0:
        return y, h
    if plan.x_cl:
        x = _channels_last(x, 1)
    has_bias = plan.has_bias
    b_t, c_t = (bias, dendrite_bias) if has_bias else (y, y)
    if plan.w_tma:
        wpack = _pack_weights(weight, dendrite_weight)
        if plan.x_tma == 2:
            wpack = _pack_tiles(wpack, plan.p, plan.box[0] // plan.p)
        if wpack.data_ptr() % 16:  # a view of parameters at an odd offset (TMA needs a 16-byte aligned base)
            wpack = wpack.clone()
        desc = TensorDescriptor(wpack, list(wpack.shape), list(wpack.stride()), plan.box)
        xd = x
        if plan.x_tma:
            if x.data_ptr() % 16:  # TMA needs a 16-byte aligned base: an aligned copy, same strides
                x = x.clone()
            xd = TensorDescriptor(x, *plan.x_desc, plan.xbox)
        ptrs = (x, b_t, c_t, gate, cascade, y, h)
        # As below, the plan fixes the rest of the launch (the descriptors' boxes, dtypes, shapes): computing the
        # key from ~55 arguments instead cost ~50 µs per call (probe_conv_host).
        key = (plan.serial, aligned16(ptrs))
        plan.launch(plan.grid, (xd, desc, *ptrs, *plan.ints), plan.meta, key)
        return y, h
    weight, dendrite_weight = plan.weights(weight, dendrite_weight)
    ptrs = (x, weight, dendrite_weight if plan.d > 0 else weight, b_t, c_t, gate, cascade, y, h)
    # The plan fixes every integer argument and constexpr: the launch key adds only the pointers' alignment.
    plan.launch(plan.grid, ptrs + plan.ints, plan.meta, (plan.serial, aligned16(ptrs)))
    return y, h


def _merged_strides(t: torch.Tensor, lead: int) -> tuple[int, ...] | None:
    """Strides of t [*lead dims, *spatial] with the spatial dims merged into one (None if they do not merge)."""
    sizes, strides = t.shape[lead:], t.stride()[lead:]
    merged = 1  # stride of the merged spatial index
    expect = None
    for size, stride in reversed(list(zip(sizes, strides))):
        if size == 1:
            continue
        if expect is None:
            merged = stride
        elif stride != expect:
            return None
        expect = stride * size
    return tuple(t.stride()[:lead]) + (merged,)


def _stacked_weight(weight: torch.Tensor, dendrite_weight: torch.Tensor) -> torch.Tensor:
    """Wcat [(1+D)Cout, Cin, *k]: a zero-copy view when W and V sit back to back in one storage, else a copy."""
    view = stacked_view(weight, dendrite_weight, flat=True)
    if view is not None:
        return view
    return torch.cat([weight.unsqueeze(0), dendrite_weight], 0).flatten(0, 1)


def _like(t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """t with exactly the strides torch.empty_like(ref) has (what the op's fake kernel promises)."""
    if t.stride() == ref.stride() or ref.numel() <= 1:
        return t
    out = torch.empty_like(ref)
    if out.stride() == t.stride():
        return t
    out.copy_(t)
    return out


class _ConvBwdPlan:
    """What one backward call signature fixes: sizes, which operands get re-laid out per call, dZ's layout and
    the dZ launch."""

    __slots__ = ("nd", "n", "d", "rows", "w_rows", "cast_dy", "dy_contig", "h_contig", "z_shape", "z_strides",
                 "dz_launch", "small_dtype", "acc_t")  # fmt: skip

    def __init__(self, grad_y, x, weight, dendrite_weight, gate, cascade, h, activation):
        act = check_common("conv_bwd", x, weight, activation)
        self.nd = nd = weight.dim() - 2
        self.n, self.d = n, d = weight.shape[0], dendrite_weight.shape[0]
        bsz = x.shape[0]
        out_sp = tuple(grad_y.shape[2:])
        if grad_y.dim() != nd + 2 or tuple(grad_y.shape[:2]) != (bsz, n):
            raise ValueError(f"conv_bwd: grad_y must be [{bsz}, {n}, *out], got {list(grad_y.shape)}")
        if d > 0 and tuple(h.shape) != (bsz, d, n, *out_sp):
            raise ValueError(
                f"conv_bwd: h must be [{bsz}, {d}, {n}, *out] (forward run with save_for_backward), got {list(h.shape)}"
            )
        self.w_rows = ((1 + d) * n, *weight.shape[1:])
        self.small_dtype, self.acc_t = gate.dtype, torch_acc_dtype(x.dtype)
        self.cast_dy = grad_y.dtype != x.dtype
        if self.cast_dy:
            grad_y = grad_y.to(x.dtype)
        os_ = 1
        for v in out_sp:
            os_ *= v
        self.rows = rows = bsz * os_
        self.dy_contig = self.h_contig = False
        self.dz_launch = None
        self.z_shape = self.z_strides = None
        if rows == 0 or n == 0 or d == 0:
            return
        gs = _merged_strides(grad_y, 2)
        if gs is None:
            self.dy_contig = True
            gs = _merged_strides(grad_y.contiguous(), 2)
        hs = _merged_strides(h, 3)
        if hs is None:
            self.h_contig = True
            hs = _merged_strides(h.contiguous(), 3)
        # dZcat in x's memory format, so that cuDNN's backward gets one layout for all its operands.
        dz = conv_empty(x, (bsz, (1 + d) * n), out_sp)
        self.z_shape, self.z_strides = dz.shape, dz.stride()
        zs = _merged_strides(dz, 2)
        self.dz_launch = DzLaunch(
            (gs[0], gs[2], gs[1]),
            (hs[0], hs[3], hs[1], hs[2]),
            (zs[0], zs[2], n * zs[1], zs[1]),
            gate,
            cascade,
            rows,
            n,
            os_,
            act,
            x.dtype,
        )


def conv_bwd_packed(
    grad_y: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    dendrite_weight: torch.Tensor,
    gate: torch.Tensor,
    cascade: torch.Tensor,
    h: torch.Tensor,
    stride: tuple,
    padding: tuple,
    dilation: tuple,
    activation: str,
    has_bias: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dwcat, dsmall), packed as pai_fast._layout says; see the module docstring."""
    tensors = (grad_y, x, weight, dendrite_weight, gate, cascade, h)
    plan = _bwd_plans.get(tensors, (activation, dz_finish_mode()), lambda: _ConvBwdPlan(*tensors, activation))
    dev, dt = x.device, x.dtype
    n, d, nd = plan.n, plan.d, plan.nd
    if plan.cast_dy:
        grad_y = grad_y.to(dt)
    if plan.rows == 0 or n == 0:
        return (
            torch.zeros_like(x),
            torch.zeros(plan.w_rows, device=dev, dtype=dt),
            torch.zeros((small_rows(d), n), device=dev, dtype=plan.small_dtype),
        )
    if d == 0:
        dz = grad_y
        red = grad_y.sum([0, *range(2, nd + 2)], dtype=plan.acc_t)[None].to(plan.small_dtype)
        wcat = weight
    else:
        if plan.dy_contig:
            grad_y = grad_y.contiguous()
        if plan.h_contig:
            h = h.contiguous()
        dz = torch.empty_strided(plan.z_shape, plan.z_strides, device=dev, dtype=dt)
        red = plan.dz_launch(grad_y, h, gate, cascade, dz)  # already in the parameters' dtype
        wcat = _stacked_weight(weight, dendrite_weight)
    dx, dwcat, _ = torch.ops.aten.convolution_backward(
        dz, x, wcat, None, list(stride), list(padding), list(dilation), False, [0] * nd, 1, [True, True, False]
    )
    return _like(dx, x), weight_rows_like(dwcat, weight), red


conv_bwd = seven_grads(conv_bwd_packed)
