#include "nn/attention.h"

#include <cmath>
#include <vector>

namespace kiln::nn {

void Attention::load(const WeightLoader& w, const std::string& prefix, int64_t query_dim,
                     int64_t context_dim, int h, int64_t dim_head, bool qkv_bias, bool out_bias,
                     const AttentionNames& names, const WeightLoader* kv_from) {
  const int64_t inner = h * dim_head;
  const WeightLoader& kv = kv_from ? *kv_from : w;
  to_q.load(w, prefix + "." + names.q, query_dim, inner, qkv_bias);
  to_k.load(kv, prefix + "." + names.k, context_dim, inner, qkv_bias);
  to_v.load(kv, prefix + "." + names.v, context_dim, inner, qkv_bias);
  to_out.load(w, prefix + "." + names.out, inner, query_dim, out_bias);
  heads = h;
  scale = float(1.0 / std::sqrt(double(dim_head)));
}

Linear concatenate(const std::vector<Linear*>& parts, Device device) {
  KILN_CHECK(!parts.empty(), "concatenate: no projections");
  std::vector<Tensor> weights, biases;
  for (Linear* p : parts) {
    weights.push_back(p->weight.to(Device::CPU));
    if (p->bias.defined()) biases.push_back(p->bias.to(Device::CPU));
    *p = {};
  }
  KILN_CHECK(biases.empty() || biases.size() == parts.size(),
             "attention projections with and without bias");
  const LongLivedAllocations weight;
  Linear fused;
  fused.weight = ops::concat_rows(weights).to(device);  // [Σ out, in]
  if (!biases.empty()) fused.bias = ops::concat_rows(biases).to(device);
  return fused;
}

void Attention::fuse_projections(bool self_attention) {
  if (to_k.weight.device() != Device::CUDA || to_kv.weight.defined() || to_qkv.weight.defined())
    return;
  if (self_attention && to_q.weight.dim(1) == to_k.weight.dim(1))
    to_qkv = concatenate({&to_q, &to_k, &to_v}, Device::CUDA);
  else
    to_kv = concatenate({&to_k, &to_v}, Device::CUDA);
}

Tensor Attention::operator()(const Tensor& x, const Tensor& context, const Tensor& residual) const {
  const Tensor& kv = context.defined() ? context : x;
  if (context_kv_col >= 0) {
    KILN_CHECK(context.defined(),
               "an attention reading its k and v from the context called without one");
    const Tensor o = ops::attention_kv(to_q(x), context, heads, scale, context_kv_col);
    return to_out(o, Activation::None, residual);
  }
  if (to_qkv.weight.defined()) {
    KILN_CHECK(!context.defined(), "a self-attention with fused projections called with a context");
    const Tensor o = ops::attention_qkv(to_qkv(x), heads, scale);
    return to_out(o, Activation::None, residual);
  }
  if (to_kv.weight.defined()) {
    const Tensor o = ops::attention_kv(to_q(x), to_kv(kv), heads, scale);
    return to_out(o, Activation::None, residual);
  }
  const Tensor q = to_q(x);   // [B, S, heads * dim_head]
  const Tensor k = to_k(kv);  // [B, T, heads * dim_head]
  const Tensor v = to_v(kv);  // [B, T, heads * dim_head]
  const Tensor o = ops::attention(q, k, v, heads, scale);
  return to_out(o, Activation::None, residual);  // [B, S, query_dim]
}

void FeedForward::load(const WeightLoader& w, const std::string& prefix, int64_t dim,
                       const std::string& activation_fn, int mult) {
  const int64_t inner = dim * mult;
  if (activation_fn == "geglu") {
    gated = true;
    interleaved = w.device() == Device::CUDA && inner % ops::kGegluBlock == 0;
    if (interleaved) {  // reordered on the host, so that the device holds one copy
      Linear host;
      host.load(w.on_host(), prefix + ".net.0.proj", dim, 2 * inner);
      const LongLivedAllocations weight;
      proj_in.weight = ops::interleave_geglu_rows(host.weight).to(w.device());
      if (host.bias.defined()) proj_in.bias = ops::interleave_geglu_rows(host.bias).to(w.device());
    } else {
      proj_in.load(w, prefix + ".net.0.proj", dim, 2 * inner);
    }
  } else if (activation_fn == "gelu" || activation_fn == "gelu-approximate") {
    gated = false;
    act = activation_fn == "gelu" ? Activation::GELU : Activation::GELUTanh;
    proj_in.load(w, prefix + ".net.0.proj", dim, inner);
  } else {
    KILN_FAIL(prefix, ": feed-forward activation \"", activation_fn, "\" is not supported");
  }
  proj_out.load(w, prefix + ".net.2", inner, dim);
}

Tensor FeedForward::operator()(const Tensor& x, const Tensor& residual) const {
  // x: [B, S, dim] → hidden [B, S, inner] → [B, S, dim]
  const Tensor hidden = !gated        ? proj_in(x, act)
                        : interleaved ? ops::linear_geglu(x, proj_in.weight, proj_in.bias)
                                      : ops::geglu(proj_in(x));
  return proj_out(hidden, Activation::None, residual);
}

}  // namespace kiln::nn
