// Backward of a small dendritic Linear layer in ONE launch: no dZcat buffer, no partial sums, no workspace.
//
//   dz_0 = dy ; for i = D-1 .. 0:  ds_i = (G[i] dy + sum_{k>i} B[k,i] ds_k) act'(a_i) ;  dz_{1+i} = ds_i
//   dWcat = dZcat^T X ;  dX = dZcat Wcat
//   dbias = sum dy ; dG[i] = sum dy a_i ; dc_i = sum ds_i ; dB[k,i] = sum ds_k a_i (i < k)   (sums over rows)
//
// Inside this kernel the branches are stacked neuron-major: stacked row j = n * PP + r is branch r of neuron n
// (PP = 2 for D = 1, 4 for D = 2, 3; rows with r > D are zeros), so one (row, neuron) pair's dZ chain fills PP
// neighbouring entries of a tile. Blocks [0, TX) own a BM x BN tile of dX and reduce over every stacked row j;
// blocks [TX, TX + TW) own a BM x BN tile of dWcat (stacked rows x input features) and reduce over the M rows.
// Each block recomputes the dZ entries its tiles need from dy and h while filling shared memory, so the
// elementwise work is repeated once per column tile: cheap next to the four launches and the dZcat round trip it
// saves where a layer is small (the host planner's threshold, api.cpp). The dX blocks come first in the grid: their
// loops are the long ones. The dWcat blocks of column tile 0 also sum the per-neuron reductions: each thread keeps
// one neuron's partial sums over fixed rows in registers and the block adds the threads' sums in a fixed order, so
// the result is deterministic with no atomics. Reference: pai_fast/reference.py dendritic_linear_ref (its
// autograd); dz.cu computes the same chain in the same order of operations.
#include "gemm_core.cuh"

