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

std::vector<double> values(const Tensor& t) {
  return std::vector<double>(t.data<float>(), t.data<float>() + t.numel());
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

namespace kiln {
namespace {

const float* f(const Tensor& t) {
  return t.data<float>();
}

TEST(Ops, AttentionMatchesNaiveSoftmaxPerHeadIncludingCausalMask) {
  const int64_t batch = 2, sq = 70, sk = 70, heads = 3, d = 5, width = heads * d;
  Tensor q = random_tensor({batch, sq, width}, 11, -2, 2),
         k = random_tensor({batch, sk, width}, 12, -2, 2);
  Tensor v = random_tensor({batch, sk, width}, 13);
  const float scale = 0.37f;
  for (bool causal : {false, true}) {
    Tensor y = ops::attention(q, k, v, int(heads), scale, causal);
    std::vector<double> ref(size_t(y.numel()));
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t h = 0; h < heads; ++h)
        for (int64_t i = 0; i < sq; ++i) {
          const int64_t visible = causal ? i + 1 : sk;
          std::vector<double> s(static_cast<size_t>(visible));
          double mx = -1e300, sum = 0.0;
          for (int64_t j = 0; j < visible; ++j) {
            double dot = 0.0;
            for (int64_t e = 0; e < d; ++e)
              dot += double(f(q)[(b * sq + i) * width + h * d + e]) *
                     f(k)[(b * sk + j) * width + h * d + e];
            s[size_t(j)] = dot * scale;
            mx = std::max(mx, s[size_t(j)]);
          }
          for (double& x : s) sum += (x = std::exp(x - mx));
          for (int64_t e = 0; e < d; ++e) {
            double o = 0.0;
            for (int64_t j = 0; j < visible; ++j)
              o += s[size_t(j)] / sum * f(v)[(b * sk + j) * width + h * d + e];
            ref[size_t((b * sq + i) * width + h * d + e)] = o;
          }
        }
    EXPECT_LT(max_abs_diff(y, ref), 1e-5) << "causal " << causal;
  }
}

// Packed projections read the same numbers through other strides: the results are
// the unpacked ones exactly.
TEST(Ops, PackedAttentionEqualsUnpacked) {
  const int64_t batch = 2, sq = 33, sk = 7, heads = 3, d = 8, width = heads * d;
  const Tensor qkv = random_tensor({batch, sq, 3 * width}, 31, -2, 2);
  const Tensor q = ops::slice_last(qkv, 0, width), k = ops::slice_last(qkv, width, 2 * width),
               v = ops::slice_last(qkv, 2 * width, 3 * width);
  const Tensor self = ops::attention_qkv(qkv, int(heads), 0.3f);
  EXPECT_EQ(max_abs_diff(self, values(ops::attention(q, k, v, int(heads), 0.3f))), 0.0);

  const Tensor kv = random_tensor({batch, sk, 2 * width}, 32, -2, 2);
  const Tensor cross = ops::attention_kv(q, kv, int(heads), 0.3f);
  const Tensor unpacked = ops::attention(q, ops::slice_last(kv, 0, width),
                                         ops::slice_last(kv, width, 2 * width), int(heads), 0.3f);
  EXPECT_EQ(max_abs_diff(cross, values(unpacked)), 0.0);

  // Many attentions' k and v side by side (the UNet's one GEMM for all of them): this
  // one's from column 5.
  const int64_t col = 5;
  const Tensor many = random_tensor({batch, sk, 2 * width + 3 * col}, 35, -2, 2);
  const Tensor at = ops::attention_kv(q, many, int(heads), 0.3f, col);
  const Tensor sliced =
      ops::attention(q, ops::slice_last(many, col, col + width),
                     ops::slice_last(many, col + width, col + 2 * width), int(heads), 0.3f);
  EXPECT_EQ(max_abs_diff(at, values(sliced)), 0.0);
  EXPECT_THROW(ops::attention_kv(q, many, int(heads), 0.3f, 3 * col + 1), Error);  // past the end
  EXPECT_THROW(ops::attention_kv(q, many, int(heads), 0.3f, -1), Error);
  EXPECT_THROW(ops::attention_qkv(random_tensor({1, 4, 10}, 33), 2, 1.0f), Error);  // not 3 parts
  EXPECT_THROW(ops::attention_kv(q, random_tensor({batch, sk, width}, 34), int(heads), 1.0f),
               Error);  // kv too narrow
}

TEST(Ops, CrossAttentionWithFewerKeysThanQueries) {
  const int64_t sq = 9, sk = 4, width = 8;
  Tensor q = random_tensor({1, sq, width}, 21), k = random_tensor({1, sk, width}, 22);
  Tensor v = random_tensor({1, sk, width}, 23);
  Tensor y = ops::attention(q, k, v, 2, 0.5f);
  // Every output row is a convex combination of value rows: within their range per column.
  for (int64_t i = 0; i < sq; ++i)
    for (int64_t e = 0; e < width; ++e) {
      float lo = 1e9f, hi = -1e9f;
      for (int64_t j = 0; j < sk; ++j) {
        lo = std::min(lo, f(v)[j * width + e]);
        hi = std::max(hi, f(v)[j * width + e]);
      }
      EXPECT_GE(f(y)[i * width + e], lo - 1e-6f);
      EXPECT_LE(f(y)[i * width + e], hi + 1e-6f);
    }
}

TEST(Ops, GroupNormWithSiluMatchesNaiveStatistics) {
  const int64_t batch = 2, h = 5, w = 3, c = 12;
  const int groups = 4;
  Tensor x = random_tensor({batch, h, w, c}, 31, -3, 5), g = random_tensor({c}, 32),
         bt = random_tensor({c}, 33);
  Tensor y = ops::group_norm(x, g, bt, groups, 1e-5f, Activation::SiLU);
  std::vector<double> ref(size_t(x.numel()));
  const int64_t cg = c / groups, n = h * w;
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t grp = 0; grp < groups; ++grp) {
      double s = 0, ss = 0;
      for (int64_t p = 0; p < n; ++p)
        for (int64_t ch = grp * cg; ch < (grp + 1) * cg; ++ch) s += f(x)[(b * n + p) * c + ch];
      const double mean = s / double(n * cg);
      for (int64_t p = 0; p < n; ++p)
        for (int64_t ch = grp * cg; ch < (grp + 1) * cg; ++ch) {
          const double dlt = f(x)[(b * n + p) * c + ch] - mean;
          ss += dlt * dlt;
        }
      const double rstd = 1.0 / std::sqrt(ss / double(n * cg) + 1e-5);
      for (int64_t p = 0; p < n; ++p)
        for (int64_t ch = grp * cg; ch < (grp + 1) * cg; ++ch) {
          const size_t i = size_t((b * n + p) * c + ch);
          const double v = (f(x)[i] - mean) * rstd * f(g)[ch] + f(bt)[ch];
          ref[i] = v / (1.0 + std::exp(-v));
        }
    }
  EXPECT_LT(max_abs_diff(y, ref), 1e-5);
}

TEST(Ops, GroupNormWithAddendEqualsTheAddThenTheNorm) {
  // A resnet's time embedding goes into norm2 on the way in: the same values as a
  // separate broadcast add before it.
  const int64_t batch = 3, h = 4, w = 5, c = 16;
  Tensor x = random_tensor({batch, h, w, c}, 41), t = random_tensor({batch, c}, 42, -2, 2);
  Tensor g = random_tensor({c}, 43), bt = random_tensor({c}, 44);
  const Tensor fused = ops::group_norm(x, g, bt, 4, 1e-5f, Activation::SiLU, t);
  const Tensor separate =
      ops::group_norm(ops::add(x, t.reshape({batch, 1, 1, c})), g, bt, 4, 1e-5f, Activation::SiLU);
  ASSERT_EQ(fused.shape(), x.shape());
  for (int64_t i = 0; i < fused.numel(); ++i)
    ASSERT_EQ(f(fused)[i], f(separate)[i]) << "element " << i;
  // An addend that is not [B, C] is an error, not a crash.
  EXPECT_THROW(ops::group_norm(x, g, bt, 4, 1e-5f, Activation::SiLU, random_tensor({c}, 45)),
               Error);
  EXPECT_THROW(
      ops::group_norm(x, g, bt, 4, 1e-5f, Activation::SiLU, random_tensor({batch, c + 1}, 46)),
      Error);

  // Many resnets' embeddings side by side (one GEMM made them): this one's from column 3.
  const Tensor wide = random_tensor({batch, c + 7}, 47, -2, 2);
  const Tensor from_wide = ops::group_norm(x, g, bt, 4, 1e-5f, Activation::SiLU, wide, 3);
  const Tensor sliced =
      ops::group_norm(x, g, bt, 4, 1e-5f, Activation::SiLU, ops::slice_last(wide, 3, 3 + c));
  for (int64_t i = 0; i < from_wide.numel(); ++i)
    ASSERT_EQ(f(from_wide)[i], f(sliced)[i]) << "element " << i;
  EXPECT_THROW(ops::group_norm(x, g, bt, 4, 1e-5f, Activation::SiLU, wide, 8),
               Error);  // past the end
  EXPECT_THROW(
      ops::group_norm(x, g, bt, 4, 1e-5f, Activation::SiLU, wide.reshape({batch, 1, c + 7}), 0),
      Error);  // not [B, W]
}

TEST(Ops, LayerNormMatchesNaiveLoop) {
  const int64_t m = 7, c = 33;
  Tensor x = random_tensor({m, c}, 41, -4, 4), g = random_tensor({c}, 42),
         b = random_tensor({c}, 43);
  Tensor y = ops::layer_norm(x, g, b, 1e-5f);
  std::vector<double> ref(size_t(x.numel()));
  for (int64_t i = 0; i < m; ++i) {
    double s = 0, ss = 0;
    for (int64_t j = 0; j < c; ++j) s += f(x)[i * c + j];
    const double mean = s / double(c);
    for (int64_t j = 0; j < c; ++j) ss += (f(x)[i * c + j] - mean) * (f(x)[i * c + j] - mean);
    const double rstd = 1.0 / std::sqrt(ss / double(c) + 1e-5);
    for (int64_t j = 0; j < c; ++j)
      ref[size_t(i * c + j)] = (f(x)[i * c + j] - mean) * rstd * f(g)[j] + f(b)[j];
  }
  EXPECT_LT(max_abs_diff(y, ref), 1e-5);
}

TEST(Ops, UpsampleNearestPicksTorchSourceIndices) {
  Tensor x = random_tensor({1, 3, 5, 2}, 51);
  // Twice the size, and a size the ratio does not divide (torch: floor(dst * in / out)).
  for (auto [oh, ow] : {std::pair<int64_t, int64_t>{6, 10}, {7, 9}}) {
    Tensor y = ops::upsample_nearest(x, oh, ow);
    std::vector<double> ref(size_t(y.numel()));
    for (int64_t yy = 0; yy < oh; ++yy)
      for (int64_t xx = 0; xx < ow; ++xx)
        for (int64_t ch = 0; ch < 2; ++ch) {
          const int64_t sy = int64_t(std::floor(float(yy) * (3.0f / float(oh))));
          const int64_t sx = int64_t(std::floor(float(xx) * (5.0f / float(ow))));
          ref[size_t((yy * ow + xx) * 2 + ch)] = f(x)[(sy * 5 + sx) * 2 + ch];
        }
    EXPECT_EQ(max_abs_diff(y, ref), 0.0) << oh << "x" << ow;
  }
}

// The phase form of an upsampling convolution against the direct form it replaces on
// CUDA: the same map, to f32 rounding, at every border, with and without a bias, on
// square and non-square images.
TEST(Ops, UpsampleConvByPhaseMatchesUpsampleThenConv) {
  struct Case {
    int64_t b, h, w, c, o;
    bool bias;
  };
  for (const Case k : {Case{1, 1, 1, 1, 1, true}, Case{2, 3, 5, 4, 3, true},
                       Case{1, 4, 4, 8, 16, false}, Case{2, 6, 3, 5, 7, true}}) {
    const Tensor x = random_tensor({k.b, k.h, k.w, k.c}, 61);
    const Tensor w = random_tensor({k.o, 3, 3, k.c}, 62);
    const Tensor bias = k.bias ? random_tensor({k.o}, 63) : Tensor();
    const Tensor direct = ops::conv2d(ops::upsample_nearest(x, 2 * k.h, 2 * k.w), w, bias,
                                      ops::Conv2dGeometry::same(3));
    const Tensor by_phase = ops::upsample2x_conv(x, ops::upsample_conv_phases(w, bias));
    ASSERT_EQ(by_phase.shape(), direct.shape());
    std::vector<double> ref(size_t(direct.numel()));
    for (size_t i = 0; i < ref.size(); ++i) ref[i] = f(direct)[i];
    EXPECT_LT(max_abs_diff(by_phase, ref), 1e-5)
        << k.b << "x" << k.h << "x" << k.w << "x" << k.c << " -> " << k.o;
  }
}

// With the next GroupNorm in the same op (its output written over the phases' memory,
// once they are in place): the same values as the two ops.
TEST(Ops, UpsampleConvWithGroupNormMatchesTheOpsApart) {
  const Tensor x = random_tensor({2, 3, 5, 8}, 64);
  const ops::PhaseConv phases =
      ops::upsample_conv_phases(random_tensor({12, 3, 3, 8}, 65), random_tensor({12}, 66));
  const Tensor gamma = random_tensor({12}, 67), beta = random_tensor({12}, 68);
  const Tensor up = ops::upsample2x_conv(x, phases);
  const Tensor normed = ops::group_norm(up, gamma, beta, 4, 1e-6f, Activation::SiLU);
  const auto [up2, normed2] =
      ops::upsample2x_conv_group_norm(x, phases, gamma, beta, 4, 1e-6f, Activation::SiLU);
  ASSERT_EQ(up2.shape(), up.shape());
  ASSERT_EQ(normed2.shape(), normed.shape());
  std::vector<double> ref_up(size_t(up.numel())), ref_normed(size_t(normed.numel()));
  for (size_t i = 0; i < ref_up.size(); ++i) ref_up[i] = f(up)[i];
  for (size_t i = 0; i < ref_normed.size(); ++i) ref_normed[i] = f(normed)[i];
  EXPECT_EQ(max_abs_diff(up2, ref_up), 0.0);
  EXPECT_EQ(max_abs_diff(normed2, ref_normed), 0.0);
}

// A GroupNorm and the convolution after it as one op (the models' conv_out): the same
// values as the two ops apart, and each op's own errors for bad operands.
TEST(Ops, GroupNormConvMatchesTheOpsApart) {
  const Tensor x = random_tensor({2, 6, 7, 16}, 70);
  const Tensor gamma = random_tensor({16}, 71), beta = random_tensor({16}, 72);
  const Tensor w = random_tensor({3, 3, 3, 16}, 73), bias = random_tensor({3}, 74);
  const auto g = ops::Conv2dGeometry::same(3);
  const Tensor apart =
      ops::conv2d(ops::group_norm(x, gamma, beta, 4, 1e-6f, Activation::SiLU), w, bias, g);
  const Tensor fused =
      ops::group_norm_conv2d(x, gamma, beta, 4, 1e-6f, Activation::SiLU, w, bias, g);
  ASSERT_EQ(fused.shape(), apart.shape());
  std::vector<double> ref(size_t(apart.numel()));
  for (size_t i = 0; i < ref.size(); ++i) ref[i] = f(apart)[i];
  EXPECT_EQ(max_abs_diff(fused, ref), 0.0);
  EXPECT_THROW(ops::group_norm_conv2d(x, gamma, beta, 5, 1e-6f, Activation::SiLU, w, bias, g),
               Error);  // 16 channels in 5 groups
  EXPECT_THROW(ops::group_norm_conv2d(x, gamma, beta, 4, 1e-6f, Activation::SiLU,
                                      random_tensor({3, 3, 3, 8}, 75), bias, g),
               Error);  // the weight's 8 input channels
  EXPECT_THROW(ops::group_norm_conv2d(x.reshape({2, 42, 16}), gamma, beta, 4, 1e-6f,
                                      Activation::SiLU, w, bias, g),
               Error);  // not NHWC
}

TEST(Ops, TimestepEmbeddingFollowsDiffusersFormula) {
  const float t[2] = {999.0f, 0.5f};
  Tensor ts = Tensor::from_floats({2}, t);
  for (bool flip : {true, false}) {
    Tensor y = ops::timestep_embedding(ts, 8, flip, 1.0f);
    std::vector<double> ref(16);
    for (int b = 0; b < 2; ++b)
      for (int i = 0; i < 4; ++i) {
        const double freq = std::exp(-std::log(10000.0) * i / (4 - 1.0));
        const double s = std::sin(t[b] * freq), c = std::cos(t[b] * freq);
        ref[size_t(b * 8 + (flip ? 4 + i : i))] = s;
        ref[size_t(b * 8 + (flip ? i : 4 + i))] = c;
      }
    EXPECT_LT(max_abs_diff(y, ref), 2e-4) << "flip " << flip;  // f32 argument rounding near 1000
  }
}

TEST(Ops, GegluConcatSliceAndBroadcastAdd) {
  Tensor x = random_tensor({3, 8}, 61, -3, 3);
  Tensor g = ops::geglu(x);
  std::vector<double> ref(12);
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 4; ++j)
      ref[size_t(i * 4 + j)] = f(x)[i * 8 + j] * gelu(f(x)[i * 8 + 4 + j]);
  EXPECT_LT(max_abs_diff(g, ref), 1e-6);

  Tensor a = random_tensor({2, 3, 2}, 62), b = random_tensor({2, 3, 5}, 63);
  Tensor cat = ops::concat_last({a, b});
  ASSERT_EQ(cat.shape(), Shape({2, 3, 7}));
  Tensor back = ops::slice_last(cat, 2, 7);
  EXPECT_EQ(max_abs_diff(back, std::vector<double>(f(b), f(b) + b.numel())), 0.0);

  // [B, H, W, C] + [B, 1, 1, C]: the per-channel time embedding of a resnet.
  Tensor h = random_tensor({2, 3, 4, 5}, 64), t = random_tensor({2, 1, 1, 5}, 65);
  Tensor sum = ops::add(h, t);
  std::vector<double> want(size_t(h.numel()));
  for (int64_t i = 0; i < h.numel(); ++i) want[size_t(i)] = f(h)[i] + f(t)[(i / 60) * 5 + i % 5];
  EXPECT_EQ(max_abs_diff(sum, want), 0.0);
}

