// Backward of the dendritic epilogue: dZcat plus the per-channel reductions, deterministically.
//
//   dz_0 = dy
//   for i = D-1 .. 0:  da_i = G[i] dy + sum_{k>i} B[k,i] ds_k ;  ds_i = da_i * act'(a_i) ;  dz_{1+i} = ds_i
//   dbias = sum dy ; dG[i] = sum dy a_i ; dc_i = sum ds_i ; dB[k,i] = sum ds_k a_i (i < k)
// (sums over batch and space). a_i comes from the forward's saved h; act' is written in terms of a_i.
//
// Each thread owns one channel c and a fixed set of rows (pixels) and keeps its partial sums in
// registers (D <= 8: compile-time D) or in its private slice of the workspace (any D). It writes them to
// its own slot of `part`; dz_reduce_kernel then sums the slots in a fixed order. No atomics, so results
// are bitwise reproducible for a given shape. Partial index j: 0 dbias ; 1+i dG[i] ; 1+D+i dc_i ;
// 1+2D+k(k-1)/2+i dB[k,i].
#include "common.cuh"

namespace pf {
namespace {

// VEC neighbouring channels' values of one row: one 2-element vector access (Pair) for VEC = 2 (the host takes it
// only when the channels are contiguous and the address is aligned), a scalar one for VEC = 1.
template <class T, int VEC, class A>
PF_DEV void load_vec(const T* q, A* out) {
  if constexpr (VEC == 2) {
    const Pair<T> v = ldg(reinterpret_cast<const Pair<T>*>(q));
    out[0] = to_acc(v.x);
    out[1] = to_acc(v.y);
  } else {
    out[0] = to_acc(ldg(q));
  }
}

template <class T, int VEC, class A>
PF_DEV void store_vec(T* q, const A* v) {
  if constexpr (VEC == 2)
    store_pair(q, v[0], v[1]);
  else
    q[0] = from_acc<T>(v[0]);
}

// DT >= 0: D fixed at compile time, partial sums in registers; each thread owns VEC neighbouring channels.
// DT == -1: any D (VEC == 1), partial sums in the workspace.
template <class T, int DT, int VEC>
PF_GLOBAL void PF_LAUNCH_BOUNDS(kDzThreads) dz_kernel(const DzParams p) {
  using A = typename AccOf<T>::type;
  const Geom& g = p.g;
  const int64_t C = g.Cout, R = g.R, OPIX = g.OPIX;
  const int D = DT >= 0 ? DT : static_cast<int>(g.D);
  const int L = p.lanes;
  const int cpb = kDzThreads / L;
  const int tid = static_cast<int>(threadIdx.x);
  const int64_t c = (static_cast<int64_t>(blockIdx.y) * cpb + tid / L) * VEC;
  const int sub = tid % L;
  if (c >= C) return;  // no barriers in this kernel; VEC = 2 only with C even, so c + 1 < C too
  const int64_t slot = static_cast<int64_t>(blockIdx.x) * L + sub;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * p.rows_per_chunk;
  const int64_t r1 = r0 + p.rows_per_chunk < g.P ? r0 + p.rows_per_chunk : g.P;
  const T* dy = static_cast<const T*>(p.dy);
  const T* h = static_cast<const T*>(p.h);
  const T* gate = static_cast<const T*>(p.gate);
  const T* casc = static_cast<const T*>(p.casc);
  T* dz = static_cast<T*>(p.dz);
  A* part = static_cast<A*>(p.part) + slot * p.np * C + c;  // part[j * C + v]
  const int64_t bstride = C * OPIX;                         // between branches of dZcat
  const int act = p.act;

  if constexpr (DT >= 0) {
    constexpr int DA = DT > 0 ? DT : 1;
    A G[VEC][DA], Bc[VEC][DA][DA];
#pragma unroll
    for (int v = 0; v < VEC; ++v) {
#pragma unroll
      for (int i = 0; i < DT; ++i) {
        G[v][i] = to_acc(gate[i * p.sgd + (c + v) * p.sgn]);
#pragma unroll
        for (int k = i + 1; k < DT; ++k) Bc[v][k][i] = to_acc(casc[k * p.sci + i * p.scj + (c + v) * p.scn]);
      }
    }
    A s_b[VEC], s_g[VEC][DA], s_c[VEC][DA], s_B[VEC][DA][DA];
#pragma unroll
    for (int v = 0; v < VEC; ++v) {
      s_b[v] = A(0);
#pragma unroll
      for (int i = 0; i < DA; ++i) {
        s_g[v][i] = s_c[v][i] = A(0);
#pragma unroll
        for (int k = 0; k < DA; ++k) s_B[v][k][i] = A(0);
      }
    }
    // (b, op) of row pix, stepped without a 64-bit division per row. The loads go through the read-only path so
    // that the unrolled rows' loads can be issued ahead of the previous rows' dZ stores (latency, not bandwidth,
    // bounds this loop otherwise).
    int64_t b = (r0 + sub) / OPIX, op = (r0 + sub) - b * OPIX;
#pragma unroll 4
    for (int64_t pix = r0 + sub; pix < r1; pix += L) {
      A gy[VEC], a[DA][VEC], ds[DA][VEC];
      load_vec<T, VEC>(dy + b * p.sdyb + c * p.sdyc + op * p.sdyp, gy);
#pragma unroll
      for (int i = 0; i < DT; ++i) load_vec<T, VEC>(h + b * p.shb + i * p.shd + c * p.shc + op * p.shp, a[i]);
#pragma unroll
      for (int v = 0; v < VEC; ++v) {
#pragma unroll
        for (int i = DT - 1; i >= 0; --i) {
          A da = G[v][i] * gy[v];
#pragma unroll
          for (int k = i + 1; k < DT; ++k) da += Bc[v][k][i] * ds[k][v];
          ds[i][v] = da * act_grad(a[i][v], act);
        }
        s_b[v] += gy[v];
#pragma unroll
        for (int i = 0; i < DT; ++i) {
          s_g[v][i] += gy[v] * a[i][v];
          s_c[v][i] += ds[i][v];
#pragma unroll
          for (int k = i + 1; k < DT; ++k) s_B[v][k][i] += ds[k][v] * a[i][v];
        }
      }
      T* zrow = dz + (b * R * C + c) * OPIX + op;
      store_vec<T, VEC>(zrow, gy);
#pragma unroll
      for (int i = 0; i < DT; ++i) store_vec<T, VEC>(zrow + (i + 1) * bstride, ds[i]);
      for (op += L; op >= OPIX; op -= OPIX) ++b;
    }
#pragma unroll
    for (int v = 0; v < VEC; ++v) {
      part[v] = s_b[v];
#pragma unroll
      for (int i = 0; i < DT; ++i) {
        part[(1 + i) * C + v] = s_g[v][i];
        part[(1 + DT + i) * C + v] = s_c[v][i];
#pragma unroll
        for (int k = i + 1; k < DT; ++k) part[casc_slot(DT, k, i) * C + v] = s_B[v][k][i];
      }
    }
  } else {
    // Any D: partial sums accumulate in this thread's own slots of `part`, ds_k in its own scratch.
    A* ds = static_cast<A*>(p.scratch) + (slot * C + c) * D;
    for (int j = 0; j < p.np; ++j) part[j * C] = A(0);
    for (int64_t pix = r0 + sub; pix < r1; pix += L) {
      const int64_t b = pix / OPIX, op = pix - b * OPIX;
      const A gy = to_acc(dy[b * p.sdyb + c * p.sdyc + op * p.sdyp]);
      const T* hrow = h + b * p.shb + c * p.shc + op * p.shp;
      for (int i = D - 1; i >= 0; --i) {
        A da = to_acc(gate[i * p.sgd + c * p.sgn]) * gy;
        for (int k = i + 1; k < D; ++k) da += to_acc(casc[k * p.sci + i * p.scj + c * p.scn]) * ds[k];
        ds[i] = da * act_grad(to_acc(hrow[i * p.shd]), act);
      }
      T* zrow = dz + (b * R * C + c) * OPIX + op;
      zrow[0] = from_acc<T>(gy);
      part[0] += gy;
      for (int i = 0; i < D; ++i) {
        const A ai = to_acc(hrow[i * p.shd]);
        zrow[(i + 1) * bstride] = from_acc<T>(ds[i]);
        part[(1 + i) * C] += gy * ai;
        part[(1 + D + i) * C] += ds[i];
        for (int k = i + 1; k < D; ++k) part[casc_slot(D, k, i) * C] += ds[k] * ai;
      }
    }
  }
}

template <class T>
PF_GLOBAL void dz_reduce_kernel(const ReduceParams p) {
  using A = typename AccOf<T>::type;
  const int64_t C = p.C, D = p.D;
  const int64_t total = C * (1 + 2 * D + D * D);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const A* part = static_cast<const A*>(p.part);
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += stride) {
    const int64_t c = e % C, o = e / C;
    int64_t j;
    T* dst = reduction_output<T>(p.dbias, p.dgate, p.dvbias, p.dcasc, C, D, o, c, j);
    if (dst == nullptr) continue;
    A v = A(0);
    if (j >= 0)
      for (int s = 0; s < p.nslots; ++s) v += part[(static_cast<int64_t>(s) * p.np + j) * C + c];
    *dst = from_acc<T>(v);
  }
}

template <class T, int DT>
void launch_dz_d(const DzParams& p, dim3 grid, cudaStream_t s) {
  if constexpr (DT >= 0 && DT <= kDzMaxVecD) {
    if (p.vec == 2) {
      auto kernel = dz_kernel<T, DT, 2>;
      grid.y = static_cast<unsigned>((p.g.Cout + 2 * kDzThreads - 1) / (2 * kDzThreads));
      PF_LAUNCH(kernel, grid, dim3(kDzThreads), s, p);
      return;
    }
  }
  auto kernel = dz_kernel<T, DT, 1>;
  PF_LAUNCH(kernel, grid, dim3(kDzThreads), s, p);
}

}  // namespace

