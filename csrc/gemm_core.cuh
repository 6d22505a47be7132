// Block-level GEMM building blocks shared by the forward, dgrad and wgrad kernels.
//
// A block computes C[BM, BN] += A[BM, BK] * B[BN, BK]^T from shared-memory tiles. Each operand tile is
// stored either k-contiguous ([rows][BK+pad], "rowc = 0") or row-contiguous ([BK][rows+pad], "rowc = 1"),
// whichever matches the operand's contiguous dimension in global memory, so 16-byte vector loads work
// for both. Tiles are filled either by such vector loads (register-prefetched one K step ahead, so they
// overlap the math) or element-wise by each kernel's gather functor (strided / im2col / routed loads),
// so one mainloop serves every operand layout. Configurations:
//   f16/bf16 : 128 threads, 64x128x32 tile, 4 warps of 32x64, ldmatrix(.trans) + mma.sync m16n8k16
//   fp32+TF32: 128 threads, 64x128x16 tile, mma.sync m16n8k8 (tf32)
//   fp32     : 128 threads, 64x128x16 tile, 8x8 FMA micro-tiles
//   fp64     : 128 threads, 32x128x16 tile, 4x8 FMA micro-tiles (fp64 accumulation)
// fp32 accumulation otherwise. After the K-loop the accumulators go to a shared-memory tile Cs (aliasing
// the operand tiles), from which each kernel's epilogue reads the (1+D) branch values of a neuron.
#pragma once

#include <type_traits>

#include "common.cuh"

