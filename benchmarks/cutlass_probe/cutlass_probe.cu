/*
 * Hopper mainloop options for the cuda backend, weighed by measurement (issue: CUDA C++ kernels, item 4).
 *
 * The dendritic Linear forward's mainloop is one GEMM of width (1 + D) * N over the stacked weights:
 *     Z[M, (1+D)N] = X[M, K] * Wcat[(1+D)N, K]^T        (bf16 in, fp32 accumulate)
 * This program times, side by side on one GPU, for D = 0, 1, 3 at M = 8192, K = N = 4096 (and a small layer):
 *   cublas       cublasGemmEx of that width (the limit the issue measures against);
 *   cutlass_*    CUTLASS 3 sm90 kernels of the same GEMM (TMA + wgmma, warp-specialized; cooperative and
 *                ping-pong schedules, two tile shapes), bf16 output;
 *   pai_fast     pf_linear_forward (csrc/, the hand-written mma.sync mainloop) with D dendrites, inference
 *                (no h): the GEMM plus the fused epilogue, writing only y [M, N].
 * Each CUTLASS result is checked against cuBLAS's before it is timed (time only what is correct). Times are
 * medians of 15 samples of 10 back-to-back launches (cudaEvent), in ms.
 *
 * Built only on the GPU machine (benchmarks/gpu_check.sh, stage `cutlass`), never in CI: CUTLASS 3 kernels take
 * minutes of nvcc per instantiation, and CI has 2 cores. The headers come from the `nvidia-cutlass` wheel.
 */
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/version.h"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/dispatch_policy.hpp"
#include "cutlass/gemm/kernel/gemm_universal.hpp"
#include "cutlass/util/packed_stride.hpp"
#include "pai_fast/dendritic.h"

#define CHECK_CUDA(call)                                                                     \
  do {                                                                                       \
    cudaError_t err_ = (call);                                                               \
    if (err_ != cudaSuccess) {                                                               \
      std::fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, cudaGetErrorString(err_));     \
      std::exit(1);                                                                          \
    }                                                                                        \
  } while (0)

using namespace cute;

using ElementA = cutlass::bfloat16_t;  // X [M, K], row-major
using ElementB = cutlass::bfloat16_t;  // Wcat [(1+D)N, K], row-major = column-major [K, (1+D)N]
using ElementC = cutlass::bfloat16_t;  // Z [M, (1+D)N], row-major
using ElementAcc = float;
using LayoutA = cutlass::layout::RowMajor;
using LayoutB = cutlass::layout::ColumnMajor;
using LayoutC = cutlass::layout::RowMajor;
constexpr int kAlign = 8;  // 16 bytes of bf16

template <class TileShape, class ClusterShape, class KernelSchedule, class EpilogueSchedule>
struct Sm90Gemm {
  using Epilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, ElementAcc, ElementAcc, ElementC, LayoutC, kAlign, ElementC,
      LayoutC, kAlign, EpilogueSchedule>::CollectiveOp;
  using Mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, ElementA, LayoutA, kAlign, ElementB, LayoutB, kAlign,
      ElementAcc, TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(sizeof(typename Epilogue::SharedStorage))>,
      KernelSchedule>::CollectiveOp;
  using Kernel = cutlass::gemm::kernel::GemmUniversal<Shape<int, int, int, int>, Mainloop, Epilogue>;
  using Device = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;

  // Returns a launcher (nullptr if CUTLASS cannot run this problem); workspace is owned by the caller.
  static std::function<void(cudaStream_t)> make(int m, int n, int k, const void* a, const void* b, void* d,
                                                std::vector<void*>& owned) {
    auto sa = cutlass::make_cute_packed_stride(typename Kernel::StrideA{}, make_shape(m, k, 1));
    auto sb = cutlass::make_cute_packed_stride(typename Kernel::StrideB{}, make_shape(n, k, 1));
    auto sc = cutlass::make_cute_packed_stride(typename Kernel::StrideC{}, make_shape(m, n, 1));
    auto sd = cutlass::make_cute_packed_stride(typename Kernel::StrideD{}, make_shape(m, n, 1));
    typename Device::Arguments args{
        cutlass::gemm::GemmUniversalMode::kGemm,
        {m, n, k, 1},
        {static_cast<const ElementA*>(a), sa, static_cast<const ElementB*>(b), sb},
        {{1.0f, 0.0f}, static_cast<const ElementC*>(d), sc, static_cast<ElementC*>(d), sd}};
    auto* gemm = new Device();
    if (gemm->can_implement(args) != cutlass::Status::kSuccess) {
      delete gemm;
      return nullptr;
    }
    void* ws = nullptr;
    size_t bytes = Device::get_workspace_size(args);
    if (bytes) {
      CHECK_CUDA(cudaMalloc(&ws, bytes));
      owned.push_back(ws);
    }
    if (gemm->initialize(args, ws) != cutlass::Status::kSuccess) {
      delete gemm;
      return nullptr;
    }
    return [gemm](cudaStream_t s) {
      if (gemm->run(s) != cutlass::Status::kSuccess) std::fprintf(stderr, "cutlass run failed\n");
    };
  }
};

