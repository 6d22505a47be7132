// Internal interface between the host planner (api.cpp) and the kernel files (*.cu).
//
// Linear is handled as a 1x1x1 convolution over a 1x1x1 image, so one set of kernels serves Linear and
// Conv1d/2d/3d: "pixels" p = (b, od, oh, ow) are GEMM rows, channels are columns, and the reduction runs
// over q = (ci, kd, kh, kw). Index tables built per tile keep the per-element cost of this generality low.
//
// Layout of the backward workspace tensor dZcat (always ours, contiguous): [B, R = 1+D, Cout, OPIX].
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

namespace pf {

// Which math path a GEMM instantiation uses.
enum MathMode : int {
  kMathNative = 0,  // f16/bf16 -> mma.sync m16n8k16 ; fp32 -> fp32 FMA ; fp64 -> fp64 FMA
  kMathTF32 = 1,    // fp32 only -> mma.sync m16n8k8 tf32
};

struct Geom {
  int64_t B, Cin, Cout, D, R;  // R = 1 + D
  int64_t in[3], out[3], k[3], st[3], pad[3], dil[3];
  int64_t IPIX, OPIX, KK, KC;  // IPIX = ID*IH*IW, OPIX = OD*OH*OW, KK = KD*KH*KW, KC = Cin*KK
  int64_t P, PIN;              // P = B*OPIX output pixels, PIN = B*IPIX input pixels
};

// ---- forward: y = dendritic(x (*) Wcat) ----
struct FwdParams {
  Geom g;
  const void* x;
  int64_t sx[5];  // strides of x as [B, Cin, ID, IH, IW]
  const void* w;
  int64_t swn, swk;  // weight viewed as [Cout, KC]
  const void* v;
  int64_t svd, svn, svk;  // dendrite_weight viewed as [D, Cout, KC]
  const void* bias;
  int64_t sb;
  const void* vbias;
  int64_t svbd, svbn;
  const void* gate;
  int64_t sgd, sgn;
  const void* casc;
  int64_t sci, scj, scn;
  void* y;
  int64_t syb, syc, syp;  // y viewed as [B, Cout, OPIX]
  void* h;                // may be null
  int64_t shb, shd, shc, shp;
  int act;
  int bno;         // neurons per tile: floor(BN / R)
  int n_tiles;     // ceil(Cout / bno)
  int a_row_fast;  // thread order when loading x tiles (coalescing)
  int b_row_fast;
  int epi_row_fast;
  int a_vec, b_vec;  // 16-byte vector loads along k (Linear, aligned, k-contiguous)
  int epi_staged;    // Hopper forward: stores through shared memory (api.cpp sets it where y and h allow)
};

// ---- dgrad: dX[p', ci] = sum_q dZcat(p', q) Wcat(q, ci), q = (r, co, kk) ----
struct DgradParams {
  Geom g;
  const void* dz;  // dZcat [B, R, Cout, OPIX]
  const void* w;
  int64_t swn, swk;
  const void* v;
  int64_t svd, svn, svk;
  void* dx;
  int64_t sdx[5];
  void* ws;  // split-K partials [splits, PIN, Cin] (Acc type) when splits > 1
  int splits, k_tiles_per_split;
  int m_tiles, n_tiles;
  int a_row_fast, b_row_fast, epi_row_fast;
  int a_vec, b_vec;  // Linear: dZcat rows along k ; W^T along ci (row-contiguous tile)
};

// ---- wgrad: dWcat[j, q] = sum_p dZcat(p, j) X(p, q), j = (r, co), q = (ci, kk) ----
struct WgradParams {
  Geom g;
  const void* dz;
  const void* x;
  int64_t sx[5];
  void* dw;  // [Cout, KC] contiguous
  void* dv;  // [D, Cout, KC] contiguous
  void* ws;  // split-K partials [splits, R*Cout, KC] (Acc type)
  int splits, k_tiles_per_split;
  int m_tiles, n_tiles;
  int a_row_fast, b_row_fast, epi_row_fast;
  int a_vec, b_vec;  // Linear: dZcat^T along j, X^T along ci (both row-contiguous tiles)
};

// ---- dZ: elementwise backward of the epilogue + partial sums ----
struct DzParams {
  Geom g;
  const void* dy;
  int64_t sdyb, sdyc, sdyp;  // grad_y as [B, Cout, OPIX]
  const void* h;
  int64_t shb, shd, shc, shp;
  const void* gate;
  int64_t sgd, sgn;
  const void* casc;
  int64_t sci, scj, scn;
  void* dz;       // dZcat out
  void* part;     // [nslots, NP, Cout] partial sums, Acc type (fp32; fp64 for fp64 data)
  void* scratch;  // generic-D path: [nslots, Cout, D] of Acc
  int act;
  int lanes;  // threads per channel (1: channel-fast, 32: pixel-fast)
  int64_t rows_per_chunk;
  int nchunks;
  int np;  // 1 + 2D + D(D-1)/2
  int vec;  // channels per thread: 2 (vector accesses; channel-fast, OPIX = 1, D <= kDzMaxVecD, aligned) or 1
};
constexpr int kDzMaxVecD = 4;  // beyond it two channels' partial sums and parameters would not fit in registers

struct ReduceParams {
  const void* part;
  int nslots, np;
  int64_t C, D;
  void* dbias;  // may be null
  void* dgate;
  void* dvbias;  // may be null
  void* dcasc;
};

// ---- one-pass backward of a small Linear layer (onepass.cu): dX, dWcat and the reductions in one launch ----
struct OnepassParams {
  int64_t M, N, K;
  int D;  // 1..kOnepassMaxD
  int act;
  const void* dy;
  int64_t sdym, sdyn;
  const void* x;
  int64_t sxm, sxk;
  const void* w;
  int64_t swn, swk;
  const void* v;
  int64_t svd, svn, svk;
  const void* h;
  int64_t shm, shd, shn;
  const void* gate;
  int64_t sgd, sgn;
  const void* casc;
  int64_t sci, scj, scn;
  void* dx;
  int64_t sdxm, sdxk;
  void* dw;     // [N, K] contiguous
  void* dv;     // [D, N, K] contiguous
  void* dbias;  // [N] or null
  void* dgate;  // [D, N]
  void* dvbias;  // [D, N] or null
  void* dcasc;   // [D, D, N]
  int x_vec;     // 16-byte loads of x rows (unit stride along K, aligned, K % vector width == 0)
  int w_vec;     // the same for the rows of weight and dendrite_weight
  int x_tiles_m, x_tiles_n, w_tiles_m, w_tiles_n;  // filled by the launcher
};
constexpr int kOnepassMaxD = 3;

constexpr int kDzThreads = 128;
constexpr int kMaxFusedD = 8;  // dZ kernel keeps everything in registers up to this D

// Tile width of every GEMM (columns of Wcat per tile); must match gemm_core.cuh.
constexpr int kTileBN = 128;

// Launchers (explicitly instantiated in the .cu files). T in {float, __half, __nv_bfloat16, double}.
template <class T>
cudaError_t launch_fwd(const FwdParams& p, int math, cudaStream_t s);
template <class T>
cudaError_t launch_dgrad(const DgradParams& p, int math, cudaStream_t s);
template <class T>
cudaError_t launch_wgrad(const WgradParams& p, int math, cudaStream_t s);
template <class T>
cudaError_t launch_dz(const DzParams& p, cudaStream_t s);
template <class T>
cudaError_t launch_reduce(const ReduceParams& p, cudaStream_t s);
template <class T>
cudaError_t launch_onepass(const OnepassParams& p, int math, cudaStream_t s);

// Hopper Linear forward (sm90_linear.cuh; only in builds with CUTLASS, PF_HAVE_SM90_CUTLASS). T in {__half,
// __nv_bfloat16}, R = 1 + D <= kSm90MaxR. FwdParams as for launch_fwd, except p.bno = sm90_neurons_per_tile(R).
constexpr int kSm90MaxR = 8;
constexpr int kSm90TileN = 128;  // GEMM columns per tile
// Neurons per tile: whole groups of 8 neurons x R branches (0 when R is out of range).
constexpr int sm90_neurons_per_tile(int64_t R) {
  return R >= 1 && R <= kSm90MaxR ? 8 * static_cast<int>(kSm90TileN / (8 * R)) : 0;
}
// Rows of the packed weights [rows, K].
constexpr int64_t sm90_packed_rows(int64_t N, int64_t R) {
  return sm90_neurons_per_tile(R) == 0 ? 0 : (N + sm90_neurons_per_tile(R) - 1) / sm90_neurons_per_tile(R) * kSm90TileN;
}
template <class T>
cudaError_t sm90_pack(const FwdParams& p, void* packed, cudaStream_t s);
// Mainloop schedules of the Hopper forward (sm90_linear.cuh Sm90Config): cooperative 256x128 tiles or ping-pong
// 128x128 tiles.
constexpr int kSm90Cooperative = 0;
constexpr int kSm90PingPong = 1;
template <class T, int Sched>
cudaError_t sm90_linear_fwd(const FwdParams& p, const void* packed, cudaStream_t s);
// Hopper backward GEMMs (sm90_grad.cuh), Linear only: Wcat = [W; V] stacked (p.w, row stride p.swn, unit stride
// along K) and dWcat = [dW; dV] stacked contiguous at p.dw; x and dx with unit stride along K.
template <class T>
cudaError_t sm90_dgrad(const DgradParams& p, cudaStream_t s);
template <class T>
cudaError_t sm90_wgrad(const WgradParams& p, cudaStream_t s);

// GEMM tile shape per dtype (pf_dtype code) and math mode; gemm_core.cuh static_asserts that its
// configurations agree. BN is kTileBN everywhere.
constexpr int tile_bm(int dtype_code, int /*math*/) { return dtype_code == 3 ? 32 : 64; }
constexpr int tile_bk(int dtype_code, int /*math*/) { return (dtype_code == 1 || dtype_code == 2) ? 32 : 16; }

}  // namespace pf