namespace pf {

template <class T>
PF_DEV T zero_of() {
  return from_acc<T>(typename AccOf<T>::type(0));
}

struct CfgBase {
  static constexpr int BN = kTileBN;
};

template <class T>
struct CfgMma16 : CfgBase {
  using Smem = T;
  using Acc = float;
  static constexpr bool kMma = true, kTf32 = false, kBf16 = std::is_same<T, __nv_bfloat16>::value;
  static constexpr bool kVecSmem = true;
  static constexpr int kThreads = 128, kMinBlocks = 3, BM = 64, BK = 32, PADK = 8, PADR = 8, KSTEP = 16, MI = 2, NI = 8;
};
struct CfgTf32 : CfgBase {
  using Smem = float;
  using Acc = float;
  static constexpr bool kMma = true, kTf32 = true, kBf16 = false;
  static constexpr bool kVecSmem = true;
  static constexpr int kThreads = 128, kMinBlocks = 2, BM = 64, BK = 16, PADK = 4, PADR = 8, KSTEP = 8, MI = 2, NI = 8;
};
struct CfgFma32 : CfgBase {
  using Smem = float;
  using Acc = float;
  static constexpr bool kMma = false;
  static constexpr bool kVecSmem = false;
  static constexpr int kThreads = 128, kMinBlocks = 2, BM = 64, BK = 16, PADK = 1, PADR = 4, TM = 8, TN = 8;
};
struct CfgFma64 : CfgBase {
  using Smem = double;
  using Acc = double;
  static constexpr bool kMma = false;
  static constexpr bool kVecSmem = false;
  static constexpr int kThreads = 128, kMinBlocks = 2, BM = 32, BK = 16, PADK = 1, PADR = 2, TM = 4, TN = 8;
};

static_assert(CfgMma16<__half>::BM == tile_bm(1, 0) && CfgMma16<__half>::BK == tile_bk(1, 0), "kernels.h");
static_assert(CfgTf32::BM == tile_bm(0, 1) && CfgTf32::BK == tile_bk(0, 1), "kernels.h");
static_assert(CfgFma32::BM == tile_bm(0, 0) && CfgFma32::BK == tile_bk(0, 0), "kernels.h");
static_assert(CfgFma64::BM == tile_bm(3, 0) && CfgFma64::BK == tile_bk(3, 0), "kernels.h");

template <class T, int MATH>
struct CfgSel;
template <int MATH>
struct CfgSel<__half, MATH> {
  using type = CfgMma16<__half>;
};
template <int MATH>
struct CfgSel<__nv_bfloat16, MATH> {
  using type = CfgMma16<__nv_bfloat16>;
};
template <>
struct CfgSel<float, kMathNative> {
  using type = CfgFma32;
};
template <>
struct CfgSel<float, kMathTF32> {
  using type = CfgTf32;
};
template <int MATH>
struct CfgSel<double, MATH> {
  using type = CfgFma64;
};

// Shape of one operand tile of ROWS rows: k-contiguous [ROWS][LDK] or row-contiguous [BK][LDR].
template <class C, int ROWS>
struct Tile {
  static constexpr int LDK = C::BK + C::PADK;
  static constexpr int LDR = ROWS + C::PADR;
  static constexpr int kSize = ROWS * LDK > C::BK* LDR ? ROWS * LDK : C::BK * LDR;
  PF_DEV static int idx(int rowc, int r, int k) { return rowc ? k * LDR + r : r * LDK + k; }
};

// Operand tiles and the accumulator tile share storage: Cs is only written after the last K step.
template <class C>
struct GemmSmem {
  union {
    struct {
      alignas(16) typename C::Smem As[Tile<C, C::BM>::kSize];
      alignas(16) typename C::Smem Bs[Tile<C, C::BN>::kSize];
    } ab;
    typename C::Acc Cs[C::BM][C::BN + 1];  // +1: conflict-free for row- and column-ordered epilogues
  };
};

// Element-wise fill of a k-contiguous ROWS x BK tile: element (r, kk) = f(r, kk). row_fast picks which
// index neighbouring threads vary, so global loads coalesce along the operand's contiguous dimension.
// Loads are issued in groups of up to 8 before their shared-memory stores (several in flight, no spills).
template <int ROWS, class C, class F>
PF_DEV void fill_tile(typename C::Smem* tile, int row_fast, F&& f) {
  using TL = Tile<C, ROWS>;
  constexpr int kPer = ROWS * C::BK / C::kThreads;
  constexpr int kChunk = kPer < 8 ? kPer : 8;
  static_assert(ROWS * C::BK % C::kThreads == 0 && kPer % kChunk == 0, "tile must divide among the threads");
  const int tid = static_cast<int>(threadIdx.x);
#pragma unroll 1
  for (int i0 = 0; i0 < kPer; i0 += kChunk) {
    typename C::Smem v[kChunk];
    if (row_fast) {
#pragma unroll
      for (int i = 0; i < kChunk; ++i) {
        const int e = tid + (i0 + i) * C::kThreads;
        v[i] = f(e % ROWS, e / ROWS);
      }
#pragma unroll
      for (int i = 0; i < kChunk; ++i) {
        const int e = tid + (i0 + i) * C::kThreads;
        tile[TL::idx(0, e % ROWS, e / ROWS)] = v[i];
      }
    } else {
#pragma unroll
      for (int i = 0; i < kChunk; ++i) {
        const int e = tid + (i0 + i) * C::kThreads;
        v[i] = f(e / C::BK, e % C::BK);
      }
#pragma unroll
      for (int i = 0; i < kChunk; ++i) {
        const int e = tid + (i0 + i) * C::kThreads;
        tile[TL::idx(0, e / C::BK, e % C::BK)] = v[i];
      }
    }
  }
}

// 16-byte vector loads of a ROWS x BK tile along k (rowc = 0) or along rows (rowc = 1), held in registers
// from load() (issued before the math of the previous K step) to store() (after it). addr(r, k) returns
// the global address of the VW elements starting at tile element (r, k), or null for zeros; the host only
// picks this path when every vector is entirely valid or entirely out of range and 16-byte aligned.
template <class C, int ROWS>
struct VecLoad {
  using S = typename C::Smem;
  using TL = Tile<C, ROWS>;
  static constexpr int VW = 16 / static_cast<int>(sizeof(S));
  static constexpr int NV = ROWS * C::BK / VW / C::kThreads;
  static_assert(NV * VW * C::kThreads == ROWS * C::BK && NV > 0, "vector tile must divide among the threads");
  uint4 v[NV];

  PF_DEV static void coord(int rowc, int i, int& r, int& k) {
    const int e = static_cast<int>(threadIdx.x) + i * C::kThreads;
    if (rowc) {
      k = e / (ROWS / VW);
      r = (e % (ROWS / VW)) * VW;
    } else {
      r = e / (C::BK / VW);
      k = (e % (C::BK / VW)) * VW;
    }
  }

  template <class F>
  PF_DEV void load(int rowc, F&& addr) {
#pragma unroll
    for (int i = 0; i < NV; ++i) {
      int r, k;
      coord(rowc, i, r, k);
      const S* src = addr(r, k);
      if (src != nullptr) {
        v[i] = *reinterpret_cast<const uint4*>(src);
      } else {
        v[i] = uint4{0u, 0u, 0u, 0u};
      }
    }
  }

