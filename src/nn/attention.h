// diffusers' Attention (to_q, to_k, to_v, to_out.0) and FeedForward.
#pragma once

#include <vector>

#include "nn/layers.h"

namespace kiln::nn {

// Checkpoint names of an attention's four projections under its prefix.
struct AttentionNames {
  std::string q = "to_q", k = "to_k", v = "to_v", out = "to_out.0";
  // VAE attention as saved before diffusers 0.14 (still found in older folders).
  static AttentionNames legacy_vae() { return {"query", "key", "value", "proj_attn"}; }
};

struct Attention {
  Linear to_q, to_k, to_v, to_out;
  // After fuse_projections(): the projections' weights concatenated, so that one GEMM
  // makes q, k and v (or k and v); the separate ones are then dropped.
  Linear to_qkv, to_kv;
  int heads = 1;
  float scale = 1.0f;
  // After read_kv_from_context(): the context this attention is given is the k and v
  // of many attentions side by side ([B, T, Σ]), one GEMM's output; its own k and v
  // start at this column. -1: the context is the text, projected here.
  int64_t context_kv_col = -1;

  // query_dim → heads × dim_head; keys and values from context_dim features.
  // kv_from: where to_k and to_v come from, when not from w (the host, for a model
  // that concatenates them across attentions).
  void load(const WeightLoader& w, const std::string& prefix, int64_t query_dim,
            int64_t context_dim, int heads, int64_t dim_head, bool qkv_bias, bool out_bias = true,
            const AttentionNames& names = {}, const WeightLoader* kv_from = nullptr);
  // On CUDA: one GEMM for k and v, and for q too when the attention is only ever called
  // without a context (self_attention). Small projections do not fill the GPU (SDXL's
  // 2048×1280×1280 makes 80 tiles for 132 SMs); one with N three times as wide does.
  // On the CPU nothing changes: that path stays the plain reference.
  void fuse_projections(bool self_attention);
  // For one GEMM across attentions that share a context: the k and v projections are
  // handed over (to_k and to_v emptied, in that order) and from now on the context
  // passed in is that GEMM's output, read from column `col`.
  std::vector<Linear*> context_projections() { return {&to_k, &to_v}; }
  void read_kv_from_context(int64_t col) { context_kv_col = col; }
  // x: [B, S, query_dim], context: [B, T, context_dim] (x itself when undefined)
  // → [B, S, query_dim], plus `residual` when given.
  Tensor operator()(const Tensor& x, const Tensor& context = {}, const Tensor& residual = {}) const;
};

// The projections as one, on `device`: their weights (and biases, all or none)
// concatenated along the outputs. The parts are emptied. Parts on the device go
// through the host and are freed before the result is uploaded, so that it can take
// their place among the model's packed weights; that place is one hole only where
// the parts were loaded one after the other (one attention's q, k, v). Parts loaded
// far apart should be loaded on the host (WeightLoader::on_host) instead.
Linear concatenate(const std::vector<Linear*>& parts, Device device);

// FeedForward with GEGLU (net.0.proj → 2 × inner, net.2 → dim) or GELU.
struct FeedForward {
  Linear proj_in;   // net.0.proj
  Linear proj_out;  // net.2
  bool gated = true;
  // On CUDA the GEGLU projection's rows are kept interleaved (ops::interleave_geglu_rows)
  // and run through ops::linear_geglu, which fuses the gate into the GEMM where it can.
  bool interleaved = false;
  Activation act = Activation::GELU;

  void load(const WeightLoader& w, const std::string& prefix, int64_t dim,
            const std::string& activation_fn, int mult = 4);
  Tensor operator()(const Tensor& x, const Tensor& residual = {}) const;
};

}  // namespace kiln::nn