using Coop128x256 = Sm90Gemm<Shape<_128, _256, _64>, Shape<_2, _1, _1>, cutlass::gemm::KernelTmaWarpSpecializedCooperative,
                             cutlass::epilogue::TmaWarpSpecializedCooperative>;
using Coop256x128 = Sm90Gemm<Shape<_256, _128, _64>, Shape<_1, _2, _1>, cutlass::gemm::KernelTmaWarpSpecializedCooperative,
                             cutlass::epilogue::TmaWarpSpecializedCooperative>;
using Pingpong64x256 = Sm90Gemm<Shape<_64, _256, _64>, Shape<_1, _1, _1>, cutlass::gemm::KernelTmaWarpSpecializedPingpong,
                                cutlass::epilogue::TmaWarpSpecialized>;

static float median_ms(const std::function<void(cudaStream_t)>& fn, cudaStream_t s) {
  for (int i = 0; i < 5; ++i) fn(s);
  cudaEvent_t e0, e1;
  CHECK_CUDA(cudaEventCreate(&e0));
  CHECK_CUDA(cudaEventCreate(&e1));
  std::vector<float> t;
  for (int rep = 0; rep < 15; ++rep) {
    CHECK_CUDA(cudaEventRecord(e0, s));
    for (int i = 0; i < 10; ++i) fn(s);
    CHECK_CUDA(cudaEventRecord(e1, s));
    CHECK_CUDA(cudaEventSynchronize(e1));
    float ms = 0;
    CHECK_CUDA(cudaEventElapsedTime(&ms, e0, e1));
    t.push_back(ms / 10);
  }
  CHECK_CUDA(cudaGetLastError());
  std::sort(t.begin(), t.end());
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  return t[t.size() / 2];
}

__global__ void fill_kernel(__nv_bfloat16* p, size_t n, unsigned seed, float scale) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    unsigned h = (unsigned)(i * 2654435761u) ^ seed;
    h ^= h >> 13;
    h *= 0x5bd1e995u;
    h ^= h >> 15;
    p[i] = __float2bfloat16(((h & 0xffff) / 65535.0f - 0.5f) * scale);
  }
}

static __nv_bfloat16* random_bf16(size_t n, unsigned seed, float scale) {
  __nv_bfloat16* p = nullptr;
  CHECK_CUDA(cudaMalloc(&p, n * sizeof(__nv_bfloat16)));
  fill_kernel<<<1024, 256>>>(p, n, seed, scale);
  CHECK_CUDA(cudaGetLastError());
  return p;
}

static double max_rel_diff(const __nv_bfloat16* a, const __nv_bfloat16* b, size_t n) {
  std::vector<__nv_bfloat16> ha(n), hb(n);
  CHECK_CUDA(cudaMemcpy(ha.data(), a, n * 2, cudaMemcpyDeviceToHost));
  CHECK_CUDA(cudaMemcpy(hb.data(), b, n * 2, cudaMemcpyDeviceToHost));
  double diff = 0, ref = 0;
  for (size_t i = 0; i < n; ++i) {
    double x = __bfloat162float(ha[i]), y = __bfloat162float(hb[i]);
    diff = std::max(diff, std::fabs(x - y));
    ref = std::max(ref, std::fabs(y));
  }
  return ref > 0 ? diff / ref : diff;
}

static pf_tensor tensor(void* data, std::vector<int64_t> sizes) {
  pf_tensor t{};
  t.data = data;
  t.ndim = (int32_t)sizes.size();
  int64_t stride = 1;
  for (int i = t.ndim - 1; i >= 0; --i) {
    t.sizes[i] = sizes[i];
    t.strides[i] = stride;
    stride *= sizes[i];
  }
  return t;
}

