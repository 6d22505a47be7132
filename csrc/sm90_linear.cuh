// Dendritic Linear forward on Hopper: a CUTLASS 3 mainloop (TMA + wgmma, warp-specialized, persistent) over
// neuron-interleaved packed weights, with the dendrite epilogue run on the accumulators in registers.
//
//   z_0 = x W^T + b ; u_i = x V_i^T + c_i ; s_i = u_i + sum_{j<i} B[i,j] a_j ; a_i = act(s_i)
//   y = z_0 + sum_i G[i] a_i           (h[:, i] = a_i saved for backward when requested)
//
// Packed weights P [T * kTileN, K] for R = 1 + D branches: a tile of kTileN GEMM columns holds the R branches of
// npt = 8 * floor(kTileN / 8R) neurons, in groups of 8 neurons:
//     P[t * kTileN + q * 8R + b * 8 + j] = Wcat_b[t * npt + q * 8 + j]      (b = branch, Wcat_0 = W, Wcat_b = V_{b-1})
// and zero rows where the neuron is past N or the tile has no whole group left. Why this order: a wgmma 64xN
// accumulator gives each thread the same two columns of every 8-column block (CUTLASS's SM90 C layout:
// ((2,2,N/8) values) = (column pair, row +8, 8-column block)), so with branches 8 columns apart the R values of
// a neuron sit in one thread's registers at blocks q*R .. q*R+R-1: the epilogue needs no shuffle, and no
// (1+D)*M*N intermediate reaches global memory. Shared memory holds the tile's parameters and, where y and h take
// 16-byte row segments, each warp's results on their way out (8 rows at a time, stored as whole 16-byte chunks).
//
// Built only with CUTLASS headers (nvidia-cutlass) for sm_90a (CMake option PAI_FAST_CUTLASS); runs on sm_90.
// fp16 and bf16, D <= 7 (R <= kSm90MaxR); pf_linear_forward's own kernel serves everything else.
// sm90_linear_{f16,bf16}.cu (cooperative) and sm90_linear_pp_{f16,bf16}.cu (ping-pong) instantiate it, one kernel
// per translation unit (minutes of nvcc each).
#pragma once
// Reference: pai_fast/reference.py dendritic_linear_ref; the packing is checked against it through the op tests.
#include <cstdint>

#include "common.cuh"
#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/epilogue/collective/detail.hpp"
#include "cutlass/epilogue/thread/linear_combination.h"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/dispatch_policy.hpp"
#include "cutlass/gemm/kernel/gemm_universal.hpp"

namespace pf {
namespace sm90 {

using namespace cute;

template <class T>
struct CutlassType;
template <>
struct CutlassType<__half> {
  using type = cutlass::half_t;
};
template <>
struct CutlassType<__nv_bfloat16> {
  using type = cutlass::bfloat16_t;
};

// Parameters per neuron for R branches: bias, D dendrite biases, D gates, D(D-1)/2 cascade weights.
constexpr int params_per_neuron(int R) { return 1 + 2 * (R - 1) + (R - 1) * (R - 2) / 2; }
// Shared floats one consumer warp group needs: the largest params_per_neuron(R) * neurons_per_tile(R) over R.
constexpr int max_tile_params(int R = 1) {
  return R > kSm90MaxR ? 0
                       : (params_per_neuron(R) * sm90_neurons_per_tile(R) > max_tile_params(R + 1)
                              ? params_per_neuron(R) * sm90_neurons_per_tile(R)
                              : max_tile_params(R + 1));
}

// The epilogue half of the GEMM: CUTLASS's DefaultEpilogue interface (wrapped for the warp-specialized kernels by
// Sm90TmaWarpSpecializedAdapter), with the dendrite math in place of alpha * acc + beta * C. Each tile's parameters
// (biases, gates, cascade) are staged in shared memory first: one round of global loads per tile, where loading them
// per neuron group from global memory cost one exposed round trip each (D = 3: 1.44x -> 1.28x of cuBLAS, H200).
template <class T>
class DendriteEpilogue {
 public:
  using E = typename CutlassType<T>::type;
  using EpilogueSchedule = cutlass::gemm::EpilogueDefault;
  using DispatchPolicy = EpilogueSchedule;
  using ThreadEpilogueOp = cutlass::epilogue::thread::LinearCombination<E, 1, float, float>;  // names types only
  using ElementOutput = E;
  using ElementAccumulator = float;
  using ElementCompute = float;
  using ElementC = E;
  using ElementD = E;
  using StrideC = cute::Stride<int64_t, cute::Int<1>, int64_t>;
  using StrideD = StrideC;
  using GmemTiledCopyC = void;
  using GmemTiledCopyD = void;
  // One parameter table per consumer warp group (cooperative: both work on one tile's rows; ping-pong: on
  // alternate tiles).
  // Staged stores (branches): per consumer warp, 8 rows of at most 16 chunks of 16 bytes, at an odd pitch so the
  // 8 rows' same chunk falls in 8 different bank groups (the slice's writes are conflict-free).
  static constexpr int kStageChunks = 8 * ((kSm90TileN / 8) | 1);
  struct SharedStorage {
    alignas(16) float params[2][max_tile_params()];
    uint4 stage[8][kStageChunks];
  };
  using TensorStorage = SharedStorage;
  struct Arguments {
    FwdParams p;
  };
  using Params = Arguments;

