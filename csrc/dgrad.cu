// Backward data gradient: dX = dZcat . Wcat (Linear), or its transposed-convolution form (Conv).
//
//   dX[b, ci, id, ih, iw] = sum_{r, co, kd, kh, kw} dZ_r[b, co, od, oh, ow] * W_r[co, ci, kd, kh, kw]
//   with od = (id + pad - kd*dil) / stride when that divides exactly and lands in [0, OD) (same h, w).
//
// Implicit GEMM: rows = input pixels, columns = ci, reduction q = (r, co, kd, kh, kw). For Linear every
// spatial extent is 1 and this is the plain GEMM dX[M,K] = dZcat[M,(1+D)N] . Wcat[(1+D)N,K].
// dZcat is our own contiguous [B, R, Cout, OPIX] buffer. Split-K (when the output has few tiles) writes
// fp32 partials that a second kernel sums in a fixed order, so results are deterministic.
#include "gemm_core.cuh"

namespace pf {
namespace {

struct DgARow {
  int64_t dzb, dxoff;
  int td, th, tw, pad_;
};
struct DgK {
  const void* wptr;  // &W_r[co, kk] (null: q out of range)
  int64_t wcs;       // stride between consecutive ci
  int64_t dzq;
  int kdd, khd, kwd, pad_;
};

template <class C>
struct DgSmem {
  GemmSmem<C> g;
  DgARow arow[C::BM];
  DgK kent[C::BK];
};

// Output coordinate for input coordinate t (= i + pad - k*dil) or -1 when this tap does not hit it.
PF_DEV int64_t out_coord(int64_t t, int64_t st, int64_t n_out) {
  if (t < 0) return -1;
  int64_t o = t;
  if (st != 1) {
    o = t / st;
    if (o * st != t) return -1;
  }
  return o < n_out ? o : -1;
}

PF_DEV int64_t dx_offset(const DgradParams& p, int64_t pix) {
  const Geom& g = p.g;
  int64_t t = pix;
  const int64_t iw = t % g.in[2];
  t /= g.in[2];
  const int64_t ih = t % g.in[1];
  t /= g.in[1];
  const int64_t id = t % g.in[0];
  const int64_t b = t / g.in[0];
  return b * p.sdx[0] + id * p.sdx[2] + ih * p.sdx[3] + iw * p.sdx[4];
}

template <class T, class C>
PF_GLOBAL void PF_LAUNCH_BOUNDS2(C::kThreads, C::kMinBlocks) dgrad_kernel(const DgradParams p) {
  using S = typename C::Smem;
  using A = typename C::Acc;
  PF_SHARED DgSmem<C> sm;
  const Geom& g = p.g;
  const int tid = static_cast<int>(threadIdx.x);
  const int64_t tile = blockIdx.x;
  const int64_t nt = tile % p.n_tiles, mt = tile / p.n_tiles;
  const int64_t m0 = mt * C::BM, n0 = nt * C::BN;
  const int64_t RK = g.R * g.Cout * g.KK;
  const int64_t ktiles = (RK + C::BK - 1) / C::BK;
  const int64_t kt0 = static_cast<int64_t>(blockIdx.y) * p.k_tiles_per_split;
  const int64_t kt1 = kt0 + p.k_tiles_per_split < ktiles ? kt0 + p.k_tiles_per_split : ktiles;
  const T* dz = static_cast<const T*>(p.dz);

  for (int r = tid; r < C::BM; r += C::kThreads) {
    DgARow e{};
    const int64_t pix = m0 + r;
    if (pix < g.PIN) {
      int64_t t = pix;
      const int64_t iw = t % g.in[2];
      t /= g.in[2];
      const int64_t ih = t % g.in[1];
      t /= g.in[1];
      const int64_t id = t % g.in[0];
      const int64_t b = t / g.in[0];
      e.dzb = b * g.R * g.Cout * g.OPIX;
      e.dxoff = b * p.sdx[0] + id * p.sdx[2] + ih * p.sdx[3] + iw * p.sdx[4];
      e.td = static_cast<int>(id + g.pad[0]);
      e.th = static_cast<int>(ih + g.pad[1]);
      e.tw = static_cast<int>(iw + g.pad[2]);
    } else {
      e.td = e.th = e.tw = kFar;
    }
    sm.arow[r] = e;
  }

  __syncthreads();  // row table visible (epilogue) even without K steps

  BlockAcc<C> acc;
  acc.zero();
  // Vector paths (Linear): dZcat rows are contiguous along q; W_r[co, :] is contiguous along ci, so the
  // B tile is stored row-contiguous. Prefetched one K step ahead.
  const T* w = static_cast<const T*>(p.w);
  const T* v = static_cast<const T*>(p.v);
  VecLoad<C, C::BM> av;
  VecLoad<C, C::BN> bv;
  auto load_a = [&](int64_t k0) {
    av.load(0, [&](int r, int k) -> const T* {
      const int64_t m = m0 + r, q = k0 + k;
      return (m < g.PIN && q < RK) ? dz + m * RK + q : nullptr;
    });
  };
  auto load_b = [&](int64_t k0) {
    bv.load(1, [&](int c, int k) -> const T* {
      const int64_t ci = n0 + c, q = k0 + k;
      if (ci >= g.Cin || q >= RK) return nullptr;
      const int64_t rb = q / g.Cout, co = q - rb * g.Cout;
      return (rb == 0 ? w + co * p.swn : v + (rb - 1) * p.svd + co * p.svn) + ci;
    });
  };
  const int b_rowc = p.b_vec ? 1 : 0;
  if (kt0 < kt1) {
    if (p.a_vec) load_a(kt0 * C::BK);
    if (p.b_vec) load_b(kt0 * C::BK);
  }
  for (int64_t kt = kt0; kt < kt1; ++kt) {
    const int64_t k0 = kt * C::BK;
    if (!p.a_vec || !p.b_vec) {
      for (int kk = tid; kk < C::BK; kk += C::kThreads) {
        DgK e{nullptr, 0, 0, 0, 0, 0, 0};
        const int64_t q = k0 + kk;
        if (q < RK) {
          const int64_t kidx = q % g.KK, rc = q / g.KK;
          const int64_t co = rc % g.Cout, r = rc / g.Cout;
          int64_t t = kidx;
          const int64_t kw = t % g.k[2];
          t /= g.k[2];
          const int64_t kh = t % g.k[1];
          const int64_t kd = t / g.k[1];
          e.kdd = static_cast<int>(kd * g.dil[0]);
          e.khd = static_cast<int>(kh * g.dil[1]);
          e.kwd = static_cast<int>(kw * g.dil[2]);
          e.dzq = rc * g.OPIX;
          if (r == 0) {
            e.wptr = static_cast<const T*>(p.w) + co * p.swn + kidx * p.swk;
            e.wcs = g.KK * p.swk;
          } else {
            e.wptr = static_cast<const T*>(p.v) + (r - 1) * p.svd + co * p.svn + kidx * p.svk;
            e.wcs = g.KK * p.svk;
          }
        }
        sm.kent[kk] = e;
      }
    }
    __syncthreads();
    if (p.a_vec) {
      av.store(sm.g.ab.As, 0);
    } else {
      fill_tile<C::BM, C>(sm.g.ab.As, p.a_row_fast, [&](int r, int kk) -> S {
        const DgK& ke = sm.kent[kk];
        const DgARow& re = sm.arow[r];
        if (ke.wptr == nullptr) return zero_of<S>();
        const int64_t od = out_coord(re.td - ke.kdd, g.st[0], g.out[0]);
        const int64_t oh = out_coord(re.th - ke.khd, g.st[1], g.out[1]);
        const int64_t ow = out_coord(re.tw - ke.kwd, g.st[2], g.out[2]);
        if (od < 0 || oh < 0 || ow < 0) return zero_of<S>();
        return dz[re.dzb + ke.dzq + (od * g.out[1] + oh) * g.out[2] + ow];
      });
    }
    if (p.b_vec) {
      bv.store(sm.g.ab.Bs, 1);
    } else {
      fill_tile<C::BN, C>(sm.g.ab.Bs, p.b_row_fast, [&](int c, int kk) -> S {
        const DgK& ke = sm.kent[kk];
        const int64_t ci = n0 + c;
        if (ke.wptr == nullptr || ci >= g.Cin) return zero_of<S>();
        return static_cast<const T*>(ke.wptr)[ci * ke.wcs];
      });
    }
    __syncthreads();
    if (kt + 1 < kt1) {
      if (p.a_vec) load_a(k0 + C::BK);
      if (p.b_vec) load_b(k0 + C::BK);
    }
    acc.compute(sm.g.ab.As, 0, sm.g.ab.Bs, b_rowc);
  }
  __syncthreads();
  acc.store(sm.g.Cs);
  __syncthreads();

  constexpr int total = C::BM * C::BN;
  for (int e = tid; e < total; e += C::kThreads) {
    int r, c;
    if (p.epi_row_fast) {
      r = e % C::BM;
      c = e / C::BM;
    } else {
      c = e % C::BN;
      r = e / C::BN;
    }
    const int64_t pix = m0 + r, ci = n0 + c;
    if (pix >= g.PIN || ci >= g.Cin) continue;
    const A v = sm.g.Cs[r][c];
    if (p.splits > 1) {
      static_cast<A*>(p.ws)[(static_cast<int64_t>(blockIdx.y) * g.PIN + pix) * g.Cin + ci] = v;
    } else {
      static_cast<T*>(p.dx)[sm.arow[r].dxoff + ci * p.sdx[1]] = from_acc<T>(v);
    }
  }
}

template <class T>
PF_GLOBAL void dgrad_splitk_reduce(const DgradParams p) {
  using A = typename AccOf<T>::type;
  const int64_t total = p.g.PIN * p.g.Cin;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += stride) {
    A v = A(0);
    for (int z = 0; z < p.splits; ++z) v += static_cast<const A*>(p.ws)[z * total + e];
    const int64_t pix = e / p.g.Cin, ci = e - pix * p.g.Cin;
    static_cast<T*>(p.dx)[dx_offset(p, pix) + ci * p.sdx[1]] = from_acc<T>(v);
  }
}

template <class T, int MATH>
cudaError_t launch_dgrad_cfg(const DgradParams& p, cudaStream_t s) {
  using C = typename CfgSel<T, MATH>::type;
  const int64_t tiles = static_cast<int64_t>(p.m_tiles) * p.n_tiles;
  if (tiles == 0) return cudaSuccess;
  auto kernel = dgrad_kernel<T, C>;
  PF_LAUNCH(kernel, dim3(static_cast<unsigned>(tiles), static_cast<unsigned>(p.splits)), dim3(C::kThreads), s, p);
  if (p.splits > 1) {
    const int64_t total = p.g.PIN * p.g.Cin;
    const int64_t blocks = (total + 255) / 256 < 65536 ? (total + 255) / 256 : 65536;
    auto red = dgrad_splitk_reduce<T>;
    PF_LAUNCH(red, dim3(static_cast<unsigned>(blocks)), dim3(256), s, p);
  }
  return cudaSuccess;
}

}  // namespace

template <class T>
cudaError_t launch_dgrad(const DgradParams& p, int math, cudaStream_t s) {
  if constexpr (std::is_same<T, float>::value) {
    if (math == kMathTF32) return launch_dgrad_cfg<T, kMathTF32>(p, s);
  }
  return launch_dgrad_cfg<T, kMathNative>(p, s);
}

template cudaError_t launch_dgrad<float>(const DgradParams&, int, cudaStream_t);
template cudaError_t launch_dgrad<__half>(const DgradParams&, int, cudaStream_t);
template cudaError_t launch_dgrad<__nv_bfloat16>(const DgradParams&, int, cudaStream_t);
template cudaError_t launch_dgrad<double>(const DgradParams&, int, cudaStream_t);

}  // namespace pf
