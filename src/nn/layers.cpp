#include "nn/layers.h"

namespace kiln::nn {

void Linear::load(const WeightLoader& w, const std::string& prefix, int64_t in, int64_t out,
                  bool has_bias) {
  weight = w.load(prefix + ".weight", {out, in});
  bias = has_bias ? w.load(prefix + ".bias", {out}) : Tensor();
}

void Conv2d::load(const WeightLoader& w, const std::string& prefix, int64_t in, int64_t out,
                  int kernel, ops::Conv2dGeometry g) {
  weight = w.load_conv(prefix + ".weight", out, in, kernel);
  bias = w.load(prefix + ".bias", {out});
  geometry = g;
}

void GroupNorm::load(const WeightLoader& w, const std::string& prefix, int64_t channels, int g,
                     float e) {
  KILN_CHECK(g > 0 && channels % g == 0, prefix, ": ", channels, " channels do not split into ", g,
             " groups");
  weight = w.load(prefix + ".weight", {channels});
  bias = w.load(prefix + ".bias", {channels});
  groups = g;
  eps = e;
}

void LayerNorm::load(const WeightLoader& w, const std::string& prefix, int64_t channels, float e) {
  weight = w.load(prefix + ".weight", {channels});
  bias = w.load(prefix + ".bias", {channels});
  eps = e;
}

Activation parse_activation(const std::string& name, const std::string& where) {
  if (name == "silu" || name == "swish") return Activation::SiLU;
  if (name == "gelu") return Activation::GELU;
  if (name == "gelu_pytorch_tanh" || name == "gelu_new" || name == "gelu_tanh")
    return Activation::GELUTanh;
  if (name == "quick_gelu") return Activation::QuickGELU;
  KILN_FAIL(where, ": activation \"", name, "\" is not supported");
}

}  // namespace kiln::nn
