// A small SIMT emulator so the CUDA kernels in csrc/ can run on a CPU (tests/test_cuda_emulated.py).
//
// Compiled only with -DPF_EMULATE by a host C++20 compiler. Each CUDA thread of a block is an OS thread;
// blocks run one after another, so `__shared__` maps to function-local `static` storage. __syncthreads is
// a block barrier; warp-collective mma.sync is emulated from the PTX ISA fragment layouts (written from
// the ISA tables, independently of the kernels' fragment loads, so a layout bug in a kernel shows up).
// Only what the kernels use is emulated.
#pragma once

#include <barrier>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

namespace pf_emu {

inline thread_local uint3 t_threadIdx;
inline thread_local uint3 t_blockIdx;
inline dim3 g_blockDim;
inline dim3 g_gridDim;
inline std::barrier<>* g_block_barrier = nullptr;
inline std::vector<std::unique_ptr<std::barrier<>>>* g_warp_barriers = nullptr;

inline int flat_tid() {
  return static_cast<int>(t_threadIdx.x + g_blockDim.x * (t_threadIdx.y + g_blockDim.y * t_threadIdx.z));
}
inline void syncthreads() { g_block_barrier->arrive_and_wait(); }
inline void syncwarp() { (*g_warp_barriers)[static_cast<size_t>(flat_tid() / 32)]->arrive_and_wait(); }

template <class F>
void launch(dim3 grid, dim3 block, F&& body) {
  const int nt = static_cast<int>(block.x * block.y * block.z);
  g_blockDim = block;
  g_gridDim = grid;
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        std::barrier<> bar(nt);
        std::vector<std::unique_ptr<std::barrier<>>> warps;
        for (int w = 0; w * 32 < nt; ++w) warps.emplace_back(new std::barrier<>(nt - w * 32 < 32 ? nt - w * 32 : 32));
        g_block_barrier = &bar;
        g_warp_barriers = &warps;
        std::vector<std::thread> threads;
        threads.reserve(static_cast<size_t>(nt));
        for (int t = 0; t < nt; ++t) {
          threads.emplace_back([&, t] {
            t_threadIdx = uint3{static_cast<unsigned>(t) % block.x, (static_cast<unsigned>(t) / block.x) % block.y,
                                static_cast<unsigned>(t) / (block.x * block.y)};
            t_blockIdx = uint3{bx, by, bz};
            body();
          });
        }
        for (auto& th : threads) th.join();
      }
}

// ---- warp-collective MMA emulation ----
struct MmaExchange {
  uint32_t a[32][4];
  uint32_t b[32][2];
};
inline MmaExchange g_exchange[64];

inline float half_bits_to_float(uint16_t bits, bool bf16) {
  if (bf16) {
    __nv_bfloat16_raw r;
    r.x = bits;
    return __bfloat162float(__nv_bfloat16(r));
  }
  __half_raw r;
  r.x = bits;
  return __half2float(__half(r));
}

// mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32 (PTX ISA "Matrix Fragments for
// mma.m16n8k16"): A 16x16 row-major, each .b32 register holds 2 consecutive-k elements:
//   reg0 (row g, k 2t..2t+1), reg1 (row g+8, same k), reg2 (row g, k 2t+8..), reg3 (row g+8, k 2t+8..)
// B 16x8 (k x n): reg0 (k 2t..2t+1, n g), reg1 (k 2t+8.., n g).
// C/D: d0,d1 (row g, n 2t, 2t+1); d2,d3 (row g+8, n 2t, 2t+1); g = lane/4, t = lane%4.
inline void mma_m16n8k16(float d[4], const uint32_t a[4], const uint32_t b[2], bool bf16) {
  const int tid = flat_tid();
  const int w = tid / 32, lane = tid % 32;
  MmaExchange& ex = g_exchange[w];
  for (int i = 0; i < 4; ++i) ex.a[lane][i] = a[i];
  for (int i = 0; i < 2; ++i) ex.b[lane][i] = b[i];
  syncwarp();
  auto A = [&](int r, int k) {
    const int ln = (r % 8) * 4 + (k % 8) / 2;
    const int reg = (r >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0);
    const uint32_t word = ex.a[ln][reg];
    return half_bits_to_float(static_cast<uint16_t>((k % 2) ? (word >> 16) : (word & 0xffffu)), bf16);
  };
  auto Bm = [&](int k, int n) {
    const int ln = n * 4 + (k % 8) / 2;
    const int reg = k >= 8 ? 1 : 0;
    const uint32_t word = ex.b[ln][reg];
    return half_bits_to_float(static_cast<uint16_t>((k % 2) ? (word >> 16) : (word & 0xffffu)), bf16);
  };
  const int g = lane / 4, t = lane % 4;
  float out[4];
  for (int i = 0; i < 4; ++i) {
    const int row = g + (i >= 2 ? 8 : 0), col = 2 * t + (i % 2);
    float acc = 0.f;
    for (int k = 0; k < 16; ++k) acc += A(row, k) * Bm(k, col);
    out[i] = acc;
  }
  syncwarp();
  for (int i = 0; i < 4; ++i) d[i] += out[i];
}

// mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32: A 16x8: a0 (g, t), a1 (g+8, t), a2 (g, t+4),
// a3 (g+8, t+4); B 8x8: b0 (k t, n g), b1 (k t+4, n g); C/D as for m16n8k16.
inline void mma_m16n8k8_tf32(float d[4], const uint32_t a[4], const uint32_t b[2]) {
  const int tid = flat_tid();
  const int w = tid / 32, lane = tid % 32;
  MmaExchange& ex = g_exchange[w];
  for (int i = 0; i < 4; ++i) ex.a[lane][i] = a[i];
  for (int i = 0; i < 2; ++i) ex.b[lane][i] = b[i];
  syncwarp();
  auto f = [](uint32_t u) {
    float v;
    std::memcpy(&v, &u, 4);
    return v;
  };
  auto A = [&](int r, int k) { return f(ex.a[(r % 8) * 4 + k % 4][(r >= 8 ? 1 : 0) + (k >= 4 ? 2 : 0)]); };
  auto Bm = [&](int k, int n) { return f(ex.b[n * 4 + k % 4][k >= 4 ? 1 : 0]); };
  const int g = lane / 4, t = lane % 4;
  float out[4];
  for (int i = 0; i < 4; ++i) {
    const int row = g + (i >= 2 ? 8 : 0), col = 2 * t + (i % 2);
    float acc = 0.f;
    for (int k = 0; k < 8; ++k) acc += A(row, k) * Bm(k, col);
    out[i] = acc;
  }
  syncwarp();
  for (int i = 0; i < 4; ++i) d[i] += out[i];
}

// ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16 (PTX ISA "Warp-level matrix load instruction"):
// lanes 8i..8i+7 supply the addresses of rows 0..7 of matrix i (8 contiguous b16 each). Without .trans
// lane l receives, in register i, elements (row l/4, columns 2(l%4) and 2(l%4)+1) of matrix i (lower
// column in the low half); with .trans it receives the same positions of the transposed matrix, i.e.
// (row 2(l%4), column l/4) and (row 2(l%4)+1, column l/4).
inline const void* g_ldm_ptr[64][32];
inline void ldmatrix_x4(uint32_t r[4], const void* p, bool trans) {
  const int tid = flat_tid();
  const int w = tid / 32, lane = tid % 32;
  g_ldm_ptr[w][lane] = p;
  syncwarp();
  const int g = lane / 4, t = lane % 4;
  for (int i = 0; i < 4; ++i) {
    uint16_t lo, hi;
    if (!trans) {
      const uint16_t* row = static_cast<const uint16_t*>(g_ldm_ptr[w][8 * i + g]);
      lo = row[2 * t];
      hi = row[2 * t + 1];
    } else {
      lo = static_cast<const uint16_t*>(g_ldm_ptr[w][8 * i + 2 * t])[g];
      hi = static_cast<const uint16_t*>(g_ldm_ptr[w][8 * i + 2 * t + 1])[g];
    }
    r[i] = static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16);
  }
  syncwarp();
}

// cvt.rna.tf32.f32: round to nearest (ties away from zero) keeping 10 mantissa bits.
inline uint32_t cvt_tf32(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7f800000u) != 0x7f800000u) u += 0x1000u;
  return u & 0xffffe000u;
}

}  // namespace pf_emu

#define threadIdx pf_emu::t_threadIdx
#define blockIdx pf_emu::t_blockIdx
#define blockDim pf_emu::g_blockDim
#define gridDim pf_emu::g_gridDim
#define __syncthreads() pf_emu::syncthreads()
