// Ops on the CPU backend against naive loops written here, on random inputs.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "ops/ops.h"

namespace kiln {
namespace {

Tensor random_tensor(Shape shape, uint32_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  Tensor t = Tensor::empty(shape, DType::F32);
  float* p = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = dist(gen);
  return t;
}

double max_abs_diff(const Tensor& a, const std::vector<double>& b) {
  EXPECT_EQ(size_t(a.numel()), b.size());
  double m = 0.0;
  for (int64_t i = 0; i < a.numel(); ++i)
    m = std::max(m, std::abs(double(a.data<float>()[i]) - b[size_t(i)]));
  return m;
}

double gelu(double x) {
  return 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0)));
}

TEST(Ops, LinearWithBiasGeluAndResidualMatchesNaiveLoop) {
  const int64_t m = 37, k = 19, n = 23;
  Tensor x = random_tensor({1, m, k}, 1), w = random_tensor({n, k}, 2), b = random_tensor({n}, 3);
  Tensor r = random_tensor({1, m, n}, 4);
  Tensor y = ops::linear(x, w, b, Activation::GELU, r);
  ASSERT_EQ(y.shape(), Shape({1, m, n}));
  std::vector<double> ref(size_t(m * n));
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double s = b.data<float>()[j];
      for (int64_t q = 0; q < k; ++q)
        s += double(x.data<float>()[i * k + q]) * w.data<float>()[j * k + q];
      ref[size_t(i * n + j)] = gelu(s) + r.data<float>()[i * n + j];
    }
  EXPECT_LT(max_abs_diff(y, ref), 1e-5);
}

TEST(Ops, Conv2dNhwcMatchesNaiveLoopWithStrideAndAsymmetricPadding) {
  const int64_t batch = 2, h = 9, w = 7, c = 5, o = 6, kh = 3, kw = 3;
  Tensor x = random_tensor({batch, h, w, c}, 5), wt = random_tensor({o, kh, kw, c}, 6);
  Tensor bias = random_tensor({o}, 7);
  for (ops::Conv2dGeometry g :
       {ops::Conv2dGeometry{1, 1, 1, 1, 1}, ops::Conv2dGeometry{2, 0, 0, 1, 1},
        ops::Conv2dGeometry{2, 1, 1, 1, 1}}) {
    Tensor y = ops::conv2d(x, wt, bias, g);
    const int64_t ho = y.dim(1), wo = y.dim(2);
    EXPECT_EQ(ho, (h + g.pad_top + g.pad_bottom - kh) / g.stride + 1);
    std::vector<double> ref(size_t(y.numel()));
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t oy = 0; oy < ho; ++oy)
        for (int64_t ox = 0; ox < wo; ++ox)
          for (int64_t oc = 0; oc < o; ++oc) {
            double s = bias.data<float>()[oc];
            for (int64_t ky = 0; ky < kh; ++ky)
              for (int64_t kx = 0; kx < kw; ++kx) {
                const int64_t iy = oy * g.stride - g.pad_top + ky;
                const int64_t ix = ox * g.stride - g.pad_left + kx;
                if (iy < 0 || iy >= h || ix < 0 || ix >= w) continue;
                for (int64_t ic = 0; ic < c; ++ic)
                  s += double(x.data<float>()[((b * h + iy) * w + ix) * c + ic]) *
                       wt.data<float>()[((oc * kh + ky) * kw + kx) * c + ic];
              }
            ref[size_t(((b * ho + oy) * wo + ox) * o + oc)] = s;
          }
    EXPECT_LT(max_abs_diff(y, ref), 1e-5) << "stride " << g.stride;
  }
}

}  // namespace
}  // namespace kiln
