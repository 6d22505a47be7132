// Dendritic forward (Linear and Conv by implicit GEMM), one kernel.
//
//   z_0 = x W^T + b ; u_i = x V_i^T + c_i ; s_i = u_i + sum_{j<i} B[i,j] a_j ; a_i = act(s_i)
//   y = z_0 + sum_i G[i] a_i           (h[:, i] = a_i saved for backward when requested)
//
// A block owns BM output pixels x bno neurons and computes all R = 1+D branches of those neurons: its
// B tile holds the rows [W; V_0; ...; V_{D-1}] of the same bno neurons (column c = r*bno + nl), so one
// K-loop over x feeds every branch accumulator. The epilogue then runs bias, cascade, activation and
// the gated sum for each (pixel, neuron) from the on-chip accumulator tile; no (1+D)*M*N intermediate
// reaches global memory. Reference: pai_fast/reference.py dendritic_linear_ref / dendritic_conv_ref.
#include "gemm_core.cuh"

namespace pf {
namespace {

struct FwdARow {
  int64_t xoff, yoff, hoff;
  int id0, ih0, iw0, pad_;
};
struct FwdBRow {
  const void* ptr;  // row start of W_r[n] (null: dead column)
  int64_t ks;
};
struct FwdK {
  int64_t xcoff;
  int kdd, khd, kwd, valid;
};

template <class C>
struct FwdSmem {
  GemmSmem<C> g;
  FwdARow arow[C::BM];
  FwdBRow brow[C::BN];
  FwdK kent[C::BK];
};

template <class T, class C>
PF_GLOBAL void PF_LAUNCH_BOUNDS2(C::kThreads, C::kMinBlocks) fwd_kernel(const FwdParams p) {
  using S = typename C::Smem;
  using A = typename C::Acc;
  static_assert(std::is_same<S, T>::value, "tiles hold the data type");
  PF_SHARED FwdSmem<C> sm;
  const Geom& g = p.g;
  const int tid = static_cast<int>(threadIdx.x);
  const int64_t tile = blockIdx.x;
  const int64_t nt = tile % p.n_tiles, mt = tile / p.n_tiles;
  const int64_t m0 = mt * C::BM;
  const int bno = p.bno;
  const int64_t n0 = nt * bno;
  const int R = static_cast<int>(g.R);

  for (int r = tid; r < C::BM; r += C::kThreads) {
    FwdARow e{};
    const int64_t pix = m0 + r;
    if (pix < g.P) {
      int64_t t = pix;
      const int64_t ow = t % g.out[2];
      t /= g.out[2];
      const int64_t oh = t % g.out[1];
      t /= g.out[1];
      const int64_t od = t % g.out[0];
      const int64_t b = t / g.out[0];
      const int64_t id0 = od * g.st[0] - g.pad[0], ih0 = oh * g.st[1] - g.pad[1], iw0 = ow * g.st[2] - g.pad[2];
      e.xoff = b * p.sx[0] + id0 * p.sx[2] + ih0 * p.sx[3] + iw0 * p.sx[4];
      e.id0 = static_cast<int>(id0);
      e.ih0 = static_cast<int>(ih0);
      e.iw0 = static_cast<int>(iw0);
      const int64_t op = pix - b * g.OPIX;
      e.yoff = b * p.syb + op * p.syp;
      e.hoff = b * p.shb + op * p.shp;
    } else {
      e.id0 = e.ih0 = e.iw0 = kFar;
    }
    sm.arow[r] = e;
  }
  for (int c = tid; c < C::BN; c += C::kThreads) {
    FwdBRow e{nullptr, 0};
    const int r = c / bno, nl = c - r * bno;
    const int64_t n = n0 + nl;
    if (r < R && n < g.Cout) {
      if (r == 0) {
        e.ptr = static_cast<const T*>(p.w) + n * p.swn;
        e.ks = p.swk;
      } else {
        e.ptr = static_cast<const T*>(p.v) + (r - 1) * p.svd + n * p.svn;
        e.ks = p.svk;
      }
    }
    sm.brow[c] = e;
  }

  __syncthreads();  // row tables visible before the first (prefetched) loads

  BlockAcc<C> acc;
  acc.zero();
  const int64_t ktiles = (g.KC + C::BK - 1) / C::BK;
  const T* x = static_cast<const T*>(p.x);
  // Vector paths (Linear, x and weights k-contiguous and 16-byte aligned): prefetched one K step ahead.
  VecLoad<C, C::BM> av;
  VecLoad<C, C::BN> bv;
  auto load_a = [&](int64_t k0) {
    av.load(0, [&](int r, int k) -> const T* {
      const int64_t m = m0 + r, q = k0 + k;
      return (m < g.P && q < g.KC) ? x + m * p.sx[0] + q : nullptr;
    });
  };
  auto load_b = [&](int64_t k0) {
    bv.load(0, [&](int c, int k) -> const T* {
      const T* row = static_cast<const T*>(sm.brow[c].ptr);
      const int64_t q = k0 + k;
      return (row != nullptr && q < g.KC) ? row + q : nullptr;
    });
  };
  if (ktiles > 0) {
    if (p.a_vec) load_a(0);
    if (p.b_vec) load_b(0);
  }
  for (int64_t kt = 0; kt < ktiles; ++kt) {
    const int64_t k0 = kt * C::BK;
    if (!p.a_vec) {
      for (int kk = tid; kk < C::BK; kk += C::kThreads) {
        FwdK e{0, 0, 0, 0, 0};
        const int64_t q = k0 + kk;
        if (q < g.KC) {
          int64_t t = q;
          const int64_t kw = t % g.k[2];
          t /= g.k[2];
          const int64_t kh = t % g.k[1];
          t /= g.k[1];
          const int64_t kd = t % g.k[0];
          const int64_t ci = t / g.k[0];
          e.kdd = static_cast<int>(kd * g.dil[0]);
          e.khd = static_cast<int>(kh * g.dil[1]);
          e.kwd = static_cast<int>(kw * g.dil[2]);
          e.xcoff = ci * p.sx[1] + e.kdd * p.sx[2] + e.khd * p.sx[3] + e.kwd * p.sx[4];
          e.valid = 1;
        }
        sm.kent[kk] = e;
      }
    }
    __syncthreads();  // the previous step's math is done with the tiles; the k table is ready
    if (p.a_vec) {
      av.store(sm.g.ab.As, 0);
    } else {
      fill_tile<C::BM, C>(sm.g.ab.As, p.a_row_fast, [&](int r, int kk) -> S {
        const FwdK& ke = sm.kent[kk];
        const FwdARow& re = sm.arow[r];
        if (!ke.valid || !in_range(re.id0 + ke.kdd, g.in[0]) || !in_range(re.ih0 + ke.khd, g.in[1]) ||
            !in_range(re.iw0 + ke.kwd, g.in[2]))
          return zero_of<S>();
        return x[re.xoff + ke.xcoff];
      });
    }
    if (p.b_vec) {
      bv.store(sm.g.ab.Bs, 0);
    } else {
      fill_tile<C::BN, C>(sm.g.ab.Bs, p.b_row_fast, [&](int c, int kk) -> S {
        const FwdBRow& be = sm.brow[c];
        const int64_t q = k0 + kk;
        if (be.ptr == nullptr || q >= g.KC) return zero_of<S>();
        return static_cast<const T*>(be.ptr)[q * be.ks];
      });
    }
    __syncthreads();
    if (kt + 1 < ktiles) {  // next step's vector loads fly while the tensor cores work
      if (p.a_vec) load_a(k0 + C::BK);
      if (p.b_vec) load_b(k0 + C::BK);
    }
    acc.compute(sm.g.ab.As, 0, sm.g.ab.Bs, 0);
  }
  __syncthreads();  // Cs overwrites the tiles
  acc.store(sm.g.Cs);
  __syncthreads();

  // Epilogue: each (pixel, neuron) is owned by one thread, which rewrites its branch slots of Cs with
  // the activated a_i so later branches of the cascade can read them.
  const int total = C::BM * bno;
  const int D = R - 1;
  const T* bias = static_cast<const T*>(p.bias);
  const T* vbias = static_cast<const T*>(p.vbias);
  const T* gate = static_cast<const T*>(p.gate);
  const T* casc = static_cast<const T*>(p.casc);
  T* y = static_cast<T*>(p.y);
  T* h = static_cast<T*>(p.h);
  for (int e = tid; e < total; e += C::kThreads) {
    int r, nl;
    if (p.epi_row_fast) {
      r = e % C::BM;
      nl = e / C::BM;
    } else {
      nl = e % bno;
      r = e / bno;
    }
    const int64_t pix = m0 + r, n = n0 + nl;
    if (pix >= g.P || n >= g.Cout) continue;
    A* row = sm.g.Cs[r];
    A z = row[nl];
    if (bias != nullptr) z += to_acc(bias[n * p.sb]);
    const FwdARow& re = sm.arow[r];
    for (int i = 0; i < D; ++i) {
      A s = row[(i + 1) * bno + nl];
      if (vbias != nullptr) s += to_acc(vbias[i * p.svbd + n * p.svbn]);
      for (int j = 0; j < i; ++j) s += to_acc(casc[i * p.sci + j * p.scj + n * p.scn]) * row[(j + 1) * bno + nl];
      const A a = act_fwd_out<T>(s, p.act);
      row[(i + 1) * bno + nl] = a;
      z += to_acc(gate[i * p.sgd + n * p.sgn]) * a;
      if (h != nullptr) h[re.hoff + i * p.shd + n * p.shc] = from_acc<T>(a);
    }
    y[re.yoff + n * p.syc] = from_acc<T>(z);
  }
}

template <class T, int MATH>
cudaError_t launch_fwd_cfg(const FwdParams& p, cudaStream_t s) {
  using C = typename CfgSel<T, MATH>::type;
  const int64_t m_tiles = (p.g.P + C::BM - 1) / C::BM;
  const int64_t tiles = m_tiles * p.n_tiles;
  if (tiles == 0) return cudaSuccess;
  if (tiles > 0x7fffffffLL) return cudaErrorInvalidConfiguration;
  auto kernel = fwd_kernel<T, C>;
  PF_LAUNCH(kernel, dim3(static_cast<unsigned>(tiles)), dim3(C::kThreads), s, p);
  return cudaSuccess;
}

}  // namespace

template <class T>
cudaError_t launch_fwd(const FwdParams& p, int math, cudaStream_t s) {
  if constexpr (std::is_same<T, float>::value) {
    if (math == kMathTF32) return launch_fwd_cfg<T, kMathTF32>(p, s);
  }
  return launch_fwd_cfg<T, kMathNative>(p, s);
}

template cudaError_t launch_fwd<float>(const FwdParams&, int, cudaStream_t);
template cudaError_t launch_fwd<__half>(const FwdParams&, int, cudaStream_t);
template cudaError_t launch_fwd<__nv_bfloat16>(const FwdParams&, int, cudaStream_t);
template cudaError_t launch_fwd<double>(const FwdParams&, int, cudaStream_t);

}  // namespace pf