  template <class ProblemShape>
  static constexpr Params to_underlying_arguments(ProblemShape const&, Arguments const& args, void*) {
    return args;
  }
  template <class ProblemShape>
  static size_t get_workspace_size(ProblemShape const&, Arguments const&) {
    return 0;
  }
  template <class ProblemShape>
  static cutlass::Status initialize_workspace(ProblemShape const&, Arguments const&, void*, cudaStream_t,
                                              cutlass::CudaHostAdapter* = nullptr) {
    return cutlass::Status::kSuccess;
  }
  template <class ProblemShape>
  static bool can_implement(ProblemShape const&, Arguments const&) {
    return true;
  }

  CUTLASS_HOST_DEVICE explicit DendriteEpilogue(Params const& params, SharedStorage const& = SharedStorage())
      : params_(params) {}

  CUTLASS_DEVICE bool is_source_needed() { return false; }

  template <class ProblemShapeMNKL, class BlockShapeMNK, class BlockCoordMNKL, class FrgEngine, class FrgLayout,
            class TiledMma, class ResidueMNK>
  CUTLASS_DEVICE void operator()(ProblemShapeMNKL problem_shape_mnkl, BlockShapeMNK blk_shape_mnk,
                                 BlockCoordMNKL blk_coord_mnkl, cute::Tensor<FrgEngine, FrgLayout> const& acc,
                                 TiledMma tiled_mma, ResidueMNK, int thread_idx, char* smem) {
    static_assert(rank<0>(FrgLayout{}) == 3, "wgmma accumulators are ((2,2,N/8), MMA_M, MMA_N)");
    static_assert(size<2>(FrgLayout{}) == 1, "one wgmma atom spans the tile's N");
    const int M = static_cast<int>(get<0>(problem_shape_mnkl));
    const int NG = static_cast<int>(get<1>(problem_shape_mnkl));
    const auto m_coord = get<0>(blk_coord_mnkl);
    const auto n_coord = get<1>(blk_coord_mnkl);
    Tensor cD = local_tile(make_identity_tensor(make_shape(M, NG)), take<0, 2>(blk_shape_mnk),
                           make_coord(m_coord, n_coord));
    Tensor tCcD = tiled_mma.get_thread_slice(thread_idx).partition_C(cD);
    const int64_t neuron0 = static_cast<int64_t>(n_coord) * params_.p.bno;
    auto* storage = reinterpret_cast<SharedStorage*>(smem);
    float* table = storage->params[cutlass::canonical_warp_group_idx() == 2 ? 1 : 0];
    // Consumer warps are 4 .. 11 in both schedules (warp group 0 is the producer).
    uint4* slab = storage->stage[threadIdx.x / cutlass::NumThreadsPerWarp - cutlass::NumWarpsPerWarpGroup];
    switch (params_.p.g.R) {
#define PF_EPI_CASE(r) \
  case r:              \
    return branches<r>(acc, tCcD, M, neuron0, table, slab);
      PF_EPI_CASE(1)
      PF_EPI_CASE(2)
      PF_EPI_CASE(3)
      PF_EPI_CASE(4)
      PF_EPI_CASE(5)
      PF_EPI_CASE(6)
      PF_EPI_CASE(7)
      PF_EPI_CASE(8)
#undef PF_EPI_CASE
      default:
        return;  // the host never launches other R
    }
  }