namespace pf {
namespace {

// One (row, neuron) pair's inputs, held in registers from the load (before the previous step's math) to the
// tile store (after it), as VecLoad holds its operand vectors.
template <class T, int DM>
struct PairIn {
  T gy;
  T a[DM];
};

template <class T, int DM>
PF_DEV void load_pair(const OnepassParams& p, int64_t m, int64_t n, PairIn<T, DM>& in) {
  const bool ok = m < p.M && n < p.N;
  const T* dy = static_cast<const T*>(p.dy);
  const T* h = static_cast<const T*>(p.h);
  in.gy = ok ? ldg(dy + m * p.sdym + n * p.sdyn) : zero_of<T>();
#pragma unroll
  for (int i = 0; i < DM; ++i) in.a[i] = ok && i < p.D ? ldg(h + m * p.shm + i * p.shd + n * p.shn) : zero_of<T>();
}

// Gate G[i] and cascade Bc[k][i] (k > i) of neuron n; zeros past D and past N, so padded rows stay zero.
template <class T, class A, int DM>
PF_DEV void load_params(const OnepassParams& p, int64_t n, A (&G)[DM], A (&Bc)[DM][DM]) {
  const bool ok = n < p.N;
  const T* gate = static_cast<const T*>(p.gate);
  const T* casc = static_cast<const T*>(p.casc);
#pragma unroll
  for (int i = 0; i < DM; ++i) {
    G[i] = ok && i < p.D ? to_acc(ldg(gate + i * p.sgd + n * p.sgn)) : A(0);
#pragma unroll
    for (int k = 0; k < DM; ++k)
      Bc[k][i] = ok && k > i && k < p.D ? to_acc(ldg(casc + k * p.sci + i * p.scj + n * p.scn)) : A(0);
  }
}

// ds[i] of one pair (0 for i >= D), in dz.cu's order of operations.
template <class A, int DM>
PF_DEV void dz_chain(A gy, const A (&a)[DM], const A (&G)[DM], const A (&Bc)[DM][DM], int D, int act, A (&ds)[DM]) {
#pragma unroll
  for (int i = DM - 1; i >= 0; --i) {
    A v = A(0);
    if (i < D) {
      v = G[i] * gy;
#pragma unroll
      for (int k = i + 1; k < DM; ++k)
        if (k < D) v += Bc[k][i] * ds[k];
      v *= act_grad(a[i], act);
    }
    ds[i] = v;
  }
}

// The stacked dZ entries of one pair (dy, then ds_0..ds_{DM-1}) into neighbouring elements of a shared-memory tile.
// Returns the chain's inputs and ds (the dWcat blocks sum them).
template <class S, class T, class A, int DM>
PF_DEV void stack_pair(const PairIn<T, DM>& in, const A (&G)[DM], const A (&Bc)[DM][DM], int D, int act, S* dst,
                       A& gy, A (&a)[DM], A (&ds)[DM]) {
  gy = to_acc(in.gy);
#pragma unroll
  for (int i = 0; i < DM; ++i) a[i] = to_acc(in.a[i]);
  dz_chain(gy, a, G, Bc, D, act, ds);
  dst[0] = from_acc<S>(gy);
#pragma unroll
  for (int i = 0; i < DM; ++i) dst[i + 1] = from_acc<S>(ds[i]);
}

// Partial-sum slot of each reduction, for DM (compile-time) dendrites: 0 dbias ; 1+i dG[i] ; 1+DM+i dc_i ;
// 1+2DM+k(k-1)/2+i dB[k,i].
template <int DM>
struct Slots {
  static constexpr int kCount = 1 + 2 * DM + DM * (DM - 1) / 2;
  PF_DEV static int casc(int k, int i) { return 1 + 2 * DM + k * (k - 1) / 2 + i; }
};

// ---------------------------------------------------------------- dX tile: dX[m, q] = sum_j dZ[m, j] Wcat[j, q]
template <class T, class C, int PP>
PF_DEV void dx_tile(const OnepassParams& p, GemmSmem<C>& sm, int64_t tile) {
  using S = typename C::Smem;
  using A = typename C::Acc;
  using TA = Tile<C, C::BM>;
  constexpr int DM = PP - 1, CH = C::BK / PP, NL = C::kThreads / CH, NPR = C::BM / NL;
  static_assert(C::BK % PP == 0 && C::kThreads % CH == 0 && C::BM % NL == 0, "pairs must divide among threads");
  const int tid = static_cast<int>(threadIdx.x), ch = tid % CH, lane = tid / CH;
  const int64_t m0 = (tile / p.x_tiles_n) * C::BM, q0 = (tile % p.x_tiles_n) * C::BN;
  const int64_t steps = (p.N + CH - 1) / CH;  // CH neurons = BK stacked rows per step
  const T* w = static_cast<const T*>(p.w);
  const T* v = static_cast<const T*>(p.v);

  PairIn<T, DM> in[NPR];
  A G[DM], Bc[DM][DM];  // of this thread's neuron in the loaded step
  auto load_a = [&](int64_t s) {
    const int64_t n = s * CH + ch;
    load_params<T, A, DM>(p, n, G, Bc);
#pragma unroll
    for (int i = 0; i < NPR; ++i) load_pair(p, m0 + lane + i * NL, n, in[i]);
  };
  // Wcat row (stacked j = n * PP + r) at column q, or null past N, D or K.
  auto wrow = [&](int64_t s, int k, int64_t q) -> const T* {
    const int64_t n = s * CH + k / PP;
    const int r = k % PP;
    if (n >= p.N || r > p.D || q >= p.K) return nullptr;
    return r == 0 ? w + n * p.swn + q * p.swk : v + (r - 1) * p.svd + n * p.svn + q * p.svk;
  };
  VecLoad<C, C::BN> bv;
  auto load_b = [&](int64_t s) { bv.load(1, [&](int c, int k) { return wrow(s, k, q0 + c); }); };

  BlockAcc<C> acc;
  acc.zero();
  if (steps > 0) {
    load_a(0);
    if (p.w_vec) load_b(0);
  }
  for (int64_t s = 0; s < steps; ++s) {
    __syncthreads();  // the previous step's math has read the tiles
#pragma unroll
    for (int i = 0; i < NPR; ++i) {
      A gy, a[DM], ds[DM];
      stack_pair(in[i], G, Bc, p.D, p.act, &sm.ab.As[TA::idx(0, lane + i * NL, ch * PP)], gy, a, ds);
    }
    if (p.w_vec) {
      bv.store(sm.ab.Bs, 1);
    } else {
      fill_tile<C::BN, C>(sm.ab.Bs, 1, [&](int c, int k) -> S {
        const T* e = wrow(s, k, q0 + c);
        return e ? *e : zero_of<S>();
      });
    }
    __syncthreads();
    if (s + 1 < steps) {
      load_a(s + 1);
      if (p.w_vec) load_b(s + 1);
    }
    acc.compute(sm.ab.As, 0, sm.ab.Bs, p.w_vec ? 1 : 0);
  }
  __syncthreads();
  acc.store(sm.Cs);
  __syncthreads();
  T* dx = static_cast<T*>(p.dx);
  for (int e = tid; e < C::BM * C::BN; e += C::kThreads) {
    const int r = e / C::BN, c = e % C::BN;
    const int64_t m = m0 + r, q = q0 + c;
    if (m < p.M && q < p.K) dx[m * p.sdxm + q * p.sdxk] = from_acc<T>(sm.Cs[r][c]);
  }
}

// ------------------------------------------------ dWcat tile: dWcat[j, q] = sum_m dZ[m, j] X[m, q] (+ reductions)
template <class T, class C, int PP>
PF_DEV void dw_tile(const OnepassParams& p, GemmSmem<C>& sm, int64_t tile) {
  using S = typename C::Smem;
  using A = typename C::Acc;
  using TA = Tile<C, C::BM>;
  using SL = Slots<PP - 1>;
  constexpr int DM = PP - 1, CH = C::BM / PP, NL = C::kThreads / CH, NPR = C::BK / NL;
  static_assert(C::BM % PP == 0 && C::kThreads % CH == 0 && C::BK % NL == 0, "pairs must divide among threads");
  static_assert(sizeof(GemmSmem<C>) >= sizeof(A) * C::kThreads * SL::kCount, "reduction scratch fits the tiles");
  const int tid = static_cast<int>(threadIdx.x), ch = tid % CH, lane = tid / CH;
  const int64_t tm = tile % p.w_tiles_m, tn = tile / p.w_tiles_m;  // column tile 0 first: it also reduces
  const int64_t n0 = tm * CH, q0 = tn * C::BN;
  const bool reduce = tn == 0;
  const int64_t steps = (p.M + C::BK - 1) / C::BK;
  const T* x = static_cast<const T*>(p.x);

  A G[DM], Bc[DM][DM];  // this thread's neuron is the same at every step
  load_params<T, A, DM>(p, n0 + ch, G, Bc);
  A sums[SL::kCount];
#pragma unroll
  for (int j = 0; j < SL::kCount; ++j) sums[j] = A(0);

  PairIn<T, DM> in[NPR];
  auto load_a = [&](int64_t s) {
#pragma unroll
    for (int i = 0; i < NPR; ++i) load_pair(p, s * C::BK + lane + i * NL, n0 + ch, in[i]);
  };
  auto xel = [&](int64_t s, int k, int64_t q) -> const T* {
    const int64_t m = s * C::BK + k;
    return m < p.M && q < p.K ? x + m * p.sxm + q * p.sxk : nullptr;
  };
  VecLoad<C, C::BN> bv;
  auto load_b = [&](int64_t s) { bv.load(1, [&](int c, int k) { return xel(s, k, q0 + c); }); };

  BlockAcc<C> acc;
  acc.zero();
  if (steps > 0) {
    load_a(0);
    if (p.x_vec) load_b(0);
  }
  for (int64_t s = 0; s < steps; ++s) {
    __syncthreads();
#pragma unroll
    for (int i = 0; i < NPR; ++i) {
      A gy, a[DM], ds[DM];
      // A tile stored row-contiguous ([BK][BM]): the PP branches of a neuron are neighbours along the rows.
      stack_pair(in[i], G, Bc, p.D, p.act, &sm.ab.As[TA::idx(1, ch * PP, lane + i * NL)], gy, a, ds);
      if (reduce) {  // padded rows (m >= M, n >= N) load zeros and add nothing
        sums[0] += gy;
#pragma unroll
        for (int k = 0; k < DM; ++k) {
          sums[1 + k] += gy * a[k];
          sums[1 + DM + k] += ds[k];
#pragma unroll
          for (int i2 = 0; i2 < k; ++i2) sums[SL::casc(k, i2)] += ds[k] * a[i2];
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
    __syncthreads();
    if (s + 1 < steps) {
      load_a(s + 1);
      if (p.x_vec) load_b(s + 1);
    }
    acc.compute(sm.ab.As, 1, sm.ab.Bs, p.x_vec ? 1 : 0);
  }
  __syncthreads();
  acc.store(sm.Cs);
  __syncthreads();
  T* dw = static_cast<T*>(p.dw);
  T* dv = static_cast<T*>(p.dv);
  for (int e = tid; e < C::BM * C::BN; e += C::kThreads) {
    const int rl = e / C::BN, c = e % C::BN;
    const int64_t n = n0 + rl / PP, q = q0 + c;
    const int r = rl % PP;
    if (n >= p.N || r > p.D || q >= p.K) continue;
    T* dst = r == 0 ? dw + n * p.K + q : dv + ((r - 1) * p.N + n) * p.K + q;
    *dst = from_acc<T>(sm.Cs[rl][c]);
  }
  if (!reduce) return;

  // The threads' partial sums, [lane][slot][neuron], added over the lanes in a fixed order.
  __syncthreads();  // Cs is read
  A* part = reinterpret_cast<A*>(&sm);
#pragma unroll
  for (int j = 0; j < SL::kCount; ++j) part[(lane * SL::kCount + j) * CH + ch] = sums[j];
  __syncthreads();
  const int D = p.D;
  const int outs = 1 + 2 * D + D * D;  // dbias ; dG ; dc ; dB (as dz_reduce_kernel writes them)
  for (int e = tid; e < outs * CH; e += C::kThreads) {
    const int o = e / CH, c = e % CH;
    const int64_t n = n0 + c;
    if (n >= p.N) continue;
    int j = -1;
    T* dst = nullptr;
    if (o == 0) {
      dst = p.dbias ? static_cast<T*>(p.dbias) + n : nullptr;
      j = 0;
    } else if (o <= D) {
      dst = static_cast<T*>(p.dgate) + (o - 1) * p.N + n;
      j = o;
    } else if (o <= 2 * D) {
      dst = p.dvbias ? static_cast<T*>(p.dvbias) + (o - 1 - D) * p.N + n : nullptr;
      j = 1 + DM + (o - 1 - D);
    } else {
      const int ki = o - 1 - 2 * D, k = ki / D, i = ki % D;
      dst = static_cast<T*>(p.dcasc) + ki * p.N + n;
      j = i < k ? SL::casc(k, i) : -1;  // entries i >= k are not parameters of the model: exactly 0
    }
    if (dst == nullptr) continue;
    A sum = A(0);
    if (j >= 0)
      for (int l = 0; l < NL; ++l) sum += part[(l * SL::kCount + j) * CH + c];
    *dst = from_acc<T>(sum);
  }
}

template <class T, class C, int PP>
PF_GLOBAL void PF_LAUNCH_BOUNDS2(C::kThreads, C::kMinBlocks) onepass_kernel(const OnepassParams p) {
  static_assert(std::is_same<typename C::Smem, T>::value, "tiles hold the data type");
  PF_SHARED GemmSmem<C> sm;
  const int64_t tile = blockIdx.x, tx = static_cast<int64_t>(p.x_tiles_m) * p.x_tiles_n;
  if (tile < tx)
    dx_tile<T, C, PP>(p, sm, tile);
  else
    dw_tile<T, C, PP>(p, sm, tile - tx);
}

template <class T, int MATH, int PP>
cudaError_t launch_onepass_cfg(OnepassParams p, cudaStream_t s) {
  using C = typename CfgSel<T, MATH>::type;
  const int64_t col_tiles = (p.K + C::BN - 1) / C::BN;
  p.x_tiles_m = static_cast<int>((p.M + C::BM - 1) / C::BM);
  p.x_tiles_n = static_cast<int>(col_tiles);
  p.w_tiles_m = static_cast<int>((p.N * PP + C::BM - 1) / C::BM);
  p.w_tiles_n = static_cast<int>(col_tiles);
  const int64_t blocks = static_cast<int64_t>(p.x_tiles_m) * p.x_tiles_n + static_cast<int64_t>(p.w_tiles_m) * p.w_tiles_n;
  if (blocks == 0) return cudaSuccess;
  auto kernel = onepass_kernel<T, C, PP>;
  PF_LAUNCH(kernel, dim3(static_cast<unsigned>(blocks)), dim3(C::kThreads), s, p);
  return cudaSuccess;
}

template <class T, int MATH>
cudaError_t launch_onepass_math(const OnepassParams& p, cudaStream_t s) {
  return p.D == 1 ? launch_onepass_cfg<T, MATH, 2>(p, s) : launch_onepass_cfg<T, MATH, 4>(p, s);
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
