// Random numbers that reproduce PyTorch's CPU generator, so that `--seed N` gives
// the same pictures as diffusers with torch.Generator("cpu").manual_seed(N).
#pragma once

#include <cstdint>
#include <optional>
#include <random>

#include "core/tensor.h"

namespace kiln {

class TorchGenerator {
 public:
  // torch keeps the low 32 bits of the seed.
  explicit TorchGenerator(uint64_t seed) : engine_(uint32_t(seed)) {}

  // The values of torch.randn(n, dtype=torch.float32, generator=g), advancing the
  // state as that call does.
  void randn(float* out, int64_t n);

  // torch.randn((b, c, h, w), generator=g) laid out NHWC: the draws follow
  // torch's NCHW order and are then transposed into kiln's layout.
  Tensor randn_nhwc(int64_t batch, int64_t channels, int64_t height, int64_t width);

 private:
  float uniform_float();    // torch's uniform_real_distribution<float>(0, 1)
  double uniform_double();  // likewise for double, from 53 bits of two draws
  double normal_double();   // torch's normal_distribution<double>, with its cached pair

  std::mt19937 engine_;
  std::optional<double> next_double_normal_;
};

}  // namespace kiln