 private:
  // Parameter pi of neuron n: 0 bias, 1..D dendrite biases, D+1..2D gates, then cascade (i, j<i) in row order.
  template <int D>
  CUTLASS_DEVICE float param(int pi, int64_t n) const {
    const FwdParams& p = params_.p;
    if (pi == 0) return p.bias != nullptr ? to_acc(__ldg(static_cast<const T*>(p.bias) + n * p.sb)) : 0.0f;
    if (pi <= D)
      return p.vbias != nullptr ? to_acc(__ldg(static_cast<const T*>(p.vbias) + (pi - 1) * p.svbd + n * p.svbn))
                                : 0.0f;
    if (pi <= 2 * D) return to_acc(__ldg(static_cast<const T*>(p.gate) + (pi - 1 - D) * p.sgd + n * p.sgn));
    int t = pi - 1 - 2 * D, i = 1;
    while (t >= i) t -= i++;
    return to_acc(__ldg(static_cast<const T*>(p.casc) + i * p.sci + t * p.scj + n * p.scn));
  }

  // Stage this tile's parameters in the warp group's shared table: [pi][local neuron], zero past Cout.
  template <int R>
  CUTLASS_DEVICE void stage_params(float* table, int64_t neuron0) const {
    constexpr int kNpt = sm90_neurons_per_tile(R), kP = params_per_neuron(R);
    const int lt = static_cast<int>(threadIdx.x % cutlass::NumThreadsPerWarpGroup);
    // User barrier ids 0 and 1, one per consumer warp group: NamedBarrier adds its reserved count (hardware 8, 9).
    static_assert(cutlass::arch::NamedBarrier::ReservedNamedBarrierCount + 2 <=
                      cutlass::arch::NamedBarrier::HardwareMaxNumNamedBarriers,
                  "two user named barriers must fit in the hardware's 16");
    const uint32_t bar = cutlass::canonical_warp_group_idx() == 2 ? 1u : 0u;
    // The previous tile's reads of this table are done before it is overwritten, and the writes land before reads.
    cutlass::arch::NamedBarrier::sync(cutlass::NumThreadsPerWarpGroup, bar);
    CUTLASS_PRAGMA_NO_UNROLL
    for (int idx = lt; idx < kP * kNpt; idx += cutlass::NumThreadsPerWarpGroup) {
      const int pi = idx / kNpt;
      const int64_t n = neuron0 + idx % kNpt;
      table[idx] = n < params_.p.g.Cout ? param<R - 1>(pi, n) : 0.0f;
    }
    cutlass::arch::NamedBarrier::sync(cutlass::NumThreadsPerWarpGroup, bar);
  }

  // One neuron pair's tile parameters, read from the shared table: a thread's two neighbouring neurons.
  template <int R>
  struct PairParams {
    static constexpr int D = R - 1, DD = D > 0 ? D : 1, NC = D > 1 ? D * (D - 1) / 2 : 1;
    float b[2], vb[2][DD], g[2][DD], c[2][NC];
  };

