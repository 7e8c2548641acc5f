#include "models/unet_2d_condition.h"

#include <algorithm>

#include "ops/ops.h"

namespace kiln {
namespace {

// diffusers' per-block "int or list" fields for transformer depth; nested lists
// give a depth per layer.
std::vector<std::vector<int64_t>> layers_per_block_layer(const nlohmann::json& v,
                                                         const std::vector<int64_t>& layers,
                                                         const std::string& label,
                                                         const std::string& key) {
  std::vector<std::vector<int64_t>> out;
  for (size_t i = 0; i < layers.size(); ++i) {
    const nlohmann::json& e = v.is_array() ? v.at(i) : v;
    if (e.is_number_integer()) {
      out.emplace_back(size_t(layers[i]), e.get<int64_t>());
    } else if (e.is_array() && e.size() == size_t(layers[i])) {
      out.push_back(e.get<std::vector<int64_t>>());
    } else {
      KILN_FAIL(label, ": \"", key, "\" entry ", e.dump(), " does not fit block ", i, " with ",
                layers[i], " layers");
    }
  }
  return out;
}

void require_default(const ModelConfig& c, const std::string& key, const nlohmann::json& expected) {
  if (!c.has(key)) return;
  const nlohmann::json& v = c.json()[key];
  if (v != expected)
    KILN_FAIL(c.label(), ": ", key, " = ", v.dump(), " is not supported (only ",
              expected.is_null() ? "null" : expected.dump(), ")");
}

}  // namespace

UNetConfig UNetConfig::parse(const ModelConfig& c) {
  UNetConfig u;
  for (const char* key : {"class_embed_type", "encoder_hid_dim_type", "time_embedding_act_fn",
                          "timestep_post_act", "cross_attention_norm", "num_attention_heads"})
    require_default(c, key, nullptr);
  require_default(c, "time_embedding_type", "positional");
  require_default(c, "resnet_time_scale_shift", "default");
  require_default(c, "dual_cross_attention", false);
  require_default(c, "attention_type", "default");
  require_default(c, "class_embeddings_concat", false);
  const std::string act = c.string("act_fn", "silu");
  if (act != "silu" && act != "swish")
    KILN_FAIL(c.label(), ": act_fn \"", act, "\" is not supported (only silu)");

  u.in_channels = c.integer("in_channels", 4);
  u.out_channels = c.integer("out_channels", 4);
  u.sample_size = c.has("sample_size") && c.json()["sample_size"].is_array()
                      ? c.integer_list("sample_size").at(0)
                      : c.integer("sample_size", 64);
  u.center_input_sample = c.boolean("center_input_sample", false);
  u.flip_sin_to_cos = c.boolean("flip_sin_to_cos", true);
  u.freq_shift = float(c.number("freq_shift", 0.0));
  u.down_block_types =
      c.has("down_block_types")
          ? c.string_list("down_block_types")
          : std::vector<std::string>{"CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                     "CrossAttnDownBlock2D", "DownBlock2D"};
  u.up_block_types = c.has("up_block_types")
                         ? c.string_list("up_block_types")
                         : std::vector<std::string>{"UpBlock2D", "CrossAttnUpBlock2D",
                                                    "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"};
  u.mid_block_type = c.has("mid_block_type") || !c.json().contains("mid_block_type")
                         ? c.string("mid_block_type", "UNetMidBlock2DCrossAttn")
                         : "";
  u.block_out_channels = c.has("block_out_channels") ? c.integer_list("block_out_channels")
                                                     : std::vector<int64_t>{320, 640, 1280, 1280};
  const size_t n = u.block_out_channels.size();
  if (n == 0 || u.down_block_types.size() != n || u.up_block_types.size() != n)
    KILN_FAIL(c.label(),
              ": down_block_types, up_block_types and block_out_channels must have "
              "the same length");
  for (const std::string& t : u.down_block_types)
    if (t != "CrossAttnDownBlock2D" && t != "DownBlock2D")
      KILN_FAIL(c.label(), ": down block type ", t, " is not supported");
  for (const std::string& t : u.up_block_types)
    if (t != "CrossAttnUpBlock2D" && t != "UpBlock2D")
      KILN_FAIL(c.label(), ": up block type ", t, " is not supported");
  if (!u.mid_block_type.empty() && u.mid_block_type != "UNetMidBlock2DCrossAttn")
    KILN_FAIL(c.label(), ": mid block type ", u.mid_block_type, " is not supported");

  u.layers_per_block = c.integers("layers_per_block", n, 2);
  // Legacy naming: without num_attention_heads, attention_head_dim holds the
  // number of heads (diffusers issue 2011).
  u.num_attention_heads = c.integers("attention_head_dim", n, 8);
  u.cross_attention_dim = c.integers("cross_attention_dim", n, 1280);
  const nlohmann::json tl = c.has("transformer_layers_per_block")
                                ? c.json()["transformer_layers_per_block"]
                                : nlohmann::json(1);
  if (tl.is_array() && tl.size() != n)
    KILN_FAIL(c.label(), ": transformer_layers_per_block has ", tl.size(), " entries, expected ",
              n);
  u.down_transformer_layers =
      layers_per_block_layer(tl, u.layers_per_block, c.label(), "transformer_layers_per_block");
  std::vector<int64_t> up_layers(u.layers_per_block.rbegin(), u.layers_per_block.rend());
  for (int64_t& l : up_layers) ++l;
  if (c.has("reverse_transformer_layers_per_block")) {
    u.up_transformer_layers =
        layers_per_block_layer(c.json()["reverse_transformer_layers_per_block"], up_layers,
                               c.label(), "reverse_transformer_layers_per_block");
  } else {
    if (tl.is_array())
      for (const auto& e : tl)
        if (e.is_array())
          KILN_FAIL(c.label(),
                    ": nested transformer_layers_per_block needs "
                    "reverse_transformer_layers_per_block");
    nlohmann::json reversed = tl;
    if (tl.is_array())
      reversed = nlohmann::json(std::vector<nlohmann::json>(tl.rbegin(), tl.rend()));
    u.up_transformer_layers =
        layers_per_block_layer(reversed, up_layers, c.label(), "transformer_layers_per_block");
  }
  const nlohmann::json& last_tl = tl.is_array() ? tl.back() : tl;
  u.mid_transformer_layers =
      last_tl.is_array() ? last_tl.at(0).get<int64_t>() : last_tl.get<int64_t>();

  if (c.has("only_cross_attention") && c.json()["only_cross_attention"].is_array()) {
    for (const auto& e : c.json()["only_cross_attention"])
      u.only_cross_attention.push_back(e.get<bool>());
    if (u.only_cross_attention.size() != n)
      KILN_FAIL(c.label(), ": only_cross_attention has the wrong length");
  } else {
    u.only_cross_attention.assign(n, c.boolean("only_cross_attention", false));
  }
  u.downsample_padding = int(c.integer("downsample_padding", 1));
  u.mid_block_scale_factor = float(c.number("mid_block_scale_factor", 1.0));
  if (!c.json().contains("norm_num_groups") || c.has("norm_num_groups"))
    u.norm_num_groups = int(c.integer("norm_num_groups", 32));
  else
    KILN_FAIL(c.label(), ": norm_num_groups = null is not supported");
  u.norm_eps = float(c.number("norm_eps", 1e-5));
  u.use_linear_projection = c.boolean("use_linear_projection", false);
  u.upcast_attention = c.boolean("upcast_attention", false);
  u.conv_in_kernel = int(c.integer("conv_in_kernel", 3));
  u.conv_out_kernel = int(c.integer("conv_out_kernel", 3));
  if (u.conv_in_kernel % 2 == 0 || u.conv_out_kernel % 2 == 0)
    KILN_FAIL(c.label(), ": even conv kernel sizes are not supported");
  u.time_embedding_dim = c.integer("time_embedding_dim", 0);
  u.time_cond_proj_dim = c.integer("time_cond_proj_dim", 0);
  const std::string addition = c.string("addition_embed_type", "");
  if (!addition.empty() && addition != "text_time")
    KILN_FAIL(c.label(), ": addition_embed_type \"", addition, "\" is not supported");
  u.addition_text_time = addition == "text_time";
  if (u.addition_text_time) {
    u.addition_time_embed_dim = c.integer("addition_time_embed_dim");
    u.projection_class_embeddings_input_dim = c.integer("projection_class_embeddings_input_dim");
  }
  for (size_t i = 0; i < n; ++i)
    if (u.num_attention_heads[i] <= 0 || u.block_out_channels[i] % u.num_attention_heads[i] != 0)
      KILN_FAIL(c.label(), ": ", u.block_out_channels[i], " channels do not split into ",
                u.num_attention_heads[i], " attention heads");
  return u;
}

std::unique_ptr<UNet2DConditionModel> UNet2DConditionModel::load(const std::filesystem::path& dir,
                                                                 const Placement& placement) {
  const ModelConfig cfg = ModelConfig::load(dir);
  const std::string cls = cfg.string("_class_name", "UNet2DConditionModel");
  if (cls != "UNet2DConditionModel")
    KILN_FAIL(dir.string(), ": denoiser class ", cls,
              " is not supported (UNet2DConditionModel is)");
  auto m = std::unique_ptr<UNet2DConditionModel>(new UNet2DConditionModel());
  m->config_ = UNetConfig::parse(cfg);
  m->placement_ = placement;
  const UNetConfig& c = m->config_;
  const io::WeightSet weights =
      io::WeightSet::open(dir, "diffusion_pytorch_model", placement.variant);
  const nn::WeightLoader w(weights, placement.device, placement.dtype);

  const std::vector<int64_t>& ch = c.block_out_channels;
  const size_t n = ch.size();
  const int64_t time_dim = c.time_embedding_dim > 0 ? c.time_embedding_dim : ch[0] * 4;
  m->conv_in.load(w, "conv_in", c.in_channels, ch[0], c.conv_in_kernel,
                  ops::Conv2dGeometry::same(c.conv_in_kernel));
  m->time_embedding.load(w, "time_embedding", ch[0], time_dim, c.time_cond_proj_dim);
  if (c.addition_text_time) {
    m->add_embedding.emplace();
    m->add_embedding->load(w, "add_embedding", c.projection_class_embeddings_input_dim, time_dim);
  }

  // On CUDA the projections of the text context and of the time embedding are fused
  // across blocks (fuse_context_projections): their weights are loaded on the host and
  // uploaded once, concatenated.
  const bool on_cuda = placement.device == Device::CUDA;
  const bool one_context = std::all_of(c.cross_attention_dim.begin(), c.cross_attention_dim.end(),
                                       [&](int64_t d) { return d == c.cross_attention_dim[0]; });
  const nn::WeightLoader host = w.on_host();
  nn::ResnetBlock2D::Options resnet;
  resnet.groups = c.norm_num_groups;
  resnet.eps = c.norm_eps;
  resnet.temb_channels = time_dim;
  resnet.time_from = on_cuda ? &host : nullptr;
  auto transformer_options = [&](size_t block, int64_t channels, bool only_cross) {
    nn::BasicTransformerBlock::Options o;
    o.heads = int(c.num_attention_heads[block]);
    o.dim_head = channels / o.heads;
    o.cross_attention_dim = c.cross_attention_dim[block];
    o.only_cross_attention = only_cross;
    o.context_from = on_cuda && one_context ? &host : nullptr;
    return o;
  };

  int64_t out_ch = ch[0];
  for (size_t i = 0; i < n; ++i) {
    const int64_t in_ch = out_ch;
    out_ch = ch[i];
    DownBlock& b = m->down_blocks.emplace_back();
    const std::string p = "down_blocks." + std::to_string(i);
    const bool cross = c.down_block_types[i] == "CrossAttnDownBlock2D";
    for (int64_t l = 0; l < c.layers_per_block[i]; ++l) {
      const std::string lp = "." + std::to_string(l);
      b.resnets.emplace_back().load(w, p + ".resnets" + lp, l == 0 ? in_ch : out_ch, out_ch,
                                    resnet);
      if (cross)
        b.attentions.emplace_back().load(
            w, p + ".attentions" + lp, out_ch, int(c.down_transformer_layers[i][size_t(l)]),
            c.norm_num_groups, transformer_options(i, out_ch, c.only_cross_attention[i]));
    }
    if (i + 1 < n) {
      b.downsampler.emplace();
      b.downsampler->load(w, p + ".downsamplers.0", out_ch, c.downsample_padding);
    }
  }

  if (!c.mid_block_type.empty()) {
    MidBlock& mid = m->mid_block.emplace();
    nn::ResnetBlock2D::Options mid_resnet = resnet;
    mid_resnet.output_scale_factor = c.mid_block_scale_factor;
    const int64_t mc = ch.back();
    mid.resnets.emplace_back().load(w, "mid_block.resnets.0", mc, mc, mid_resnet);
    // diffusers builds the mid block's attention without only_cross_attention.
    mid.attentions.emplace_back().load(w, "mid_block.attentions.0", mc,
                                       int(c.mid_transformer_layers), c.norm_num_groups,
                                       transformer_options(n - 1, mc, false));
    mid.resnets.emplace_back().load(w, "mid_block.resnets.1", mc, mc, mid_resnet);
  }

  // Up blocks mirror the down blocks: reversed channels, heads, cross-attention
  // dims and flags, one extra resnet each, each resnet taking a skip connection.
  const std::vector<int64_t> rch(ch.rbegin(), ch.rend());
  out_ch = rch[0];
  for (size_t i = 0; i < n; ++i) {
    const int64_t prev_out = out_ch;
    out_ch = rch[i];
    const int64_t in_ch = rch[std::min(i + 1, n - 1)];
    const size_t mirror = n - 1 - i;
    UpBlock& b = m->up_blocks.emplace_back();
    const std::string p = "up_blocks." + std::to_string(i);
    const bool cross = c.up_block_types[i] == "CrossAttnUpBlock2D";
    const int64_t layers = c.layers_per_block[mirror] + 1;
    for (int64_t l = 0; l < layers; ++l) {
      const std::string lp = "." + std::to_string(l);
      const int64_t skip = l == layers - 1 ? in_ch : out_ch;
      const int64_t resnet_in = l == 0 ? prev_out : out_ch;
      b.resnets.emplace_back().load(w, p + ".resnets" + lp, resnet_in + skip, out_ch, resnet);
      if (cross)
        b.attentions.emplace_back().load(
            w, p + ".attentions" + lp, out_ch, int(c.up_transformer_layers[i][size_t(l)]),
            c.norm_num_groups, transformer_options(mirror, out_ch, c.only_cross_attention[mirror]));
    }
    if (i + 1 < n) {
      b.upsampler.emplace();
      b.upsampler->load(w, p + ".upsamplers.0", out_ch);
    }
  }

  m->conv_norm_out.emplace();
  m->conv_norm_out->load(w, "conv_norm_out", ch[0], c.norm_num_groups, c.norm_eps);
  m->conv_out.load(w, "conv_out", ch[0], c.out_channels, c.conv_out_kernel,
                   ops::Conv2dGeometry::same(c.conv_out_kernel));
  if (on_cuda) {
    m->fuse_context_projections(one_context);
    m->fuse_time_projections();
  }
  return m;
}

// The text context is the same for every block, so the k and v of all the attentions
// that read it can come from one GEMM of [B·T, context dim] by the concatenated
// weights, at the start of the forward. Separately they are 16 (SD1.5) or 70 (SDXL)
// GEMMs of 154 rows that read the weights at well under the GPU's bandwidth: SDXL's
// took 0.79 ms a step (v12). Only on CUDA; the CPU path stays the plain reference.
void UNet2DConditionModel::fuse_context_projections(bool one_gemm) {
  std::vector<nn::Attention*> all;
  auto collect = [&all](std::vector<nn::Transformer2DModel>& transformers) {
    for (nn::Transformer2DModel& t : transformers)
      for (nn::Attention* a : t.context_attentions()) all.push_back(a);
  };
  for (DownBlock& b : down_blocks) collect(b.attentions);
  if (mid_block) collect(mid_block->attentions);
  for (UpBlock& b : up_blocks) collect(b.attentions);
  if (!one_gemm) {  // per-block context dims (no diffusers UNet here has them): k and v per block
    for (nn::Attention* a : all) a->fuse_projections(/*self_attention=*/false);
    return;
  }
  if (all.empty()) return;
  std::vector<nn::Linear*> parts;
  int64_t col = 0;
  for (nn::Attention* a : all) {
    a->read_kv_from_context(col);
    col += a->to_k.out_features() + a->to_v.out_features();
    for (nn::Linear* p : a->context_projections()) parts.push_back(p);
  }
  context_kv_ = nn::concatenate(parts, placement_.device);
}

// The same for the time embedding: each resnet projects it to its channels (22 GEMMs
// of 2 rows a step on SD1.5), and norm2 reads its columns of the one output.
void UNet2DConditionModel::fuse_time_projections() {
  std::vector<nn::ResnetBlock2D*> resnets;
  for (DownBlock& b : down_blocks)
    for (nn::ResnetBlock2D& r : b.resnets) resnets.push_back(&r);
  if (mid_block)
    for (nn::ResnetBlock2D& r : mid_block->resnets) resnets.push_back(&r);
  for (UpBlock& b : up_blocks)
    for (nn::ResnetBlock2D& r : b.resnets) resnets.push_back(&r);
  std::vector<nn::Linear*> parts;
  int64_t col = 0;
  for (nn::ResnetBlock2D* r : resnets) {
    const int64_t out = r->time_emb_proj->out_features();
    parts.push_back(r->project_time_from(col));
    col += out;
  }
  time_proj_ = nn::concatenate(parts, placement_.device);
}

Tensor UNet2DConditionModel::forward(const Inputs& in) const {
  const UNetConfig& c = config_;
  const Tensor& sample = in.sample;
  KILN_CHECK(sample.ndim() == 4 && sample.dim(3) == c.in_channels, "unet: sample ",
             sample.describe(), ", expected [B, H, W, ", c.in_channels, "]");
  const int64_t batch = sample.dim(0);
  KILN_CHECK(in.timesteps.ndim() == 1 && in.timesteps.dim(0) == batch, "unet: timesteps ",
             in.timesteps.describe(), " for batch ", batch);
  KILN_CHECK(in.encoder_hidden_states.ndim() == 3 && in.encoder_hidden_states.dim(0) == batch,
             "unet: encoder_hidden_states ", in.encoder_hidden_states.describe());
  const Device dev = placement_.device;
  const DType dt = placement_.dtype;

  // Time embedding: sinusoidal projection (f32), then the MLP in the model dtype.
  const int64_t ch0 = c.block_out_channels[0];
  Tensor t_emb = ops::timestep_embedding(in.timesteps.to(dev), int(ch0), c.flip_sin_to_cos,
                                         c.freq_shift);  // [B, ch0]
  Tensor cond = in.timestep_cond.defined() ? ops::to(in.timestep_cond, dev, dt) : Tensor();
  Tensor emb = time_embedding(ops::cast(t_emb, dt), cond);  // [B, time_dim]
  if (add_embedding) {
    KILN_CHECK(in.text_embeds.defined() && in.time_ids.defined(),
               "unet: this model (addition_embed_type text_time) needs text_embeds and time_ids");
    const int64_t ids = in.time_ids.dim(1);
    // Each of the time ids gets its own sinusoidal embedding, concatenated.
    Tensor time_embeds =
        ops::timestep_embedding(in.time_ids.to(dev).reshape({batch * ids}),
                                int(c.addition_time_embed_dim), c.flip_sin_to_cos, c.freq_shift)
            .reshape({batch, ids * c.addition_time_embed_dim});
    Tensor add = ops::concat_last({ops::to(in.text_embeds, dev, dt), ops::cast(time_embeds, dt)});
    KILN_CHECK(add.dim(1) == c.projection_class_embeddings_input_dim,
               "unet: added conditioning has ", add.dim(1), " features, the model expects ",
               c.projection_class_embeddings_input_dim);
    emb = ops::add(emb, (*add_embedding)(add));
  }
  // What every resnet projects and adds, or (fused) all of their projections at once.
  Tensor temb_act = ops::activate(emb, Activation::SiLU);
  if (time_proj_.weight.defined()) temb_act = time_proj_(temb_act);
  const Tensor text = ops::to(in.encoder_hidden_states, dev, dt);
  // Fused context projections: every attention reads its k and v from this one tensor.
  const Tensor context = context_kv_.weight.defined() ? context_kv_(text) : text;

  Tensor x = ops::to(sample, dev, dt);
  if (c.center_input_sample) {
    const float minus_one = -1.0f;
    x = ops::add(ops::scale(x, 2.0f), ops::to(Tensor::from_floats({1}, &minus_one), dev, dt));
  }
  x = conv_in(x);  // [B, H, W, ch0]

  std::vector<Tensor> skips{x};
  for (const DownBlock& b : down_blocks) {
    for (size_t l = 0; l < b.resnets.size(); ++l) {
      x = b.resnets[l](x, temb_act);
      if (!b.attentions.empty()) x = b.attentions[l](x, context);
      skips.push_back(x);
    }
    if (b.downsampler) {
      x = (*b.downsampler)(x);
      skips.push_back(x);
    }
  }

  if (mid_block) {
    x = mid_block->resnets[0](x, temb_act);
    x = mid_block->attentions[0](x, context);
    x = mid_block->resnets[1](x, temb_act);
  }

  for (const UpBlock& b : up_blocks) {
    for (size_t l = 0; l < b.resnets.size(); ++l) {
      x = ops::concat_last({x, skips.back()});  // [B, H, W, C + C_skip]
      skips.pop_back();
      x = b.resnets[l](x, temb_act);
      if (!b.attentions.empty()) x = b.attentions[l](x, context);
    }
    if (b.upsampler) {
      // Upsample to the size of the skip connection waiting next, which differs
      // from 2× when the latent size is not a multiple of 2^(levels-1).
      x = (*b.upsampler)(x, skips.back().dim(1), skips.back().dim(2));
    }
  }

  return nn::norm_conv(*conv_norm_out, Activation::SiLU, conv_out, x);  // [B, H, W, out_channels]
}

}  // namespace kiln
