#include "nn/weights.h"

#include <algorithm>
#include <cmath>
#include <optional>

#include "ops/ops.h"

namespace kiln::nn {
namespace {

std::optional<uint64_t> g_random_seed;  // set while a RandomWeights lives

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// A CPU f32 tensor of `shape` drawn from (seed, name), independent of load order.
Tensor random_weight(const std::string& name, Shape shape) {
  uint64_t stream = *g_random_seed;
  for (char ch : name) stream = splitmix64(stream ^ uint8_t(ch));
  Tensor t = Tensor::empty(shape, DType::F32);
  float* p = t.data<float>();
  const int64_t n = t.numel();
  const bool vector = shape.ndim() == 1;
  const bool is_bias = name.size() >= 4 && name.compare(name.size() - 4, 4, "bias") == 0;
  // Uniform on [-a, a] has variance a²/3: a = sqrt(3 / fan_in) gives 1 / fan_in.
  const double fan_in = vector ? 1.0 : double(n) / double(std::max<int64_t>(shape[0], 1));
  const float amplitude = vector ? (is_bias ? 0.02f : 0.1f) : float(std::sqrt(3.0 / fan_in));
  const float offset = vector && !is_bias ? 1.0f : 0.0f;  // norm scales near 1
#pragma omp parallel for schedule(static) if (n >= (int64_t(1) << 16))
  for (int64_t i = 0; i < n; ++i) {
    const double u = double(splitmix64(stream + uint64_t(i)) >> 11) * 0x1.0p-53;  // [0, 1)
    p[i] = offset + amplitude * float(2.0 * u - 1.0);
  }
  return t;
}

}  // namespace

RandomWeights::RandomWeights(uint64_t seed) {
  KILN_CHECK(!g_random_seed, "random weights are already on");
  g_random_seed = seed;
}

RandomWeights::~RandomWeights() {
  g_random_seed.reset();
}

bool WeightLoader::has(const std::string& name) const {
  return g_random_seed || weights_.contains(name);
}

Shape WeightLoader::shape_of(const std::string& name) const {
  return weights_.entry(name).shape;
}

Tensor WeightLoader::place(const Tensor& host) const {
  const LongLivedAllocations weights;  // packed, not rounded to reuse classes (CUDA)
  return ops::to(host, device_, dtype_);
}

Tensor WeightLoader::load(const std::string& name, Shape shape) const {
  if (g_random_seed) return place(random_weight(name, shape));
  const Shape stored = shape_of(name);
  const bool conv_as_linear = shape.ndim() == 2 && stored.ndim() == 4 && stored[2] == 1 &&
                              stored[3] == 1 && stored[0] == shape[0] && stored[1] == shape[1];
  if (stored != shape && !conv_as_linear)
    KILN_FAIL("weight ", name, " in ", weights_.describe(), " has shape ", stored.str(),
              ", the model's config implies ", shape.str());
  return place(weights_.load(name, DType::F32).reshape(shape));
}

Tensor WeightLoader::load_conv(const std::string& name, int64_t out, int64_t in,
                               int64_t kernel) const {
  if (g_random_seed) return place(random_weight(name, {out, kernel, kernel, in}));
  const Shape want{out, in, kernel, kernel};
  const Shape stored = shape_of(name);
  if (stored != want)
    KILN_FAIL("weight ", name, " in ", weights_.describe(), " has shape ", stored.str(),
              ", the model's config implies ", want.str());
  const Tensor oihw = weights_.load(name, DType::F32);
  Tensor ohwi = Tensor::empty({out, kernel, kernel, in}, DType::F32);
  const float* src = oihw.data<float>();
  float* dst = ohwi.data<float>();
  const int64_t plane = kernel * kernel;
  for (int64_t o = 0; o < out; ++o)
    for (int64_t i = 0; i < in; ++i)
      for (int64_t p = 0; p < plane; ++p)
        dst[(o * plane + p) * in + i] = src[(o * in + i) * plane + p];
  return place(ohwi);
}

}  // namespace kiln::nn
