// The op set: one function per op. Each validates its inputs (shapes, dtypes,
// devices), allocates the output on the inputs' device and dispatches to that
// device's backend. Shapes in the comments; images are NHWC.
#pragma once

#include <utility>
#include <vector>

#include "backend/backend.h"

namespace kiln::ops {

// x [..., K], weight [N, K], bias [N] → [..., N] = act(x W^T + bias) (+ residual [..., N]).
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias = {},
              Activation act = Activation::None, const Tensor& residual = {});

struct Conv2dGeometry {
  int stride = 1;
  int pad_top = 0, pad_left = 0, pad_bottom = 0, pad_right = 0;
  static Conv2dGeometry same(int kernel, int stride = 1) {
    const int p = kernel / 2;
    return {stride, p, p, p, p};
  }
};
// x [B, H, W, C], weight [O, KH, KW, C] → [B, HO, WO, O] (+ residual, same shape).
Tensor conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias, Conv2dGeometry g,
              const Tensor& residual = {});

// x [B, ..., C]: normalised per (batch, group of C/groups channels); then act. With
// addend [B, C]: group_norm(x + addend broadcast over the positions), in one op. Or,
// with addend_col ≥ 0, addend [B, W]: its columns addend_col .. addend_col + C are added
// (the time embeddings of many resnets side by side, one GEMM's output).
Tensor group_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, int groups, float eps,
                  Activation act = Activation::None, const Tensor& addend = {},
                  int64_t addend_col = -1);
// conv2d(group_norm(x, gamma, beta, groups, eps, act), weight, bias, g) for x
// [B, H, W, C]: one op where the backend folds the normalisation into the convolution's
// reads (the normalised tensor is never stored), else the two.
Tensor group_norm_conv2d(const Tensor& x, const Tensor& gamma, const Tensor& beta, int groups,
                         float eps, Activation act, const Tensor& weight, const Tensor& bias,
                         Conv2dGeometry g);
// x [..., C] normalised over C.
Tensor layer_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, float eps);
// {x + residual, layer_norm(x + residual)} for x and residual of one shape: the sum
// (rounded to x's dtype, as add makes it) and its normalisation, in one pass where the
// backend fuses them (CUDA), else the two ops. A transformer block's residual add, moved
// out of the GEMM before it into the LayerNorm after it.
std::pair<Tensor, Tensor> add_layer_norm(const Tensor& x, const Tensor& residual,
                                         const Tensor& gamma, const Tensor& beta, float eps);

// q [B, Sq, H*D], k and v [B, Sk, H*D] → [B, Sq, H*D]; softmax(q k^T * scale) v per head.
// The same from packed projections, as one GEMM of the concatenated weights makes
// them: qkv [B, S, 3 * heads * D] (q, k, v side by side; self-attention), or q with
// kv [B, Sk, 2 * heads * D] (k, v side by side). kv may be wider, the k and v of many
// attentions side by side (one GEMM made them all): this one's k starts at column
// kv_col, its v right after.
Tensor attention_qkv(const Tensor& qkv, int heads, float scale);
Tensor attention_kv(const Tensor& q, const Tensor& kv, int heads, float scale, int64_t kv_col = 0);
Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, int heads, float scale,
                 bool causal = false);

