// Helpers for the backend tests: every op on CUDA against the CPU reference (the
// ggml test-backend-ops idea). Inputs are drawn fresh for each case and rounded
// to the dtype under test, so that both backends see exactly the same values;
// new CUDA allocations are filled with NaNs, so an element a kernel forgets to
// write fails the comparison.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <string>

#include "backend/cuda/cuda_backend.h"
#include "ops/ops.h"

namespace kiln::backend_test {

// Skips (rather than fails) where there is no GPU: the binary also runs in CI.
class CudaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!cuda::available()) GTEST_SKIP() << "no CUDA device";
    cuda::set_poison_allocations(true);
  }
  void TearDown() override {
    if (cuda::available()) cuda::set_poison_allocations(false);
  }
};

inline std::string name(DType t) {
  return std::string(dtype_name(t));
}

// splitmix64's finaliser: consecutive counters give independent-looking 64-bit words.
inline uint64_t mix64(uint64_t x) {
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// A CPU f32 tensor of N(0, scale²) values (plus `offset`) that `dtype` holds exactly.
// Each pair of values comes from the hash of the seed and the pair's index (Box-Muller
// on two 24-bit uniforms), so the models' large tensors (up to 134M values) fill on
// every core: a serial std::normal_distribution takes about 17 ns a value.
inline Tensor random_tensor(Shape shape, DType dtype, uint64_t seed, float scale = 1.0f,
                            float offset = 0.0f) {
  Tensor t = Tensor::empty(shape, DType::F32);
  float* p = t.data<float>();
  const int64_t n = t.numel();
  const uint64_t key = mix64(seed * 0x9e3779b97f4a7c15ull + 12345);
#pragma omp parallel for schedule(static) if (n >= (int64_t{1} << 16))
  for (int64_t pair = 0; pair < (n + 1) / 2; ++pair) {
    const uint64_t bits = mix64(key + static_cast<uint64_t>(pair));
    const float u1 = static_cast<float>((bits >> 40) + 1) * 0x1p-24f;         // (0, 1]
    const float u2 = static_cast<float>((bits >> 16) & 0xffffff) * 0x1p-24f;  // [0, 1)
    const float r = scale * std::sqrt(-2.0f * std::log(u1));
    const float angle = 6.28318530718f * u2;
    p[2 * pair] = offset + r * std::cos(angle);
    if (2 * pair + 1 < n) p[2 * pair + 1] = offset + r * std::sin(angle);
  }
  return ops::cast(ops::cast(t, dtype), DType::F32);
}

// A fresh seed per call, so that no two cases share inputs.
inline uint64_t next_seed() {
  static uint64_t seed = uint64_t(std::random_device{}()) << 20;
  return ++seed;
}

inline Tensor on_cuda(const Tensor& cpu_f32, DType dtype) {
  return ops::to(cpu_f32, Device::CUDA, dtype);
}

inline Tensor on_cpu(const Tensor& t) {
  return ops::cast(t.to(Device::CPU), DType::F32);
}

// ‖actual − expected‖² / ‖expected‖², infinite when anything is not finite.
inline double nmse(const Tensor& actual, const Tensor& expected) {
  const Tensor a = on_cpu(actual), e = on_cpu(expected);
  EXPECT_EQ(a.shape(), e.shape());
  if (a.shape() != e.shape()) return INFINITY;
  double err = 0.0, ref = 0.0;
  const float* x = a.data<float>();
  const float* y = e.data<float>();
  for (int64_t i = 0; i < a.numel(); ++i) {
    if (!std::isfinite(x[i]) || !std::isfinite(y[i])) return INFINITY;
    const double d = double(x[i]) - double(y[i]);
    err += d * d;
    ref += double(y[i]) * double(y[i]);
  }
  return ref > 0.0 ? err / ref : err;
}

// Bounds on NMSE against the f32 CPU result: an f32 kernel differs by summation
// order only; f16 and bf16 by rounding the output (and intermediates such as
// attention probabilities) to 11 or 8 significant bits.
inline double tolerance(DType t) {
  switch (t) {
    case DType::F16:
      return 2e-5;
    case DType::BF16:
      return 3e-4;
    default:
      return 1e-9;
  }
}

}  // namespace kiln::backend_test
