// Backward of a small dendritic Linear layer in ONE launch: no dZcat buffer, no partial sums, no workspace.
//
//   dz_0 = dy ; for i = D-1 .. 0:  ds_i = (G[i] dy + sum_{k>i} B[k,i] ds_k) act'(a_i) ;  dz_{1+i} = ds_i
//   dWcat = dZcat^T X ;  dX = dZcat Wcat
//   dbias = sum dy ; dG[i] = sum dy a_i ; dc_i = sum ds_i ; dB[k,i] = sum ds_k a_i (i < k)   (sums over rows)
//
// Inside this kernel the branches are stacked neuron-major: stacked row j = n * PP + r is branch r of neuron n
// (PP = 2 for D = 1, 4 for D = 2, 3; rows with r > D are zeros; D is a template parameter), so one (row, neuron)
// pair's dZ chain fills PP neighbouring entries of a tile. Blocks [0, TX) own a BM x BN tile of dX and reduce over
// every stacked row j; blocks [TX, TX + TW) own a BM x BN tile of dWcat (stacked rows x input features) and reduce
// over the M rows. Each block recomputes the dZ entries its tiles need from dy and h while filling shared memory, so
// the elementwise work is repeated once per column tile: cheap next to the four launches and the dZcat round trip it
// saves where a layer is tiny (the host planner's threshold, api.cpp, with the H200 measurements). The dX blocks come
// first in the grid: their loops are the long ones. The dWcat blocks of column tile 0 also sum the per-neuron
// reductions: each thread keeps one neuron's partial sums over fixed rows in registers and the block adds the
// threads' sums in a fixed order, so the result is deterministic with no atomics. Epilogues store 16-byte row
// segments. Reference: pai_fast/reference.py dendritic_linear_ref (its autograd); dz.cu computes the same chain in
// the same order of operations.
#include "gemm_core.cuh"

