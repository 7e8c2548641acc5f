// The CUDA backend's op implementations, one group per file, each taking the
// validated Args of backend.h. Internal to src/backend/cuda/.
#pragma once

#include <functional>
#include <memory>
#include <vector>

#include "backend/backend.h"

namespace kiln::cuda {

// gemm.cpp
void linear(const LinearArgs& a);
// C[M, N] = act(A[M, K] · B[N, K]^T + bias) (+ residual), row-major, leading
// dimensions in elements; dtype of A, B, C, bias and residual alike.
struct GemmParams {
  int64_t m = 0, n = 0, k = 0;
  const void* a = nullptr;
  int64_t lda = 0;
  const void* b = nullptr;
  int64_t ldb = 0;
  void* c = nullptr;
  int64_t ldc = 0;
  const void* bias = nullptr;      // [N] or null
  const void* residual = nullptr;  // like C (same ldc) or null
  Activation act = Activation::None;
  DType dtype = DType::F16;
};
void gemm_nt(const GemmParams& p);

// gemm_geglu.cu (a build with CUTLASS; else gemm.cpp's stand-in, false): ops::linear_geglu
// as one GEMM with the gate in its epilogue, or false (nothing done) where it does not
// take these operands.
bool linear_geglu(const LinearGegluArgs& a);
// The fused GEMM in one form (cooperative or ping-pong) for T F16 or BF16, from
// gemm_geglu_<type>_<form>.cu; false where CUTLASS cannot run these operands.
template <DType T, bool kCooperative>
bool geglu_gemm(const LinearGegluArgs& a);

// conv.cu
void conv2d(const Conv2dArgs& a);

// conv_narrow.cu: 3×3 convolutions with 3, 4 or 8 input or output channels.
// Narrow forms (Options::narrow_conv_form): 0 the CUDA-core kernels; 1-4 the
// tensor-core few-output kernel: 1-3 four warps with 16, 4 or 2 output rows a block
// (the shorter tiles split each stage's channels between two warps, for more blocks on
// small images), 4 eight warps of two rows (16 a block: more warps to hide latency, a
// little less reuse of each staged row than four rows a warp).
constexpr int kNarrowConvForms = 5;
// Whether a narrow kernel takes this convolution, and whether its tensor-core form does.
bool narrow_applies(const Conv2dArgs& a);
bool few_out_mma_applies(const Conv2dArgs& a);
// The form where none was timed, and the forms worth timing (the forced one alone
// where the options force one).
int default_narrow_form(const Conv2dArgs& a);
std::vector<int> narrow_forms(const Conv2dArgs& a);
// A GroupNorm folded into a convolution's reads: x becomes act(x · scale + shift), f32
// [B, C] each (group_norm_scale_shift).
struct InputNorm {
  const float* scale = nullptr;  // null: no GroupNorm
  const float* shift = nullptr;
  Activation act = Activation::None;
};
// y = conv(x) + bias (+ residual); narrow_applies(a) must hold. `form` 1-4 takes the
// tensor-core kernel where it applies (else the CUDA cores'). With `norm`, x is
// normalised as it is read; narrow_folds_norm(a) must hold.
void conv_narrow(const Conv2dArgs& a, int form, const InputNorm& norm = {});
bool narrow_folds_norm(const Conv2dArgs& a);
// conv.cu: the narrow form conv2d runs `a` in, or -1 where it takes another path. Makes
// the shape's plan where it has none (timing its candidates runs the convolution).
int narrow_route(const Conv2dArgs& a);
// conv.cu: ops::group_norm_conv2d with the GroupNorm folded into the narrow
// convolution's reads: the form it runs in, or -1 where it does not fold these operands
// (the caller runs the two ops). Decided before anything is launched, so that a caller
// can time the op alone; group_norm_conv2d then runs it in that form.
int folded_norm_form(const GroupNormConv2dArgs& a);
void group_norm_conv2d(const GroupNormConv2dArgs& a, int form);

// attention.cu
void attention(const AttentionArgs& a);
// attention.cu: whether the short-KV kernel takes a non-causal attention over `sk`
// keys (options().flash_short_kv_kernel, at most 128 keys); attention_cudnn.cpp names
// it in the stored choice it was timed against.
bool flash_short_kv_takes(int64_t sk);
// attention_cudnn.cpp: runs `a` through cuDNN's SDPA where that is this shape's
// choice and answers true; false leaves the call to our kernel. A shape's first
// call times `ours` (our kernel on the same operands) against cuDNN's plans.
bool attention_cudnn(const AttentionArgs& a, const std::function<void()>& ours);

// norm.cu
void group_norm(const GroupNormArgs& a);
void layer_norm(const LayerNormArgs& a);
// The sum and its LayerNorm in one pass (f16/bf16 rows of 16-byte packs that fit in
// registers); false (nothing done) otherwise.
bool add_layer_norm(const AddLayerNormArgs& a);
// norm.cu: a GroupNorm's statistics as a per-(batch, channel) scale and shift, f32 [B, C]
// each, so that act(x · scale + shift) rounded to x's type is the GroupNorm's output (as
// its two-launch path computes it), in scratch memory that `memory` holds.
struct NormScaleShift {
  std::shared_ptr<Buffer> memory;
  const float* scale = nullptr;
  const float* shift = nullptr;
};
// Whether group_norm_scale_shift takes `a` (no addend; 16-byte accesses; batch and size
// within what its kernel counts and indexes).
bool group_norm_scale_shift_applies(const GroupNormArgs& a);
NormScaleShift group_norm_scale_shift(const GroupNormArgs& a);

// elementwise.cu
void binary(const BinaryArgs& a);
void unary(const UnaryArgs& a);
void linear_combination(const LinearCombinationArgs& a);
void geglu(const GegluArgs& a);
void concat(const ConcatArgs& a);
void upsample_nearest(const UpsampleArgs& a);
void interleave_phases(const InterleavePhasesArgs& a);
// norm.cu: false where the fused kernels do not take the operands (the caller runs the
// two ops).
bool interleave_phases_group_norm(const InterleaveGroupNormArgs& a);
void timestep_embedding(const TimestepEmbeddingArgs& a);
void embedding(const EmbeddingArgs& a);
void slice_last(const SliceLastArgs& a);
void cast(const CastArgs& a);
// out[r, c] = act(out[r, c] + bias[c]) + residual[r, c] over [rows, cols], in
// place: the epilogue of GEMMs and convolutions that the library could not fuse.
void bias_act_residual(void* out, const void* bias, const void* residual, int64_t rows,
                       int64_t cols, Activation act, DType dtype);

}  // namespace kiln::cuda
