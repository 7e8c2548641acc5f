#include "core/random.h"

#include <cmath>
#include <vector>

namespace kiln {

float TorchGenerator::uniform_float() {
  // 24 random bits scaled by 2^-24.
  return float(engine_() & ((1u << 24) - 1)) * (1.0f / float(1u << 24));
}

double TorchGenerator::uniform_double() {
  const uint64_t hi = engine_();
  const uint64_t lo = engine_();
  const uint64_t bits = (hi << 32) | lo;
  return double(bits & ((uint64_t(1) << 53) - 1)) * (1.0 / double(uint64_t(1) << 53));
}

double TorchGenerator::normal_double() {
  if (next_double_normal_) {
    const double v = *next_double_normal_;
    next_double_normal_.reset();
    return v;
  }
  const double u1 = uniform_double();
  const double u2 = uniform_double();
  const double r = std::sqrt(-2.0 * std::log1p(-u2));
  const double theta = 2.0 * M_PI * u1;
  next_double_normal_ = r * std::sin(theta);
  return r * std::cos(theta);
}

void TorchGenerator::randn(float* out, int64_t n) {
  if (n < 16) {
    // torch's scalar path: one double normal per element, in pairs.
    for (int64_t i = 0; i < n; ++i) out[i] = float(normal_double());
    return;
  }
  // torch's fill path: all uniforms first, then Box-Muller on blocks of 16
  // (8 pairs, element j paired with j + 8); a ragged tail redraws the last 16.
  auto box_muller_16 = [](float* d) {
    for (int j = 0; j < 8; ++j) {
      const float u1 = 1.0f - d[j];
      const float u2 = d[j + 8];
      const float radius = std::sqrt(-2.0f * std::log(u1));
      // torch's AVX2 path (the one x86 machines take) multiplies in float.
      const float theta = 2.0f * float(M_PI) * u2;
      d[j] = radius * std::cos(theta);
      d[j + 8] = radius * std::sin(theta);
    }
  };
  for (int64_t i = 0; i < n; ++i) out[i] = uniform_float();
  for (int64_t i = 0; i + 16 <= n; i += 16) box_muller_16(out + i);
  if (n % 16 != 0) {
    float* tail = out + n - 16;
    for (int i = 0; i < 16; ++i) tail[i] = uniform_float();
    box_muller_16(tail);
  }
}

Tensor TorchGenerator::randn_nhwc(int64_t batch, int64_t channels, int64_t height, int64_t width) {
  const int64_t plane = height * width;
  std::vector<float> nchw(size_t(batch * channels * plane));
  randn(nchw.data(), int64_t(nchw.size()));
  Tensor out = Tensor::empty({batch, height, width, channels}, DType::F32);
  float* o = out.data<float>();
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t c = 0; c < channels; ++c)
      for (int64_t p = 0; p < plane; ++p)
        o[(b * plane + p) * channels + c] = nchw[size_t((b * channels + c) * plane + p)];
  return out;
}

}  // namespace kiln
