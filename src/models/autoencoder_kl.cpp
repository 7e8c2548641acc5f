#include "models/autoencoder_kl.h"

#include <cmath>
#include <tuple>

#include "ops/ops.h"

namespace kiln {

VaeConfig VaeConfig::parse(const ModelConfig& c) {
  VaeConfig v;
  v.in_channels = c.integer("in_channels", 3);
  v.out_channels = c.integer("out_channels", 3);
  v.latent_channels = c.integer("latent_channels", 4);
  if (c.has("block_out_channels")) v.block_out_channels = c.integer_list("block_out_channels");
  const size_t n = v.block_out_channels.size();
  for (const char* key : {"down_block_types", "up_block_types"}) {
    if (!c.has(key)) continue;
    const std::vector<std::string> types = c.string_list(key);
    const std::string want =
        std::string(key) == "down_block_types" ? "DownEncoderBlock2D" : "UpDecoderBlock2D";
    if (types.size() != n)
      KILN_FAIL(c.label(), ": ", key, " has ", types.size(), " entries, block_out_channels ", n);
    for (const std::string& t : types)
      if (t != want) KILN_FAIL(c.label(), ": VAE block type ", t, " is not supported");
  }
  const std::string act = c.string("act_fn", "silu");
  if (act != "silu" && act != "swish") KILN_FAIL(c.label(), ": act_fn ", act, " is not supported");
  v.layers_per_block = c.integer("layers_per_block", 1);
  v.norm_num_groups = int(c.integer("norm_num_groups", 32));
  v.sample_size = c.has("sample_size") && c.json()["sample_size"].is_array()
                      ? c.integer_list("sample_size").at(0)
                      : c.integer("sample_size", 32);
  v.scaling_factor = c.number("scaling_factor", 0.18215);
  if (c.has("shift_factor")) v.shift_factor = c.number("shift_factor", 0.0);
  if (c.has("latents_mean") && c.has("latents_std")) {
    v.latents_mean = c.json()["latents_mean"].get<std::vector<double>>();
    v.latents_std = c.json()["latents_std"].get<std::vector<double>>();
    if (v.latents_mean.size() != size_t(v.latent_channels) ||
        v.latents_std.size() != v.latents_mean.size())
      KILN_FAIL(c.label(), ": latents_mean/latents_std need ", v.latent_channels, " entries");
  }
  v.force_upcast = c.boolean("force_upcast", true);
  v.use_quant_conv = c.boolean("use_quant_conv", true);
  v.use_post_quant_conv = c.boolean("use_post_quant_conv", true);
  v.mid_block_add_attention = c.boolean("mid_block_add_attention", true);
  if (n == 0) KILN_FAIL(c.label(), ": block_out_channels is empty");
  return v;
}

void AutoencoderKL::load_mid(const nn::WeightLoader& w, const std::string& prefix, MidBlock& mid) {
  const int64_t ch = config_.block_out_channels.back();
  nn::ResnetBlock2D::Options o;
  o.groups = config_.norm_num_groups;
  o.eps = 1e-6f;
  mid.resnet_0.load(w, prefix + ".resnets.0", ch, ch, o);
  if (config_.mid_block_add_attention) {
    const std::string a = prefix + ".attentions.0";
    mid.attention_norm.emplace();
    mid.attention_norm->load(w, a + ".group_norm", ch, config_.norm_num_groups, 1e-6f);
    mid.attention.emplace();
    const bool legacy = !w.has(a + ".to_q.weight") && w.has(a + ".query.weight");
    mid.attention->load(w, a, ch, ch, /*heads=*/1, /*dim_head=*/ch, /*qkv_bias=*/true,
                        /*out_bias=*/true,
                        legacy ? nn::AttentionNames::legacy_vae() : nn::AttentionNames{});
    mid.attention->fuse_projections(/*self_attention=*/true);
  }
  mid.resnet_1.load(w, prefix + ".resnets.1", ch, ch, o);
}

std::unique_ptr<AutoencoderKL> AutoencoderKL::load(const std::filesystem::path& dir,
                                                   const Placement& placement) {
  const ModelConfig cfg = ModelConfig::load(dir);
  const std::string cls = cfg.string("_class_name", "AutoencoderKL");
  if (cls != "AutoencoderKL")
    KILN_FAIL(dir.string(), ": VAE class ", cls, " is not supported (AutoencoderKL is)");
  auto m = std::unique_ptr<AutoencoderKL>(new AutoencoderKL());
  m->config_ = VaeConfig::parse(cfg);
  m->placement_ = placement;
  const VaeConfig& c = m->config_;
  const io::WeightSet weights =
      io::WeightSet::open(dir, "diffusion_pytorch_model", placement.variant);
  const nn::WeightLoader w(weights, placement.device, placement.dtype);
  const std::vector<int64_t>& ch = c.block_out_channels;
  const size_t n = ch.size();
  nn::ResnetBlock2D::Options o;
  o.groups = c.norm_num_groups;
  o.eps = 1e-6f;

  // Decoder-only VAE files (no encoder.* weights) still decode.
  m->has_encoder_ = w.has("encoder.conv_in.weight");
  if (m->has_encoder_) {
    m->enc_conv_in.load(w, "encoder.conv_in", c.in_channels, ch[0], 3,
                        ops::Conv2dGeometry::same(3));
    int64_t out = ch[0];
    for (size_t i = 0; i < n; ++i) {
      const int64_t in = out;
      out = ch[i];
      DownBlock& b = m->enc_down_blocks.emplace_back();
      const std::string p = "encoder.down_blocks." + std::to_string(i);
      for (int64_t l = 0; l < c.layers_per_block; ++l)
        b.resnets.emplace_back().load(w, p + ".resnets." + std::to_string(l), l == 0 ? in : out,
                                      out, o);
      if (i + 1 < n) {
        b.downsampler.emplace();
        b.downsampler->load(w, p + ".downsamplers.0", out, /*padding=*/0);
      }
    }
    m->load_mid(w, "encoder.mid_block", m->enc_mid);
    m->enc_conv_norm_out.load(w, "encoder.conv_norm_out", ch.back(), c.norm_num_groups, 1e-6f);
    m->enc_conv_out.load(w, "encoder.conv_out", ch.back(), 2 * c.latent_channels, 3,
                         ops::Conv2dGeometry::same(3));
    if (c.use_quant_conv) {
      m->quant_conv.emplace();
      m->quant_conv->load(w, "quant_conv", 2 * c.latent_channels, 2 * c.latent_channels);
    }
  }

  if (c.use_post_quant_conv) {
    m->post_quant_conv.emplace();
    m->post_quant_conv->load(w, "post_quant_conv", c.latent_channels, c.latent_channels);
  }
  m->dec_conv_in.load(w, "decoder.conv_in", c.latent_channels, ch.back(), 3,
                      ops::Conv2dGeometry::same(3));
  m->load_mid(w, "decoder.mid_block", m->dec_mid);
  int64_t out = ch.back();
  for (size_t i = 0; i < n; ++i) {
    const int64_t prev = out;
    out = ch[n - 1 - i];
    UpBlock& b = m->dec_up_blocks.emplace_back();
    const std::string p = "decoder.up_blocks." + std::to_string(i);
    for (int64_t l = 0; l < c.layers_per_block + 1; ++l)
      b.resnets.emplace_back().load(w, p + ".resnets." + std::to_string(l), l == 0 ? prev : out,
                                    out, o);
    if (i + 1 < n) {
      b.upsampler.emplace();
      b.upsampler->load(w, p + ".upsamplers.0", out, /*any_size=*/false);  // always ×2
    }
  }
  m->dec_conv_norm_out.load(w, "decoder.conv_norm_out", ch[0], c.norm_num_groups, 1e-6f);
  m->dec_conv_out.load(w, "decoder.conv_out", ch[0], c.out_channels, 3,
                       ops::Conv2dGeometry::same(3));
  return m;
}

Tensor AutoencoderKL::run_mid(const MidBlock& mid, const Tensor& x) const {
  Tensor h = mid.resnet_0(x);  // [B, H, W, C]
  if (mid.attention) {
    const int64_t b = h.dim(0), tokens = h.dim(1) * h.dim(2), c = h.dim(3);
    const Tensor seq = (*mid.attention_norm)(h).reshape({b, tokens, c});
    h = (*mid.attention)(seq, {}, h.reshape({b, tokens, c})).reshape(h.shape());
  }
  return mid.resnet_1(h);
}

Tensor AutoencoderKL::decode(const Tensor& z) const {
  KILN_CHECK(z.ndim() == 4 && z.dim(3) == config_.latent_channels, "vae decode: latents ",
             z.describe(), ", expected [B, h, w, ", config_.latent_channels, "]");
  Tensor x = ops::to(z, placement_.device, placement_.dtype);
  if (post_quant_conv) x = (*post_quant_conv)(x);
  x = dec_conv_in(x);  // [B, h, w, C_last]
  x = run_mid(dec_mid, x);
  // The first resnet's norm1(x, SiLU) of the next block, where its upsampler made it.
  Tensor normed;
  for (size_t i = 0; i < dec_up_blocks.size(); ++i) {
    const UpBlock& b = dec_up_blocks[i];
    for (const nn::ResnetBlock2D& r : b.resnets) {
      x = normed.defined() ? r.after_norm1(x, normed) : r(x);
      normed = Tensor();
    }
    if (!b.upsampler) continue;
    if (i + 1 < dec_up_blocks.size() && !dec_up_blocks[i + 1].resnets.empty())
      std::tie(x, normed) =
          b.upsampler->with_norm(x, dec_up_blocks[i + 1].resnets[0].norm1, Activation::SiLU);
    else
      x = (*b.upsampler)(x);
  }
  return nn::norm_conv(dec_conv_norm_out, Activation::SiLU, dec_conv_out, x);  // [B, H, W, out]
}

AutoencoderKL::Posterior AutoencoderKL::encode(const Tensor& image) const {
  if (!has_encoder_) KILN_FAIL("this VAE has no encoder weights, so it cannot encode images");
  KILN_CHECK(image.ndim() == 4 && image.dim(3) == config_.in_channels, "vae encode: image ",
             image.describe());
  Tensor x = enc_conv_in(ops::to(image, placement_.device, placement_.dtype));
  for (const DownBlock& b : enc_down_blocks) {
    for (const nn::ResnetBlock2D& r : b.resnets) x = r(x);
    if (b.downsampler) x = (*b.downsampler)(x);
  }
  x = run_mid(enc_mid, x);
  x = nn::norm_conv(enc_conv_norm_out, Activation::SiLU, enc_conv_out, x);  // [B, h, w, 2·latent]
  if (quant_conv) x = (*quant_conv)(x);
  const int64_t lc = config_.latent_channels;
  return {ops::slice_last(x, 0, lc), ops::clamp(ops::slice_last(x, lc, 2 * lc), -30.0f, 20.0f)};
}

}  // namespace kiln
