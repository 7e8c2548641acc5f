// diffusers' AutoencoderKL: the VAE that maps images to latents and back.
#pragma once

#include <filesystem>
#include <memory>
#include <optional>
#include <vector>

#include "models/model_config.h"
#include "nn/blocks.h"

namespace kiln {

struct VaeConfig {
  int64_t in_channels = 3, out_channels = 3, latent_channels = 4;
  std::vector<int64_t> block_out_channels{64};
  int64_t layers_per_block = 1;
  int norm_num_groups = 32;
  int64_t sample_size = 32;
  double scaling_factor = 0.18215;
  std::optional<double> shift_factor;
  std::vector<double> latents_mean, latents_std;  // SDXL-style per-channel statistics
  bool force_upcast = true;
  bool use_quant_conv = true, use_post_quant_conv = true;
  bool mid_block_add_attention = true;

  // Image pixels per latent pixel along each side.
  int64_t scale_factor() const { return int64_t(1) << (block_out_channels.size() - 1); }
  static VaeConfig parse(const ModelConfig& c);
};

class AutoencoderKL {
 public:
  static std::unique_ptr<AutoencoderKL> load(const std::filesystem::path& dir,
                                             const Placement& placement);

  // z: [B, h, w, latent_channels] (already divided by the scaling factor) →
  // image [B, h·f, w·f, out_channels] in [-1, 1] (not clamped).
  Tensor decode(const Tensor& z) const;

  struct Posterior {
    Tensor mean;    // [B, h, w, latent_channels]
    Tensor logvar;  // same, clamped to [-30, 20] as diffusers does
  };
  // image [B, H, W, in_channels] in [-1, 1] → the latent distribution.
  Posterior encode(const Tensor& image) const;

  const VaeConfig& config() const { return config_; }

 private:
  struct MidBlock {
    nn::ResnetBlock2D resnet_0, resnet_1;
    std::optional<nn::GroupNorm> attention_norm;  // attentions.0.group_norm
    std::optional<nn::Attention> attention;       // single head over all channels
  };
  struct DownBlock {
    std::vector<nn::ResnetBlock2D> resnets;
    std::optional<nn::Downsample2D> downsampler;
  };
  struct UpBlock {
    std::vector<nn::ResnetBlock2D> resnets;
    std::optional<nn::Upsample2D> upsampler;
  };

  void load_mid(const nn::WeightLoader& w, const std::string& prefix, MidBlock& mid);
  Tensor run_mid(const MidBlock& mid, const Tensor& x) const;

  VaeConfig config_;
  Placement placement_;
  // encoder.*
  nn::Conv2d enc_conv_in, enc_conv_out;
  std::vector<DownBlock> enc_down_blocks;
  MidBlock enc_mid;
  nn::GroupNorm enc_conv_norm_out;
  std::optional<nn::Linear> quant_conv;       // 1×1
  std::optional<nn::Linear> post_quant_conv;  // 1×1
  // decoder.*
  nn::Conv2d dec_conv_in, dec_conv_out;
  MidBlock dec_mid;
  std::vector<UpBlock> dec_up_blocks;
  nn::GroupNorm dec_conv_norm_out;
  bool has_encoder_ = false;
};

}  // namespace kiln
