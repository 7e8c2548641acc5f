// Narrow 3×3 convolutions (stride 1, padding 1 all round), which conv.cu times against
// cuDNN per shape: few output channels (a UNet's or decoder's conv_out: 320 → 4, 128 →
// 3) or few input channels (conv_in: 4 → 320). cuDNN tiles the narrow side to tens of
// channels and ran these at 1–13 TFLOP/s on an H200 (SD1.5's conv_out 133 µs, SDXL's
// conv_in 81 µs); direct kernels on the CUDA cores, f32 accumulation, are bound by the
// input's bytes and their FMAs, and the few-output one also runs on the tensor cores.
#include <algorithm>
#include <atomic>
#include <type_traits>
#include <utility>
#include <vector>

#include "backend/cuda/conv_narrow.cuh"
#include "backend/cuda/device.cuh"
#include "backend/cuda/ops.h"

namespace kiln::cuda {
namespace {

// Few inputs (C of them): a block makes 64 consecutive output pixels of one image row
// for every output channel, a thread one channel at a time with its 9·C weights in
// registers; the three input rows it needs are staged in shared memory as f32.
constexpr int kFewInPixels = 64;

template <class T, int C>
__global__ void __launch_bounds__(512) conv3x3_few_in(NarrowParams p) {
  __shared__ float xs[3][kFewInPixels + 2][C];
  const int row = blockIdx.y, b = row / p.h, oy = row - b * p.h;
  const int x0 = blockIdx.x * kFewInPixels;
  const T* x = static_cast<const T*>(p.x);
  for (int i = threadIdx.x; i < 3 * (kFewInPixels + 2) * C; i += blockDim.x) {
    const int ky = i / ((kFewInPixels + 2) * C), rem = i - ky * (kFewInPixels + 2) * C;
    const int px = rem / C, ch = rem - px * C;
    const int gy = oy - 1 + ky, gx = x0 - 1 + px;
    xs[ky][px][ch] = gy >= 0 && gy < p.h && gx >= 0 && gx < p.w
                         ? to_float(x[((int64_t(b) * p.h + gy) * p.w + gx) * C + ch])
                         : 0.0f;
  }
  __syncthreads();
  const T* w = static_cast<const T*>(p.weight);
  const T* bias = static_cast<const T*>(p.bias);
  const T* residual = static_cast<const T*>(p.residual);
  T* y = static_cast<T*>(p.y);
  const int pixels = min(kFewInPixels, p.w - x0);
  for (int o = threadIdx.x; o < p.o; o += blockDim.x) {
    float wr[9][C];
#pragma unroll
    for (int tap = 0; tap < 9; ++tap)
#pragma unroll
      for (int ch = 0; ch < C; ++ch) wr[tap][ch] = to_float(w[(int64_t(o) * 9 + tap) * C + ch]);
    const float b0 = bias ? to_float(bias[o]) : 0.0f;
    const int64_t base = (int64_t(b) * p.h + oy) * p.w + x0;
    for (int px = 0; px < pixels; ++px) {
      float v = 0.0f;
#pragma unroll
      for (int tap = 0; tap < 9; ++tap)
#pragma unroll
        for (int ch = 0; ch < C; ++ch) v = fmaf(xs[tap / 3][px + tap % 3][ch], wr[tap][ch], v);
      v += b0;
      const int64_t at = (base + px) * p.o + o;
      if (residual) v += to_float(residual[at]);
      y[at] = from_float<T>(v);
    }
  }
}

bool few_out_applies(const Conv2dArgs& a) {
  const int64_t o = a.weight.dim(0), c = a.x.dim(3);
  return is_3x3_same(a) && (o == 3 || o == 4 || o == 8) && c % kNarrowChunk == 0 &&
         aligned16(a.x.raw());
}

bool few_in_applies(const Conv2dArgs& a) {
  const int64_t o = a.weight.dim(0), c = a.x.dim(3);
  return is_3x3_same(a) && (c == 3 || c == 4 || c == 8) && o >= 32 && o <= 4096;
}

std::atomic<size_t> narrow_calls{0}, narrow_mma_calls{0};

}  // namespace

bool is_3x3_same(const Conv2dArgs& a) {
  return a.weight.dim(1) == 3 && a.weight.dim(2) == 3 && a.stride == 1 && a.pad_top == 1 &&
         a.pad_left == 1 && a.pad_bottom == 1 && a.pad_right == 1;
}

// The tensor-core form of the few-output kernel: f16/bf16 on sm_80 and later, 16-byte
// aligned weights (cp.async copies them 16 bytes at a time).
bool few_out_mma_applies(const Conv2dArgs& a) {
  return few_out_applies(a) && a.x.dtype() != DType::F32 && aligned16(a.weight.raw()) &&
         context().props.major >= 8;
}

// Whether a narrow kernel takes this convolution.
bool narrow_applies(const Conv2dArgs& a) {
  return few_out_applies(a) || few_in_applies(a);
}

// The narrow form for `a` where none was timed: the tensor-core kernel where it
// applies, with the tallest tile that still makes a block for every multiprocessor.
int default_narrow_form(const Conv2dArgs& a) {
  if (!few_out_mma_applies(a)) return 0;
  const int64_t columns = (a.x.dim(2) + 31) / 32, sms = context().props.multiProcessorCount;
  for (auto [form, rows] : {std::pair{1, 16}, std::pair{2, 4}})
    if (columns * ((a.x.dim(1) + rows - 1) / rows) * a.x.dim(0) >= sms) return form;
  return 3;
}

// The forms worth timing for `a` (the forced one alone where the options force one).
std::vector<int> narrow_forms(const Conv2dArgs& a) {
  if (options().narrow_conv_form >= 0) return {options().narrow_conv_form};
  if (!few_out_mma_applies(a)) return {0};
  return {0, 1, 2, 3, 4};
}

// Whether a GroupNorm can be folded into this convolution's reads (the few-output
// kernels take one: conv_narrow's `norm`).
bool narrow_folds_norm(const Conv2dArgs& a) {
  return few_out_applies(a);
}

NarrowParams narrow_params(const Conv2dArgs& a, const float* scale, const float* shift,
                           Activation act) {
  return {a.x.raw(),
          a.weight.raw(),
          a.bias.defined() ? a.bias.raw() : nullptr,
          a.residual.defined() ? a.residual.raw() : nullptr,
          a.out.raw(),
          int(a.x.dim(1)),
          int(a.x.dim(2)),
          int(a.x.dim(3)),
          int(a.weight.dim(0)),
          scale,
          shift,
          act};
}

// y = conv(x) + bias (+ residual) with a narrow kernel; narrow_applies(a) must hold.
// `form` 1-4 takes the tensor-core kernel where it applies (else the CUDA cores').
void conv_narrow(const Conv2dArgs& a, int form, const InputNorm& norm) {
  KILN_CHECK(norm.scale == nullptr || few_out_applies(a),
             "conv_narrow: a folded GroupNorm needs a few-output convolution");
  narrow_calls.fetch_add(1, std::memory_order_relaxed);
  const NarrowParams p = narrow_params(a, norm.scale, norm.shift, norm.act);
  const int n = int(a.x.dim(0));
  dispatch_float(a.x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    if constexpr (!std::is_same_v<T, float>) {  // few_out_mma_applies excludes f32
      if (form > 0 && few_out_mma_applies(a)) {
        narrow_mma_calls.fetch_add(1, std::memory_order_relaxed);
        return conv_few_out<T>(p, n, form);
      }
    }
    if (few_out_applies(a)) return conv_few_out<T>(p, n, 0);
    const dim3 grid(unsigned((p.w + kFewInPixels - 1) / kFewInPixels), unsigned(n * p.h));
    const int threads = std::min(512, (p.o + 31) / 32 * 32);
    switch (p.c) {
      case 3:
        conv3x3_few_in<T, 3><<<grid, threads, 0, stream()>>>(p);
        break;
      case 4:
        conv3x3_few_in<T, 4><<<grid, threads, 0, stream()>>>(p);
        break;
      default:
        conv3x3_few_in<T, 8><<<grid, threads, 0, stream()>>>(p);
        break;
    }
    CUDA_CHECK_LAUNCH();
  });
}

size_t narrow_conv_calls() {
  return narrow_calls.load(std::memory_order_relaxed);
}
size_t narrow_conv_mma_calls() {
  return narrow_mma_calls.load(std::memory_order_relaxed);
}

}  // namespace kiln::cuda
