// The building blocks diffusers' UNet2DConditionModel and AutoencoderKL share:
// ResnetBlock2D, Downsample2D, Upsample2D, Transformer2DModel (with its
// BasicTransformerBlocks) and TimestepEmbedding. Members are named as the
// checkpoint keys; activations are NHWC.
#pragma once

#include <optional>
#include <utility>
#include <vector>

#include "nn/attention.h"

namespace kiln::nn {

struct ResnetBlock2D {
  GroupNorm norm1, norm2;
  Conv2d conv1, conv2;
  std::optional<Linear> time_emb_proj;  // absent in the VAE
  std::optional<Linear> conv_shortcut;  // 1×1, when in != out
  float output_scale_factor = 1.0f;
  // After project_time_from(): what the block is given is every resnet's projection of
  // the time embedding side by side ([B, Σ out]), one GEMM's output; its own starts at
  // this column. -1: it is given the embedding and projects it here.
  int64_t temb_col = -1;

  struct Options {
    int groups = 32;
    float eps = 1e-6f;
    int64_t temb_channels = 0;  // 0: no time embedding
    float output_scale_factor = 1.0f;
    // Where time_emb_proj comes from when not from the block's loader (the host, for a
    // model that concatenates them across resnets).
    const WeightLoader* time_from = nullptr;
  };
  void load(const WeightLoader& w, const std::string& prefix, int64_t in, int64_t out,
            const Options& options);
  // x: [B, H, W, in], temb_act: [B, temb_channels] with the nonlinearity already
  // applied (the same for every block, so computed once per forward), or the
  // projections (see temb_col).
  Tensor operator()(const Tensor& x, const Tensor& temb_act = {}) const;
  // The same, given norm1(x, SiLU) already made (Upsample2D::with_norm).
  Tensor after_norm1(const Tensor& x, const Tensor& normed, const Tensor& temb_act = {}) const;
  // Hands time_emb_proj over (emptied) for one GEMM across resnets; from now on the
  // block reads its projection from column `col` of what it is given.
  Linear* project_time_from(int64_t col) {
    temb_col = col;
    return &*time_emb_proj;
  }
};

// Stride-2 3×3 convolution. padding 0 means diffusers' (0, 1, 0, 1) zero pad.
struct Downsample2D {
  Conv2d conv;
  void load(const WeightLoader& w, const std::string& prefix, int64_t channels, int padding);
  Tensor operator()(const Tensor& x) const { return conv(x); }
};

// Choices in how blocks compute that do not change what they compute.
struct BlockOptions {
  // Upsample2D on CUDA by output phase (ops::upsample2x_conv): 2.25× fewer
  // multiply-adds in its convolution and no upsampled tensor. Off: the direct form,
  // for A/B runs. Read when a model loads.
  bool upsample_phases = true;
  // BasicTransformerBlock: the self- and cross-attention's residual adds in the
  // LayerNorm after them (ops::add_layer_norm) instead of in their output projections'
  // GEMMs. Off by default: in a same-run A/B on an H100 (bench/results/2026-12-07-v36,
  // call 4) SD1.5's step was 0.04 ms slower with it (the GEMMs gained 0.03 ms, the
  // LayerNorms' extra read and write cost 0.06) and SDXL's 0.29 ms faster on average
  // over four rounds, within its spread (±0.35). Read at each forward.
  bool residual_in_norm = false;
};
BlockOptions& block_options();

// Nearest ×2 (or to an explicit size) followed by a 3×3 convolution.
struct Upsample2D {
  Conv2d conv;            // the 3×3 convolution; left empty where only `phases` is needed
  ops::PhaseConv phases;  // on CUDA, the same by output phase, for exact doublings
  // any_size: keep the direct form for explicit sizes (a UNet's odd latent sizes).
  void load(const WeightLoader& w, const std::string& prefix, int64_t channels,
            bool any_size = true);
  Tensor operator()(const Tensor& x, int64_t out_h = 0, int64_t out_w = 0) const;
  // {this(x), norm(this(x), act)}: the next block's first GroupNorm too, which by output
  // phase takes its statistics while the phases are put in place
  // (ops::upsample2x_conv_group_norm) where the backend fuses the two.
  std::pair<Tensor, Tensor> with_norm(const Tensor& x, const GroupNorm& norm, Activation act) const;
};

struct BasicTransformerBlock {
  LayerNorm norm1, norm2, norm3;
  Attention attn1, attn2;
  FeedForward ff;
  bool only_cross_attention = false;

  struct Options {
    int heads = 8;
    int64_t dim_head = 64;
    int64_t cross_attention_dim = 768;
    bool only_cross_attention = false;
    bool attention_bias = false;
    std::string activation_fn = "geglu";
    float norm_eps = 1e-5f;
    // Where the k and v projections of the attentions that read the context come from
    // when not from the block's loader (the host, for a model that concatenates them
    // across blocks: see context_attentions()).
    const WeightLoader* context_from = nullptr;
  };
  // On CUDA the self-attention's projections are fused here; those that read the
  // context are left to the model (context_attentions()), which can make the k and v
  // of all its blocks in one GEMM.
  void load(const WeightLoader& w, const std::string& prefix, int64_t dim, const Options& o);
  // x: [B, S, dim], context: [B, T, cross_attention_dim]
  Tensor operator()(const Tensor& x, const Tensor& context) const;
  // The attentions that are given the context: attn2, and attn1 too when only_cross_attention.
  std::vector<Attention*> context_attentions();
};

struct Transformer2DModel {
  GroupNorm norm;
  Linear proj_in, proj_out;  // Linear or 1×1 conv in the checkpoint: the same map on NHWC
  std::vector<BasicTransformerBlock> transformer_blocks;

  void load(const WeightLoader& w, const std::string& prefix, int64_t channels, int layers,
            int groups, const BasicTransformerBlock::Options& o);
  // x: [B, H, W, C], context: [B, T, cross_attention_dim] → [B, H, W, C]
  Tensor operator()(const Tensor& x, const Tensor& context) const;
  std::vector<Attention*> context_attentions();  // every block's, in order
};

// linear_1 → act → linear_2, with an optional cond_proj added to the input.
struct TimestepEmbedding {
  Linear linear_1, linear_2;
  std::optional<Linear> cond_proj;
  Activation act = Activation::SiLU;

  void load(const WeightLoader& w, const std::string& prefix, int64_t in, int64_t dim,
            int64_t cond_proj_dim = 0);
  // sample: [B, in], condition: [B, cond_proj_dim] or undefined → [B, dim]
  Tensor operator()(const Tensor& sample, const Tensor& condition = {}) const;
};

}  // namespace kiln::nn