TEST(Ops, GegluOnInterleavedBlocks) {
  // Columns alternate blocks of 4 hidden and 4 gate columns.
  Tensor x = random_tensor({3, 16}, 66, -3, 3);
  Tensor g = ops::geglu(x, 4);
  ASSERT_EQ(g.shape(), Shape({3, 8}));
  std::vector<double> ref(24);
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 8; ++j) {
      const int h = (j / 4) * 8 + j % 4;
      ref[size_t(i * 8 + j)] = f(x)[i * 16 + h] * gelu(f(x)[i * 16 + h + 4]);
    }
  EXPECT_LT(max_abs_diff(g, ref), 1e-6);
  EXPECT_THROW(ops::geglu(x, 3), Error);   // not a power of two
  EXPECT_THROW(ops::geglu(x, 16), Error);  // does not divide the 8 outputs
}

TEST(Ops, LinearGegluOnInterleavedWeights) {
  // diffusers' order: rows [hidden (N); gate (N)]; linear_geglu takes them interleaved.
  const int64_t n = 2 * ops::kGegluBlock, k = 5;
  Tensor x = random_tensor({2, 3, k}, 67, -2, 2);
  Tensor w = random_tensor({2 * n, k}, 68, -1, 1), b = random_tensor({2 * n}, 69, -1, 1);
  const Tensor wi = ops::interleave_geglu_rows(w), bi = ops::interleave_geglu_rows(b);
  // Row r of the interleaved weight: block r / 16; hidden rows first, then the gate's.
  for (int64_t r = 0; r < 2 * n; ++r) {
    const int64_t block = r / (2 * ops::kGegluBlock), within = r % (2 * ops::kGegluBlock);
    const int64_t col = block * ops::kGegluBlock + within % ops::kGegluBlock;
    const int64_t from = within < ops::kGegluBlock ? col : n + col;
    EXPECT_EQ(f(bi)[r], f(b)[from]) << "row " << r;
    for (int64_t j = 0; j < k; ++j) ASSERT_EQ(f(wi)[r * k + j], f(w)[from * k + j]);
  }
  const Tensor fused = ops::linear_geglu(x, wi, bi);
  ASSERT_EQ(fused.shape(), Shape({2, 3, n}));
  const Tensor plain = ops::geglu(ops::linear(x, w, b));
  EXPECT_LT(max_abs_diff(fused, std::vector<double>(f(plain), f(plain) + plain.numel())), 1e-5);
  EXPECT_THROW(ops::interleave_geglu_rows(random_tensor({24, 2}, 70)), Error);  // 24 % 16
  EXPECT_THROW(ops::linear_geglu(x, random_tensor({24, k}, 71), Tensor()), Error);
}

