// diffusers' UNet2DConditionModel with the switches SD 1.x, 2.x and SDXL use.
#pragma once

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "models/model_config.h"
#include "nn/blocks.h"

namespace kiln {

struct UNetConfig {
  int64_t in_channels = 4, out_channels = 4;
  int64_t sample_size = 64;
  bool center_input_sample = false;
  bool flip_sin_to_cos = true;
  float freq_shift = 0.0f;
  std::vector<std::string> down_block_types, up_block_types;
  std::string mid_block_type = "UNetMidBlock2DCrossAttn";  // or "" for none
  std::vector<int64_t> block_out_channels;
  std::vector<int64_t> layers_per_block;  // per down block
  // Transformer depth per block and per layer: down blocks, then up blocks.
  std::vector<std::vector<int64_t>> down_transformer_layers, up_transformer_layers;
  int64_t mid_transformer_layers = 1;
  std::vector<int64_t> num_attention_heads;  // per down block (legacy attention_head_dim)
  std::vector<int64_t> cross_attention_dim;  // per down block
  std::vector<bool> only_cross_attention;    // per down block
  int downsample_padding = 1;
  float mid_block_scale_factor = 1.0f;
  int norm_num_groups = 32;
  float norm_eps = 1e-5f;
  bool use_linear_projection = false;
  bool upcast_attention = false;
  int conv_in_kernel = 3, conv_out_kernel = 3;
  int64_t time_embedding_dim = 0;  // 0: 4 × block_out_channels[0]
  int64_t time_cond_proj_dim = 0;
  bool addition_text_time = false;  // addition_embed_type == "text_time" (SDXL)
  int64_t addition_time_embed_dim = 0;
  int64_t projection_class_embeddings_input_dim = 0;

  static UNetConfig parse(const ModelConfig& c);
};

class UNet2DConditionModel {
 public:
  static std::unique_ptr<UNet2DConditionModel> load(const std::filesystem::path& dir,
                                                    const Placement& placement);

  struct Inputs {
    Tensor sample;                 // [B, H, W, in_channels]
    Tensor timesteps;              // [B] f32, any device
    Tensor encoder_hidden_states;  // [B, T, cross_attention_dim]
    Tensor text_embeds;            // [B, P]    SDXL (addition_embed_type text_time)
    Tensor time_ids;               // [B, 6]    SDXL
    Tensor timestep_cond;          // [B, time_cond_proj_dim] (LCM-distilled models)
  };
  // → [B, H, W, out_channels]
  Tensor forward(const Inputs& in) const;

  const UNetConfig& config() const { return config_; }

 private:
  struct DownBlock {
    std::vector<nn::ResnetBlock2D> resnets;
    std::vector<nn::Transformer2DModel> attentions;  // empty for DownBlock2D
    std::optional<nn::Downsample2D> downsampler;
  };
  struct MidBlock {
    std::vector<nn::ResnetBlock2D> resnets;
    std::vector<nn::Transformer2DModel> attentions;
  };
  struct UpBlock {
    std::vector<nn::ResnetBlock2D> resnets;
    std::vector<nn::Transformer2DModel> attentions;  // empty for UpBlock2D
    std::optional<nn::Upsample2D> upsampler;
  };

  UNetConfig config_;
  Placement placement_;
  nn::Conv2d conv_in;
  nn::TimestepEmbedding time_embedding;
  std::optional<nn::TimestepEmbedding> add_embedding;
  std::vector<DownBlock> down_blocks;
  std::optional<MidBlock> mid_block;
  std::vector<UpBlock> up_blocks;
  std::optional<nn::GroupNorm> conv_norm_out;
  nn::Conv2d conv_out;
  // On CUDA: the k and v projections of every attention that reads the text context,
  // concatenated, so that one GEMM a forward makes them all (fuse_context_projections).
  nn::Linear context_kv_;
  // On CUDA: every resnet's projection of the time embedding, concatenated, so that one
  // GEMM a forward makes them all (fuse_time_projections).
  nn::Linear time_proj_;

  // Called on CUDA once the blocks are loaded with their context and time projections
  // on the host. one_gemm: every cross-attention reads a context of the same width
  // (else each attention's k and v are fused on their own).
  void fuse_context_projections(bool one_gemm);
  void fuse_time_projections();
};

}  // namespace kiln