  PF_DEV void store(S* tile, int rowc) const {
#pragma unroll
    for (int i = 0; i < NV; ++i) {
      int r, k;
      coord(rowc, i, r, k);
      if constexpr (C::kVecSmem) {
        *reinterpret_cast<uint4*>(&tile[TL::idx(rowc, r, k)]) = v[i];
      } else {
        const S* e = reinterpret_cast<const S*>(&v[i]);
#pragma unroll
        for (int j = 0; j < VW; ++j) tile[rowc ? TL::idx(1, r + j, k) : TL::idx(0, r, k + j)] = e[j];
      }
    }
  }
};

// ---------------------------------------------------------------- tensor-core path (sm_80+)
// ldmatrix.x4: lanes 8i..8i+7 give the row addresses of 8x8 b16 matrix i; register i of lane l gets
// (row l/4, columns 2(l%4), +1) of matrix i, or of its transpose with .trans.
template <bool kTrans>
PF_DEV void ldmatrix_x4(uint32_t r[4], const void* p) {
#ifdef PF_EMULATE
  pf_emu::ldmatrix_x4(r, p, kTrans);
#else
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(p));
  if constexpr (kTrans) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
  } else {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
  }
#endif
}

PF_DEV uint32_t to_tf32(float x) {
#ifdef PF_EMULATE
  return pf_emu::cvt_tf32(x);
#else
  uint32_t u;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(u) : "f"(x));
  return u;
#endif
}

template <bool kBf16>
PF_DEV void mma_16816(float d[4], const uint32_t a[4], const uint32_t b[2]) {
#ifdef PF_EMULATE
  pf_emu::mma_m16n8k16(d, a, b, kBf16);
#else
  if constexpr (kBf16) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
#endif
}