  template <int R>
  CUTLASS_DEVICE static PairParams<R> load_pair(const float* table, const int (&ln)[2]) {
    constexpr int D = R - 1, kNpt = sm90_neurons_per_tile(R);
    PairParams<R> pp;
    CUTLASS_PRAGMA_UNROLL
    for (int v0 = 0; v0 < 2; ++v0) {
      pp.b[v0] = table[ln[v0]];
      CUTLASS_PRAGMA_UNROLL
      for (int i = 0; i < D; ++i) {
        pp.vb[v0][i] = table[(1 + i) * kNpt + ln[v0]];
        pp.g[v0][i] = table[(1 + D + i) * kNpt + ln[v0]];
      }
      CUTLASS_PRAGMA_UNROLL
      for (int c = 0; c < (D > 1 ? PairParams<R>::NC : 0); ++c) pp.c[v0][c] = table[(1 + 2 * D + c) * kNpt + ln[v0]];
    }
    return pp;
  }

  // The dendrite math of one (row, neuron pair): z = y's values, a[.][i] = h's (the accumulator blocks q*R .. q*R+D).
  template <int R, class Acc>
  CUTLASS_DEVICE void eval_pair(Acc const& acc, int q, int mm, int v1, PairParams<R> const& pp, float (&z)[2],
                                float (&a)[2][PairParams<R>::DD]) const {
    constexpr int D = R - 1;
    CUTLASS_PRAGMA_UNROLL
    for (int v0 = 0; v0 < 2; ++v0) {
      z[v0] = acc(make_coord(v0, v1, q * R), mm, 0) + pp.b[v0];
      CUTLASS_PRAGMA_UNROLL
      for (int i = 0; i < D; ++i) {
        float s = acc(make_coord(v0, v1, q * R + 1 + i), mm, 0) + pp.vb[v0][i];
        CUTLASS_PRAGMA_UNROLL
        for (int j = 0; j < i; ++j) s += pp.c[v0][i * (i - 1) / 2 + j] * a[v0][j];
        a[v0][i] = act_fwd_out<T>(s, params_.p.act);
        z[v0] += pp.g[v0][i] * a[v0][i];
      }
    }
  }

