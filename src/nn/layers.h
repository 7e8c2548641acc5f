// Basic layers with typed members, loaded from a checkpoint prefix
// ("down_blocks.1.resnets.0.conv1") once; forward passes call ops directly.
#pragma once

#include <string>

#include "nn/weights.h"
#include "ops/ops.h"

namespace kiln::nn {

// y = act(x W^T + b) (+ residual). Also stands in for 1×1 convolutions, which on
// NHWC activations are exactly a linear map over channels.
struct Linear {
  Tensor weight;  // [out, in]
  Tensor bias;    // [out] or undefined

  void load(const WeightLoader& w, const std::string& prefix, int64_t in, int64_t out,
            bool has_bias = true);
  Tensor operator()(const Tensor& x, Activation act = Activation::None,
                    const Tensor& residual = {}) const {
    return ops::linear(x, weight, bias, act, residual);
  }
  int64_t out_features() const { return weight.dim(0); }
};

struct Conv2d {
  Tensor weight;  // [out, k, k, in]
  Tensor bias;    // [out]
  ops::Conv2dGeometry geometry;

  void load(const WeightLoader& w, const std::string& prefix, int64_t in, int64_t out, int kernel,
            ops::Conv2dGeometry g);
  // x: [B, H, W, in] → [B, HO, WO, out]
  Tensor operator()(const Tensor& x, const Tensor& residual = {}) const {
    return ops::conv2d(x, weight, bias, geometry, residual);
  }
};

struct GroupNorm {
  Tensor weight, bias;  // [C]
  int groups = 32;
  float eps = 1e-5f;

  void load(const WeightLoader& w, const std::string& prefix, int64_t channels, int groups,
            float eps);
  // addend [B, C]: normalises x + addend (broadcast over the positions); see
  // ops::group_norm for addend_col.
  Tensor operator()(const Tensor& x, Activation act = Activation::None, const Tensor& addend = {},
                    int64_t addend_col = -1) const {
    return ops::group_norm(x, weight, bias, groups, eps, act, addend, addend_col);
  }
};

// conv(norm(x, act)) in one op where the backend folds the GroupNorm into the
// convolution's reads (ops::group_norm_conv2d).
inline Tensor norm_conv(const GroupNorm& norm, Activation act, const Conv2d& conv,
                        const Tensor& x) {
  return ops::group_norm_conv2d(x, norm.weight, norm.bias, norm.groups, norm.eps, act, conv.weight,
                                conv.bias, conv.geometry);
}

struct LayerNorm {
  Tensor weight, bias;  // [C]
  float eps = 1e-5f;

  void load(const WeightLoader& w, const std::string& prefix, int64_t channels, float eps);
  Tensor operator()(const Tensor& x) const { return ops::layer_norm(x, weight, bias, eps); }
  // {x + residual, this(x + residual)}, in one pass where the backend fuses them.
  std::pair<Tensor, Tensor> after_add(const Tensor& x, const Tensor& residual) const {
    return ops::add_layer_norm(x, residual, weight, bias, eps);
  }
};

// Activation names in configs ("silu", "swish", "gelu", "quick_gelu", ...).
Activation parse_activation(const std::string& name, const std::string& where);

}  // namespace kiln::nn