TEST(Ops, LinearCombinationClampAndCastRoundTrip) {
  Tensor a = random_tensor({100}, 71, -10, 10), b = random_tensor({100}, 72, -10, 10);
  Tensor lc = ops::linear_combination({{0.25f, a}, {-2.0f, b}});
  Tensor cl = ops::clamp(a, -1.0f, 1.5f);
  Tensor half = ops::cast(ops::cast(a, DType::F16), DType::F32);
  Tensor bf = ops::cast(ops::cast(a, DType::BF16), DType::F32);
  for (int64_t i = 0; i < 100; ++i) {
    EXPECT_FLOAT_EQ(f(lc)[i], 0.25f * f(a)[i] + -2.0f * f(b)[i]);
    EXPECT_EQ(f(cl)[i], std::clamp(f(a)[i], -1.0f, 1.5f));
    EXPECT_NEAR(f(half)[i], f(a)[i], std::abs(f(a)[i]) * 1e-3 + 1e-7);
    EXPECT_NEAR(f(bf)[i], f(a)[i], std::abs(f(a)[i]) * 8e-3 + 1e-7);
  }
}

TEST(Ops, HalfConversionsRoundToNearestEvenLikeTorch) {
  // Values torch.tensor(x).half() rounds: ties to even, overflow to inf, subnormals.
  EXPECT_EQ(float_to_f16(1.0f), 0x3c00);
  EXPECT_EQ(float_to_f16(65504.0f), 0x7bff);
  EXPECT_EQ(float_to_f16(65520.0f), 0x7c00);
  EXPECT_EQ(float_to_f16(1.0f + 1.0f / 2048.0f), 0x3c00);  // tie → even
  EXPECT_EQ(float_to_f16(1.0f + 3.0f / 2048.0f), 0x3c02);  // tie → even (up)
  EXPECT_EQ(float_to_f16(5.9604645e-08f), 0x0001);         // smallest subnormal
  EXPECT_EQ(float_to_f16(-2.0f), 0xc000);
  EXPECT_EQ(f16_to_float(0x0001), 5.9604644775390625e-08f);
  EXPECT_EQ(float_to_bf16(1.00390625f), 0x3f80);  // tie → even
  EXPECT_EQ(bf16_to_float(0x3f81), 1.0078125f);
}

