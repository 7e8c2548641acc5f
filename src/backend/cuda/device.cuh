// Device-side helpers the kernels share: element types, conversions, packed
// 16-byte accesses, activations as torch computes them in f32, and dispatch on
// kiln's DType. Internal to src/backend/cuda/.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <initializer_list>
#include <utility>

#include "backend/backend.h"
#include "backend/cuda/context.h"

namespace kiln::cuda {

using half = __half;
using bfloat16 = __nv_bfloat16;

template <class T>
__device__ __forceinline__ float to_float(T v);
template <>
__device__ __forceinline__ float to_float<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ float to_float<half>(half v) {
  return __half2float(v);
}
template <>
__device__ __forceinline__ float to_float<bfloat16>(bfloat16 v) {
  return __bfloat162float(v);
}

template <class T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ half from_float<half>(float v) {
  return __float2half_rn(v);
}
template <>
__device__ __forceinline__ bfloat16 from_float<bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// N elements moved as one access of N * sizeof(T) bytes (16 for the vector paths).
template <class T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

// Elements per 16-byte access.
template <class T>
constexpr int kVec = 16 / int(sizeof(T));

inline bool aligned16(const void* p) {
  return (reinterpret_cast<uintptr_t>(p) & 15) == 0;
}

// The widest pack (16 bytes or 1 element) that `extent` elements and every
// pointer (null ones aside) allow.
template <class T>
int pack_width(int64_t extent, std::initializer_list<const void*> pointers) {
  for (const void* p : pointers)
    if (p && !aligned16(p)) return 1;
  return extent % kVec<T> == 0 ? kVec<T> : 1;
}

__device__ __forceinline__ float activate(Activation act, float x) {
  switch (act) {
    case Activation::None:
      return x;
    case Activation::SiLU:
      return x / (1.0f + expf(-x));
    case Activation::GELU:
      return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
    case Activation::GELUTanh:
      return 0.5f * x * (1.0f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x)));
    case Activation::QuickGELU:
      return x / (1.0f + expf(-1.702f * x));
  }
  return x;
}

// activate() for a result stored in 16 bits (f16, bf16): SiLU from the fast
// exponential and division (a few units in the last place of f32, three orders of
// magnitude below the rounding to 16 bits), which take an exact expf and an IEEE
// division's dozens of instructions off memory-bound kernels. f32 results keep
// activate().
template <class T>
__device__ __forceinline__ float activate_narrow(Activation act, float x) {
  if constexpr (sizeof(T) == 2) {
    if (act == Activation::SiLU) return __fdividef(x, 1.0f + __expf(-x));
  }
  return activate(act, x);
}

// A normalisation's per-channel scale and shift, f32, of N channels from `at`; 16 bytes
// at a time where N allows (`at` then a multiple of 4).
template <int N>
__device__ __forceinline__ void load_scale_shift(const float* scale, const float* shift, int64_t at,
                                                 float (&sc)[N], float (&sh)[N]) {
  if constexpr (N % 4 == 0) {
#pragma unroll
    for (int j = 0; j < N; j += 4) {
      const float4 a = __ldg(reinterpret_cast<const float4*>(scale + at + j));
      const float4 d = __ldg(reinterpret_cast<const float4*>(shift + at + j));
      sc[j] = a.x, sc[j + 1] = a.y, sc[j + 2] = a.z, sc[j + 3] = a.w;
      sh[j] = d.x, sh[j + 1] = d.y, sh[j + 2] = d.z, sh[j + 3] = d.w;
    }
  } else {
#pragma unroll
    for (int j = 0; j < N; ++j) sc[j] = __ldg(scale + at + j), sh[j] = __ldg(shift + at + j);
  }
}

// act(v · scale + shift), rounded to T: every GroupNorm path's output value, and what a
// convolution that folds a GroupNorm into its reads stages (the same bits either way).
template <class T, int N>
__device__ __forceinline__ Pack<T, N> apply_scale_shift(const Pack<T, N>& v, const float (&sc)[N],
                                                        const float (&sh)[N], Activation act) {
  Pack<T, N> o;
#pragma unroll
  for (int j = 0; j < N; ++j)
    o.v[j] = from_float<T>(activate_narrow<T>(act, to_float(v.v[j]) * sc[j] + sh[j]));
  return o;
}

// Programmatic dependent launch (sm_90): a kernel launched with
// launch_dependent() may begin while the kernel before it in the stream is still
// running, once every block of that kernel has called allow_dependents() or exited.
// It must call wait_for_prior() before it reads anything that kernel writes or writes
// anything that kernel reads; wait_for_prior() returns once that kernel has finished
// and its writes are visible. Both are no-ops before sm_90 and in kernels launched
// the ordinary way.
__device__ __forceinline__ void allow_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ __forceinline__ void wait_for_prior() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Launches kernel<<<grid, block, smem, stream()>>>(args...) so that it may begin
// while the kernel before it finishes (where `early` and the GPU is sm_90 or newer):
// the kernel calls wait_for_prior() before touching that kernel's data.
template <class... Params, class... Args>
void launch_dependent(bool early, void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem,
                      Args&&... args) {
  if (!early || context().props.major < 9) {
    kernel<<<grid, block, smem, stream()>>>(std::forward<Args>(args)...);
    CUDA_CHECK_LAUNCH();
    return;
  }
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream();
  cudaLaunchAttribute attribute{};
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = 1;
  config.attrs = &attribute;
  config.numAttrs = 1;
  CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, Params(std::forward<Args>(args))...));
  CUDA_CHECK_LAUNCH();
}

// Sum over a warp by butterfly shuffles; every lane gets the same value.
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum (or max) over a block of whole warps, at most 1024 threads: each warp's result
// is combined in a fixed order (the same bits run after run), and every thread gets
// it. `red`: 32 floats of shared memory, free again when this returns.
__device__ __forceinline__ float block_reduce(float v, float* red, bool max) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float other = __shfl_xor_sync(0xffffffffu, v, o);
    v = max ? fmaxf(v, other) : v + other;
  }
  __syncthreads();  // red may still be read from the previous reduction
  if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = v;
  __syncthreads();
  v = red[0];
  for (int w = 1; w < int(blockDim.x / 32); ++w) v = max ? fmaxf(v, red[w]) : v + red[w];
  return v;
}

// Calls f(T{}) with T the element type of a floating DType.
template <class F>
void dispatch_float(DType t, F&& f) {
  switch (t) {
    case DType::F32:
      f(float{});
      return;
    case DType::F16:
      f(half{});
      return;
    case DType::BF16:
      f(bfloat16{});
      return;
    default:
      KILN_FAIL("CUDA backend: ", dtype_name(t), " is not a floating type");
  }
}

// Blocks for a grid-stride loop over `work` items: enough to fill the device a
// few times over, no more.
inline unsigned grid_for(int64_t work, int threads) {
  const int64_t blocks = (work + threads - 1) / threads;
  const int64_t cap = int64_t(context().props.multiProcessorCount) * 8;
  return unsigned(blocks < 1 ? 1 : (blocks < cap ? blocks : cap));
}

}  // namespace kiln::cuda
