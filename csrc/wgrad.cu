// Backward weight gradient: dWcat = dZcat^T . X (Linear), or its im2col form (Conv).
//
//   dW_r[co, ci, kd, kh, kw] = sum_{b, od, oh, ow} dZ_r[b, co, od, oh, ow] * x[b, ci, od*s - p + kd*dil, ...]
//
// Implicit GEMM: rows j = (r, co) over the (1+D)*Cout rows of Wcat, columns q = (ci, kd, kh, kw), and the
// reduction runs over output pixels p = (b, od, oh, ow). Rows of branch 0 go to dweight, the others to
// ddendrite_weight (both contiguous). Reductions over large batches use split-K with fp32 partials summed
// in a fixed order by a second kernel: deterministic, no atomics.
#include "gemm_core.cuh"

namespace pf {
namespace {

struct WgBCol {
  int64_t xcoff;
  int kdd, khd, kwd, valid;
};
struct WgK {
  int64_t dzp, xoff;
  int id0, ih0, iw0, valid;
};

template <class C>
struct WgSmem {
  GemmSmem<C> g;
  WgBCol bcol[C::BN];
  WgK kent[C::BK];
};

template <class T>
PF_DEV T* wgrad_row(const WgradParams& p, int64_t j) {
  return j < p.g.Cout ? static_cast<T*>(p.dw) + j * p.g.KC : static_cast<T*>(p.dv) + (j - p.g.Cout) * p.g.KC;
}

template <class T, class C>
PF_GLOBAL void PF_LAUNCH_BOUNDS2(C::kThreads, C::kMinBlocks) wgrad_kernel(const WgradParams p) {
  using S = typename C::Smem;
  using A = typename C::Acc;
  PF_SHARED WgSmem<C> sm;
  const Geom& g = p.g;
  const int tid = static_cast<int>(threadIdx.x);
  const int64_t tile = blockIdx.x;
  const int64_t nt = tile % p.n_tiles, mt = tile / p.n_tiles;
  const int64_t m0 = mt * C::BM, n0 = nt * C::BN;
  const int64_t RC = g.R * g.Cout;
  const int64_t ktiles = (g.P + C::BK - 1) / C::BK;
  const int64_t kt0 = static_cast<int64_t>(blockIdx.y) * p.k_tiles_per_split;
  const int64_t kt1 = kt0 + p.k_tiles_per_split < ktiles ? kt0 + p.k_tiles_per_split : ktiles;
  const T* dz = static_cast<const T*>(p.dz);
  const T* x = static_cast<const T*>(p.x);

  for (int c = tid; c < C::BN; c += C::kThreads) {
    WgBCol e{0, 0, 0, 0, 0};
    const int64_t q = n0 + c;
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
    sm.bcol[c] = e;
  }

  __syncthreads();  // column table visible before the first loads

  BlockAcc<C> acc;
  acc.zero();
  // Vector paths (Linear): dZcat^T and X^T tiles are contiguous along their rows (j and ci), so both
  // are stored row-contiguous. Prefetched one K step ahead.
  VecLoad<C, C::BM> av;
  VecLoad<C, C::BN> bv;
  auto load_a = [&](int64_t k0) {
    av.load(1, [&](int r, int k) -> const T* {
      const int64_t j = m0 + r, pix = k0 + k;
      return (j < RC && pix < g.P) ? dz + pix * RC + j : nullptr;
    });
  };
  auto load_b = [&](int64_t k0) {
    bv.load(1, [&](int c, int k) -> const T* {
      const int64_t q = n0 + c, pix = k0 + k;
      return (q < g.KC && pix < g.P) ? x + pix * p.sx[0] + q : nullptr;
    });
  };
  const int a_rowc = p.a_vec ? 1 : 0, b_rowc = p.b_vec ? 1 : 0;
  if (kt0 < kt1) {
    if (p.a_vec) load_a(kt0 * C::BK);
    if (p.b_vec) load_b(kt0 * C::BK);
  }
  for (int64_t kt = kt0; kt < kt1; ++kt) {
    const int64_t k0 = kt * C::BK;
    if (!p.a_vec || !p.b_vec) {
      for (int kk = tid; kk < C::BK; kk += C::kThreads) {
        WgK e{0, 0, kFar, kFar, kFar, 0};
        const int64_t pix = k0 + kk;
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
          e.dzp = b * RC * g.OPIX + (pix - b * g.OPIX);
          e.id0 = static_cast<int>(id0);
          e.ih0 = static_cast<int>(ih0);
          e.iw0 = static_cast<int>(iw0);
          e.valid = 1;
        }
        sm.kent[kk] = e;
      }
    }
    __syncthreads();
    if (p.a_vec) {
      av.store(sm.g.ab.As, 1);
    } else {
      fill_tile<C::BM, C>(sm.g.ab.As, p.a_row_fast, [&](int r, int kk) -> S {
        const WgK& ke = sm.kent[kk];
        const int64_t j = m0 + r;
        if (!ke.valid || j >= RC) return zero_of<S>();
        return dz[j * g.OPIX + ke.dzp];
      });
    }
    if (p.b_vec) {
      bv.store(sm.g.ab.Bs, 1);
    } else {
      fill_tile<C::BN, C>(sm.g.ab.Bs, p.b_row_fast, [&](int c, int kk) -> S {
        const WgK& ke = sm.kent[kk];
        const WgBCol& be = sm.bcol[c];
        if (!ke.valid || !be.valid || !in_range(ke.id0 + be.kdd, g.in[0]) || !in_range(ke.ih0 + be.khd, g.in[1]) ||
            !in_range(ke.iw0 + be.kwd, g.in[2]))
          return zero_of<S>();
        return x[ke.xoff + be.xcoff];
      });
    }
    __syncthreads();
    if (kt + 1 < kt1) {
      if (p.a_vec) load_a(k0 + C::BK);
      if (p.b_vec) load_b(k0 + C::BK);
    }
    acc.compute(sm.g.ab.As, a_rowc, sm.g.ab.Bs, b_rowc);
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
    const int64_t j = m0 + r, q = n0 + c;
    if (j >= RC || q >= g.KC) continue;
    const A v = sm.g.Cs[r][c];
    if (p.splits > 1) {
      static_cast<A*>(p.ws)[(static_cast<int64_t>(blockIdx.y) * RC + j) * g.KC + q] = v;
    } else {
      wgrad_row<T>(p, j)[q] = from_acc<T>(v);
    }
  }
}

template <class T>
PF_GLOBAL void wgrad_splitk_reduce(const WgradParams p) {
  using A = typename AccOf<T>::type;
  const int64_t total = p.g.R * p.g.Cout * p.g.KC;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += stride) {
    A v = A(0);
    for (int z = 0; z < p.splits; ++z) v += static_cast<const A*>(p.ws)[z * total + e];
    const int64_t j = e / p.g.KC, q = e - j * p.g.KC;
    wgrad_row<T>(p, j)[q] = from_acc<T>(v);
  }
}