int main(int argc, char** argv) {
  cudaDeviceProp prop;
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  std::printf("# %s, CUTLASS %d.%d.%d, %s\n", prop.name, CUTLASS_MAJOR, CUTLASS_MINOR, CUTLASS_PATCH, pf_build_info());
  struct Shape3 {
    int m, k, n;
  };
  std::vector<Shape3> shapes = {{8192, 4096, 4096}, {256, 1024, 1024}};
  if (argc > 1 && std::string(argv[1]) == "--large-only") shapes.resize(1);
  cudaStream_t s;
  CHECK_CUDA(cudaStreamCreate(&s));
  cublasHandle_t blas;
  cublasCreate(&blas);
  cublasSetStream(blas, s);
  std::printf("%-18s %2s %-16s %10s %8s %10s %12s\n", "shape", "D", "provider", "ms", "TFLOP/s", "x cublas", "max rel err");
  for (auto sh : shapes) {
    for (int d : {0, 1, 3}) {
      const int m = sh.m, k = sh.k, n = sh.n, width = (1 + d) * n;
      std::vector<void*> owned;
      auto* x = random_bf16((size_t)m * k, 1u, 2.0f);
      auto* wcat = random_bf16((size_t)width * k, 2u + d, 2.0f / std::sqrt((float)k));
      __nv_bfloat16 *z_ref = nullptr, *z = nullptr;
      CHECK_CUDA(cudaMalloc(&z_ref, (size_t)m * width * 2));
      CHECK_CUDA(cudaMalloc(&z, (size_t)m * width * 2));
      const float one = 1.0f, zero = 0.0f;
      auto cublas = [&](cudaStream_t) {
        cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, width, m, k, &one, wcat, CUDA_R_16BF, k, x, CUDA_R_16BF, k, &zero,
                     z_ref, CUDA_R_16BF, width, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
      };
      const double flop = 2.0 * m * (double)width * k;
      char name[64];
      std::snprintf(name, sizeof name, "%dx%d->%d", m, k, n);
      float t_blas = median_ms(cublas, s);
      std::printf("%-18s %2d %-16s %10.4f %8.1f %10.2f %12s\n", name, d, "cublas", t_blas, flop / t_blas / 1e9, 1.0,
                  "-");
      struct Variant {
        const char* label;
        std::function<void(cudaStream_t)> fn;
      };
      std::vector<Variant> variants = {
          {"cutlass_c128x256", Coop128x256::make(m, width, k, x, wcat, z, owned)},
          {"cutlass_c256x128", Coop256x128::make(m, width, k, x, wcat, z, owned)},
          {"cutlass_pp64x256", Pingpong64x256::make(m, width, k, x, wcat, z, owned)},
      };
      for (auto& v : variants) {
        if (!v.fn) {
          std::printf("%-18s %2d %-16s %10s (cannot implement)\n", name, d, v.label, "-");
          continue;
        }
        CHECK_CUDA(cudaMemsetAsync(z, 0, (size_t)m * width * 2, s));
        v.fn(s);
        CHECK_CUDA(cudaStreamSynchronize(s));
        double err = max_rel_diff(z, z_ref, (size_t)m * width);
        if (err > 2e-2) {
          std::printf("%-18s %2d %-16s WRONG (max rel err %.3g vs cuBLAS), not timed\n", name, d, v.label, err);
          continue;
        }
        float t = median_ms(v.fn, s);
        std::printf("%-18s %2d %-16s %10.4f %8.1f %10.2f %12.2e\n", name, d, v.label, t, flop / t / 1e9, t / t_blas,
                    err);
      }
      // pai_fast's fused forward: the same GEMM through the hand-written mainloop, plus the epilogue, y only.
      __nv_bfloat16 *y = nullptr, *small = nullptr;
      CHECK_CUDA(cudaMalloc(&y, (size_t)m * n * 2));
      small = random_bf16((size_t)(n + d * n + d * n + d * d * n) + 8, 7u, 0.5f);
      pf_tensor tx = tensor(x, {m, k}), tw = tensor(wcat, {n, k}), tv = tensor(wcat + (size_t)n * k, {d, n, k});
      pf_tensor tb = tensor(small, {n}), tc = tensor(small + n, {d, n}), tg = tensor(small + n + d * n, {d, n});
      pf_tensor tcas = tensor(small + n + 2 * d * n, {d, d, n}), ty = tensor(y, {m, n});
      auto fused = [&](cudaStream_t st) {
        pf_status rc = pf_linear_forward(PF_BFLOAT16, PF_ACT_SIGMOID, 0, &tx, &tw, &tb, &tv, &tc, &tg,
                                         &tcas, &ty, nullptr, st);
        if (rc != PF_SUCCESS) std::fprintf(stderr, "pf_linear_forward: %s\n", pf_last_error());
      };
      float t_fused = median_ms(fused, s);
      std::printf("%-18s %2d %-16s %10.4f %8.1f %10.2f %12s\n", name, d, "pai_fast_fwd", t_fused,
                  flop / t_fused / 1e9, t_fused / t_blas, "(epilogue)");
      for (void* p : owned) cudaFree(p);
      cudaFree(x);
      cudaFree(wcat);
      cudaFree(z_ref);
      cudaFree(z);
      cudaFree(y);
      cudaFree(small);
    }
  }
  cublasDestroy(blas);
  cudaStreamDestroy(s);
  return 0;
}