// Elementwise with b broadcast against a (b's dims right-aligned, each equal to a's or 1).
Tensor add(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor activate(const Tensor& x, Activation act);
Tensor scale(const Tensor& x, float s);
Tensor clamp(const Tensor& x, float lo, float hi);
// Σ coeff_i * term_i over same-shaped tensors.
Tensor linear_combination(const std::vector<std::pair<float, Tensor>>& terms);

// x [..., 2N] → [..., N] = x[..., :N] * gelu(x[..., N:]). With block > 0 the hidden
// and gate columns alternate in blocks of `block` instead (GegluArgs::block).
Tensor geglu(const Tensor& x, int64_t block = 0);

// The feed-forward's gated projection: geglu(linear(x, W, b)) for a weight [2N, K] (and
// bias [2N]) whose rows alternate kGegluBlock hidden and kGegluBlock gate rows, the
// order interleave_geglu_rows makes from diffusers' [hidden; gate]. Interleaved, each
// output tile of a GEMM holds both halves of its columns, so a backend can apply the
// gate in the GEMM's epilogue and write N columns instead of 2N (CUDA, where built
// with CUTLASS); elsewhere it is the two ops.
constexpr int64_t kGegluBlock = 8;
Tensor linear_geglu(const Tensor& x, const Tensor& weight, const Tensor& bias);
// t [2N, ...] with rows [hidden (N); gate (N)] → the same rows alternating in blocks of
// kGegluBlock (N a multiple of kGegluBlock). Any device; the result is on t's.
Tensor interleave_geglu_rows(const Tensor& t);

// Concatenation along the last dim (channels, for UNet skip connections).
Tensor concat_last(const std::vector<Tensor>& parts);
// Concatenation along dim 0 (batch rows).
Tensor concat_rows(const std::vector<Tensor>& parts);
// x [..., C] → [..., end - begin], a copy of the channel range.
Tensor slice_last(const Tensor& x, int64_t begin, int64_t end);

// x [B, H, W, C] → [B, out_h, out_w, C], nearest neighbour.
Tensor upsample_nearest(const Tensor& x, int64_t out_h, int64_t out_w);

// conv2d(upsample_nearest(x, 2H, 2W), weight, bias, same(3)) without the upsampled
// tensor. Each output pixel's row and column parity (its phase) sees a 2×2 window of x
// whose taps are sums of the 3×3 kernel's: parity 0 weighs input rows i − 1 and i by
// kernel rows {0} and {1, 2}; parity 1 weighs rows i and i + 1 by {0, 1} and {2}
// (columns alike). So one 2×2 convolution with padding 1 makes all four phases as 4·O
// channels, with 4 multiply-adds per output pixel and channel pair where the direct
// form takes 9, and interleave_phases puts them in place. The same map as the
// direct form but for the rounding of the summed taps.
struct PhaseConv {
  Tensor weight;  // [4·O, 2, 2, C]: phase p = 2·(row parity) + column parity in rows p·O..
  Tensor bias;    // [4·O] or undefined
};
// From a 3×3 convolution's weight [O, 3, 3, C] and bias [O] (or undefined); the sums in
// f32, the result in weight's dtype on its device.
PhaseConv upsample_conv_phases(const Tensor& weight, const Tensor& bias);
// x [B, H, W, C] → [B, 2H, 2W, O].
Tensor upsample2x_conv(const Tensor& x, const PhaseConv& phases);
// z [B, H + 1, W + 1, 4·C] → [B, 2H, 2W, C]: out[b, 2i + r, 2j + c] is z[b, i + r, j + c]'s
// channels (2r + c)·C ...
Tensor interleave_phases(const Tensor& z);
// {interleave_phases(z), group_norm(that, gamma, beta, groups, eps, act)}: one op where
// the backend fuses them (the statistics taken while the phases are put in place).
std::pair<Tensor, Tensor> interleave_phases_group_norm(const Tensor& z, const Tensor& gamma,
                                                       const Tensor& beta, int groups, float eps,
                                                       Activation act);
// upsample2x_conv(x, phases) and its group_norm, as above.
std::pair<Tensor, Tensor> upsample2x_conv_group_norm(const Tensor& x, const PhaseConv& phases,
                                                     const Tensor& gamma, const Tensor& beta,
                                                     int groups, float eps, Activation act);

// timesteps [B] (f32, any device) → [B, dim] sinusoidal embedding, as diffusers'
// get_timestep_embedding.
Tensor timestep_embedding(const Tensor& timesteps, int dim, bool flip_sin_to_cos,
                          float downscale_freq_shift, float scale = 1.0f,
                          float max_period = 10000.0f);

// ids [...] (i32) → [..., C] rows of table [V, C].
Tensor embedding(const Tensor& ids, const Tensor& table);

// Same values in another floating dtype (a no-op view when it already is).
Tensor cast(const Tensor& x, DType dtype);
// Copy to a device and dtype, as a model's weights are at load.
Tensor to(const Tensor& x, Device device, DType dtype);

}  // namespace kiln::ops