template <class T, int MATH>
cudaError_t launch_wgrad_cfg(const WgradParams& p, cudaStream_t s) {
  using C = typename CfgSel<T, MATH>::type;
  const int64_t tiles = static_cast<int64_t>(p.m_tiles) * p.n_tiles;
  if (tiles == 0) return cudaSuccess;
  auto kernel = wgrad_kernel<T, C>;
  PF_LAUNCH(kernel, dim3(static_cast<unsigned>(tiles), static_cast<unsigned>(p.splits)), dim3(C::kThreads), s, p);
  if (p.splits > 1) {
    const int64_t total = p.g.R * p.g.Cout * p.g.KC;
    const int64_t blocks = (total + 255) / 256 < 65536 ? (total + 255) / 256 : 65536;
    auto red = wgrad_splitk_reduce<T>;
    PF_LAUNCH(red, dim3(static_cast<unsigned>(blocks)), dim3(256), s, p);
  }
  return cudaSuccess;
}

}  // namespace

template <class T>
cudaError_t launch_wgrad(const WgradParams& p, int math, cudaStream_t s) {
  if constexpr (std::is_same<T, float>::value) {
    if (math == kMathTF32) return launch_wgrad_cfg<T, kMathTF32>(p, s);
  }
  return launch_wgrad_cfg<T, kMathNative>(p, s);
}

template cudaError_t launch_wgrad<float>(const WgradParams&, int, cudaStream_t);
template cudaError_t launch_wgrad<__half>(const WgradParams&, int, cudaStream_t);
template cudaError_t launch_wgrad<__nv_bfloat16>(const WgradParams&, int, cudaStream_t);
template cudaError_t launch_wgrad<double>(const WgradParams&, int, cudaStream_t);

}  // namespace pf