  template <int R, class Acc, class Crd>
  CUTLASS_DEVICE void branches(Acc const& acc, Crd const& tCcD, int M, int64_t neuron0, float* table,
                               uint4* slab) const {
    constexpr int V2 = size<0, 2>(typename Acc::layout_type{});
    constexpr int MM = size<1>(typename Acc::layout_type{});
    constexpr int G = V2 / R;  // groups of 8 neurons in one tile
    constexpr int D = R - 1, DD = PairParams<R>::DD;
    constexpr int kSeg = sm90_neurons_per_tile(R) / 8, kPitch = kSeg | 1;  // 16-byte chunks per staged row
    static_assert(8 * kPitch <= kStageChunks, "the staging rows fit the warp's buffer");
    const FwdParams& p = params_.p;
    T* y = static_cast<T*>(p.y);
    T* h = static_cast<T*>(p.h);
    stage_params<R>(table, neuron0);
    // ln: this thread's two neurons within the tile's group q (plus q * 8). The wgmma C layout gives a thread
    // columns 2t and 2t+1 of each 8-column block (the same layout facts the packing relies on to put a neuron's
    // branches in one thread), so ln[1] == ln[0] + 1.
    const auto lanes = [&](int q, int (&ln)[2]) {
      CUTLASS_PRAGMA_UNROLL
      for (int v0 = 0; v0 < 2; ++v0) ln[v0] = q * 8 + (get<1>(tCcD(make_coord(v0, 0, q * R), 0, 0)) & 7);
    };
    if (p.epi_staged) {
      // Staged stores (api.cpp sets epi_staged where y, h allow 16-byte row segments): the warp writes each 8-row
      // slice of its results to shared memory, then stores whole 16-byte chunks of the rows, so one store
      // instruction covers 512 bytes of whole rows, where a 4-byte pair store covers 8 rows x 16 bytes (8 L1
      // wavefronts, half-filled sectors). The cooperative schedule runs the epilogue with the tensor cores idle, so
      // its store issue time is the tile's: H200, 8192x4096->4096 bf16, ratio to cuBLAS 1.13x -> 1.04x at D = 0 and
      // 1.13x -> 1.08x at D = 1 (h200_probe_sm90_epilogue, session 22).
      CUTLASS_PRAGMA_UNROLL
      for (int mm = 0; mm < MM; ++mm) {
        CUTLASS_PRAGMA_UNROLL
        for (int v1 = 0; v1 < 2; ++v1) {
          const int m = static_cast<int>(get<0>(tCcD(make_coord(0, v1, 0), mm, 0)));
          const int m0 = __shfl_sync(0xffffffffu, m, 0);  // the slice's rows are m0 .. m0 + 7, one per lane quad
          // A slice wholly past M stores nothing: skip its math (warp-uniform, so the flushes' __syncwarp stay
          // matched). With M = 64 in ping-pong's 128-row tiles that is half the epilogue, which cost D = 7 at
          // 64x784->128 3.40x -> 4.36x of cuBLAS before this skip (h200_probe_sm90_small_21d426e).
          if (m0 >= M) continue;
          float z[G][2], a[G][2][DD];
          CUTLASS_PRAGMA_UNROLL
          for (int q = 0; q < G; ++q) {
            int ln[2];
            lanes(q, ln);
            eval_pair<R>(acc, q, mm, v1, load_pair<R>(table, ln), z[q], a[q]);
          }
          T* row = reinterpret_cast<T*>(slab) + (m - m0) * kPitch * 8;
          const int c2 = get<1>(tCcD(make_coord(0, 0, 0), 0, 0)) & 7;
          CUTLASS_PRAGMA_UNROLL
          for (int q = 0; q < G; ++q) store_pair(row + q * 8 + c2, z[q][0], z[q][1]);
          flush<kSeg, kPitch>(slab, y, p.syb, m0, M, neuron0, p.g.Cout);
          if (h != nullptr) {
            CUTLASS_PRAGMA_UNROLL
            for (int i = 0; i < D; ++i) {
              CUTLASS_PRAGMA_UNROLL
              for (int q = 0; q < G; ++q) store_pair(row + q * 8 + c2, a[q][0][i], a[q][1][i]);
              flush<kSeg, kPitch>(slab, h + i * p.shd, p.shb, m0, M, neuron0, p.g.Cout);
            }
          }
        }
      }
      return;
    }
    // Direct stores: one 4-byte store writes a thread's neuron pair where the layout allows it.
    const auto even4 = [](const void* q, int64_t s) { return (reinterpret_cast<uintptr_t>(q) & 3u) == 0 && s % 2 == 0; };
    const bool pair_y = p.syc == 1 && even4(y, p.syb);
    const bool pair_h = h != nullptr && p.shc == 1 && even4(h, p.shb) && p.shd % 2 == 0;
    CUTLASS_PRAGMA_UNROLL
    for (int q = 0; q < G; ++q) {
      int ln[2];
      lanes(q, ln);
      const PairParams<R> pp = load_pair<R>(table, ln);
      const int64_t n0 = neuron0 + ln[0];
      if (n0 >= p.g.Cout) continue;
      const bool both = ln[1] == ln[0] + 1 && n0 + 1 < p.g.Cout;
      CUTLASS_PRAGMA_UNROLL
      for (int mm = 0; mm < MM; ++mm) {
        CUTLASS_PRAGMA_UNROLL
        for (int v1 = 0; v1 < 2; ++v1) {
          const int64_t m = get<0>(tCcD(make_coord(0, v1, q * R), mm, 0));
          if (m >= M) continue;
          float z[2], a[2][DD];
          eval_pair<R>(acc, q, mm, v1, pp, z, a);
          store2(y + m * p.syb + n0 * p.syc, p.syc, z[0], z[1], both, pair_y);
          if (h != nullptr) {
            CUTLASS_PRAGMA_UNROLL
            for (int i = 0; i < D; ++i)
              store2(h + m * p.shb + i * p.shd + n0 * p.shc, p.shc, a[0][i], a[1][i], both, pair_h);
          }
        }
      }
    }
  }

