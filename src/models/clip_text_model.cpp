#include "models/clip_text_model.h"

#include <cmath>

#include "ops/ops.h"

namespace kiln {

ClipTextConfig ClipTextConfig::parse(const ModelConfig& c, bool with_projection) {
  ClipTextConfig t;
  t.vocab_size = c.integer("vocab_size", t.vocab_size);
  t.hidden_size = c.integer("hidden_size", t.hidden_size);
  t.intermediate_size = c.integer("intermediate_size", t.intermediate_size);
  t.num_hidden_layers = int(c.integer("num_hidden_layers", t.num_hidden_layers));
  t.num_attention_heads = int(c.integer("num_attention_heads", t.num_attention_heads));
  t.max_position_embeddings = c.integer("max_position_embeddings", t.max_position_embeddings);
  t.hidden_act = nn::parse_activation(c.string("hidden_act", "quick_gelu"), c.label());
  t.layer_norm_eps = float(c.number("layer_norm_eps", t.layer_norm_eps));
  t.eos_token_id = int32_t(c.integer("eos_token_id", t.eos_token_id));
  if (with_projection) t.projection_dim = c.integer("projection_dim", 512);
  if (t.num_hidden_layers < 2 || t.num_attention_heads < 1 ||
      t.hidden_size % t.num_attention_heads != 0)
    KILN_FAIL(c.label(), ": unsupported text encoder shape (", t.num_hidden_layers, " layers, ",
              t.num_attention_heads, " heads, hidden size ", t.hidden_size, ")");
  return t;
}

std::unique_ptr<ClipTextModel> ClipTextModel::load(const std::filesystem::path& dir,
                                                   const Placement& placement) {
  const ModelConfig cfg = ModelConfig::load(dir);
  const std::string arch = cfg.json().contains("architectures") &&
                                   cfg.json()["architectures"].is_array() &&
                                   !cfg.json()["architectures"].empty()
                               ? cfg.json()["architectures"][0].get<std::string>()
                               : "CLIPTextModel";
  if (arch != "CLIPTextModel" && arch != "CLIPTextModelWithProjection")
    KILN_FAIL(dir.string(), ": text encoder class ", arch,
              " is not supported (CLIPTextModel and CLIPTextModelWithProjection are)");
  auto m = std::unique_ptr<ClipTextModel>(new ClipTextModel());
  m->config_ = ClipTextConfig::parse(cfg, arch == "CLIPTextModelWithProjection");
  m->placement_ = placement;
  const ClipTextConfig& c = m->config_;

  const io::WeightSet weights = io::WeightSet::open(dir, "model", placement.variant);
  const nn::WeightLoader w(weights, placement.device, placement.dtype);
  // transformers 4 saved every CLIP text model under "text_model."; transformers 5
  // saves CLIPTextModel's weights without that prefix. Both occur in the wild.
  const std::string p = w.has("text_model.embeddings.token_embedding.weight") ? "text_model." : "";
  m->token_embedding =
      w.load(p + "embeddings.token_embedding.weight", {c.vocab_size, c.hidden_size});
  m->position_embedding = w.load(p + "embeddings.position_embedding.weight",
                                 {c.max_position_embeddings, c.hidden_size});
  m->layers.resize(size_t(c.num_hidden_layers));
  for (int i = 0; i < c.num_hidden_layers; ++i) {
    ClipEncoderLayer& l = m->layers[size_t(i)];
    const std::string lp = p + "encoder.layers." + std::to_string(i) + ".";
    l.layer_norm1.load(w, lp + "layer_norm1", c.hidden_size, c.layer_norm_eps);
    l.q_proj.load(w, lp + "self_attn.q_proj", c.hidden_size, c.hidden_size);
    l.k_proj.load(w, lp + "self_attn.k_proj", c.hidden_size, c.hidden_size);
    l.v_proj.load(w, lp + "self_attn.v_proj", c.hidden_size, c.hidden_size);
    l.out_proj.load(w, lp + "self_attn.out_proj", c.hidden_size, c.hidden_size);
    l.layer_norm2.load(w, lp + "layer_norm2", c.hidden_size, c.layer_norm_eps);
    l.fc1.load(w, lp + "mlp.fc1", c.hidden_size, c.intermediate_size);
    l.fc2.load(w, lp + "mlp.fc2", c.intermediate_size, c.hidden_size);
  }
  m->final_layer_norm.load(w, p + "final_layer_norm", c.hidden_size, c.layer_norm_eps);
  if (c.projection_dim > 0) {
    m->text_projection.emplace();
    m->text_projection->load(w, "text_projection", c.hidden_size, c.projection_dim, false);
  }
  return m;
}

Tensor ClipTextModel::layer(const ClipEncoderLayer& l, const Tensor& x) const {
  // x: [B, S, hidden]; pre-norm self-attention (causal) and MLP, each residual.
  const float scale =
      float(1.0 / std::sqrt(double(config_.hidden_size / config_.num_attention_heads)));
  const Tensor n1 = l.layer_norm1(x);
  const Tensor attn = ops::attention(l.q_proj(n1), l.k_proj(n1), l.v_proj(n1),
                                     config_.num_attention_heads, scale, /*causal=*/true);
  const Tensor h = l.out_proj(attn, Activation::None, x);
  return l.fc2(l.fc1(l.layer_norm2(h), config_.hidden_act), Activation::None, h);
}

ClipTextModel::Output ClipTextModel::forward(const Tensor& ids) const {
  KILN_CHECK(ids.ndim() == 2 && ids.dtype() == DType::I32 && ids.is_cpu(), "text encoder ids ",
             ids.describe());
  const int64_t batch = ids.dim(0), seq = ids.dim(1);
  if (seq > config_.max_position_embeddings)
    KILN_FAIL("text encoder: ", seq, " tokens exceed max_position_embeddings ",
              config_.max_position_embeddings);
  const int32_t* id = ids.data<int32_t>();
  for (int64_t i = 0; i < ids.numel(); ++i)
    if (id[i] < 0 || id[i] >= config_.vocab_size)
      KILN_FAIL("text encoder: token id ", id[i], " outside the vocabulary of ", config_.vocab_size,
                " (tokenizer and text encoder do not match)");

  const Tensor dev_ids = ids.to(placement_.device);
  Tensor x = ops::embedding(dev_ids, token_embedding);  // [B, S, hidden]
  x = ops::add(x, position_embedding.rows(0, seq));     // positions broadcast over B

  Output out;
  for (size_t i = 0; i < layers.size(); ++i) {
    x = layer(layers[i], x);
    if (i + 2 == layers.size()) out.penultimate = x;
  }
  out.last_hidden_state = final_layer_norm(x);

  // Pooled output at the EOS position: the first EOS id, or (configs with the
  // legacy eos_token_id 2) the largest id, as transformers chooses.
  std::vector<Tensor> rows;
  for (int64_t b = 0; b < batch; ++b) {
    const int32_t* row = id + b * seq;
    int64_t pos = 0;
    if (config_.eos_token_id == 2) {
      for (int64_t s = 1; s < seq; ++s)
        if (row[s] > row[pos]) pos = s;
    } else {
      while (pos < seq && row[pos] != config_.eos_token_id) ++pos;
      if (pos == seq) pos = 0;  // argmax of all zeros
    }
    rows.push_back(out.last_hidden_state.rows(b, b + 1)
                       .reshape({seq, config_.hidden_size})
                       .rows(pos, pos + 1));
  }
  out.pooled = ops::concat_rows(rows);  // [B, hidden]
  if (text_projection) out.text_embeds = (*text_projection)(out.pooled);
  return out;
}

}  // namespace kiln
