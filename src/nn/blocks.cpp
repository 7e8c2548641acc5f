#include "nn/blocks.h"

namespace kiln::nn {

void ResnetBlock2D::load(const WeightLoader& w, const std::string& prefix, int64_t in, int64_t out,
                         const Options& o) {
  norm1.load(w, prefix + ".norm1", in, o.groups, o.eps);
  conv1.load(w, prefix + ".conv1", in, out, 3, ops::Conv2dGeometry::same(3));
  if (o.temb_channels > 0) {
    time_emb_proj.emplace();
    time_emb_proj->load(o.time_from ? *o.time_from : w, prefix + ".time_emb_proj", o.temb_channels,
                        out);
  }
  norm2.load(w, prefix + ".norm2", out, o.groups, o.eps);
  conv2.load(w, prefix + ".conv2", out, out, 3, ops::Conv2dGeometry::same(3));
  if (in != out) {
    conv_shortcut.emplace();
    conv_shortcut->load(w, prefix + ".conv_shortcut", in, out);
  }
  output_scale_factor = o.output_scale_factor;
}

Tensor ResnetBlock2D::operator()(const Tensor& x, const Tensor& temb_act) const {
  return after_norm1(x, norm1(x, Activation::SiLU), temb_act);
}

Tensor ResnetBlock2D::after_norm1(const Tensor& x, const Tensor& normed,
                                  const Tensor& temb_act) const {
  Tensor h = conv1(normed);  // [B, H, W, out]
  // h + time_emb_proj(temb) feeds norm2 alone: the add happens inside it.
  if (temb_col >= 0) {
    h = norm2(h, Activation::SiLU, temb_act, temb_col);
  } else {
    const Tensor t = time_emb_proj ? (*time_emb_proj)(temb_act) : Tensor();  // [B, out]
    h = norm2(h, Activation::SiLU, t);
  }
  const Tensor shortcut = conv_shortcut ? (*conv_shortcut)(x) : x;
  Tensor out = conv2(h, shortcut);
  if (output_scale_factor != 1.0f) out = ops::scale(out, 1.0f / output_scale_factor);
  return out;
}

void Downsample2D::load(const WeightLoader& w, const std::string& prefix, int64_t channels,
                        int padding) {
  const ops::Conv2dGeometry g = padding == 0
                                    ? ops::Conv2dGeometry{2, 0, 0, 1, 1}
                                    : ops::Conv2dGeometry{2, padding, padding, padding, padding};
  conv.load(w, prefix + ".conv", channels, channels, 3, g);
}

BlockOptions& block_options() {
  static BlockOptions options;
  return options;
}

void Upsample2D::load(const WeightLoader& w, const std::string& prefix, int64_t channels,
                      bool any_size) {
  const bool by_phase = w.device() == Device::CUDA && block_options().upsample_phases;
  if (!by_phase || any_size)
    conv.load(w, prefix + ".conv", channels, channels, 3, ops::Conv2dGeometry::same(3));
  if (by_phase) {  // made on the host, so that the device holds only what it uses
    Conv2d host;
    host.load(w.on_host(), prefix + ".conv", channels, channels, 3, ops::Conv2dGeometry::same(3));
    const ops::PhaseConv on_host = ops::upsample_conv_phases(host.weight, host.bias);
    const LongLivedAllocations weight;
    phases.weight = on_host.weight.to(w.device());
    phases.bias = on_host.bias.to(w.device());
  }
}

Tensor Upsample2D::operator()(const Tensor& x, int64_t out_h, int64_t out_w) const {
  // x: [B, H, W, C] → [B, out_h, out_w, C]
  if (out_h == 0) out_h = x.dim(1) * 2;
  if (out_w == 0) out_w = x.dim(2) * 2;
  if (phases.weight.defined() && out_h == 2 * x.dim(1) && out_w == 2 * x.dim(2))
    return ops::upsample2x_conv(x, phases);
  KILN_CHECK(conv.weight.defined(), "Upsample2D: ", x.shape().str(), " to ", out_h, "x", out_w,
             ": this upsampler was loaded for exact doublings only");
  return conv(ops::upsample_nearest(x, out_h, out_w));
}

std::pair<Tensor, Tensor> Upsample2D::with_norm(const Tensor& x, const GroupNorm& norm,
                                                Activation act) const {
  if (phases.weight.defined())
    return ops::upsample2x_conv_group_norm(x, phases, norm.weight, norm.bias, norm.groups, norm.eps,
                                           act);
  const Tensor up = (*this)(x);
  return {up, norm(up, act)};
}

void BasicTransformerBlock::load(const WeightLoader& w, const std::string& prefix, int64_t dim,
                                 const Options& o) {
  only_cross_attention = o.only_cross_attention;
  norm1.load(w, prefix + ".norm1", dim, o.norm_eps);
  attn1.load(w, prefix + ".attn1", dim, o.only_cross_attention ? o.cross_attention_dim : dim,
             o.heads, o.dim_head, o.attention_bias, true, {},
             o.only_cross_attention ? o.context_from : nullptr);
  norm2.load(w, prefix + ".norm2", dim, o.norm_eps);
  attn2.load(w, prefix + ".attn2", dim, o.cross_attention_dim, o.heads, o.dim_head,
             o.attention_bias, true, {}, o.context_from);
  if (!o.only_cross_attention) attn1.fuse_projections(/*self_attention=*/true);
  norm3.load(w, prefix + ".norm3", dim, o.norm_eps);
  ff.load(w, prefix + ".ff", dim, o.activation_fn);
}

Tensor BasicTransformerBlock::operator()(const Tensor& x, const Tensor& context) const {
  // x: [B, S, dim]; each sub-layer adds its input back.
  const Tensor attn1_context = only_cross_attention ? context : Tensor();
  if (!block_options().residual_in_norm) {  // every residual add in a GEMM's epilogue
    Tensor h = attn1(norm1(x), attn1_context, x);
    h = attn2(norm2(h), context, h);
    return ff(norm3(h), h);
  }
  // The attentions' adds in the LayerNorms after them: cuBLASLt's output projections
  // with a residual operand took 14.7 µs against 8.5 without at 8192x320x320 (ncu of an
  // eager pass, H100, bench/results/2026-12-07-v36), and the LayerNorm reads its input
  // anyway. The projection's output is rounded to the activations' dtype before the
  // add, as in diffusers, instead of the sum alone.
  auto [h, n2] = norm2.after_add(attn1(norm1(x), attn1_context), x);
  auto [h2, n3] = norm3.after_add(attn2(n2, context), h);
  return ff(n3, h2);
}

std::vector<Attention*> BasicTransformerBlock::context_attentions() {
  if (only_cross_attention) return {&attn1, &attn2};
  return {&attn2};
}

void Transformer2DModel::load(const WeightLoader& w, const std::string& prefix, int64_t channels,
                              int layers, int groups, const BasicTransformerBlock::Options& o) {
  const int64_t inner = o.heads * o.dim_head;
  norm.load(w, prefix + ".norm", channels, groups, 1e-6f);
  proj_in.load(w, prefix + ".proj_in", channels, inner);
  transformer_blocks.resize(size_t(layers));
  for (int i = 0; i < layers; ++i)
    transformer_blocks[size_t(i)].load(w, prefix + ".transformer_blocks." + std::to_string(i),
                                       inner, o);
  proj_out.load(w, prefix + ".proj_out", inner, channels);
}

Tensor Transformer2DModel::operator()(const Tensor& x, const Tensor& context) const {
  const int64_t b = x.dim(0), h = x.dim(1), wd = x.dim(2), c = x.dim(3);
  // NHWC is already the token sequence: [B, H, W, C] ≡ [B, H*W, C].
  Tensor tokens = proj_in(norm(x).reshape({b, h * wd, c}));  // [B, H*W, inner]
  for (const BasicTransformerBlock& block : transformer_blocks) tokens = block(tokens, context);
  return proj_out(tokens, Activation::None, x.reshape({b, h * wd, c})).reshape(x.shape());
}

std::vector<Attention*> Transformer2DModel::context_attentions() {
  std::vector<Attention*> all;
  for (BasicTransformerBlock& block : transformer_blocks)
    for (Attention* a : block.context_attentions()) all.push_back(a);
  return all;
}

void TimestepEmbedding::load(const WeightLoader& w, const std::string& prefix, int64_t in,
                             int64_t dim, int64_t cond_proj_dim) {
  if (cond_proj_dim > 0) {
    cond_proj.emplace();
    cond_proj->load(w, prefix + ".cond_proj", cond_proj_dim, in, /*has_bias=*/false);
  }
  linear_1.load(w, prefix + ".linear_1", in, dim);
  linear_2.load(w, prefix + ".linear_2", dim, dim);
}

Tensor TimestepEmbedding::operator()(const Tensor& sample, const Tensor& condition) const {
  const Tensor in =
      cond_proj && condition.defined() ? (*cond_proj)(condition, Activation::None, sample) : sample;
  return linear_2(linear_1(in, act));  // [B, dim]
}

}  // namespace kiln::nn
