// Device helpers shared by the kernel files: type conversion, activations, launch macro, and the few
// intrinsics the kernels use, each with a CPU emulation (PF_EMULATE) so the same kernel source can be
// run on a CPU by tests/test_cuda_emulated.py.
#pragma once

#include <cstdint>
#include <type_traits>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kernels.h"

#ifdef PF_EMULATE
#include <cmath>

#include "emu/emu.h"
#define PF_DEV inline
#define PF_GLOBAL inline
#define PF_SHARED static
#define PF_LAUNCH_BOUNDS(n)
#define PF_LAUNCH_BOUNDS2(n, m)
#define PF_LAUNCH(kernel, grid, block, stream, ...) \
  ((void)(stream), pf_emu::launch((grid), (block), [&] { kernel(__VA_ARGS__); }))
#else
#define PF_DEV __device__ __forceinline__
#define PF_GLOBAL __global__
#define PF_SHARED __shared__
#define PF_LAUNCH_BOUNDS(n) __launch_bounds__(n)
#define PF_LAUNCH_BOUNDS2(n, m) __launch_bounds__(n, m)
#define PF_LAUNCH(kernel, grid, block, stream, ...) kernel<<<(grid), (block), 0, (stream)>>>(__VA_ARGS__)
#endif

namespace pf {

// A load through the read-only data path (the emulator has none).
template <class T>
PF_DEV T ldg(const T* q) {
#ifdef PF_EMULATE
  return *q;
#else
  return __ldg(q);
#endif
}

// Accumulator type: fp32, or fp64 for fp64 data.
template <class T>
struct AccOf {
  using type = float;
};
template <>
struct AccOf<double> {
  using type = double;
};

PF_DEV float to_acc(float v) { return v; }
PF_DEV double to_acc(double v) { return v; }
PF_DEV float to_acc(__half v) { return __half2float(v); }
PF_DEV float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

template <class T>
PF_DEV T from_acc(float v);
template <>
PF_DEV float from_acc<float>(float v) {
  return v;
}
template <>
PF_DEV __half from_acc<__half>(float v) {
  return __float2half_rn(v);
}
template <>
PF_DEV __nv_bfloat16 from_acc<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}
template <class T>
PF_DEV T from_acc(double v);
template <>
PF_DEV double from_acc<double>(double v) {
  return v;
}

// Two neighbouring values of T as one vector type (CUDA's float2, double2, __half2, __nv_bfloat162), for 2-element
// loads and stores.
template <class T>
using Pair = std::conditional_t<
    std::is_same_v<T, float>, float2,
    std::conditional_t<std::is_same_v<T, double>, double2,
                       std::conditional_t<std::is_same_v<T, __half>, __half2, __nv_bfloat162>>>;

// One 4- to 16-byte store of two neighbouring values (q aligned to the pair).
template <class T, class A>
PF_DEV void store_pair(T* q, A v0, A v1) {
  Pair<T> w;
  w.x = from_acc<T>(v0);
  w.y = from_acc<T>(v1);
  *reinterpret_cast<Pair<T>*>(q) = w;
}

#ifdef PF_EMULATE
PF_DEV float pf_exp(float v) { return std::exp(v); }
PF_DEV double pf_exp(double v) { return std::exp(v); }
PF_DEV float pf_tanh(float v) { return std::tanh(v); }
PF_DEV double pf_tanh(double v) { return std::tanh(v); }
#else
PF_DEV float pf_exp(float v) { return expf(v); }
PF_DEV double pf_exp(double v) { return exp(v); }
PF_DEV float pf_tanh(float v) { return tanhf(v); }
PF_DEV double pf_tanh(double v) { return tanh(v); }
#endif

// act in {0 identity, 1 sigmoid, 2 tanh, 3 relu} (pf_activation). `act` is uniform across a launch.
template <class A>
PF_DEV A act_fwd(A s, int act) {
  switch (act) {
    case 1:
      return A(1) / (A(1) + pf_exp(-s));
    case 2:
      return pf_tanh(s);
    case 3:
      return s < A(0) ? A(0) : s;  // keeps NaN, like torch.relu
    default:
      return s;
  }
}

// act_fwd for an epilogue whose output is 16-bit (fp16 / bf16, 11 / 8 significant bits): the hardware's
// approximate exp, reciprocal and tanh (errors of a few fp32 ulp for sigmoid, 2^-11 relative for tanh) instead of
// the IEEE-exact expf, division and tanhf, which cost ~20-30 instructions per value more in an epilogue that runs
// outside the mainloop (Hopper cooperative schedule). The limits hold: sigmoid(-inf) = 0 (1 / inf), sigmoid(inf) = 1,
// NaN stays NaN.
PF_DEV float act_fwd_16(float s, int act) {
#ifdef PF_EMULATE
  return act_fwd(s, act);
#else
  switch (act) {
    case 1:
      return __fdividef(1.0f, 1.0f + __expf(-s));
    case 2: {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 750
      float t;
      asm("tanh.approx.f32 %0, %1;" : "=f"(t) : "f"(s));
      return t;
#else
      return tanhf(s);
#endif
    }
    default:
      return act_fwd(s, act);
  }
#endif
}

// act_fwd as an epilogue writing T needs it: the approximate forms above for 16-bit T, exact ones otherwise.
template <class T, class A>
PF_DEV A act_fwd_out(A s, int act) {
  if constexpr (sizeof(T) == 2)
    return act_fwd_16(s, act);
  else
    return act_fwd(s, act);
}

// act'(s) written in terms of the activated output a = act(s), which is what the forward saves.
template <class A>
PF_DEV A act_grad(A a, int act) {
  switch (act) {
    case 1:
      return a * (A(1) - a);
    case 2:
      return A(1) - a * a;
    case 3:
      return a > A(0) ? A(1) : A(0);
    default:
      return A(1);
  }
}

// Output o (0 <= o < 1 + 2D + D*D) of the per-channel reductions of the backward (dz.cu's reduction, onepass.cu):
// its address for channel c of C (null where that gradient is not asked for: no bias), and in `slot` the partial
// sum it is (-1: a cascade entry [k, i] with i >= k, not a parameter of the model, written as exactly 0). Outputs:
// dbias ; dG[i] ; ddendrite_bias[i] ; dcascade[k, i] row-major. Slots: 0 dbias ; 1+i dG[i] ; 1+D+i dc_i ;
// 1+2D+k(k-1)/2+i dB[k,i].
PF_DEV int64_t casc_slot(int64_t D, int64_t k, int64_t i) { return 1 + 2 * D + k * (k - 1) / 2 + i; }

template <class T>
PF_DEV T* reduction_output(void* dbias, void* dgate, void* dvbias, void* dcasc, int64_t C, int64_t D, int64_t o,
                           int64_t c, int64_t& slot) {
  if (o == 0) {
    slot = 0;
    return dbias ? static_cast<T*>(dbias) + c : nullptr;
  }
  if (o <= D) {
    slot = o;
    return static_cast<T*>(dgate) + (o - 1) * C + c;
  }
  if (o <= 2 * D) {
    slot = o;
    return dvbias ? static_cast<T*>(dvbias) + (o - 1 - D) * C + c : nullptr;
  }
  const int64_t ki = o - 1 - 2 * D, k = ki / D, i = ki % D;
  slot = i < k ? casc_slot(D, k, i) : -1;
  return static_cast<T*>(dcasc) + ki * C + c;
}

template <class T>
PF_DEV T load_g(const void* base, int64_t off) {
  return static_cast<const T*>(base)[off];
}

}  // namespace pf
