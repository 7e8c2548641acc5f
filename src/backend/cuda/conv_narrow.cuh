// What conv_narrow.cu shares with the files that build its few-output kernels
// (conv_narrow_few_out.cuh, instantiated once a type in conv_narrow_{f16,bf16,f32}.cu).
#pragma once

#include "backend/backend.h"

namespace kiln::cuda {

// One narrow 3×3 convolution: NHWC input and output, OHWI weights.
struct NarrowParams {
  const void* x;
  const void* weight;    // OHWI
  const void* bias;      // [O] or null
  const void* residual;  // like y, or null
  void* y;
  int h, w, c, o;
  // Where not null (the few-output kernels only): a GroupNorm folded into the input's
  // reads, act(x · scale + shift) per (image, channel), [N, C] each, rounded to x's type
  // as the GroupNorm would have stored it; the padding stays zero.
  const float* scale = nullptr;
  const float* shift = nullptr;
  Activation act = Activation::None;
};

// Whether `a` is a 3×3 convolution with stride 1 and padding 1 all round.
bool is_3x3_same(const Conv2dArgs& a);

// a's operands and sizes (NHWC x, OHWI weight), with a GroupNorm folded into x's reads
// where `scale` is set.
NarrowParams narrow_params(const Conv2dArgs& a, const float* scale = nullptr,
                           const float* shift = nullptr, Activation act = Activation::None);

// The few-output kernels stage the input channels in chunks of this many.
constexpr int kNarrowChunk = 32;

// y = conv(x) + bias (+ residual) for p.o = 3, 4 or 8 outputs and p.c a multiple of
// kNarrowChunk (x normalised as it is read where p.scale is set): on the CUDA cores
// where `form` is 0, else on the tensor cores in form 1-4 (T half or bfloat16 only;
// conv_narrow.cu says which form when).
template <class T>
void conv_few_out(const NarrowParams& p, int n, int form);

}  // namespace kiln::cuda
