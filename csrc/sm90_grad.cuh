// The Linear backward's two GEMMs on Hopper: CUTLASS 3 sm90 kernels (TMA + wgmma, warp-specialized cooperative,
// persistent) with CUTLASS's own epilogue.
//
//   dX [M, K]      = dZcat [M, RN] . Wcat [RN, K]        A K-major, B N-major
//   dWcat [RN, K]  = dZcat^T [RN, M] . X [M, K]          A M-major, B N-major
//
// dZcat is the dZ kernel's [M, R, N] (branch-major, so column r*N + n is branch r of neuron n), Wcat the stacked
// weights [W; V_0; ...] and dWcat the stacked gradients [dW; dV_0; ...]: the host takes this path only when weight and
// dendrite_weight (and dweight and ddendrite_weight) sit back to back in memory, as DendriticLinear keeps them.
// Built with sm90_linear.cuh (CMake PAI_FAST_CUTLASS); sm90_grad_f16.cu / sm90_grad_bf16.cu instantiate it.
#pragma once

#include <cstdint>

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/dispatch_policy.hpp"
#include "cutlass/gemm/kernel/gemm_universal.hpp"
#include "sm90_linear.cuh"

namespace pf {
namespace sm90 {

template <class T, class LayoutA, class LayoutB>
struct Sm90Gemm {
  using E = typename CutlassType<T>::type;
  using TileShape = Shape<_256, _128, _64>;
  using ClusterShape = Shape<_1, _2, _1>;
  using Epilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, float, float, E, cutlass::layout::RowMajor, 8, E,
      cutlass::layout::RowMajor, 8, cutlass::epilogue::TmaWarpSpecializedCooperative>::CollectiveOp;
  using Mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, E, LayoutA, 8, E, LayoutB, 8, float, TileShape,
      ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(sizeof(typename Epilogue::SharedStorage))>,
      cutlass::gemm::KernelTmaWarpSpecializedCooperative>::CollectiveOp;
  using Kernel = cutlass::gemm::kernel::GemmUniversal<Shape<int, int, int, int>, Mainloop, Epilogue>;
  using Device = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;

  // D [m, n] (row stride ldd) = A . B^T in CUTLASS's (M, K) x (N, K) convention, strides given per operand.
  static cudaError_t run(int m, int n, int k, const void* a, typename Kernel::StrideA sa, const void* b,
                         typename Kernel::StrideB sb, void* d, int64_t ldd, cudaStream_t s) {
    int dev = 0;
    cudaError_t e = cudaGetDevice(&dev);
    if (e != cudaSuccess) return e;
    typename Kernel::StrideD sd{ldd, Int<1>{}, int64_t(0)};
    typename Kernel::Arguments args{cutlass::gemm::GemmUniversalMode::kGemm,
                                    {m, n, k, 1},
                                    {static_cast<const E*>(a), sa, static_cast<const E*>(b), sb},
                                    {{1.0f, 0.0f}, static_cast<const E*>(d), sd, static_cast<E*>(d), sd}};
    args.hw_info.device_id = dev;
    args.hw_info.sm_count = sm_count(dev);
    if (Kernel::get_workspace_size(args) != 0) return cudaErrorInvalidConfiguration;
    if (!Kernel::can_implement(args)) return cudaErrorInvalidValue;
    static bool attr_set[64] = {};
    if (dev < 64 && !attr_set[dev]) {
      e = cudaFuncSetAttribute(cutlass::device_kernel<Kernel>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               static_cast<int>(Kernel::SharedStorageSize));
      if (e != cudaSuccess) return e;
      attr_set[dev] = true;
    }
    auto params = Kernel::to_underlying_arguments(args, nullptr);
    if (Device::run(params, s) != cutlass::Status::kSuccess) {
      e = cudaGetLastError();
      return e != cudaSuccess ? e : cudaErrorLaunchFailure;
    }
    return cudaGetLastError();
  }
};

}  // namespace sm90

template <class T>
cudaError_t sm90_dgrad(const DgradParams& p, cudaStream_t s) {
  using namespace sm90;
  using G = Sm90Gemm<T, cutlass::layout::RowMajor, cutlass::layout::RowMajor>;
  const int64_t M = p.g.P, K = p.g.Cin, RN = p.g.R * p.g.Cout;
  if (M == 0 || K == 0) return cudaSuccess;
  // A = dZcat (m = row, k = r*N + n), B (n = input feature, k = r*N + n) = Wcat[k, n]
  return G::run(static_cast<int>(M), static_cast<int>(K), static_cast<int>(RN), p.dz,
                typename G::Kernel::StrideA{RN, Int<1>{}, int64_t(0)}, p.w,
                typename G::Kernel::StrideB{Int<1>{}, p.swn, int64_t(0)}, p.dx, p.sdx[0], s);
}

template <class T>
cudaError_t sm90_wgrad(const WgradParams& p, cudaStream_t s) {
  using namespace sm90;
  using G = Sm90Gemm<T, cutlass::layout::ColumnMajor, cutlass::layout::RowMajor>;
  const int64_t M = p.g.P, K = p.g.Cin, RN = p.g.R * p.g.Cout;
  if (RN == 0 || K == 0) return cudaSuccess;
  // A (m = r*N + n, k = row) = dZcat[k, m], B (n = input feature, k = row) = X[k, n]
  return G::run(static_cast<int>(RN), static_cast<int>(K), static_cast<int>(M), p.dz,
                typename G::Kernel::StrideA{Int<1>{}, RN, int64_t(0)}, p.x,
                typename G::Kernel::StrideB{Int<1>{}, p.sx[0], int64_t(0)}, p.dw, K, s);
}

}  // namespace pf
