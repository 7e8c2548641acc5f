// The interface every compute backend implements: one method per op, each taking
// an Args struct whose tensors were validated and whose output was allocated by
// ops/ (ops.cpp). A backend only computes. Optional tensors are left undefined.
//
// CPU is the reference (fp32); CUDA (backend/cuda) is the fast path.
#pragma once

#include <limits>
#include <vector>

#include "core/tensor.h"

namespace kiln {

enum class Activation : uint8_t { None, SiLU, GELU, GELUTanh, QuickGELU };

struct LinearArgs {
  Tensor x;         // [M, K] (leading dims flattened)
  Tensor weight;    // [N, K]
  Tensor bias;      // [N] or undefined
  Tensor residual;  // [M, N] or undefined: out = act(x W^T + b) + residual
  Activation act = Activation::None;
  Tensor out;  // [M, N]
};

struct Conv2dArgs {
  Tensor x;         // [B, H, W, C]
  Tensor weight;    // [O, KH, KW, C]  (OHWI)
  Tensor bias;      // [O] or undefined
  Tensor residual;  // [B, HO, WO, O] or undefined: added after the bias
  int stride = 1;
  int pad_top = 0, pad_left = 0, pad_bottom = 0, pad_right = 0;
  Tensor out;  // [B, HO, WO, O]
  // The FLOPs of the model's own form of this convolution where this one computes it
  // another way (ops::upsample2x_conv), so that a backend's count stays the model's;
  // 0: this convolution's own.
  double model_flops = 0.0;
};

struct GroupNormArgs {
  Tensor x;  // [B, N, C]: statistics per (batch, group) over N positions and C/groups channels
  Tensor gamma, beta;  // [C]
  // [B, W] or undefined: x + addend[b, addend_col + c], rounded to x's dtype, is what
  // is normalised (a resnet's time embedding, added on the way in instead of in a pass
  // of its own). W is C, or wider where the embeddings of many resnets sit side by
  // side, one GEMM's output.
  Tensor addend;
  int64_t addend_col = 0;
  int groups = 32;
  float eps = 1e-5f;
  Activation act = Activation::None;  // applied after the affine transform (GroupNorm+SiLU)
  Tensor out;                         // like x
};

struct LayerNormArgs {
  Tensor x;            // [M, C]
  Tensor gamma, beta;  // [C]
  float eps = 1e-5f;
  Tensor out;  // [M, C]
};

// x + residual, rounded to x's dtype (the residual stream's new value), and its LayerNorm.
struct AddLayerNormArgs {
  Tensor x, residual;  // [M, C]
  Tensor gamma, beta;  // [C]
  float eps = 1e-5f;
  Tensor sum;  // [M, C]
  Tensor out;  // [M, C]
};

struct AttentionArgs {
  Tensor q;  // [B, Sq, heads * D]
  Tensor k;  // [B, Sk, heads * D]
  Tensor v;  // [B, Sk, heads * D]
  int heads = 1;
  float scale = 1.0f;
  bool causal = false;  // query i sees keys 0..i
  Tensor out;           // [B, Sq, heads * D]
  // Packed projections (one GEMM made q, k and v, or k and v): q, k and v then read
  // `width` features from column q_col, k_col, v_col of their tensors' rows, which
  // may be one tensor. width 0: unpacked, every tensor is [.., heads * D].
  int64_t width = 0;
  int64_t q_col = 0, k_col = 0, v_col = 0;
  int64_t features() const { return width ? width : q.dim(2); }  // heads * D
};

// The FLOPs of the ops that count them (multiply-adds as two), the same on every
// backend, so that `kiln bench` reports one workload's FLOPs whatever runs it.
inline double linear_flops(const LinearArgs& a) {
  return 2.0 * double(a.out.numel()) * double(a.x.dim(a.x.ndim() - 1));
}
// The convolution as it is computed (its own weights and output).
inline double conv2d_own_flops(const Conv2dArgs& a) {
  return 2.0 * double(a.out.numel()) * double(a.weight.numel() / a.weight.dim(0));
}
// The model's FLOPs where the convolution computes another form of its own.
inline double conv2d_flops(const Conv2dArgs& a) {
  return a.model_flops > 0.0 ? a.model_flops : conv2d_own_flops(a);
}
inline double attention_flops(const AttentionArgs& a) {
  return 4.0 * double(a.q.dim(0)) * double(a.q.dim(1)) * double(a.k.dim(1)) * double(a.features());
}

// Elementwise a (op) b where b broadcasts against a: b's shape, right-aligned, has
// each dim equal to a's or 1.
enum class BinaryOp : uint8_t { Add, Mul };
struct BinaryArgs {
  Tensor a, b;
  BinaryOp op = BinaryOp::Add;
  Tensor out;  // like a
};

struct UnaryArgs {
  Tensor x;
  Activation act = Activation::None;
  float scale = 1.0f;  // out = clamp(act(x) * scale, lo, hi)
  float lo = -std::numeric_limits<float>::infinity();
  float hi = std::numeric_limits<float>::infinity();
  Tensor out;
};

// out = sum_i coeffs[i] * terms[i]; all terms share a shape. Used by the samplers.
struct LinearCombinationArgs {
  std::vector<Tensor> terms;
  std::vector<float> coeffs;
  Tensor out;
};

struct GegluArgs {
  Tensor x;  // [M, 2N]: hidden = x[:, :N], gate = x[:, N:] (block 0)
  // > 0 (a power of two dividing N): x's columns alternate `block` hidden and `block`
  // gate columns, the layout linear_geglu's weights are kept in (ops::kGegluBlock).
  int64_t block = 0;
  Tensor out;  // [M, N] = hidden * gelu(gate)
};

// geglu(linear(x, weight, bias), kGegluBlock) in one op, where a backend can fuse it.
struct LinearGegluArgs {
  Tensor x;       // [M, K]
  Tensor weight;  // [2N, K], rows alternating blocks of hidden and gate (ops::kGegluBlock)
  Tensor bias;    // [2N], in the same order, or undefined
  Tensor out;     // [M, N]
};

struct ConcatArgs {
  std::vector<Tensor> parts;  // [outer, inner_i] each
  Tensor out;                 // [outer, sum inner_i]
};

struct UpsampleArgs {
  Tensor x;    // [B, H, W, C]
  Tensor out;  // [B, HO, WO, C], nearest: source index floor(dst * in / out)
};

// The four output phases of ops::upsample2x_conv put in place:
// out[b, 2i + r, 2j + c, :] = x[b, i + r, j + c, (2r + c)·C : (2r + c + 1)·C].
struct InterleavePhasesArgs {
  Tensor x;    // [B, H + 1, W + 1, 4·C]
  Tensor out;  // [B, 2H, 2W, C]
};

// interleave_phases, then group_norm of its result, in one op where a backend fuses them
// (the statistics taken while the phases are put in place: a pass over the tensor fewer).
struct InterleaveGroupNormArgs {
  Tensor x;            // [B, H + 1, W + 1, 4·C]: the phases
  Tensor out;          // [B, 2H, 2W, C]: interleave_phases(x)
  Tensor gamma, beta;  // [C]
  int groups = 32;
  float eps = 1e-5f;
  Activation act = Activation::None;
  // [B, 2H, 2W, C]: act(group_norm(out)). It may lie in x's memory: written only once
  // x has been read.
  Tensor normed;
};

// group_norm, then conv2d of its output, in one op where a backend fuses them: the
// convolution normalises its input as it reads it, and the normalised tensor is never
// stored. conv.x is the GroupNorm's input (norm.x as [B, H, W, C]), not its output;
// norm.out is undefined.
struct GroupNormConv2dArgs {
  GroupNormArgs norm;
  Conv2dArgs conv;
};

struct TimestepEmbeddingArgs {
  Tensor timesteps;  // [B] f32
  int dim = 0;
  bool flip_sin_to_cos = false;
  float downscale_freq_shift = 1.0f;
  float scale = 1.0f;
  float max_period = 10000.0f;
  Tensor out;  // [B, dim] f32
};

struct EmbeddingArgs {
  Tensor ids;    // [N] i32
  Tensor table;  // [V, C]
  Tensor out;    // [N, C]
};

struct SliceLastArgs {
  Tensor x;  // [M, C]
  int64_t begin = 0;
  Tensor out;  // [M, end - begin]
};

struct CastArgs {
  Tensor x, out;  // same shape, any floating dtypes
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual Device device() const = 0;
  // The dtype activations are kept in (CPU: f32; CUDA: f16 or bf16).
  virtual DType activation_dtype() const = 0;

