// Every op of the backend interface on CUDA against the CPU reference (attention in
// test_cuda_attention.cpp): the shapes SD 1.5, SD 2.x, SDXL and their text encoders and
// VAE use, odd sizes that miss every vector path, and f32, f16 and bf16.
#include <cmath>
#include <cstring>
#include <string>
#include <tuple>
#include <vector>

#include "backend_test.h"

namespace kiln::backend_test {
namespace {

// The inputs themselves (no GPU needed): N(offset, scale²) in the moments and the
// tails, the same values for the same seed, others for another, and held exactly
// by the dtype they were drawn for.
TEST(TestInputs, RandomTensorIsNormalAndReproducible) {
  const int64_t n = (int64_t{1} << 20) + 1;  // odd: the last pair has one value
  const Tensor t = random_tensor({n}, DType::F32, 7, 2.0f, 3.0f);
  double sum = 0.0, sq = 0.0;
  int64_t beyond3 = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double z = (double(t.data<float>()[i]) - 3.0) / 2.0;
    sum += z;
    sq += z * z;
    beyond3 += std::fabs(z) > 3.0;
  }
  const double mean = sum / double(n), var = sq / double(n) - mean * mean;
  EXPECT_NEAR(mean, 0.0, 0.005) << "mean of the standardised values";
  EXPECT_NEAR(var, 1.0, 0.01) << "variance of the standardised values";
  // N(0, 1) has 0.27% beyond 3 sigma: 2831 of 2^20 values.
  EXPECT_GT(beyond3, 2400);
  EXPECT_LT(beyond3, 3300);
  const Tensor again = random_tensor({n}, DType::F32, 7, 2.0f, 3.0f);
  EXPECT_EQ(std::memcmp(t.data<float>(), again.data<float>(), size_t(n) * 4), 0)
      << "the same seed gave other values";
  const Tensor other = random_tensor({n}, DType::F32, 8, 2.0f, 3.0f);
  int64_t same = 0;
  for (int64_t i = 0; i < n; ++i) same += t.data<float>()[i] == other.data<float>()[i];
  EXPECT_LT(same, n / 1000) << "seeds 7 and 8 gave the same values";
  const Tensor half = random_tensor({n}, DType::F16, 7);
  const Tensor rounded = ops::cast(ops::cast(half, DType::F16), DType::F32);
  EXPECT_EQ(std::memcmp(half.data<float>(), rounded.data<float>(), size_t(n) * 4), 0)
      << "an f16 input that f16 does not hold exactly";
}

// ---------------------------------------------------------------------------
struct LinearCase {
  int64_t m, k, n;
  bool bias, residual;
  Activation act;
  // Plans by the wide search timed as in a step: candidates the heuristic does not
  // propose (split-K with f32 partial sums, other cluster shapes), each run after the
  // L2 is overwritten.
  bool wide = false;
};

class Linear : public CudaTest, public ::testing::WithParamInterface<LinearCase> {
 protected:
  void TearDown() override {
    const cuda::Options defaults;
    cuda::options().gemm_search = defaults.gemm_search;
    cuda::options().plan_timing = defaults.plan_timing;
    if (GetParam().wide && cuda::available()) cuda::set_plan_cache("");
    CudaTest::TearDown();
  }
};

TEST_P(Linear, MatchesCpu) {
  const LinearCase c = GetParam();
  if (c.wide) {
    cuda::options().gemm_search = cuda::Options::GemmSearch::Wide;
    cuda::options().plan_timing = cuda::Options::PlanTiming::Step;
    cuda::set_plan_cache("off");  // timed here, not taken from an earlier run's file
  }
  const size_t step_runs = cuda::step_timed_runs();
  for (DType dt : kAllTypes) {
    std::vector<Tensor> in{random_tensor({c.m, c.k}, dt, next_seed()),
                           random_tensor({c.n, c.k}, dt, next_seed(), 1.0f / std::sqrt(float(c.k))),
                           random_tensor({c.n}, dt, next_seed()),
                           random_tensor({c.m, c.n}, dt, next_seed())};
    expect_match(str("linear ", c.m, "x", c.k, "x", c.n, c.wide ? " wide" : ""), dt, in,
                 [&](const std::vector<Tensor>& t) {
                   return ops::linear(t[0], t[1], c.bias ? t[2] : Tensor(), c.act,
                                      c.residual ? t[3] : Tensor());
                 });
  }
  // The f16 and bf16 GEMMs have several candidates (f32 may have one).
  if (c.wide) {
    EXPECT_GT(cuda::step_timed_runs(), step_runs) << "nothing was timed as in a step";
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, Linear,
    ::testing::Values(
        LinearCase{1, 7, 5, true, false, Activation::None},        // odd everything
        LinearCase{3, 13, 33, false, true, Activation::None},      // residual, no bias
        LinearCase{154, 768, 768, true, false, Activation::None},  // CLIP-L q/k/v, 2 × 77 tokens
        LinearCase{154, 768, 3072, true, false, Activation::QuickGELU},  // CLIP-L fc1
        LinearCase{154, 1280, 5120, true, false, Activation::GELU},      // bigG fc1
        LinearCase{154, 3072, 768, true, true, Activation::None},        // fc2 + residual
        LinearCase{8192, 320, 320, false, false, Activation::None},  // SD1.5 to_q at 64×64, batch 2
        LinearCase{8192, 320, 2560, true, false, Activation::None},  // GEGLU projection
        LinearCase{8192, 1280, 320, true, true, Activation::None},   // FF out + residual
        LinearCase{2048, 640, 640, true, true, Activation::None},    // SDXL proj_out + residual
        LinearCase{154, 2048, 640, false, false, Activation::None},  // SDXL to_k on the context
        LinearCase{2, 320, 1280, true, false, Activation::SiLU},     // time embedding linear_1
        LinearCase{2, 2816, 1280, true, false, Activation::SiLU},    // SDXL add_embedding
        LinearCase{37, 96, 40, true, true, Activation::GELUTanh},    // tanh GELU fused, + residual
        LinearCase{5, 24, 16, true, true, Activation::SiLU},         // unfused act + residual
        LinearCase{128, 5120, 1280, true, true, Activation::None},   // SD1.5 FF out at 8×8: long K
        LinearCase{2048, 1280, 1280, true, false, Activation::None}));  // SDXL: 160 tiles of 128²

// The SD1.5 shapes whose plans the wide search changes most (v12: split-K at long K
// and few tiles), a residual riding in as C under split-K, and odd sizes.
INSTANTIATE_TEST_SUITE_P(
    Wide, Linear,
    ::testing::Values(LinearCase{3, 13, 33, false, true, Activation::None, true},
                      LinearCase{128, 5120, 1280, true, true, Activation::None, true},
                      LinearCase{512, 1280, 1280, true, false, Activation::None, true},
                      LinearCase{8192, 320, 320, false, false, Activation::None, true},
                      LinearCase{2048, 640, 640, true, true, Activation::None, true},
                      LinearCase{2, 320, 1280, true, false, Activation::SiLU, true}));

// ---------------------------------------------------------------------------
// The feed-forward's gated projection on interleaved weights (ops::linear_geglu) against
// the CPU's projection and GEGLU on diffusers' order: the fused GEMM where it runs
// (CUTLASS, Hopper; f16 and bf16), and the two-op form it falls back to.
struct LinearGegluCase {
  int64_t m, k, n2;
  bool bias;
};

class LinearGeglu : public CudaTest, public ::testing::WithParamInterface<LinearGegluCase> {
 protected:
  void TearDown() override {
    const cuda::Options defaults;
    cuda::options().geglu_fused = defaults.geglu_fused;
    cuda::options().geglu_form = defaults.geglu_form;
    CudaTest::TearDown();
  }
};

TEST_P(LinearGeglu, MatchesCpu) {
  const LinearGegluCase c = GetParam();
  using Form = cuda::Options::GegluForm;
  struct Path {
    const char* name;
    bool fused;
    Form form;
  };
  // The two ops, then the fused GEMM: the timed form, then each form forced.
  const Path paths[] = {{"two ops", false, Form::Auto},
                        {"fused", true, Form::Auto},
                        {"fused ping-pong", true, Form::PingPong},
                        {"fused cooperative", true, Form::Cooperative}};
  for (DType dt : kAllTypes) {
    const std::vector<Tensor> in{
        random_tensor({c.m, c.k}, dt, next_seed()),
        random_tensor({c.n2, c.k}, dt, next_seed(), 1.0f / std::sqrt(float(c.k))),
        random_tensor({c.n2}, dt, next_seed())};
    const Tensor bias = c.bias ? in[2] : Tensor();
    const Tensor expected = ops::geglu(ops::linear(in[0], in[1], bias));
    for (const Path& p : paths) {
      cuda::options().geglu_fused = p.fused;
      cuda::options().geglu_form = p.form;
      const size_t before = cuda::linear_geglu_fused_calls();
      expect_close(
          str("linear_geglu ", c.m, "x", c.k, "x", c.n2, " ", p.name), dt, in,
          [&](const std::vector<Tensor>& t) {
            return ops::linear_geglu(t[0], ops::interleave_geglu_rows(t[1]),
                                     c.bias ? ops::interleave_geglu_rows(t[2]) : Tensor());
          },
          expected);
      const bool expect_fused =
          p.fused && dt != DType::F32 && c.k % 8 == 0 && cuda::linear_geglu_fused_available();
      EXPECT_EQ(cuda::linear_geglu_fused_calls() > before, expect_fused)
          << "fused GEMM ran: " << name(dt) << " " << p.name;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, LinearGeglu,
    ::testing::Values(LinearGegluCase{1, 8, 16, true},             // one row, one block pair
                      LinearGegluCase{130, 72, 272, true},         // partial tiles in M and N
                      LinearGegluCase{300, 200, 512, false},       // no bias, K not a tile's
                      LinearGegluCase{5, 12, 32, true},            // K % 8 != 0: two ops
                      LinearGegluCase{4100, 64, 288, true},        // the cooperative form's rows
                      LinearGegluCase{8192, 320, 2560, true},      // SD1.5 at 64×64, batch 2
                      LinearGegluCase{2048, 1280, 10240, true}));  // SDXL at 32×32, batch 2

// ---------------------------------------------------------------------------
struct ConvCase {
  int64_t b, h, w, c, o;
  int k, stride, pt, pl, pb, pr;
  bool residual;
};

// Paths: im2col and a GEMM; the default (cuDNN's best algorithm timed against our narrow
// kernels and, on small images, im2col, the fastest kept); a narrow kernel forced where
// one applies, in each of its forms (CUDA cores; the tensor-core forms, for f16/bf16
// with few outputs) and with none forced.
enum class ConvPath { Im2col, Timed, Narrow };

class Conv2d : public CudaTest,
               public ::testing::WithParamInterface<std::tuple<ConvCase, ConvPath>> {
 protected:
  void TearDown() override {
    cuda::options().use_cudnn = true;
    cuda::options().conv_kernel = cuda::Options::ConvKernel::Auto;
    cuda::options().narrow_conv_form = -1;
    CudaTest::TearDown();
  }
};

TEST_P(Conv2d, MatchesCpu) {
  const auto [c, path] = GetParam();
  if (path == ConvPath::Timed && !cuda::cudnn_enabled()) GTEST_SKIP() << "no cuDNN in this build";
  cuda::options().use_cudnn = path != ConvPath::Im2col;
  cuda::options().conv_kernel = path == ConvPath::Narrow ? cuda::Options::ConvKernel::Narrow
                                                         : cuda::Options::ConvKernel::Auto;
  // Where a narrow kernel takes the shape (3×3, stride 1, padding 1; 3, 4 or 8 output
  // channels on a multiple of 32 inputs, or 3, 4 or 8 inputs and at least 32 outputs).
  const bool same = c.k == 3 && c.stride == 1 && c.pt == 1 && c.pl == 1 && c.pb == 1 && c.pr == 1;
  const bool few_out = same && (c.o == 3 || c.o == 4 || c.o == 8) && c.c % 32 == 0;
  const bool narrow = few_out || (same && (c.c == 3 || c.c == 4 || c.c == 8) && c.o >= 32);
  const char* label = path == ConvPath::Im2col  ? " im2col"
                      : path == ConvPath::Timed ? " timed"
                                                : " narrow";
  const ops::Conv2dGeometry g{c.stride, c.pt, c.pl, c.pb, c.pr};
  const int64_t ho = (c.h + c.pt + c.pb - c.k) / c.stride + 1;
  const int64_t wo = (c.w + c.pl + c.pr - c.k) / c.stride + 1;
  const std::vector<int> forms =
      path == ConvPath::Narrow ? std::vector<int>{-1, 0, 1, 2, 3, 4} : std::vector<int>{-1};
  for (DType dt : kAllTypes) {
    std::vector<Tensor> in{random_tensor({c.b, c.h, c.w, c.c}, dt, next_seed()),
                           random_tensor({c.o, c.k, c.k, c.c}, dt, next_seed(),
                                         1.0f / std::sqrt(float(c.k * c.k * c.c))),
                           random_tensor({c.o}, dt, next_seed()),
                           random_tensor({c.b, ho, wo, c.o}, dt, next_seed())};
    const auto op = [&](const std::vector<Tensor>& t) {
      return ops::conv2d(t[0], t[1], t[2], g, c.residual ? t[3] : Tensor());
    };
    const Tensor expected = op(in);  // once for every form
    for (int form : forms) {
      cuda::options().narrow_conv_form = form;
      const size_t narrow_before = cuda::narrow_conv_calls();
      const size_t mma_before = cuda::narrow_conv_mma_calls();
      expect_close(str("conv ", c.b, "x", c.h, "x", c.w, "x", c.c, " -> ", c.o, " k", c.k, " s",
                       c.stride, label, form >= 0 ? str(" form ", form) : ""),
                   dt, in, op, expected);
      const size_t narrow_ran = cuda::narrow_conv_calls() - narrow_before;
      const size_t mma_ran = cuda::narrow_conv_mma_calls() - mma_before;
      if (path == ConvPath::Narrow) {
        EXPECT_EQ(narrow_ran, narrow ? 1u : 0u) << label << " form " << form << " " << name(dt);
        // The tensor-core forms run on f16/bf16 with few outputs, and only there; with
        // no form forced (-1) the one chosen by the image's size.
        EXPECT_EQ(mma_ran, few_out && form != 0 && dt != DType::F32 ? 1u : 0u)
            << label << " form " << form << " " << name(dt);
      } else if (path == ConvPath::Im2col || !narrow) {
        EXPECT_EQ(narrow_ran, 0u) << label << " " << name(dt);
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, Conv2d,
    ::testing::Combine(
        ::testing::Values(ConvCase{1, 5, 7, 3, 4, 3, 1, 1, 1, 1, 1, false},       // odd channels
                          ConvCase{2, 64, 64, 4, 320, 3, 1, 1, 1, 1, 1, false},   // SD conv_in
                          ConvCase{2, 32, 32, 320, 320, 3, 1, 1, 1, 1, 1, true},  // resnet conv2
                          ConvCase{2, 16, 16, 640, 1280, 3, 1, 1, 1, 1, 1, false},
                          ConvCase{2, 32, 32, 640, 640, 3, 2, 1, 1, 1, 1, false},  // downsample
                          ConvCase{1, 9, 11, 16, 16, 3, 2, 0, 0, 1, 1, false},  // VAE encoder pad
                          ConvCase{2, 8, 8, 64, 32, 1, 1, 0, 0, 0, 0, true},    // 1×1 shortcut
                          ConvCase{1, 128, 128, 128, 128, 3, 1, 1, 1, 1, 1, true},  // VAE decoder
                          ConvCase{1, 64, 64, 128, 3, 3, 1, 1, 1, 1, 1, false},     // VAE conv_out
                          ConvCase{2, 13, 10, 24, 40, 3, 1, 1, 1, 1, 1, true},
                          ConvCase{2, 64, 64, 320, 4, 3, 1, 1, 1, 1, 1, false},   // SD conv_out
                          ConvCase{2, 8, 8, 1280, 1280, 3, 1, 1, 1, 1, 1, true},  // SD1.5 8×8 level
                          ConvCase{1, 32, 32, 512, 8, 3, 1, 1, 1, 1, 1, false},  // VAE enc conv_out
                          ConvCase{1, 40, 72, 3, 128, 3, 1, 1, 1, 1, 1, false},  // VAE enc conv_in
                          ConvCase{2, 19, 70, 32, 4, 3, 1, 1, 1, 1, 1, true},    // partial tiles
                          ConvCase{1, 37, 45, 96, 3, 3, 1, 1, 1, 1, 1, true},    // 1.5 stages of 64
                          ConvCase{1, 3, 130, 8, 48, 3, 1, 1, 1, 1, 1, true},    // partial rows
                          ConvCase{2, 8, 8, 2560, 1280, 3, 1, 1, 1, 1, 1, false}),  // 8×8 up block
        ::testing::Values(ConvPath::Im2col, ConvPath::Timed, ConvPath::Narrow)));

// GPUs with 99 KB of shared memory a block (sm_86 and sm_89: the A10, L4, RTX 30 and 40
// series) cannot launch the few-output tensor-core convolution's 16-row forms (1 and 4,
// 107 KB), nor sm_75 (64 KB) the CUDA-core form's large f32 blocks (97 KB). Under
// those limits every form still runs, in blocks that fit, on the units it asks for, and
// matches the CPU. 512×512 (the VAE's conv_out at 512²) makes enough blocks for the
// large CUDA-core blocks.
class Conv2dSharedMemoryLimit : public CudaTest {
 protected:
  void TearDown() override {
    const cuda::Options defaults;
    cuda::options().shared_memory_limit = defaults.shared_memory_limit;
    cuda::options().conv_kernel = defaults.conv_kernel;
    cuda::options().narrow_conv_form = defaults.narrow_conv_form;
    CudaTest::TearDown();
  }
};

TEST_F(Conv2dSharedMemoryLimit, FewOutputFormsFitSmallerLimits) {
  cuda::options().conv_kernel = cuda::Options::ConvKernel::Narrow;
  const ops::Conv2dGeometry g{1, 1, 1, 1, 1};
  for (DType dt : kAllTypes) {
    std::vector<Tensor> in{
        random_tensor({1, 512, 512, 128}, dt, next_seed()),
        random_tensor({3, 3, 3, 128}, dt, next_seed(), 1.0f / std::sqrt(9.0f * 128.0f)),
        random_tensor({3}, dt, next_seed())};
    const auto op = [&](const std::vector<Tensor>& t) {
      return ops::conv2d(t[0], t[1], t[2], g, Tensor());
    };
    const Tensor expected = op(in);
    for (const size_t kib : {size_t(99), size_t(64)}) {
      cuda::options().shared_memory_limit = kib * 1024;
      for (int form : {0, 1, 2, 3, 4}) {
        cuda::options().narrow_conv_form = form;
        const size_t mma_before = cuda::narrow_conv_mma_calls();
        expect_close(str("conv 1x512x512x128 -> 3 form ", form, " under ", kib, " KB"), dt, in,
                     op, expected);
        EXPECT_EQ(cuda::narrow_conv_mma_calls() - mma_before,
                  form != 0 && dt != DType::F32 ? 1u : 0u)
            << "form " << form << " under " << kib << " KB, " << name(dt);
      }
    }
  }
}

// ---------------------------------------------------------------------------
// A GroupNorm and the few-output convolution after it (ops::group_norm_conv2d: the
// models' conv_out), folded into one op where the convolution runs in a narrow kernel.
struct NormConvCase {
  int64_t b, h, w, c, o;
  int groups;
  Activation act;
};

class NormConv2d : public CudaTest, public ::testing::WithParamInterface<NormConvCase> {
 protected:
  void TearDown() override {
    const cuda::Options defaults;
    cuda::options().conv_kernel = defaults.conv_kernel;
    cuda::options().narrow_conv_form = defaults.narrow_conv_form;
    cuda::options().norm_conv_fused = defaults.norm_conv_fused;
    cuda::options().group_norm_kernel = defaults.group_norm_kernel;
    CudaTest::TearDown();
  }
};

// Against the CPU's two ops with the convolution's plan timed and in every narrow form
// forced; folded exactly where the convolution is a few-output one in a narrow kernel;
// and bit for bit the result of CUDA's own two ops (the GroupNorm on its two-launch
// path, whose apply computes each normalised value as the fold does), in a replayed
// graph too. The padding is the normalised tensor's zeros, not act(shift).
TEST_P(NormConv2d, MatchesCpuAndTheTwoOps) {
  const NormConvCase c = GetParam();
  const bool few_out = (c.o == 3 || c.o == 4 || c.o == 8) && c.c % 32 == 0;
  for (DType dt : kAllTypes) {
    const std::vector<Tensor> in{
        random_tensor({c.b, c.h, c.w, c.c}, dt, next_seed(), 2.0f, 3.0f),
        random_tensor({c.c}, dt, next_seed(), 0.5f, 1.0f), random_tensor({c.c}, dt, next_seed()),
        random_tensor({c.o, 3, 3, c.c}, dt, next_seed(), 1.0f / std::sqrt(float(9 * c.c))),
        random_tensor({c.o}, dt, next_seed())};
    const auto op = [&](const std::vector<Tensor>& t) {
      return ops::group_norm_conv2d(t[0], t[1], t[2], c.groups, 1e-6f, c.act, t[3], t[4],
                                    ops::Conv2dGeometry::same(3));
    };
    const Tensor expected = op(in);
    std::vector<Tensor> dev;
    for (const Tensor& t : in) dev.push_back(on_cuda(t, dt));
    for (int form : {-1, 0, 1, 2, 3, 4}) {
      const std::string what = str("group_norm_conv2d ", c.b, "x", c.h, "x", c.w, "x", c.c, " -> ",
                                   c.o, form >= 0 ? str(" form ", form) : " timed");
      cuda::options().conv_kernel =
          form >= 0 ? cuda::Options::ConvKernel::Narrow : cuda::Options::ConvKernel::Auto;
      cuda::options().narrow_conv_form = form;
      cuda::options().norm_conv_fused = true;
      const size_t before = cuda::norm_conv_calls();
      expect_close(what, dt, in, op, expected);
      const size_t folded = cuda::norm_conv_calls() - before;
      if (form >= 0) {
        EXPECT_EQ(folded, few_out ? 1u : 0u) << what << " " << name(dt);
      } else if (!few_out) {
        EXPECT_EQ(folded, 0u) << what << " " << name(dt);
      }
      if (folded == 0) continue;
      const Tensor fused = op(dev).to(Device::CPU);
      cuda::options().norm_conv_fused = false;
      cuda::options().group_norm_kernel = cuda::Options::GroupNormKernel::TwoLaunch;
      const Tensor two_ops = op(dev).to(Device::CPU);
      cuda::options().norm_conv_fused = true;
      cuda::options().group_norm_kernel = cuda::Options::GroupNormKernel::Auto;
      ASSERT_EQ(fused.nbytes(), two_ops.nbytes());
      EXPECT_EQ(std::memcmp(fused.raw(), two_ops.raw(), fused.nbytes()), 0)
          << what << " " << name(dt) << ": the fold differs from the two ops";
      expect_same_bits(what + " " + name(dt), [&] { return op(dev); });
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, NormConv2d,
    ::testing::Values(NormConvCase{1, 64, 64, 128, 3, 32, Activation::SiLU},   // VAE conv_out
                      NormConvCase{2, 64, 64, 320, 4, 32, Activation::SiLU},   // SD conv_out
                      NormConvCase{1, 32, 32, 512, 8, 32, Activation::SiLU},   // VAE enc conv_out
                      NormConvCase{2, 19, 70, 96, 4, 8, Activation::None},     // partial tiles
                      NormConvCase{1, 37, 45, 96, 3, 32, Activation::SiLU},    // 1.5 stages of 64
                      NormConvCase{1, 9, 11, 48, 3, 4, Activation::SiLU},      // C 48: the two ops
                      NormConvCase{2, 16, 16, 64, 16, 8, Activation::SiLU}));  // 16 out: two ops

// ---------------------------------------------------------------------------
// Upsample2D's convolution by output phase (ops::upsample2x_conv, the form CUDA runs)
// against the direct form on the CPU: nearest ×2, then the 3×3 convolution.
struct UpsampleConvCase {
  int64_t b, h, w, c, o;
  bool bias;
};

class UpsampleConv : public CudaTest,
                     public ::testing::WithParamInterface<std::tuple<UpsampleConvCase, ConvPath>> {
 protected:
  void TearDown() override {
    cuda::options().use_cudnn = true;
    CudaTest::TearDown();
  }
};

TEST_P(UpsampleConv, ByPhaseMatchesDirectOnCpu) {
  const auto [c, path] = GetParam();
  if (path == ConvPath::Timed && !cuda::cudnn_enabled()) GTEST_SKIP() << "no cuDNN in this build";
  cuda::options().use_cudnn = path != ConvPath::Im2col;
  const std::string what = str("upsample2x_conv ", c.b, "x", c.h, "x", c.w, "x", c.c, " -> ", c.o);
  for (DType dt : kAllTypes) {
    // The weights scaled to keep the outputs near 1 (1/sqrt of the fan-in).
    const Reference& r = shared_reference(
        what, "direct", dt, {{c.b, c.h, c.w, c.c}, {c.o, 3, 3, c.c}, {c.o}},
        [&](const std::vector<Tensor>& t) {
          return ops::conv2d(ops::upsample_nearest(t[0], 2 * c.h, 2 * c.w),
                             ops::scale(t[1], 1.0f / std::sqrt(float(9 * c.c))),
                             c.bias ? t[2] : Tensor(), ops::Conv2dGeometry::same(3));
        });
    expect_close(
        what + (path == ConvPath::Im2col ? " im2col" : " timed"), dt, r.inputs,
        [&](const std::vector<Tensor>& t) {
          const Tensor w = ops::scale(t[1], 1.0f / std::sqrt(float(9 * c.c)));
          return ops::upsample2x_conv(t[0], ops::upsample_conv_phases(w, c.bias ? t[2] : Tensor()));
        },
        r.expected);
    // With the next GroupNorm (+ SiLU) in the same op, both of its outputs (the
    // normalised one is written over the phases' memory): on the timed path, against the
    // same direct reference and its GroupNorm on the CPU.
    if (path != ConvPath::Timed) continue;
    const Tensor gamma = random_tensor({c.o}, dt, next_seed(), 0.5f, 1.0f);
    const Tensor beta = random_tensor({c.o}, dt, next_seed());
    const Tensor normed = ops::group_norm(r.expected, gamma, beta, 8, 1e-6f, Activation::SiLU);
    const std::vector<Tensor> in{r.inputs[0], r.inputs[1], r.inputs[2], gamma, beta};
    for (const bool norm_out : {false, true})
      expect_close(
          what + (norm_out ? " + group_norm, normed" : " + group_norm, upsampled"), dt, in,
          [&](const std::vector<Tensor>& t) {
            const Tensor w = ops::scale(t[1], 1.0f / std::sqrt(float(9 * c.c)));
            const auto [up, norm] = ops::upsample2x_conv_group_norm(
                t[0], ops::upsample_conv_phases(w, c.bias ? t[2] : Tensor()), t[3], t[4], 8, 1e-6f,
                Activation::SiLU);
            return norm_out ? norm : up;
          },
          norm_out ? normed : r.expected);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, UpsampleConv,
    ::testing::Combine(
        ::testing::Values(UpsampleConvCase{1, 3, 5, 24, 40, true},         // odd sizes
                          UpsampleConvCase{2, 7, 6, 13, 16, false},        // odd channels, no bias
                          UpsampleConvCase{2, 8, 8, 1280, 1280, true},     // SD1.5 up_blocks.0
                          UpsampleConvCase{2, 32, 32, 640, 640, true},     // SD1.5 up_blocks.2
                          UpsampleConvCase{2, 64, 64, 640, 640, true},     // SDXL up_blocks.1
                          UpsampleConvCase{1, 64, 64, 512, 512, true},     // VAE 512² up_blocks.0
                          UpsampleConvCase{1, 128, 128, 256, 256, true}),  // VAE 512² up_blocks.2
        ::testing::Values(ConvPath::Im2col, ConvPath::Timed)));

class Elementwise : public CudaTest {};

TEST_F(Elementwise, InterleavePhasesMatchesCpu) {
  for (DType dt : kAllTypes)
    for (const Shape& s : {Shape{1, 2, 2, 4}, Shape{2, 5, 9, 12}, Shape{1, 33, 17, 2048}})
      expect_match(str("interleave_phases ", s.str()), dt, {random_tensor(s, dt, next_seed())},
                   [](const std::vector<Tensor>& t) { return ops::interleave_phases(t[0]); });
}

// The phase copy and the next GroupNorm in one op (ops::interleave_phases_group_norm):
// the fused kernels where the channels take 16-byte accesses, else the two ops; both
// outputs against the CPU's two ops, and the same bits again and in a replayed graph.
TEST_F(Elementwise, InterleavePhasesGroupNormMatchesCpu) {
  struct Case {
    Shape z;  // [B, H + 1, W + 1, 4·C]
    int groups;
    Activation act;
  };
  for (const Case& c : {Case{{1, 33, 33, 2048}, 32, Activation::SiLU},  // the VAE's, 32² → 64²
                        Case{{1, 65, 65, 2048}, 32, Activation::SiLU},  // 64² → 128²: 8M values
                        Case{{1, 17, 9, 1024}, 32, Activation::SiLU},   // C 256, not square
                        Case{{2, 9, 17, 256}, 8, Activation::None},     // batch 2
                        Case{{1, 5, 7, 48}, 4, Activation::SiLU}}) {    // C 12: the two ops
    for (DType dt : kAllTypes) {
      const int64_t ch = c.z[3] / 4;
      const std::vector<Tensor> in{random_tensor(c.z, dt, next_seed(), 2.0f, 3.0f),
                                   random_tensor({ch}, dt, next_seed(), 0.5f, 1.0f),
                                   random_tensor({ch}, dt, next_seed())};
      auto op = [&](const std::vector<Tensor>& t) {
        return ops::interleave_phases_group_norm(t[0], t[1], t[2], c.groups, 1e-6f, c.act);
      };
      const size_t before = cuda::interleave_group_norm_calls();
      const std::string what = str("interleave_phases_group_norm ", c.z.str());
      expect_match(what + " out", dt, in,
                   [&](const std::vector<Tensor>& t) { return op(t).first; });
      expect_match(what + " normed", dt, in,
                   [&](const std::vector<Tensor>& t) { return op(t).second; });
      const bool fused = ch % (16 / int64_t(dtype_size(dt))) == 0;
      EXPECT_EQ(cuda::interleave_group_norm_calls() - before, fused ? 2u : 0u)
          << what << " " << name(dt);
      std::vector<Tensor> dev;
      for (const Tensor& t : in) dev.push_back(on_cuda(t, dt));
      expect_same_bits(what + " " + name(dt), [&] { return op(dev).second; });
      // The apply as a programmatic dependent of the statistics that write its input:
      // the same bits, eager and in a replayed graph.
      const Tensor ordinary = op(dev).second.to(Device::CPU);
      cuda::options().group_norm_pdl = true;
      const Tensor dependent = op(dev).second.to(Device::CPU);
      expect_same_bits(what + " (dependent apply) " + name(dt), [&] { return op(dev).second; });
      cuda::options().group_norm_pdl = false;
      EXPECT_EQ(std::memcmp(ordinary.raw(), dependent.raw(), ordinary.nbytes()), 0)
          << what << " " << name(dt) << ": the dependent launch changed the result";
    }
  }
}

// ---------------------------------------------------------------------------
struct NormCase {
  int64_t b, n, c;
  int groups;
  Activation act;
  // When asked for, the grid-wide kernel takes it in f16 on a GPU of 132
  // multiprocessors or more (H100 SXM, H200; with fewer, the largest do not fit).
  bool grid = false;
  bool addend = false;  // x + addend[b, c] normalised (a resnet's time embedding)
  // ≥ 0: the addend is wider ([B, C + 24]), read from this column (the UNet's one GEMM
  // for every resnet's time embedding makes them so).
  int64_t addend_col = -1;
};

using GroupNormKernel = cuda::Options::GroupNormKernel;

// Whether the cluster kernel takes the case (launch_group_norm_cluster's rules,
// restated): 16-byte accesses, a pack in at most two groups, a slice of at most 16
// groups making whole packs and 64 bytes. Its rows held in the fewest blocks (a power
// of two up to 16) that give every multiprocessor one and hold them in 256 threads ×
// 16 accesses (8 in bf16), where that is at most 4 accesses a thread; under Auto
// (`chosen`), at 2 to 4.
bool cluster_takes(const NormCase& c, DType dt, bool chosen) {
  const int64_t n = 16 / int64_t(dtype_size(dt)), per_group = c.c / c.groups;
  if (c.c % n != 0 || cuda::device_info().compute_major < 9) return false;
  if (c.addend && (c.addend_col >= 0 ? c.addend_col : 0) % n != 0) return false;
  for (int64_t pk = 0; pk < c.c / n; ++pk)
    if (((pk + 1) * n - 1) / per_group - pk * n / per_group > 1) return false;
  for (int64_t g = 1; g <= std::min<int64_t>(c.groups, 16); ++g) {
    if (c.groups % g != 0 || g * per_group % n != 0 || g * per_group * int64_t(dtype_size(dt)) < 64)
      continue;
    const int64_t rows_at_once = 256 / (g * per_group / n);
    if (rows_at_once == 0) return false;
    const int64_t held = dt == DType::BF16 ? 8 : 16, clusters = c.b * (c.groups / g);
    const auto accesses = [&](int64_t size) {
      return ((c.n + size - 1) / size + rows_at_once - 1) / rows_at_once;
    };
    int64_t size = 1;
    while (size < 16 &&
           (clusters * size < cuda::device_info().multiprocessors || accesses(size) > held))
      size *= 2;
    return accesses(size) <= 4 && (!chosen || accesses(size) >= 2);
  }
  return false;
}

class GroupNorm : public CudaTest,
                  public ::testing::WithParamInterface<std::tuple<NormCase, GroupNormKernel>> {};

TEST_P(GroupNorm, MatchesCpu) {
  const auto [c, kernel] = GetParam();
  cuda::options().group_norm_kernel = kernel;
  const bool grid = kernel == GroupNormKernel::Grid;
  for (DType dt : kAllTypes) {
    // An offset mean, as real activations have, tests the variance's accuracy.
    std::vector<Tensor> in{
        random_tensor({c.b, c.n, c.c}, dt, next_seed(), 2.0f, 3.0f),
        random_tensor({c.c}, dt, next_seed(), 0.5f, 1.0f), random_tensor({c.c}, dt, next_seed()),
        random_tensor({c.b, c.addend_col < 0 ? c.c : c.c + 24}, dt, next_seed(), 1.0f, -1.0f)};
    const auto op = [&](const std::vector<Tensor>& t) {
      return ops::group_norm(t[0], t[1], t[2], c.groups, 1e-5f, c.act, c.addend ? t[3] : Tensor(),
                             c.addend_col);
    };
    const size_t grid_before = cuda::group_norm_grid_calls();
    const size_t cluster_before = cuda::group_norm_cluster_calls();
    expect_match(
        str("group_norm ", c.b, "x", c.n, "x", c.c, " g", c.groups, c.addend ? " + addend" : "",
            c.addend_col >= 0 ? str(" from column ", c.addend_col) : ""),
        dt, in, op);
    const bool grid_ran = cuda::group_norm_grid_calls() > grid_before;
    if (!grid) {
      EXPECT_FALSE(grid_ran) << "the grid kernel ran though not asked for";
    } else if (c.grid && dt == DType::F16 && cuda::device_info().multiprocessors >= 132) {
      EXPECT_TRUE(grid_ran) << "group_norm " << c.b << "x" << c.n << "x" << c.c
                            << " f16 did not take the grid kernel";
    }
    // expect_match runs the op once on CUDA.
    EXPECT_EQ(cuda::group_norm_cluster_calls() - cluster_before,
              (kernel == GroupNormKernel::Cluster && cluster_takes(c, dt, false)) ||
                      (kernel == GroupNormKernel::Auto && cluster_takes(c, dt, true))
                  ? 1u
                  : 0u)
        << "group_norm " << c.b << "x" << c.n << "x" << c.c << " " << dtype_name(dt)
        << ": the cluster kernel ran where not expected, or not where expected";
    // The sums are folded in a fixed order: the same bits every time, and in a
    // replayed graph the same as eager (the grid kernel is a cooperative launch).
    std::vector<Tensor> dev;
    for (const Tensor& t : in) dev.push_back(on_cuda(t, dt));
    expect_same_bits(str("group_norm ", c.n, "x", c.c, " ", dtype_name(dt)),
                     [&] { return op(dev); });
    // The two-launch path, forced for every case (under the Auto parameter): its
    // variants give the same bits as it does by default. The apply keeping a thread's
    // scale and shift across its accesses (off: loaded for every access), the
    // statistics' conflict-free shared-memory layout (off: the layout before), and the
    // apply launched as a programmatic dependent of the statistics (on; eager and in a
    // replayed graph).
    if (kernel == GroupNormKernel::Auto) {
      cuda::options().group_norm_kernel = GroupNormKernel::TwoLaunch;
      const Tensor two = op(dev).to(Device::CPU);
      const auto same = [&](const char* what, bool& flag, bool graph) {
        flag = !flag;
        const Tensor other = op(dev).to(Device::CPU);
        if (graph)
          expect_same_bits(
              str("group_norm two launches, ", what, " ", c.n, "x", c.c, " ", dtype_name(dt)),
              [&] { return op(dev); });
        flag = !flag;
        EXPECT_EQ(std::memcmp(two.raw(), other.raw(), two.nbytes()), 0)
            << "group_norm " << c.b << "x" << c.n << "x" << c.c << " " << dtype_name(dt) << ": "
            << what << " changed the two-launch result";
      };
      same("the apply's kept scale and shift", cuda::options().group_norm_apply_reuse, false);
      same("the statistics' shared-memory layout", cuda::options().group_norm_stats_spread, false);
      same("the dependent launch of the apply", cuda::options().group_norm_pdl, true);
      // Four or eight loads in flight a thread in the large statistics (two blocks a
      // multiprocessor or one), whichever the size would not take: other partial sums,
      // so against the CPU, and reproducible.
      if (c.n * c.c >= (int64_t(1) << 22)) {  // the statistics' `large`
        const int other = c.n * c.c >= (int64_t(1) << 24) ? 8 : 4;
        cuda::options().group_norm_stats_loads = other;
        const std::string what =
            str("group_norm two launches, ", other, " loads, ", c.b, "x", c.n, "x", c.c);
        expect_match(what, dt, in, op);
        expect_same_bits(str(what, " ", dtype_name(dt)), [&] { return op(dev); });
        cuda::options().group_norm_stats_loads = 0;
      }
      cuda::options().group_norm_kernel = kernel;
    }
  }
  cuda::options().group_norm_kernel = cuda::Options::GroupNormKernel::Auto;
}

// Groups that one block holds in registers (up to 49152 values, fewer in f32 or with
// narrow accesses) take the one-block kernel where they are small or fill the GPU
// (batch 5 × 32 groups: 160 blocks), larger ones the two-launch path (4096 and 8192
// channels: over 48 KiB of shared memory). Each case also runs with the grid
// kernel asked for, which takes tensors the whole GPU holds in registers (up to about
// 16 MB in f16 and f32, 8 MB in bf16; 16-byte accesses, a pack of 8 channels in at
// most two groups).
INSTANTIATE_TEST_SUITE_P(
    Shapes, GroupNorm,
    ::testing::Combine(
        ::testing::Values(
            NormCase{2, 4096, 320, 32, Activation::SiLU, true},          // SD1.5 64x64, 10 a group
            NormCase{2, 4096, 320, 32, Activation::SiLU, true, true},    // + time embedding
            NormCase{2, 16384, 320, 32, Activation::SiLU},               // SDXL 128x128: too large
            NormCase{2, 16384, 320, 32, Activation::SiLU, false, true},  // + addend, 2 launches
            NormCase{2, 16384, 320, 32, Activation::SiLU, false, true, 8},  // wider, 2 launches
            NormCase{2, 1024, 640, 32, Activation::SiLU, true},
            NormCase{2, 512, 640, 32, Activation::SiLU, true},
            NormCase{2, 64, 1280, 32, Activation::None, true},            // fewer rows than blocks
            NormCase{2, 64, 1280, 32, Activation::SiLU, true, true},      // + addend (one block)
            NormCase{2, 64, 1280, 32, Activation::SiLU, true, true, 16},  // wider (one block, grid)
            NormCase{2, 256, 960, 32, Activation::SiLU, true},            // 30 per group
            NormCase{2, 4096, 960, 32, Activation::SiLU, true},           // 15.7 MB in f16
            NormCase{1, 16384, 128, 32, Activation::SiLU, true},          // VAE: 4 a group
            NormCase{1, 4096, 512, 32, Activation::SiLU, true},           // VAE 64x64
            NormCase{1, 16384, 512, 32, Activation::SiLU, true},  // VAE 128x128: 16 MB in f16
            NormCase{1, 20, 512, 32, Activation::SiLU},           // cluster: blocks without rows
            NormCase{1, 65536, 512, 32, Activation::SiLU},        // VAE: too large
            NormCase{1, 16411, 256, 32, Activation::SiLU},        // large, rows not a multiple
            NormCase{1, 65536, 100, 4, Activation::SiLU},         // large, scalar accesses
            NormCase{1, 1024, 4096, 32, Activation::None},        // large, 512 packs a row
            NormCase{2, 256, 2560, 32, Activation::SiLU, true},   // concat
            NormCase{4, 1024, 1920, 32, Activation::SiLU, true},  // batch 4
            NormCase{3, 777, 320, 32, Activation::SiLU, true},    // rows not a multiple
            NormCase{2, 4096, 100, 4, Activation::SiLU},          // scalar
            NormCase{2, 64, 64, 32, Activation::SiLU},  // 2 a group: 4 groups a pack in f16
            NormCase{1, 256, 4096, 32, Activation::SiLU},
            NormCase{1, 256, 8192, 64, Activation::None},
            NormCase{1, 37, 12, 4, Activation::SiLU},                   // odd
            NormCase{1, 37, 12, 4, Activation::SiLU, false, true},      // odd, + addend (1-wide)
            NormCase{2, 37, 12, 4, Activation::SiLU, false, true, 5},   // odd, wider, odd column
            NormCase{2, 1024, 640, 32, Activation::SiLU, false, true},  // + addend, 20 a group
            NormCase{5, 6144, 256, 32, Activation::SiLU},  // one-block kernel at its limit
            NormCase{5, 6145, 256, 32, Activation::SiLU},  // past it
            NormCase{5, 3072, 256, 32, Activation::SiLU},  // f32's limit
            NormCase{1, 6144, 256, 32, Activation::SiLU},  // 32 blocks: two launches
            NormCase{1, 1000, 60, 20, Activation::SiLU},   // 1-wide, 1024 threads
            NormCase{3, 5, 6, 3, Activation::None}),
        ::testing::Values(GroupNormKernel::Auto, GroupNormKernel::Grid, GroupNormKernel::Cluster)));

class LayerNorm : public CudaTest,
                  public ::testing::WithParamInterface<std::tuple<int64_t, int64_t>> {};

TEST_P(LayerNorm, MatchesCpu) {
  const auto [m, c] = GetParam();
  for (DType dt : kAllTypes) {
    std::vector<Tensor> in{random_tensor({m, c}, dt, next_seed(), 2.0f, 1.0f),
                           random_tensor({c}, dt, next_seed(), 0.5f, 1.0f),
                           random_tensor({c}, dt, next_seed())};
    expect_match(str("layer_norm ", m, "x", c), dt, in, [&](const std::vector<Tensor>& t) {
      return ops::layer_norm(t[0], t[1], t[2], 1e-5f);
    });
  }
}

// The sum and its LayerNorm in one pass: each against the CPU, and in f16/bf16 the
// same bits as CUDA's add and layer_norm one after the other (the sum rounded to the
// dtype before its statistics, as add leaves it), where the fused kernel takes the
// shape; widths without 16-byte packs or too wide for registers take the two ops.
class AddLayerNorm : public CudaTest,
                     public ::testing::WithParamInterface<std::tuple<int64_t, int64_t>> {};

TEST_P(AddLayerNorm, MatchesCpuAndTheTwoOps) {
  const auto [m, c] = GetParam();
  for (DType dt : kAllTypes) {
    std::vector<Tensor> in{random_tensor({m, c}, dt, next_seed(), 2.0f, 1.0f),
                           random_tensor({m, c}, dt, next_seed(), 3.0f, -0.5f),
                           random_tensor({c}, dt, next_seed(), 0.5f, 1.0f),
                           random_tensor({c}, dt, next_seed())};
    const std::string what = str("add_layer_norm ", m, "x", c);
    for (int part : {0, 1}) {
      expect_match(what + (part ? " norm" : " sum"), dt, in, [&](const std::vector<Tensor>& t) {
        auto [sum, out] = ops::add_layer_norm(t[0], t[1], t[2], t[3], 1e-5f);
        return part ? out : sum;
      });
    }
    if (dt == DType::F32) continue;
    std::vector<Tensor> d;
    for (const Tensor& t : in) d.push_back(on_cuda(t, dt));
    const size_t before = cuda::add_layer_norm_calls();
    auto [sum, out] = ops::add_layer_norm(d[0], d[1], d[2], d[3], 1e-5f);
    const bool fused = cuda::add_layer_norm_calls() > before;
    EXPECT_EQ(fused, c % 8 == 0 && c <= 2048) << what << " " << name(dt);
    const Tensor two_sum = ops::add(d[0], d[1]);
    const Tensor two_out = ops::layer_norm(two_sum, d[2], d[3], 1e-5f);
    const Tensor a = sum.to(Device::CPU), b = two_sum.to(Device::CPU);
    const Tensor e = out.to(Device::CPU), f = two_out.to(Device::CPU);
    EXPECT_EQ(std::memcmp(a.raw(), b.raw(), a.nbytes()), 0) << what << " sum " << name(dt);
    EXPECT_EQ(std::memcmp(e.raw(), f.raw(), e.nbytes()), 0) << what << " norm " << name(dt);
  }
}

// The transformer blocks' widths at their token counts (SD1.5's three levels, SDXL's
// 2048x1280), rows that leave a warp's last pass part empty (77), the widest fused
// (2048), packs that do not fill the lanes evenly (200), and the two-op widths (5: no
// 16-byte packs; 4096: too wide for registers).
INSTANTIATE_TEST_SUITE_P(
    Shapes, AddLayerNorm,
    ::testing::Values(std::tuple<int64_t, int64_t>{8192, 320},
                      std::tuple<int64_t, int64_t>{2048, 640},
                      std::tuple<int64_t, int64_t>{512, 1280},
                      std::tuple<int64_t, int64_t>{2048, 1280}, std::tuple<int64_t, int64_t>{77, 768},
                      std::tuple<int64_t, int64_t>{33, 2048}, std::tuple<int64_t, int64_t>{37, 200},
                      std::tuple<int64_t, int64_t>{13, 5}, std::tuple<int64_t, int64_t>{9, 4096}));

// The models' widths (320, 640, 768, 1280), rows that leave a warp's last pass part
// empty (77, 131), widths of one, three and eight packs a lane (64, 192, 2048), a
// width no pack count divides evenly among lanes (200), scalar accesses (5), and too
// wide for registers (4096).
INSTANTIATE_TEST_SUITE_P(
    Shapes, LayerNorm,
    ::testing::Values(std::tuple<int64_t, int64_t>{8192, 320},
                      std::tuple<int64_t, int64_t>{77, 320}, std::tuple<int64_t, int64_t>{131, 640},
                      std::tuple<int64_t, int64_t>{5, 64}, std::tuple<int64_t, int64_t>{7, 192},
                      std::tuple<int64_t, int64_t>{33, 2048},
                      std::tuple<int64_t, int64_t>{154, 768},
                      std::tuple<int64_t, int64_t>{2048, 1280},
                      std::tuple<int64_t, int64_t>{37, 200}, std::tuple<int64_t, int64_t>{13, 5},
                      std::tuple<int64_t, int64_t>{9, 4096}));

// ---------------------------------------------------------------------------
TEST_F(Elementwise, BinaryWithBroadcast) {
  const std::vector<std::pair<Shape, Shape>> cases{
      {{2, 64, 64, 320}, {2, 64, 64, 320}},  // residual add
      {{2, 32, 32, 640}, {2, 1, 1, 640}},    // time embedding into a resnet
      {{2, 77, 768}, {77, 768}},             // position embeddings
      {{1, 64, 64, 4}, {4}},                 // SDXL latent statistics
      {{3, 5, 7}, {3, 1, 7}},                // odd, broadcast in the middle
      {{3, 5, 7}, {5, 1}},                   // broadcast along the inner dim
      {{2, 3, 4, 16}, {1, 3, 1, 16}},        // 16-byte packs, broadcast over two dims
      {{11}, {1}}};
  for (DType dt : kAllTypes)
    for (const auto& [sa, sb] : cases)
      for (bool add : {true, false})
        expect_match(str(add ? "add " : "mul ", sa.str(), " ", sb.str()), dt,
                     {random_tensor(sa, dt, next_seed()), random_tensor(sb, dt, next_seed())},
                     [&](const std::vector<Tensor>& t) {
                       return add ? ops::add(t[0], t[1]) : ops::mul(t[0], t[1]);
                     });
}

TEST_F(Elementwise, UnaryActivationsScaleAndClamp) {
  for (DType dt : kAllTypes) {
    for (Shape s : {Shape{2, 1280}, Shape{3, 7}}) {
      for (Activation act :
           {Activation::SiLU, Activation::GELU, Activation::GELUTanh, Activation::QuickGELU}) {
        expect_match(str("activate ", int(act)), dt, {random_tensor(s, dt, next_seed(), 3.0f)},
                     [&](const std::vector<Tensor>& t) { return ops::activate(t[0], act); });
      }
      expect_match("scale", dt, {random_tensor(s, dt, next_seed())},
                   [&](const std::vector<Tensor>& t) { return ops::scale(t[0], 0.18215f); });
      expect_match("clamp", dt, {random_tensor(s, dt, next_seed(), 40.0f)},
                   [&](const std::vector<Tensor>& t) { return ops::clamp(t[0], -30.0f, 20.0f); });
    }
  }
}

TEST_F(Elementwise, LinearCombinationOfViewsAndManyTerms) {
  for (DType dt : kAllTypes) {
    for (int terms : {1, 2, 5, 11}) {
      // Rows of one tensor, as the samplers pass the CFG halves of the UNet output.
      const Tensor all = random_tensor({terms, 1, 9, 7, 4}, dt, next_seed());
      std::vector<Tensor> in{all};
      expect_match(str("linear_combination of ", terms), dt, in, [&](const std::vector<Tensor>& t) {
        std::vector<std::pair<float, Tensor>> parts;
        for (int i = 0; i < terms; ++i)
          parts.emplace_back(0.5f - 0.3f * float(i), t[0].rows(i, i + 1).reshape({1, 9, 7, 4}));
        return ops::linear_combination(parts);
      });
    }
  }
}

TEST_F(Elementwise, CastBetweenEveryPair) {
  for (DType from : kAllTypes) {
    for (DType to : kAllTypes) {
      SCOPED_TRACE(name(from) + " -> " + name(to));
      const Tensor cpu = ops::cast(random_tensor({5, 77, 13}, from, next_seed(), 10.0f), from);
      const Tensor expected = ops::cast(cpu, to);
      const Tensor actual = ops::cast(cpu.to(Device::CUDA), to);
      ASSERT_EQ(actual.dtype(), to);
      EXPECT_EQ(nmse(actual, expected), 0.0);  // conversions round exactly alike
    }
  }
}

TEST_F(Elementwise, Geglu) {
  for (DType dt : kAllTypes) {
    for (Shape s : {Shape{2, 4096, 2560}, Shape{5, 77, 1280}, Shape{2048, 10240}, Shape{3, 10}})
      expect_match(str("geglu ", s.str()), dt, {random_tensor(s, dt, next_seed())},
                   [&](const std::vector<Tensor>& t) { return ops::geglu(t[0]); });
    // Interleaved hidden and gate blocks: packed (block 8, 16) and not (block 2, 4 in f32).
    for (int64_t block : {2, 4, 8, 16})
      expect_match(str("geglu block ", block), dt, {random_tensor({7, 3, 64}, dt, next_seed())},
                   [&](const std::vector<Tensor>& t) { return ops::geglu(t[0], block); });
  }
}

TEST_F(Elementwise, ConcatAndSlice) {
  for (DType dt : kAllTypes) {
    expect_match("concat skip", dt,
                 {random_tensor({2, 32, 32, 640}, dt, next_seed()),
                  random_tensor({2, 32, 32, 320}, dt, next_seed())},
                 [&](const std::vector<Tensor>& t) {
                   return ops::concat_last({t[0], t[1]});
                 });
    expect_match("concat odd", dt,
                 {random_tensor({3, 3}, dt, next_seed()), random_tensor({3, 5}, dt, next_seed()),
                  random_tensor({3, 7}, dt, next_seed())},
                 [&](const std::vector<Tensor>& t) {
                   return ops::concat_last({t[0], t[1], t[2]});
                 });
    expect_match(
        "concat rows", dt,
        {random_tensor({1, 77, 64}, dt, next_seed()), random_tensor({2, 77, 64}, dt, next_seed())},
        [&](const std::vector<Tensor>& t) {
          return ops::concat_rows({t[0], t[1]});
        });
    expect_match("slice", dt, {random_tensor({4, 9, 8}, dt, next_seed())},
                 [&](const std::vector<Tensor>& t) { return ops::slice_last(t[0], 3, 7); });
  }
}

TEST_F(Elementwise, UpsampleNearest) {
  for (DType dt : kAllTypes) {
    expect_match("upsample 2x", dt, {random_tensor({2, 16, 16, 640}, dt, next_seed())},
                 [&](const std::vector<Tensor>& t) { return ops::upsample_nearest(t[0], 32, 32); });
    expect_match("upsample odd", dt, {random_tensor({1, 5, 7, 3}, dt, next_seed())},
                 [&](const std::vector<Tensor>& t) { return ops::upsample_nearest(t[0], 9, 13); });
  }
}

TEST_F(Elementwise, TimestepEmbedding) {
  const float t[] = {999.0f, 1.0f, 500.5f};
  const Tensor ts = Tensor::from_floats({3}, t);
  for (auto [dim, flip, shift] : {std::tuple<int, bool, float>{320, true, 0.0f},
                                  std::tuple<int, bool, float>{256, false, 1.0f},
                                  std::tuple<int, bool, float>{7, true, 1.0f}}) {
    SCOPED_TRACE(dim);
    const Tensor expected = ops::timestep_embedding(ts, dim, flip, shift);
    const Tensor actual = ops::timestep_embedding(ts.to(Device::CUDA), dim, flip, shift);
    EXPECT_LE(nmse(actual, expected), 1e-10);
  }
}

TEST_F(Elementwise, EmbeddingLookup) {
  for (DType dt : kAllTypes) {
    Tensor ids = Tensor::empty({2, 77}, DType::I32);
    for (int64_t i = 0; i < ids.numel(); ++i) ids.data<int32_t>()[i] = int32_t((i * 37) % 1000);
    expect_match("embedding", dt, {ids, random_tensor({1000, 768}, dt, next_seed())},
                 [&](const std::vector<Tensor>& t) { return ops::embedding(t[0], t[1]); });
  }
}

}  // namespace
}  // namespace kiln::backend_test