  // The warp's 8 staged rows (kSeg chunks of 8 values each) to dst rows m0 .. m0 + 7 (row stride ld), columns
  // neuron0 ..: lanes take consecutive chunks, so one instruction stores 32 x 16 bytes of whole rows. Rows past M and
  // chunks past Cout (a multiple of 8 here) are not stored.
  template <int kSeg, int kPitch>
  CUTLASS_DEVICE static void flush(const uint4* slab, T* dst, int64_t ld, int m0, int M, int64_t neuron0,
                                   int64_t Cout) {
    __syncwarp();
    const int lane = static_cast<int>(threadIdx.x % 32);
    CUTLASS_PRAGMA_UNROLL
    for (int idx = lane; idx < 8 * kSeg; idx += 32) {
      const int r = idx / kSeg, c = idx % kSeg;
      const int64_t n = neuron0 + 8 * c;
      if (m0 + r < M && n < Cout) *reinterpret_cast<uint4*>(dst + (m0 + r) * ld + n) = slab[r * kPitch + c];
    }
    __syncwarp();  // the next slice's writes wait for these reads
  }

  // Two neighbouring neurons' values (the second only when `both`), as one 4-byte store when `pair` allows it.
  CUTLASS_DEVICE static void store2(T* dst, int64_t stride, float v0, float v1, bool both, bool pair) {
    if (both && pair) return store_pair(dst, v0, v1);
    dst[0] = from_acc<T>(v0);
    if (both) dst[stride] = from_acc<T>(v1);
  }