PF_DEV void mma_1688_tf32(float d[4], const uint32_t a[4], const uint32_t b[2]) {
#ifdef PF_EMULATE
  pf_emu::mma_m16n8k8_tf32(d, a, b);
#else
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

// 4 warps as 2 (M) x 2 (N); warp tile 32 x 64 = MI (2) m16 tiles x NI (8) n8 tiles.
template <class C>
struct MmaAcc {
  float acc[C::MI][C::NI][4];

  PF_DEV void zero() {
#pragma unroll
    for (int i = 0; i < C::MI; ++i)
#pragma unroll
      for (int j = 0; j < C::NI; ++j)
#pragma unroll
        for (int k = 0; k < 4; ++k) acc[i][j][k] = 0.f;
  }

  // a_rowc / b_rowc: layout of each tile (see Tile). Uniform across the block.
  PF_DEV void compute(const typename C::Smem* As, int a_rowc, const typename C::Smem* Bs, int b_rowc) {
    using TA = Tile<C, C::BM>;
    using TB = Tile<C, C::BN>;
    const int tid = static_cast<int>(threadIdx.x);
    const int warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
    const int wm = (warp >> 1) * 32, wn = (warp & 1) * 64;
#pragma unroll
    for (int ks = 0; ks < C::BK; ks += C::KSTEP) {
      uint32_t a[C::MI][4], b[C::NI][2];
      if constexpr (C::kTf32) {
#pragma unroll
        for (int mi = 0; mi < C::MI; ++mi) {
          const int r = wm + mi * 16 + g;
          a[mi][0] = to_tf32(As[TA::idx(a_rowc, r, ks + t)]);
          a[mi][1] = to_tf32(As[TA::idx(a_rowc, r + 8, ks + t)]);
          a[mi][2] = to_tf32(As[TA::idx(a_rowc, r, ks + t + 4)]);
          a[mi][3] = to_tf32(As[TA::idx(a_rowc, r + 8, ks + t + 4)]);
        }
#pragma unroll
        for (int ni = 0; ni < C::NI; ++ni) {
          const int n = wn + ni * 8 + g;
          b[ni][0] = to_tf32(Bs[TB::idx(b_rowc, n, ks + t)]);
          b[ni][1] = to_tf32(Bs[TB::idx(b_rowc, n, ks + t + 4)]);
        }
#pragma unroll
        for (int mi = 0; mi < C::MI; ++mi)
#pragma unroll
          for (int ni = 0; ni < C::NI; ++ni) mma_1688_tf32(acc[mi][ni], a[mi], b[ni]);
      } else {
        // Lane l addresses row (l % 8) of 8x8 matrix q = l / 8. A: q -> (m block q & 1, k block q >> 1)
        // gives a0..a3 of m16n8k16. B: q -> (n block q >> 1, k block q & 1) gives b of two n8 tiles.
        const int q = lane >> 3, j = lane & 7;
#pragma unroll
        for (int mi = 0; mi < C::MI; ++mi) {
          const int r = wm + mi * 16 + (q & 1) * 8, k = ks + (q >> 1) * 8;
          if (a_rowc) {
            ldmatrix_x4<true>(a[mi], &As[TA::idx(1, r, k + j)]);
          } else {
            ldmatrix_x4<false>(a[mi], &As[TA::idx(0, r + j, k)]);
          }
        }
#pragma unroll
        for (int ni = 0; ni < C::NI; ni += 2) {
          const int n = wn + ni * 8 + (q >> 1) * 8, k = ks + (q & 1) * 8;
          uint32_t rr[4];
          if (b_rowc) {
            ldmatrix_x4<true>(rr, &Bs[TB::idx(1, n, k + j)]);
          } else {
            ldmatrix_x4<false>(rr, &Bs[TB::idx(0, n + j, k)]);
          }
          b[ni][0] = rr[0];
          b[ni][1] = rr[1];
          b[ni + 1][0] = rr[2];
          b[ni + 1][1] = rr[3];
        }
#pragma unroll
        for (int mi = 0; mi < C::MI; ++mi)
#pragma unroll
          for (int ni = 0; ni < C::NI; ++ni) mma_16816<C::kBf16>(acc[mi][ni], a[mi], b[ni]);
      }
    }
  }

  PF_DEV void store(typename C::Acc (*Cs)[C::BN + 1]) const {
    const int tid = static_cast<int>(threadIdx.x);
    const int warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
    const int wm = (warp >> 1) * 32, wn = (warp & 1) * 64;
#pragma unroll
    for (int mi = 0; mi < C::MI; ++mi)
#pragma unroll
      for (int ni = 0; ni < C::NI; ++ni) {
        const int r = wm + mi * 16 + g, c = wn + ni * 8 + 2 * t;
        Cs[r][c] = acc[mi][ni][0];
        Cs[r][c + 1] = acc[mi][ni][1];
        Cs[r + 8][c] = acc[mi][ni][2];
        Cs[r + 8][c + 1] = acc[mi][ni][3];
      }
  }
};

// ---------------------------------------------------------------- CUDA-core path (fp32 exact, fp64)
// Thread (ty, tx), 8 x 16 threads: rows ty + 8 i, columns tx + 16 j (strided ownership keeps the
// shared-memory reads conflict-free with the +1 row padding).
template <class C>
struct FmaAcc {
  using Acc = typename C::Acc;
  static constexpr int TY = C::kThreads / 16;
  static_assert(TY * C::TM == C::BM && 16 * C::TN == C::BN, "FMA tile shape");
  Acc acc[C::TM][C::TN];

  PF_DEV void zero() {
#pragma unroll
    for (int i = 0; i < C::TM; ++i)
#pragma unroll
      for (int j = 0; j < C::TN; ++j) acc[i][j] = Acc(0);
  }

  PF_DEV void compute(const typename C::Smem* As, int a_rowc, const typename C::Smem* Bs, int b_rowc) {
    using TA = Tile<C, C::BM>;
    using TB = Tile<C, C::BN>;
    const int tid = static_cast<int>(threadIdx.x);
    const int ty = tid / 16, tx = tid % 16;
#pragma unroll 2
    for (int k = 0; k < C::BK; ++k) {
      Acc a[C::TM], b[C::TN];
#pragma unroll
      for (int i = 0; i < C::TM; ++i) a[i] = As[TA::idx(a_rowc, ty + TY * i, k)];
#pragma unroll
      for (int j = 0; j < C::TN; ++j) b[j] = Bs[TB::idx(b_rowc, tx + 16 * j, k)];
#pragma unroll
      for (int i = 0; i < C::TM; ++i)
#pragma unroll
        for (int j = 0; j < C::TN; ++j) acc[i][j] += a[i] * b[j];
    }
  }

  PF_DEV void store(Acc (*Cs)[C::BN + 1]) const {
    const int tid = static_cast<int>(threadIdx.x);
    const int ty = tid / 16, tx = tid % 16;
#pragma unroll
    for (int i = 0; i < C::TM; ++i)
#pragma unroll
      for (int j = 0; j < C::TN; ++j) Cs[ty + TY * i][tx + 16 * j] = acc[i][j];
  }
};

template <class C>
using BlockAcc = typename std::conditional<C::kMma, MmaAcc<C>, FmaAcc<C>>::type;

PF_DEV bool in_range(int64_t v, int64_t n) { return static_cast<uint64_t>(v) < static_cast<uint64_t>(n); }

// Marks an invalid row/column in the index tables: far outside any image, so bounds tests fail.
constexpr int kFar = -(1 << 29);

}  // namespace pf