template <class T>
cudaError_t launch_dz(const DzParams& p, cudaStream_t s) {
  const int cpb = kDzThreads / p.lanes;
  const int64_t gy = (p.g.Cout + cpb - 1) / cpb;
  if (p.g.P == 0 || p.g.Cout == 0) return cudaSuccess;
  if (gy > 65535) return cudaErrorInvalidConfiguration;
  const dim3 grid(static_cast<unsigned>(p.nchunks), static_cast<unsigned>(gy));
  switch (p.g.D) {
    case 0:
      launch_dz_d<T, 0>(p, grid, s);
      break;
    case 1:
      launch_dz_d<T, 1>(p, grid, s);
      break;
    case 2:
      launch_dz_d<T, 2>(p, grid, s);
      break;
    case 3:
      launch_dz_d<T, 3>(p, grid, s);
      break;
    case 4:
      launch_dz_d<T, 4>(p, grid, s);
      break;
    case 5:
      launch_dz_d<T, 5>(p, grid, s);
      break;
    case 6:
      launch_dz_d<T, 6>(p, grid, s);
      break;
    case 7:
      launch_dz_d<T, 7>(p, grid, s);
      break;
    case 8:
      launch_dz_d<T, 8>(p, grid, s);
      break;
    default:
      launch_dz_d<T, -1>(p, grid, s);
      break;
  }
  return cudaSuccess;
}

template <class T>
cudaError_t launch_reduce(const ReduceParams& p, cudaStream_t s) {
  const int64_t total = p.C * (1 + 2 * p.D + p.D * p.D);
  if (total == 0) return cudaSuccess;
  const int64_t blocks = (total + 255) / 256 < 4096 ? (total + 255) / 256 : 4096;
  auto kernel = dz_reduce_kernel<T>;
  PF_LAUNCH(kernel, dim3(static_cast<unsigned>(blocks)), dim3(256), s, p);
  return cudaSuccess;
}

#define PF_INSTANTIATE(T)                                           \
  template cudaError_t launch_dz<T>(const DzParams&, cudaStream_t); \
  template cudaError_t launch_reduce<T>(const ReduceParams&, cudaStream_t);
PF_INSTANTIATE(float)
PF_INSTANTIATE(__half)
PF_INSTANTIATE(__nv_bfloat16)
PF_INSTANTIATE(double)

}  // namespace pf