  virtual void linear(const LinearArgs& a) = 0;
  virtual void conv2d(const Conv2dArgs& a) = 0;
  virtual void group_norm(const GroupNormArgs& a) = 0;
  virtual void layer_norm(const LayerNormArgs& a) = 0;
  // The fused form where this backend has one for these operands: answers false
  // (having done nothing) otherwise, and ops::add_layer_norm takes the two ops.
  virtual bool add_layer_norm(const AddLayerNormArgs&) { return false; }
  virtual void attention(const AttentionArgs& a) = 0;
  virtual void binary(const BinaryArgs& a) = 0;
  virtual void unary(const UnaryArgs& a) = 0;
  virtual void linear_combination(const LinearCombinationArgs& a) = 0;
  virtual void geglu(const GegluArgs& a) = 0;
  // The fused form where this backend has one for these operands: answers false
  // (having done nothing) otherwise, and ops::linear_geglu takes the two-op path.
  virtual bool linear_geglu(const LinearGegluArgs&) { return false; }
  virtual void concat(const ConcatArgs& a) = 0;
  virtual void upsample_nearest(const UpsampleArgs& a) = 0;
  virtual void interleave_phases(const InterleavePhasesArgs& a) = 0;
  // The fused form where this backend has one: answers false (having done nothing)
  // otherwise, and ops::interleave_phases_group_norm takes the two ops.
  virtual bool interleave_phases_group_norm(const InterleaveGroupNormArgs&) { return false; }
  // The fused form where this backend has one for these operands: answers false
  // (having done nothing) otherwise, and ops::group_norm_conv2d takes the two ops.
  virtual bool group_norm_conv2d(const GroupNormConv2dArgs&) { return false; }
  virtual void timestep_embedding(const TimestepEmbeddingArgs& a) = 0;
  virtual void embedding(const EmbeddingArgs& a) = 0;
  virtual void slice_last(const SliceLastArgs& a) = 0;
  virtual void cast(const CastArgs& a) = 0;
};

Backend& backend_for(Device device);

}  // namespace kiln
