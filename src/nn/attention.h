// diffusers' Attention (to_q, to_k, to_v, to_out.0) and FeedForward.
#pragma once

#include "nn/layers.h"

namespace kiln::nn {

struct Attention {
  Linear to_q, to_k, to_v, to_out;
  int heads = 1;
  float scale = 1.0f;

  // query_dim → heads × dim_head; keys and values from context_dim features.
  void load(const WeightLoader& w, const std::string& prefix, int64_t query_dim,
            int64_t context_dim, int heads, int64_t dim_head, bool qkv_bias, bool out_bias = true);
  // x: [B, S, query_dim], context: [B, T, context_dim] (x itself when undefined)
  // → [B, S, query_dim], plus `residual` when given.
  Tensor operator()(const Tensor& x, const Tensor& context = {}, const Tensor& residual = {}) const;
};

// FeedForward with GEGLU (net.0.proj → 2 × inner, net.2 → dim) or GELU.
struct FeedForward {
  Linear proj_in;   // net.0.proj
  Linear proj_out;  // net.2
  bool gated = true;
  Activation act = Activation::GELU;

  void load(const WeightLoader& w, const std::string& prefix, int64_t dim,
            const std::string& activation_fn, int mult = 4);
  Tensor operator()(const Tensor& x, const Tensor& residual = {}) const;
};

}  // namespace kiln::nn
