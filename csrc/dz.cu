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

PF_DEV int64_t casc_slot(int64_t D, int64_t k, int64_t i) { return 1 + 2 * D + k * (k - 1) / 2 + i; }

template <class T, int DT>
PF_GLOBAL void PF_LAUNCH_BOUNDS(kDzThreads) dz_kernel(const DzParams p) {
  using A = typename AccOf<T>::type;
  const Geom& g = p.g;
  const int64_t C = g.Cout, R = g.R, OPIX = g.OPIX;
  const int D = DT >= 0 ? DT : static_cast<int>(g.D);
  const int L = p.lanes;
  const int cpb = kDzThreads / L;
  const int tid = static_cast<int>(threadIdx.x);
  const int64_t c = static_cast<int64_t>(blockIdx.y) * cpb + tid / L;
  const int sub = tid % L;
  if (c >= C) return;  // no barriers in this kernel
  const int64_t slot = static_cast<int64_t>(blockIdx.x) * L + sub;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * p.rows_per_chunk;
  const int64_t r1 = r0 + p.rows_per_chunk < g.P ? r0 + p.rows_per_chunk : g.P;
  const T* dy = static_cast<const T*>(p.dy);
  const T* h = static_cast<const T*>(p.h);
  const T* gate = static_cast<const T*>(p.gate);
  const T* casc = static_cast<const T*>(p.casc);
  T* dz = static_cast<T*>(p.dz);
  A* part = static_cast<A*>(p.part) + slot * p.np * C + c;  // part[j * C]
  const int64_t bstride = C * OPIX;                         // between branches of dZcat
  const int act = p.act;

  if constexpr (DT >= 0) {
    constexpr int DA = DT > 0 ? DT : 1;
    A G[DA], Bc[DA][DA];
#pragma unroll
    for (int i = 0; i < DT; ++i) {
      G[i] = to_acc(gate[i * p.sgd + c * p.sgn]);
#pragma unroll
      for (int k = i + 1; k < DT; ++k) Bc[k][i] = to_acc(casc[k * p.sci + i * p.scj + c * p.scn]);
    }
    A s_b = A(0), s_g[DA], s_c[DA], s_B[DA][DA];
#pragma unroll
    for (int i = 0; i < DA; ++i) {
      s_g[i] = s_c[i] = A(0);
#pragma unroll
      for (int k = 0; k < DA; ++k) s_B[k][i] = A(0);
    }
    for (int64_t pix = r0 + sub; pix < r1; pix += L) {
      const int64_t b = pix / OPIX, op = pix - b * OPIX;
      const A gy = to_acc(dy[b * p.sdyb + c * p.sdyc + op * p.sdyp]);
      A a[DA], ds[DA];
#pragma unroll
      for (int i = 0; i < DT; ++i) a[i] = to_acc(h[b * p.shb + i * p.shd + c * p.shc + op * p.shp]);
#pragma unroll
      for (int i = DT - 1; i >= 0; --i) {
        A da = G[i] * gy;
#pragma unroll
        for (int k = i + 1; k < DT; ++k) da += Bc[k][i] * ds[k];
        ds[i] = da * act_grad(a[i], act);
      }
      T* zrow = dz + (b * R * C + c) * OPIX + op;
      zrow[0] = from_acc<T>(gy);
      s_b += gy;
#pragma unroll
      for (int i = 0; i < DT; ++i) {
        zrow[(i + 1) * bstride] = from_acc<T>(ds[i]);
        s_g[i] += gy * a[i];
        s_c[i] += ds[i];
#pragma unroll
        for (int k = i + 1; k < DT; ++k) s_B[k][i] += ds[k] * a[i];
      }
    }
    part[0] = s_b;
#pragma unroll
    for (int i = 0; i < DT; ++i) {
      part[(1 + i) * C] = s_g[i];
      part[(1 + DT + i) * C] = s_c[i];
#pragma unroll
      for (int k = i + 1; k < DT; ++k) part[casc_slot(DT, k, i) * C] = s_B[k][i];
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
    int64_t j = -1;
    T* dst = nullptr;
    if (o == 0) {
      dst = p.dbias ? static_cast<T*>(p.dbias) + c : nullptr;
      j = 0;
    } else if (o <= D) {
      dst = static_cast<T*>(p.dgate) + (o - 1) * C + c;
      j = o;
    } else if (o <= 2 * D) {
      dst = p.dvbias ? static_cast<T*>(p.dvbias) + (o - 1 - D) * C + c : nullptr;
      j = o;
    } else {
      const int64_t ki = o - 1 - 2 * D, k = ki / D, i = ki % D;
      dst = static_cast<T*>(p.dcasc) + ki * C + c;
      j = i < k ? casc_slot(D, k, i) : -1;  // entries i >= k are not parameters of the model: exactly 0
    }
    if (dst == nullptr) continue;
    A v = A(0);
    if (j >= 0)
      for (int s = 0; s < p.nslots; ++s) v += part[(static_cast<int64_t>(s) * p.np + j) * C + c];
    *dst = from_acc<T>(v);
  }
}

template <class T, int DT>
void launch_dz_d(const DzParams& p, dim3 grid, cudaStream_t s) {
  auto kernel = dz_kernel<T, DT>;
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