  Params params_;
};

constexpr int kTileN = kSm90TileN;

// The mainloop schedules the forward can run (kernels.h kSm90Cooperative, kSm90PingPong): cooperative 256x128
// tiles (two consumer warp groups share a tile; the epilogue runs after the mainloop) or ping-pong 128x128 tiles
// (each consumer warp group owns a tile, and one's epilogue overlaps the other's mainloop).
template <int Sched>
struct Sm90Config;
template <>
struct Sm90Config<kSm90Cooperative> {
  using TileShape = Shape<_256, Int<kTileN>, _64>;
  using Kernel = cutlass::gemm::KernelTmaWarpSpecializedCooperative;
};
template <>
struct Sm90Config<kSm90PingPong> {
  using TileShape = Shape<_128, Int<kTileN>, _64>;
  using Kernel = cutlass::gemm::KernelTmaWarpSpecializedPingpong;
};

template <class T, int Sched>
struct Sm90Fwd {
  using E = typename CutlassType<T>::type;
  using Cfg = Sm90Config<Sched>;
  using TileShape = typename Cfg::TileShape;
  using ClusterShape = Shape<_1, _2, _1>;
  using Epilogue = cutlass::epilogue::collective::detail::Sm90TmaWarpSpecializedAdapter<DendriteEpilogue<T>>;
  using Mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, E, cutlass::layout::RowMajor, 8, E,
      cutlass::layout::ColumnMajor, 8, float, TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(sizeof(typename Epilogue::SharedStorage))>,
      typename Cfg::Kernel>::CollectiveOp;
  using Kernel = cutlass::gemm::kernel::GemmUniversal<Shape<int, int, int, int>, Mainloop, Epilogue>;
  using Device = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;
};

// One CTA per packed row; 16-byte copies when every source row allows them.
template <class T>
PF_GLOBAL void pack_kernel(const FwdParams p, T* packed, int64_t K, int vec) {
  const int64_t row = blockIdx.x;
  const int R = static_cast<int>(p.g.R);
  const int64_t t = row / kTileN, c = row % kTileN;
  const int64_t q = c / (8 * R), b = (c % (8 * R)) / 8, j = c % 8;
  const int64_t n = t * p.bno + q * 8 + j;
  T* dst = packed + row * K;
  const bool live = q < kTileN / (8 * R) && n < p.g.Cout;
  const T* src = nullptr;
  int64_t sk = 0;
  if (live) {
    if (b == 0) {
      src = static_cast<const T*>(p.w) + n * p.swn;
      sk = p.swk;
    } else {
      src = static_cast<const T*>(p.v) + (b - 1) * p.svd + n * p.svn;
      sk = p.svk;
    }
  }
  if (vec) {
    for (int64_t k = threadIdx.x * 8; k < K; k += blockDim.x * 8) {
      uint4 v = make_uint4(0, 0, 0, 0);
      if (live) v = *reinterpret_cast<const uint4*>(src + k);
      *reinterpret_cast<uint4*>(dst + k) = v;
    }
  } else {
    for (int64_t k = threadIdx.x; k < K; k += blockDim.x) dst[k] = live ? src[k * sk] : from_acc<T>(0.0f);
  }
}

inline int sm_count(int dev) {
  static int counts[64];
  if (dev < 0 || dev >= 64) return 0;
  if (counts[dev] == 0) cudaDeviceGetAttribute(&counts[dev], cudaDevAttrMultiProcessorCount, dev);
  return counts[dev];
}

}  // namespace sm90

template <class T>
cudaError_t sm90_pack(const FwdParams& p, void* packed, cudaStream_t s) {
  using namespace sm90;
  const int64_t rows = sm90_packed_rows(p.g.Cout, p.g.R), K = p.g.KC;
  if (rows == 0 || K == 0) return cudaSuccess;
  const auto a16 = [](const void* q) { return (reinterpret_cast<uintptr_t>(q) & 15u) == 0; };
  const bool vec = K % 8 == 0 && p.swk == 1 && p.swn % 8 == 0 && a16(p.w) && a16(packed) &&
                   (p.g.D == 0 || (p.svk == 1 && p.svn % 8 == 0 && p.svd % 8 == 0 && a16(p.v)));
  if (rows > 0x7fffffffLL) return cudaErrorInvalidConfiguration;
  pack_kernel<T><<<static_cast<unsigned>(rows), 128, 0, s>>>(p, static_cast<T*>(packed), K, vec ? 1 : 0);
  return cudaGetLastError();
}

template <class T, int Sched>
cudaError_t sm90_linear_fwd(const FwdParams& p, const void* packed, cudaStream_t s) {
  using namespace sm90;
  using G = Sm90Fwd<T, Sched>;
  using E = typename G::E;
  const int M = static_cast<int>(p.g.P), K = static_cast<int>(p.g.KC);
  const int NG = static_cast<int>(sm90_packed_rows(p.g.Cout, p.g.R));
  if (M == 0 || NG == 0) return cudaSuccess;
  int dev = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e != cudaSuccess) return e;
  typename G::Kernel::Arguments args{
      cutlass::gemm::GemmUniversalMode::kGemm,
      {M, NG, K, 1},
      {static_cast<const E*>(p.x), typename G::Kernel::StrideA{p.sx[0], Int<1>{}, int64_t(0)},
       static_cast<const E*>(packed), typename G::Kernel::StrideB{int64_t(K), Int<1>{}, int64_t(0)}},
      {p}};
  args.hw_info.device_id = dev;
  args.hw_info.sm_count = sm_count(dev);
  if (G::Kernel::get_workspace_size(args) != 0) return cudaErrorInvalidConfiguration;
  if (!G::Kernel::can_implement(args)) return cudaErrorInvalidValue;
  static bool attr_set[64] = {};
  const int smem = G::Kernel::SharedStorageSize;
  if (dev < 64 && !attr_set[dev]) {
    e = cudaFuncSetAttribute(cutlass::device_kernel<typename G::Kernel>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             smem);
    if (e != cudaSuccess) return e;
    attr_set[dev] = true;
  }
  auto params = G::Kernel::to_underlying_arguments(args, nullptr);
  if (G::Device::run(params, s) != cutlass::Status::kSuccess) {
    e = cudaGetLastError();
    return e != cudaSuccess ? e : cudaErrorLaunchFailure;
  }
  return cudaGetLastError();
}

}  // namespace pf