namespace pf {
namespace {

// Stacked rows per neuron: 1 + D, rounded up to a power of two so a tile's rows hold whole neurons.
template <int D>
struct Stacked {
  static constexpr int kRows = D == 1 ? 2 : 4;
};

// One (row, neuron) pair's inputs, held in registers from the load (before the previous step's math) to the
// tile store (after it), as VecLoad holds its operand vectors. D is a compile-time constant (1..3): no branch
// on it in the loops.
template <class T, int D>
struct PairIn {
  T gy;
  T a[D];
};

// dy and h of the pair at dy_row + dn and h_row + hn (null rows and ok = false: zeros, so padding adds nothing).
template <class T, int D>
PF_DEV void load_pair(const T* dy_row, const T* h_row, int64_t dn, int64_t hn, int64_t shd, bool ok,
                      PairIn<T, D>& in) {
  in.gy = ok ? ldg(dy_row + dn) : zero_of<T>();
#pragma unroll
  for (int i = 0; i < D; ++i) in.a[i] = ok ? ldg(h_row + hn + i * shd) : zero_of<T>();
}

// Gate G[i] and cascade Bc[k][i] (k > i) of neuron n; zeros past N, so padded rows stay zero.
template <class T, class A, int D>
PF_DEV void load_params(const OnepassParams& p, int64_t n, A (&G)[D], A (&Bc)[D][D]) {
  const bool ok = n < p.N;
  const T* gate = static_cast<const T*>(p.gate) + n * p.sgn;
  const T* casc = static_cast<const T*>(p.casc) + n * p.scn;
#pragma unroll
  for (int i = 0; i < D; ++i) {
    G[i] = ok ? to_acc(ldg(gate + i * p.sgd)) : A(0);
#pragma unroll
    for (int k = i + 1; k < D; ++k) Bc[k][i] = ok ? to_acc(ldg(casc + k * p.sci + i * p.scj)) : A(0);
  }
}

// The stacked dZ entries of one pair (dy, then ds_0..ds_{D-1}, then zeros up to the stacked width PP) into
// neighbouring elements of a shared-memory tile, with ds in dz.cu's order of operations. Returns the chain's inputs
// and ds (the dWcat blocks sum them).
template <class S, class T, class A, int D>
PF_DEV void stack_pair(const PairIn<T, D>& in, const A (&G)[D], const A (&Bc)[D][D], int act, S* dst, A& gy,
                       A (&a)[D], A (&ds)[D]) {
  gy = to_acc(in.gy);
#pragma unroll
  for (int i = D - 1; i >= 0; --i) {
    a[i] = to_acc(in.a[i]);
    A v = G[i] * gy;
#pragma unroll
    for (int k = i + 1; k < D; ++k) v += Bc[k][i] * ds[k];
    ds[i] = v * act_grad(a[i], act);
  }
  dst[0] = from_acc<S>(gy);
#pragma unroll
  for (int i = 0; i < D; ++i) dst[i + 1] = from_acc<S>(ds[i]);
#pragma unroll
  for (int i = D + 1; i < Stacked<D>::kRows; ++i) dst[i] = zero_of<S>();
}

// Partial sums per neuron, in reduction_output's slots (common.cuh).
template <int D>
struct Slots {
  static constexpr int kCount = 1 + 2 * D + D * (D - 1) / 2;
};

// n (<= VE, 16 bytes of T) accumulator values of one output row to dst[0], dst[stride], ...: one 16-byte store when
// the segment is whole, contiguous and aligned, else element by element. The epilogues write through this: one
// store per 8 bf16 values instead of eight keeps their instruction count below the mainloop's.
template <class T, class A>
PF_DEV void store_segment(T* dst, int64_t stride, const A* src, int n) {
  constexpr int VE = 16 / static_cast<int>(sizeof(T));
  if (n == VE && stride == 1 && (reinterpret_cast<uintptr_t>(dst) & 15u) == 0) {
    union {
      uint4 u;
      T v[VE];
    } w;
#pragma unroll
    for (int j = 0; j < VE; ++j) w.v[j] = from_acc<T>(src[j]);
    *reinterpret_cast<uint4*>(dst) = w.u;
  } else {
    for (int j = 0; j < n; ++j) dst[j * stride] = from_acc<T>(src[j]);
  }
}

// The block's accumulator tile Cs [BM][BN] (columns q0..) to global memory, a 16-byte segment of a row per thread
// and step; row_ptr(r) gives row r's start (at column q0) or null for a row to skip.
template <class T, class C, class F>
PF_DEV void store_tile(const GemmSmem<C>& sm, int64_t q0, int64_t K, int64_t stride, F&& row_ptr) {
  constexpr int VE = 16 / static_cast<int>(sizeof(T)), SEGS = C::BN / VE;
  for (int e = static_cast<int>(threadIdx.x); e < C::BM * SEGS; e += C::kThreads) {
    const int r = e / SEGS, c = (e % SEGS) * VE;
    T* row = row_ptr(r);
    const int64_t left = K - q0 - c;
    if (row == nullptr || left <= 0) continue;
    store_segment<T>(row + c * stride, stride, &sm.Cs[r][c], left < VE ? static_cast<int>(left) : VE);
  }
}

// The mainloop of both tile kinds: step s's operands are loaded into registers (load(s)) while step s-1's math runs,
// then stored to the shared-memory tiles (store(s)) once that math has read them.
template <class Load, class Store, class Math>
PF_DEV void prefetched_loop(int64_t steps, Load&& load, Store&& store, Math&& math) {
  if (steps > 0) load(0);
  for (int64_t s = 0; s < steps; ++s) {
    __syncthreads();  // the previous step's math has read the tiles
    store(s);
    __syncthreads();
    if (s + 1 < steps) load(s + 1);
    math();
  }
}

// ---------------------------------------------------------------- dX tile: dX[m, q] = sum_j dZ[m, j] Wcat[j, q]
template <class T, class C, int D>
PF_DEV void dx_tile(const OnepassParams& p, GemmSmem<C>& sm, int64_t tile) {
  using S = typename C::Smem;
  using A = typename C::Acc;
  using TA = Tile<C, C::BM>;
  constexpr int PP = Stacked<D>::kRows, CH = C::BK / PP, NL = C::kThreads / CH, NPR = C::BM / NL;
  static_assert(C::BK % PP == 0 && C::kThreads % CH == 0 && C::BM % NL == 0, "pairs must divide among threads");
  const int tid = static_cast<int>(threadIdx.x), ch = tid % CH, lane = tid / CH;
  const int64_t m0 = (tile / p.x_tiles_n) * C::BM, q0 = (tile % p.x_tiles_n) * C::BN;
  const int64_t steps = (p.N + CH - 1) / CH;  // CH neurons = BK stacked rows per step
  const T* w = static_cast<const T*>(p.w);
  const T* v = static_cast<const T*>(p.v);

  // This thread's rows are the same at every step: their dy and h row starts once (null past M).
  const T *dy_row[NPR], *h_row[NPR];
#pragma unroll
  for (int i = 0; i < NPR; ++i) {
    const int64_t m = m0 + lane + i * NL;
    dy_row[i] = m < p.M ? static_cast<const T*>(p.dy) + m * p.sdym : nullptr;
    h_row[i] = m < p.M ? static_cast<const T*>(p.h) + m * p.shm : nullptr;
  }
  PairIn<T, D> in[NPR];
  A G[D], Bc[D][D];  // of this thread's neuron in the loaded step
  auto load_a = [&](int64_t s) {
    const int64_t n = s * CH + ch;
    load_params<T, A, D>(p, n, G, Bc);
    const int64_t dn = n * p.sdyn, hn = n * p.shn;
#pragma unroll
    for (int i = 0; i < NPR; ++i) load_pair(dy_row[i], h_row[i], dn, hn, p.shd, dy_row[i] != nullptr && n < p.N, in[i]);
  };
  // Wcat row (stacked j = n * PP + r) at column q, or null past N, D or K.
  auto wrow = [&](int64_t s, int k, int64_t q) -> const T* {
    const int64_t n = s * CH + k / PP;
    const int r = k % PP;
    if (n >= p.N || r > D || q >= p.K) return nullptr;
    return r == 0 ? w + n * p.swn + q * p.swk : v + (r - 1) * p.svd + n * p.svn + q * p.svk;
  };
  VecLoad<C, C::BN> bv;
  auto load_b = [&](int64_t s) { bv.load(1, [&](int c, int k) { return wrow(s, k, q0 + c); }); };

  BlockAcc<C> acc;
  acc.zero();
  prefetched_loop(
      steps,
      [&](int64_t s) {
        load_a(s);
        if (p.w_vec) load_b(s);
      },
      [&](int64_t s) {
#pragma unroll
        for (int i = 0; i < NPR; ++i) {
          A gy, a[D], ds[D];
          stack_pair(in[i], G, Bc, p.act, &sm.ab.As[TA::idx(0, lane + i * NL, ch * PP)], gy, a, ds);
        }
        if (p.w_vec) {
          bv.store(sm.ab.Bs, 1);
        } else {
          fill_tile<C::BN, C>(sm.ab.Bs, 1, [&](int c, int k) -> S {
            const T* e = wrow(s, k, q0 + c);
            return e ? *e : zero_of<S>();
          });
        }
      },
      [&] { acc.compute(sm.ab.As, 0, sm.ab.Bs, p.w_vec ? 1 : 0); });
  __syncthreads();
  acc.store(sm.Cs);
  __syncthreads();
  T* dx = static_cast<T*>(p.dx);
  store_tile<T>(sm, q0, p.K, p.sdxk, [&](int r) -> T* {
    const int64_t m = m0 + r;
    return m < p.M ? dx + m * p.sdxm + q0 * p.sdxk : nullptr;
  });
}

// ------------------------------------------------ dWcat tile: dWcat[j, q] = sum_m dZ[m, j] X[m, q] (+ reductions)
template <class T, class C, int D>
PF_DEV void dw_tile(const OnepassParams& p, GemmSmem<C>& sm, int64_t tile) {
  using S = typename C::Smem;
  using A = typename C::Acc;
  using TA = Tile<C, C::BM>;
  using SL = Slots<D>;
  constexpr int PP = Stacked<D>::kRows, CH = C::BM / PP, NL = C::kThreads / CH, NPR = C::BK / NL;
  static_assert(C::BM % PP == 0 && C::kThreads % CH == 0 && C::BK % NL == 0, "pairs must divide among threads");
  static_assert(sizeof(GemmSmem<C>) >= sizeof(A) * C::kThreads * SL::kCount, "reduction scratch fits the tiles");
  const int tid = static_cast<int>(threadIdx.x), ch = tid % CH, lane = tid / CH;
  const int64_t tm = tile % p.w_tiles_m, tn = tile / p.w_tiles_m;  // column tile 0 first: it also reduces
  const int64_t n0 = tm * CH, q0 = tn * C::BN;
  const bool reduce = tn == 0;
  const int64_t steps = (p.M + C::BK - 1) / C::BK;
  const T* x = static_cast<const T*>(p.x);

  // This thread's neuron is the same at every step: its parameters and its dy / h columns once.
  const int64_t n = n0 + ch;
  const bool n_ok = n < p.N;
  A G[D], Bc[D][D];
  load_params<T, A, D>(p, n, G, Bc);
  const T* dy_col = static_cast<const T*>(p.dy) + (n_ok ? n * p.sdyn : 0);
  const T* h_col = static_cast<const T*>(p.h) + (n_ok ? n * p.shn : 0);
  A sums[SL::kCount];
#pragma unroll
  for (int j = 0; j < SL::kCount; ++j) sums[j] = A(0);

  PairIn<T, D> in[NPR];
  auto load_a = [&](int64_t s) {
#pragma unroll
    for (int i = 0; i < NPR; ++i) {
      const int64_t m = s * C::BK + lane + i * NL;
      load_pair(dy_col, h_col, m * p.sdym, m * p.shm, p.shd, n_ok && m < p.M, in[i]);
    }
  };
  auto xel = [&](int64_t s, int k, int64_t q) -> const T* {
    const int64_t m = s * C::BK + k;
    return m < p.M && q < p.K ? x + m * p.sxm + q * p.sxk : nullptr;
  };
  VecLoad<C, C::BN> bv;
  auto load_b = [&](int64_t s) { bv.load(1, [&](int c, int k) { return xel(s, k, q0 + c); }); };

  BlockAcc<C> acc;
  acc.zero();
  prefetched_loop(
      steps,
      [&](int64_t s) {
        load_a(s);
        if (p.x_vec) load_b(s);
      },
      [&](int64_t s) {
#pragma unroll
        for (int i = 0; i < NPR; ++i) {
          A gy, a[D], ds[D];
          // A tile stored row-contiguous ([BK][BM]): the PP branches of a neuron are neighbours along the rows.
          stack_pair(in[i], G, Bc, p.act, &sm.ab.As[TA::idx(1, ch * PP, lane + i * NL)], gy, a, ds);
          if (reduce) {  // padded rows (m >= M, n >= N) load zeros and add nothing
            sums[0] += gy;
#pragma unroll
            for (int k = 0; k < D; ++k) {
              sums[1 + k] += gy * a[k];
              sums[1 + D + k] += ds[k];
#pragma unroll
              for (int i2 = 0; i2 < k; ++i2) sums[casc_slot(D, k, i2)] += ds[k] * a[i2];
            }
          }
        }
        if (p.x_vec) {
          bv.store(sm.ab.Bs, 1);
        } else {
          fill_tile<C::BN, C>(sm.ab.Bs, p.sxk == 1, [&](int c, int k) -> S {
            const T* e = xel(s, k, q0 + c);
            return e ? *e : zero_of<S>();
          });
        }
      },
      [&] { acc.compute(sm.ab.As, 1, sm.ab.Bs, p.x_vec ? 1 : 0); });
  __syncthreads();
  acc.store(sm.Cs);
  __syncthreads();
  T* dw = static_cast<T*>(p.dw);
  T* dv = static_cast<T*>(p.dv);
  store_tile<T>(sm, q0, p.K, 1, [&](int rl) -> T* {
    const int64_t nr = n0 + rl / PP;
    const int r = rl % PP;
    if (nr >= p.N || r > D) return nullptr;
    return (r == 0 ? dw + nr * p.K : dv + ((r - 1) * p.N + nr) * p.K) + q0;
  });
  if (!reduce) return;

  // The threads' partial sums, [lane][slot][neuron], added over the lanes in a fixed order.
  __syncthreads();  // Cs is read
  A* part = reinterpret_cast<A*>(&sm);
#pragma unroll
  for (int j = 0; j < SL::kCount; ++j) part[(lane * SL::kCount + j) * CH + ch] = sums[j];
  __syncthreads();
  constexpr int kOuts = 1 + 2 * D + D * D;  // dbias ; dG ; dc ; dB (as dz_reduce_kernel writes them)
  for (int e = tid; e < kOuts * CH; e += C::kThreads) {
    const int o = e / CH, c = e % CH;
    const int64_t nn = n0 + c;
    if (nn >= p.N) continue;
    int64_t j;
    T* dst = reduction_output<T>(p.dbias, p.dgate, p.dvbias, p.dcasc, p.N, D, o, nn, j);
    if (dst == nullptr) continue;
    A sum = A(0);
    if (j >= 0)
      for (int l = 0; l < NL; ++l) sum += part[(l * SL::kCount + j) * CH + c];
    *dst = from_acc<T>(sum);
  }
}

template <class T, class C, int D>
PF_GLOBAL void PF_LAUNCH_BOUNDS2(C::kThreads, C::kMinBlocks) onepass_kernel(const OnepassParams p) {
  static_assert(std::is_same<typename C::Smem, T>::value, "tiles hold the data type");
  PF_SHARED GemmSmem<C> sm;
  const int64_t tile = blockIdx.x, tx = static_cast<int64_t>(p.x_tiles_m) * p.x_tiles_n;
  if (tile < tx)
    dx_tile<T, C, D>(p, sm, tile);
  else
    dw_tile<T, C, D>(p, sm, tile - tx);
}

template <class T, int MATH, int D>
cudaError_t launch_onepass_cfg(OnepassParams p, cudaStream_t s) {
  using C = typename CfgSel<T, MATH>::type;
  const int64_t col_tiles = (p.K + C::BN - 1) / C::BN, x_rows = (p.M + C::BM - 1) / C::BM;
  const int64_t w_rows = (p.N * Stacked<D>::kRows + C::BM - 1) / C::BM;
  const int64_t blocks = (x_rows + w_rows) * col_tiles;
  if (blocks == 0) return cudaSuccess;
  if (blocks > 0x7fffffff) return cudaErrorInvalidConfiguration;  // only a forced path on a huge layer gets here
  p.x_tiles_m = static_cast<int>(x_rows);
  p.x_tiles_n = static_cast<int>(col_tiles);
  p.w_tiles_m = static_cast<int>(w_rows);
  p.w_tiles_n = static_cast<int>(col_tiles);
  auto kernel = onepass_kernel<T, C, D>;
  PF_LAUNCH(kernel, dim3(static_cast<unsigned>(blocks)), dim3(C::kThreads), s, p);
  return cudaSuccess;
}

template <class T, int MATH>
cudaError_t launch_onepass_math(const OnepassParams& p, cudaStream_t s) {
  switch (p.D) {
    case 1:
      return launch_onepass_cfg<T, MATH, 1>(p, s);
    case 2:
      return launch_onepass_cfg<T, MATH, 2>(p, s);
    default:
      return launch_onepass_cfg<T, MATH, 3>(p, s);
  }
}

}  // namespace

template <class T>
cudaError_t launch_onepass(const OnepassParams& p, int math, cudaStream_t s) {
  if (p.D < 1 || p.D > kOnepassMaxD) return cudaErrorInvalidValue;
  if constexpr (std::is_same<T, float>::value) {
    if (math == kMathTF32) return launch_onepass_math<T, kMathTF32>(p, s);
  }
  return launch_onepass_math<T, kMathNative>(p, s);
}

template cudaError_t launch_onepass<float>(const OnepassParams&, int, cudaStream_t);
template cudaError_t launch_onepass<__half>(const OnepassParams&, int, cudaStream_t);
template cudaError_t launch_onepass<__nv_bfloat16>(const OnepassParams&, int, cudaStream_t);
template cudaError_t launch_onepass<double>(const OnepassParams&, int, cudaStream_t);

}  // namespace pf
