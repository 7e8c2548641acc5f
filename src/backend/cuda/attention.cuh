// What attention.cu shares with attention_wgmma.cu, where the Hopper kernels live so
// that the two files build side by side (in one they took 43 s, and 1400 lines).
#pragma once

#include <cstdint>

#include "backend/cuda/device.cuh"
#include "backend/cuda/mma.cuh"

namespace kiln::cuda {

struct AttentionParams {
  const void* q;
  const void* k;
  const void* v;
  void* out;
  int64_t q_stride, kv_stride, o_stride;  // elements from one token to the next
  int sq, sk, d;
  float scale_log2;  // softmax scale × log2(e): the kernel works in powers of two
  bool causal;
  bool vec;  // 16-byte loads: d a multiple of 8 and the bases aligned
};

// 2^x on the special-function unit (what exp2f becomes, without its range fix-ups).
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

template <class T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi);
template <>
__device__ __forceinline__ uint32_t pack2<half>(float lo, float hi) {
  const __half2 h = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&h);
}
template <>
__device__ __forceinline__ uint32_t pack2<bfloat16>(float lo, float hi) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&h);
}

// rows × DP tile into shared memory (pitch DP + 8), zeros outside [valid rows, d).
//
// UNROLL (16-byte rows): the copies as straight-line code. Each thread takes one chunk
// of rows THREADS / (DP / 8) apart (the threads past the last whole row of chunks,
// 2 to 8 of 128 at head dims 48, 80 and 160, copy nothing), so each copy is a 64-bit add
// and a row test from the thread's first; the loop spends about 25 instructions a copy
// on the division and the guards (SASS, short-KV kernel).
template <class T, int DP, int ROWS, int THREADS, bool UNROLL = false>
__device__ __forceinline__ void load_tile(T* s, const T* g, int valid_rows, int64_t stride, int d,
                                          bool vec) {
  constexpr int kPitch = DP + 8, kChunks = DP / 8;
  if (UNROLL && vec) {
    static_assert(!UNROLL || THREADS >= kChunks, "a row's chunks in one pass of the threads");
    constexpr int kRowStep = THREADS / kChunks, kCopies = (ROWS + kRowStep - 1) / kRowStep;
    if (THREADS % kChunks != 0 && int(threadIdx.x) >= kRowStep * kChunks) return;
    const int r0 = int(threadIdx.x) / kChunks, c = int(threadIdx.x) % kChunks;
    const bool chunk_ok = c * 8 < d;
    // In bytes, so that each copy's address is one 64-bit add from the last.
    const char* src = reinterpret_cast<const char*>(g + r0 * stride + c * 8);
    const int64_t step = kRowStep * stride * int64_t(sizeof(T));
    T* dst = s + r0 * kPitch + c * 8;
#pragma unroll
    for (int k = 0; k < kCopies; ++k) {
      const int r = r0 + k * kRowStep;
      if (ROWS % kRowStep != 0 && r >= ROWS) break;
      const bool ok = chunk_ok && r < valid_rows;
      cp_async_16(dst + k * kRowStep * kPitch, ok ? src : reinterpret_cast<const char*>(g),
                  ok ? 16 : 0);
      src += step;
    }
  } else if (vec) {
    for (int i = threadIdx.x; i < ROWS * kChunks; i += THREADS) {
      const int r = i / kChunks, c = i - r * kChunks;
      const bool ok = r < valid_rows && c * 8 < d;
      cp_async_16(s + r * kPitch + c * 8, ok ? g + r * stride + c * 8 : g, ok ? 16 : 0);
    }
  } else {
    for (int i = threadIdx.x; i < ROWS * DP; i += THREADS) {
      const int r = i / DP, c = i - r * DP;
      s[r * kPitch + c] = r < valid_rows && c < d ? g[r * stride + c] : from_float<T>(0.0f);
    }
  }
}

// The wgmma kernels (attention_wgmma.cu) where they apply: Hopper, no causal mask,
// 16-byte rows, padded head dim 48, 64 or 80; false otherwise. T half or bfloat16.
template <class T>
bool flash_wgmma(const AttentionParams& p, int batch, int heads, int dp);

}  // namespace kiln::cuda
