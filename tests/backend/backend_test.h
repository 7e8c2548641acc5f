// Helpers for the backend tests: every op on CUDA against the CPU reference (the
// ggml test-backend-ops idea). Inputs are drawn fresh for each case and rounded
// to the dtype under test, so that both backends see exactly the same values;
// new CUDA allocations are filled with NaNs, so an element a kernel forgets to
// write fails the comparison.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <vector>

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

inline constexpr DType kAllTypes[] = {DType::F32, DType::F16, DType::BF16};

using Op = std::function<Tensor(const std::vector<Tensor>&)>;

// Runs `op` on CUDA tensors of `dtype` made from `inputs` (CPU f32) and checks the NMSE
// of the result against `expected`, the op on the CPU copies.
inline void expect_close(const std::string& what, DType dtype, const std::vector<Tensor>& inputs,
                         const Op& op, const Tensor& expected, double tol_scale = 1.0) {
  SCOPED_TRACE(what + " " + name(dtype));
  std::vector<Tensor> gpu;
  for (const Tensor& t : inputs)
    gpu.push_back(t.dtype() == DType::F32 ? on_cuda(t, dtype) : t.to(Device::CUDA));
  const Tensor actual = op(gpu);
  ASSERT_EQ(actual.device(), Device::CUDA);
  ASSERT_EQ(actual.dtype(), expected.dtype() == DType::F32 ? dtype : expected.dtype());
  const double e = nmse(actual, expected);
  EXPECT_LE(e, tolerance(dtype) * tol_scale) << what << " " << name(dtype) << ": nmse " << e;
}

// Runs `op` on CPU f32 copies and on CUDA tensors of `dtype` of the same
// inputs, and checks the NMSE of the results.
inline void expect_match(const std::string& what, DType dtype, const std::vector<Tensor>& inputs,
                         const Op& op, double tol_scale = 1.0) {
  expect_close(what, dtype, inputs, op, op(inputs), tol_scale);
}

// `run` (an op on CUDA tensors) twice and once more in a replayed CUDA graph: the same
// bits every time. For ops whose reductions run in a fixed order (GroupNorm's partial
// sums), so that a replayed step reproduces the eager pass exactly.
inline void expect_same_bits(const std::string& what, const std::function<Tensor()>& run) {
  const Tensor first = run().to(Device::CPU);
  const Tensor again = run().to(Device::CPU);
  EXPECT_EQ(std::memcmp(first.raw(), again.raw(), first.nbytes()), 0)
      << what << " differs between runs";
  cuda::CapturedForward graph(run);
  const Tensor replayed = graph.replay().to(Device::CPU);
  EXPECT_EQ(std::memcmp(first.raw(), replayed.raw(), first.nbytes()), 0)
      << what << ": graph replay differs from eager";
}

// Inputs and CPU result of one op on one case in one dtype, shared by the kernels
// (paths) that run the same case: the inputs come from seeds of the key's own, so
// every path sees the same ones, and the reference is computed once, not once a path
// (SD1.5's 4096² attention: about 33 s of references a path in v14). The cache holds
// one case: a key of another case empties it.
struct Reference {
  std::vector<Tensor> inputs;
  Tensor expected;
};
inline const Reference& shared_reference(const std::string& case_key, const std::string& op_key,
                                         DType dtype, const std::vector<Shape>& shapes,
                                         const Op& op) {
  static std::string current;
  static std::map<std::string, Reference> cache;
  static const uint64_t base = next_seed();  // a run's inputs differ from the last run's
  if (case_key != current) {
    cache.clear();
    current = case_key;
  }
  const std::string key = op_key + " " + name(dtype);
  auto it = cache.find(key);
  if (it == cache.end()) {
    Reference r;
    const uint64_t seed = base ^ std::hash<std::string>{}(case_key + " " + key);
    for (size_t i = 0; i < shapes.size(); ++i)
      r.inputs.push_back(random_tensor(shapes[i], dtype, seed + 0x9e3779b97f4a7c15ull * (i + 1)));
    r.expected = op(r.inputs);
    it = cache.emplace(key, std::move(r)).first;
  }
  return it->second;
}

}  // namespace kiln::backend_test
