// transformers' CLIPTextModel and CLIPTextModelWithProjection.
#pragma once

#include <filesystem>
#include <memory>
#include <vector>

#include "models/model_config.h"
#include "nn/layers.h"

namespace kiln {

struct ClipTextConfig {
  int64_t vocab_size = 49408;
  int64_t hidden_size = 768;
  int64_t intermediate_size = 3072;
  int num_hidden_layers = 12;
  int num_attention_heads = 12;
  int64_t max_position_embeddings = 77;
  Activation hidden_act = Activation::QuickGELU;
  float layer_norm_eps = 1e-5f;
  int64_t projection_dim = 0;  // > 0 with a projection (CLIPTextModelWithProjection)
  int32_t eos_token_id = 49407;

  static ClipTextConfig parse(const ModelConfig& c, bool with_projection);
};

struct ClipEncoderLayer {
  nn::LayerNorm layer_norm1, layer_norm2;
  nn::Linear q_proj, k_proj, v_proj, out_proj;  // self_attn.*
  nn::Linear fc1, fc2;                          // mlp.*
};

class ClipTextModel {
 public:
  // `dir` holds config.json and model[.variant].safetensors.
  static std::unique_ptr<ClipTextModel> load(const std::filesystem::path& dir,
                                             const Placement& placement);

  struct Output {
    Tensor last_hidden_state;  // [B, S, hidden], after final_layer_norm
    Tensor penultimate;        // [B, S, hidden], hidden_states[-2] (SDXL conditions on it)
    Tensor pooled;             // [B, hidden], last_hidden_state at each row's EOS
    Tensor text_embeds;        // [B, projection_dim], with a projection only
  };
  // ids: [B, S] i32 on the CPU.
  Output forward(const Tensor& ids) const;

  const ClipTextConfig& config() const { return config_; }

 private:
  Tensor layer(const ClipEncoderLayer& l, const Tensor& x) const;

  ClipTextConfig config_;
  Placement placement_;
  Tensor token_embedding;     // [vocab, hidden]
  Tensor position_embedding;  // [max_positions, hidden]
  std::vector<ClipEncoderLayer> layers;
  nn::LayerNorm final_layer_norm;
  std::optional<nn::Linear> text_projection;  // [projection_dim, hidden], no bias
};

}  // namespace kiln