TEST(Ops, ShapeMismatchesAreErrorsNotCrashes) {
  Tensor x = random_tensor({2, 3}, 81), w = random_tensor({4, 5}, 82);
  EXPECT_THROW(ops::linear(x, w), Error);
  EXPECT_THROW(
      ops::conv2d(random_tensor({1, 4, 4, 3}, 83), random_tensor({2, 3, 3, 2}, 84), {}, {}), Error);
  EXPECT_THROW(ops::add(random_tensor({2, 3}, 85), random_tensor({4}, 86)), Error);
  EXPECT_THROW(ops::group_norm(random_tensor({1, 2, 6}, 87), random_tensor({6}, 88),
                               random_tensor({6}, 89), 4, 1e-5f),
               Error);
}

// add_layer_norm on the CPU is add, then layer_norm, and says which operand is wrong.
TEST(Ops, AddLayerNormIsTheSumAndItsNorm) {
  std::vector<float> xv(2 * 8), rv(2 * 8), gv(8), bv(8);
  for (size_t i = 0; i < xv.size(); ++i) {
    xv[i] = float(i % 5) - 1.5f;
    rv[i] = 0.25f * float(i % 3);
  }
  for (size_t i = 0; i < gv.size(); ++i) {
    gv[i] = 1.0f + 0.1f * float(i);
    bv[i] = -0.05f * float(i);
  }
  const Tensor x = Tensor::from_floats({2, 8}, xv.data());
  const Tensor r = Tensor::from_floats({2, 8}, rv.data());
  const Tensor g = Tensor::from_floats({8}, gv.data());
  const Tensor b = Tensor::from_floats({8}, bv.data());
  auto [sum, out] = ops::add_layer_norm(x, r, g, b, 1e-5f);
  const Tensor want_sum = ops::add(x, r);
  const Tensor want_out = ops::layer_norm(want_sum, g, b, 1e-5f);
  for (int64_t i = 0; i < 16; ++i) {
    EXPECT_EQ(sum.data<float>()[i], want_sum.data<float>()[i]);
    EXPECT_EQ(out.data<float>()[i], want_out.data<float>()[i]);
  }
  EXPECT_THROW((void)ops::add_layer_norm(x, g, g, b, 1e-5f), Error);
  EXPECT_THROW((void)ops::add_layer_norm(x, r, Tensor::from_floats({7}, gv.data()), b, 1e-5f),
               Error);
}

}  // namespace
}  // namespace kiln
