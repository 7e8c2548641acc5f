// The samplers against diffusers 0.42.1: tests/data/schedulers/<config>.json, written by
// tools/py/make_scheduler_goldens.py, records for each scheduler config, sampler, sigma
// schedule and step count diffusers' timesteps, sigmas, init_noise_sigma and a short
// seeded denoising loop (or the error diffusers raised). Golden tensors are NCHW; they are
// converted to kiln's NHWC here, at the test boundary.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kiln/error.h"
#include "ops/ops.h"
#include "schedulers/scheduler.h"

namespace kiln {
namespace {

using nlohmann::json;

// Tolerances. Timesteps are compared for equality; a float32 timestep may be one ulp away
// where diffusers derives it through float64 arithmetic that kiln reproduces but libm
// may round differently. Sigmas are float32 values of the same formulas, to 1e-6.
constexpr int kTimestepUlps = 1;
// Except Euler's Karras timesteps: diffusers interpolates them in np.log of the float32
// training sigmas, and numpy's vectorised float32 log (AVX-512 here, another code path on
// other CPUs) is not correctly rounded: a fifth of the 1000 logs are one ulp off. That
// moves a fractional timestep by up to ~6 float32 ulps (6e-6 at t = 12), which the
// denoiser's timestep embedding cannot tell apart.
constexpr double kKarrasTimestepRelative = 1e-6;
constexpr double kSigmaRelative = 1e-6;
// Both looser where rescale_betas_zero_snr is set. torch's float32 sqrt on the machine
// that made the goldens is not correctly rounded (a fifth of its results are one ulp off;
// kiln uses IEEE sqrt). The rescale takes sqrt(alphas_cumprod), then divides consecutive
// squares and subtracts from 1: a one-ulp difference in sqrt becomes ~1e-4 relative in a
// beta, and the cumulative product carries it into the sigmas (2e-6 relative at small
// sigmas, 4e-6 in the Karras timesteps interpolated from them).
constexpr double kZeroSnrRelative = 1e-5;
// Step outputs: diffusers rounds every intermediate tensor to float32 while kiln applies
// one linear combination with coefficients computed in double, so the two differ by a
// few float32 ulps of the largest intermediate, not of the result. Those intermediates
// are as large as the step's input sample (sigma_max * randn: up to ~40 for SD, ~400 for
// linear betas, ~10^4 with zero-terminal-SNR, where the result is a small difference of
// two such terms), hence a bound relative to the input's magnitude as well as 1e-5.
constexpr double kStepAbsolute = 1e-5;
constexpr double kStepRelative = 1e-6;
// Initial latents: torch's vectorised Box-Muller uses its own float32 log, cos and sin, so
// a draw can be a few ulps from TorchGenerator's; more means the generator is wrong.
constexpr double kRandnRelative = 1e-6;

std::filesystem::path golden_dir() {
  return std::filesystem::path(KILN_TEST_DATA) / "schedulers";
}

std::vector<std::string> golden_config_names() {
  std::vector<std::string> names;
  std::error_code error;
  for (const auto& entry : std::filesystem::directory_iterator(golden_dir(), error))
    if (entry.path().extension() == ".json") names.push_back(entry.path().stem().string());
  std::sort(names.begin(), names.end());
  return names;
}

json load_golden(const std::string& config_name) {
  std::ifstream file(golden_dir() / (config_name + ".json"));
  if (!file) throw Error(str("cannot open golden ", (golden_dir() / config_name).string()));
  return json::parse(file);
}

struct GoldenCase {
  const json& file;
  const json& entry;

  SamplerKind kind() const { return parse_sampler(entry["sampler"].get<std::string>()).value(); }
  SigmaSchedule schedule() const {
    return entry["karras"].get<bool>() ? SigmaSchedule::Karras : SigmaSchedule::Default;
  }
  int num_inference_steps() const { return entry["num_inference_steps"].get<int>(); }
  std::string label() const {
    return str("config ", file["config_name"].get<std::string>(), ", sampler ",
               entry["sampler"].get<std::string>(), entry["karras"].get<bool>() ? " (karras)" : "",
               ", ", num_inference_steps(), " steps");
  }
  std::unique_ptr<Scheduler> make() const {
    auto scheduler = make_scheduler(kind(), schedule(), file["scheduler_config"]);
    scheduler->set_timesteps(num_inference_steps());
    return scheduler;
  }
};

// The goldens write NaN and infinities, which JSON lacks, as "nan", "inf" and "-inf".
float golden_float(const json& value) {
  if (!value.is_string()) return value.get<float>();
  const std::string text = value.get<std::string>();
  if (text == "nan") return std::numeric_limits<float>::quiet_NaN();
  if (text == "inf") return std::numeric_limits<float>::infinity();
  if (text == "-inf") return -std::numeric_limits<float>::infinity();
  throw Error(str("unexpected value in golden: ", text));
}

std::vector<float> floats(const json& values) {
  std::vector<float> out;
  for (const json& value : values) out.push_back(golden_float(value));
  return out;
}

// "" when each got[i] is within `close(got, want)` of want[i]; else the sizes or the
// elements that differ, expected vs got, to nine digits.
template <class Close>
std::string list_mismatch(const std::vector<float>& got, const std::vector<float>& want,
                          Close close) {
  if (got.size() != want.size()) return str(got.size(), " values, expected ", want.size());
  std::ostringstream text;
  text.precision(9);
  int shown = 0;
  for (size_t i = 0; i < got.size(); ++i)
    if (!close(got[i], want[i]) && shown++ < 8)
      text << "\n  [" << i << "] expected " << want[i] << ", got " << got[i];
  return text.str();
}

int64_t ulp_distance(float a, float b) {
  if (a == b) return 0;
  if (std::isnan(a) || std::isnan(b)) return std::numeric_limits<int64_t>::max();
  // Map the float order onto the integers so that neighbours differ by one.
  auto ordered = [](float f) {
    const int32_t bits = std::bit_cast<int32_t>(f);
    return bits < 0 ? int64_t(std::numeric_limits<int32_t>::min()) - bits : int64_t(bits);
  };
  return std::abs(ordered(a) - ordered(b));
}

// NCHW values of the given shape -> NHWC tensor, and back.
Tensor nhwc_from_nchw(const std::vector<float>& nchw, const std::vector<int64_t>& shape) {
  const int64_t n = shape[0], c = shape[1], h = shape[2], w = shape[3];
  Tensor out = Tensor::empty({n, h, w, c}, DType::F32);
  float* o = out.data<float>();
  for (int64_t b = 0; b < n; ++b)
    for (int64_t ch = 0; ch < c; ++ch)
      for (int64_t p = 0; p < h * w; ++p)
        o[(b * h * w + p) * c + ch] = nchw[size_t((b * c + ch) * h * w + p)];
  return out;
}

std::vector<float> nchw_from_nhwc(const Tensor& nhwc) {
  const Tensor x = nhwc.is_cpu() ? nhwc : nhwc.to(Device::CPU);
  const int64_t n = x.dim(0), h = x.dim(1), w = x.dim(2), c = x.dim(3);
  std::vector<float> out(static_cast<size_t>(x.numel()));
  const float* in = x.data<float>();
  for (int64_t b = 0; b < n; ++b)
    for (int64_t ch = 0; ch < c; ++ch)
      for (int64_t p = 0; p < h * w; ++p)
        out[size_t((b * c + ch) * h * w + p)] = in[(b * h * w + p) * c + ch];
  return out;
}

double max_abs(const Tensor& x) {
  const std::vector<float> values = nchw_from_nhwc(x);
  double m = 0.0;
  for (float v : values) m = std::max(m, double(std::abs(v)));
  return m;
}

// Empty when `got` matches `want` within absolute + relative * max(|want|, magnitude)
// everywhere; else the worst element (NCHW index), expected vs got.
std::string tensor_mismatch(const Tensor& got_nhwc, const json& want_nchw, double absolute,
                            double relative, double magnitude = 0.0) {
  const std::vector<float> got = nchw_from_nhwc(got_nhwc), want = floats(want_nchw);
  if (got.size() != want.size()) return str(got.size(), " values, expected ", want.size());
  constexpr double infinity = std::numeric_limits<double>::infinity();
  double worst_excess = 0.0, max_error = 0.0;
  size_t worst = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    // Where diffusers degenerates (NaN, infinities), kiln must degenerate alike.
    if (!std::isfinite(want[i]) && (std::isnan(want[i]) ? std::isnan(got[i]) : got[i] == want[i]))
      continue;
    const double error = std::abs(double(got[i]) - double(want[i]));
    double excess = error / (absolute + relative * std::max(magnitude, std::abs(double(want[i]))));
    if (std::isnan(excess)) excess = infinity;
    max_error = std::max(max_error, std::isnan(error) ? infinity : error);
    if (excess > worst_excess) worst_excess = excess, worst = i;
  }
  if (worst_excess <= 1.0) return {};
  return str("max abs error ", max_error, "; worst at NCHW index ", worst, ": expected ",
             want[worst], ", got ", got[worst], " (tolerance ", absolute, " + ", relative,
             " * max(|expected|, ", magnitude, "))");
}

class SchedulerGolden : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override { golden_ = load_golden(GetParam()); }

  void for_each_case(const std::function<void(const GoldenCase&)>& check) const {
    for (const json& entry : golden_["cases"]) check(GoldenCase{golden_, entry});
  }

  json golden_;
};

TEST_P(SchedulerGolden, TimestepsSigmasAndInitNoiseSigmaMatchDiffusers) {
  for_each_case([](const GoldenCase& c) {
    if (c.entry.contains("error") && c.entry["error"]["phase"] != "step") return;
    std::unique_ptr<Scheduler> scheduler;
    try {
      scheduler = c.make();
    } catch (const Error& e) {
      // Where diffusers fails later, in step(), kiln may refuse up front.
      if (!c.entry.contains("error"))
        ADD_FAILURE() << c.label() << ": diffusers builds this schedule, kiln throws: " << e.what();
      return;
    }
    const json& config = c.file["scheduler_config"];
    const bool zero_snr = config.value("rescale_betas_zero_snr", false);
    const double sigma_relative = zero_snr ? kZeroSnrRelative : kSigmaRelative;
    // Euler's timesteps that come out of float32 transcendental functions: Karras ones
    // (interpolated in log sigma) and "continuous" ones (0.25 * log(sigma)).
    const bool timesteps_from_logs =
        c.kind() == SamplerKind::Euler && (c.schedule() == SigmaSchedule::Karras ||
                                           (config.value("timestep_type", "") == "continuous" &&
                                            config.value("prediction_type", "") == "v_prediction"));
    const double timestep_relative = zero_snr ? kZeroSnrRelative : kKarrasTimestepRelative;
    const std::string timesteps = list_mismatch(
        scheduler->timesteps(), floats(c.entry["timesteps"]), [&](float got, float want) {
          if (timesteps_from_logs)
            return std::abs(double(got) - want) <= timestep_relative * std::abs(double(want));
          return ulp_distance(got, want) <= kTimestepUlps;
        });
    EXPECT_TRUE(timesteps.empty()) << c.label() << ": timesteps" << timesteps;

    const std::vector<float> want_sigmas =
        c.entry["sigmas"].is_null() ? std::vector<float>{} : floats(c.entry["sigmas"]);
    const std::string sigmas =
        list_mismatch(scheduler->sigmas(), want_sigmas, [&](float got, float want) {
          return std::abs(double(got) - want) <= sigma_relative * std::abs(double(want));
        });
    EXPECT_TRUE(sigmas.empty()) << c.label() << ": sigmas" << sigmas;

    const double want_init = c.entry["init_noise_sigma"].get<double>();
    EXPECT_NEAR(scheduler->init_noise_sigma(), want_init, kSigmaRelative * std::abs(want_init))
        << c.label() << ": init_noise_sigma";
  });
}

TEST_P(SchedulerGolden, DenoisingLoopMatchesDiffusers) {
  const std::vector<int64_t> shape = golden_["shape_nchw"].get<std::vector<int64_t>>();
  const json& seeds = golden_["seeds"];
  int loops = 0;
  for_each_case([&](const GoldenCase& c) {
    if (!c.entry.contains("sequence")) return;
    ++loops;
    const json& sequence = c.entry["sequence"];
    std::unique_ptr<Scheduler> scheduler;
    try {
      scheduler = c.make();
    } catch (const Error& e) {
      ADD_FAILURE() << c.label() << ": kiln throws: " << e.what();
      return;
    }
    TorchGenerator latents_generator(seeds["latents"].get<uint64_t>());
    TorchGenerator model_output_generator(seeds["model_output"].get<uint64_t>());
    TorchGenerator noise_generator(seeds["noise"].get<uint64_t>());
    auto draw = [&](TorchGenerator& generator) {
      return generator.randn_nhwc(shape[0], shape[1], shape[2], shape[3]);
    };

    // torch.randn(shape, generator) * init_noise_sigma, as the pipelines start.
    Tensor latents = ops::scale(draw(latents_generator), scheduler->init_noise_sigma());
    const std::string initial = list_mismatch(
        nchw_from_nhwc(latents), floats(sequence["initial_latents"]), [](float got, float want) {
          return std::abs(double(got) - want) <= kRandnRelative * std::abs(double(want));
        });
    EXPECT_TRUE(initial.empty()) << c.label()
                                 << ": initial latents, TorchGenerator(seed).randn_nhwc * "
                                    "init_noise_sigma vs torch.randn * init_noise_sigma:"
                                 << initial;
    ASSERT_EQ(size_t(scheduler->num_steps()), sequence["prev_samples"].size()) << c.label();
    // Each step starts from diffusers' sample, so that every comparison measures one
    // step's difference rather than the drift accumulated by the earlier ones.
    for (int step = 0; step < scheduler->num_steps(); ++step) {
      if (step > 0)
        latents = nhwc_from_nchw(floats(sequence["prev_samples"][size_t(step) - 1]), shape);
      const double magnitude = max_abs(latents);
      try {
        const Tensor model_input = scheduler->scale_model_input(latents, step);
        if (sequence["model_inputs"].is_null()) {
          EXPECT_TRUE(std::memcmp(model_input.raw(), latents.raw(), latents.nbytes()) == 0)
              << c.label() << ", step " << step << ": scale_model_input should be the identity";
        } else {
          const std::string mismatch = tensor_mismatch(
              model_input, sequence["model_inputs"][size_t(step)], kStepAbsolute, kStepRelative);
          EXPECT_TRUE(mismatch.empty())
              << c.label() << ", step " << step << " (timestep " << scheduler->timesteps()[step]
              << "): scale_model_input: " << mismatch;
        }
        const Tensor model_output = draw(model_output_generator);
        latents = scheduler->step(model_output, step, latents, noise_generator);
      } catch (const Error& e) {
        ADD_FAILURE() << c.label() << ", step " << step << ": kiln throws: " << e.what();
        return;
      }
      const std::string mismatch = tensor_mismatch(latents, sequence["prev_samples"][size_t(step)],
                                                   kStepAbsolute, kStepRelative, magnitude);
      if (!mismatch.empty()) {
        ADD_FAILURE() << c.label() << ", step " << step << " (timestep "
                      << scheduler->timesteps()[step] << "): step output: " << mismatch;
        return;  // later steps only repeat the difference
      }
    }
    std::vector<float> next_draws(4);
    noise_generator.randn(next_draws.data(), 4);
    EXPECT_EQ(next_draws, floats(sequence["next_noise_draws"]))
        << c.label() << ": the sampler drew a different amount of noise than diffusers";
  });
  EXPECT_GT(loops, 0) << "no denoising loops in " << GetParam() << ".json";
}

TEST_P(SchedulerGolden, FailsWhereDiffusersFails) {
  const std::vector<int64_t> shape = golden_["shape_nchw"].get<std::vector<int64_t>>();
  for_each_case([&](const GoldenCase& c) {
    if (!c.entry.contains("error")) return;
    const std::string phase = c.entry["error"]["phase"].get<std::string>();
    const std::string diffusers_error = c.entry["error"]["message"].get<std::string>();
    // kiln may refuse earlier than diffusers (at make_scheduler rather than in step).
    std::string reached = "make";
    try {
      auto scheduler = make_scheduler(c.kind(), c.schedule(), c.file["scheduler_config"]);
      reached = "set_timesteps";
      scheduler->set_timesteps(c.num_inference_steps());
      reached = "step";
      TorchGenerator generator(0);
      Tensor latents = generator.randn_nhwc(shape[0], shape[1], shape[2], shape[3]);
      for (int step = 0; step < scheduler->num_steps(); ++step) {
        const Tensor model_output = generator.randn_nhwc(shape[0], shape[1], shape[2], shape[3]);
        latents = scheduler->step(model_output, step, scheduler->scale_model_input(latents, step),
                                  generator);
      }
      ADD_FAILURE() << c.label() << ": diffusers raises in " << phase << " (" << diffusers_error
                    << "), kiln does not";
    } catch (const Error& e) {
      const std::vector<std::string> order = {"make", "set_timesteps", "step"};
      EXPECT_LE(std::find(order.begin(), order.end(), reached) - order.begin(),
                std::find(order.begin(), order.end(), phase) - order.begin())
          << c.label() << ": kiln throws in " << reached << " (" << e.what()
          << ") where diffusers succeeds; diffusers raises only in " << phase;
    }
  });
}

INSTANTIATE_TEST_SUITE_P(Diffusers, SchedulerGolden, ::testing::ValuesIn(golden_config_names()),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           return info.param;
                         });

TEST(SchedulerGoldenFiles, CoverTheConfigsTheSamplersMustMatch) {
  const std::vector<std::string> names = golden_config_names();
  for (const char* required : {"sd15", "sd21", "sdxl_base", "lcm_dreamshaper_v7", "trailing",
                               "linspace", "zero_snr", "sparse", "pndm_prk"})
    EXPECT_NE(std::find(names.begin(), names.end(), required), names.end())
        << "missing " << (golden_dir() / required).string()
        << ".json; run tools/py/make_scheduler_goldens.py";
}

// ---- names ----

TEST(SchedulerNames, ParseSamplerAcceptsEachNameItPrints) {
  for (SamplerKind kind : {SamplerKind::Euler, SamplerKind::EulerAncestral, SamplerKind::DDIM,
                           SamplerKind::DPMPP2M, SamplerKind::LCM, SamplerKind::PNDM})
    EXPECT_EQ(parse_sampler(sampler_name(kind)), kind) << sampler_name(kind);
  EXPECT_EQ(parse_sampler("pndm"), SamplerKind::PNDM);
  EXPECT_EQ(parse_sampler("euler_a"), SamplerKind::EulerAncestral);
  EXPECT_EQ(parse_sampler("dpmpp_2m"), SamplerKind::DPMPP2M);
  EXPECT_EQ(parse_sampler("Euler"), std::nullopt);
  EXPECT_EQ(parse_sampler("dpmpp_2m_karras"), std::nullopt);
  EXPECT_EQ(parse_sampler(""), std::nullopt);
}

TEST(SchedulerNames, A1111NamesRoundTrip) {
  EXPECT_EQ(a1111_sampler_name(SamplerKind::Euler, SigmaSchedule::Default), "Euler");
  EXPECT_EQ(a1111_sampler_name(SamplerKind::EulerAncestral, SigmaSchedule::Default), "Euler a");
  EXPECT_EQ(a1111_sampler_name(SamplerKind::DDIM, SigmaSchedule::Default), "DDIM");
  EXPECT_EQ(a1111_sampler_name(SamplerKind::DPMPP2M, SigmaSchedule::Default), "DPM++ 2M");
  EXPECT_EQ(a1111_sampler_name(SamplerKind::DPMPP2M, SigmaSchedule::Karras), "DPM++ 2M Karras");
  EXPECT_EQ(a1111_sampler_name(SamplerKind::LCM, SigmaSchedule::Default), "LCM");
  EXPECT_EQ(a1111_sampler_name(SamplerKind::PNDM, SigmaSchedule::Default), "PLMS");
  using Parsed = std::optional<std::pair<SamplerKind, SigmaSchedule>>;
  EXPECT_EQ(parse_a1111_sampler("DPM++ 2M Karras"),
            Parsed({SamplerKind::DPMPP2M, SigmaSchedule::Karras}));
  EXPECT_EQ(parse_a1111_sampler("Euler a"),
            Parsed({SamplerKind::EulerAncestral, SigmaSchedule::Default}));
  EXPECT_EQ(parse_a1111_sampler("Euler Karras"),
            Parsed({SamplerKind::Euler, SigmaSchedule::Karras}));
  EXPECT_EQ(parse_a1111_sampler("PLMS"), Parsed({SamplerKind::PNDM, SigmaSchedule::Default}));
  EXPECT_EQ(parse_a1111_sampler("DDIM Karras"), std::nullopt);
  EXPECT_EQ(parse_a1111_sampler("PLMS Karras"), std::nullopt);
  EXPECT_EQ(parse_a1111_sampler("DPM++ 2M SDE"), std::nullopt);
}

// ---- config errors ----

// The message of the kiln::Error that make_scheduler throws, or "" if it does not.
std::string make_error(SamplerKind kind, const json& config,
                       SigmaSchedule schedule = SigmaSchedule::Default) {
  try {
    make_scheduler(kind, schedule, config);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(SchedulerConfig, RejectsOptionsKilnDoesNotImplementNamingTheKey) {
  const struct {
    SamplerKind kind;
    json config;
    std::string key;
  } cases[] = {
      {SamplerKind::Euler, {{"use_exponential_sigmas", true}}, "use_exponential_sigmas"},
      {SamplerKind::Euler, {{"use_beta_sigmas", true}}, "use_beta_sigmas"},
      {SamplerKind::DPMPP2M, {{"algorithm_type", "sde-dpmsolver++"}}, "algorithm_type"},
      {SamplerKind::DPMPP2M, {{"algorithm_type", "dpmsolver"}}, "algorithm_type"},
      {SamplerKind::DPMPP2M, {{"use_lu_lambdas", true}}, "use_lu_lambdas"},
      {SamplerKind::DPMPP2M, {{"use_flow_sigmas", true}}, "use_flow_sigmas"},
      {SamplerKind::DPMPP2M, {{"variance_type", "learned_range"}}, "variance_type"},
      {SamplerKind::DPMPP2M, {{"solver_order", 4}}, "solver_order"},
      {SamplerKind::DPMPP2M, {{"thresholding", true}}, "thresholding"},
      {SamplerKind::DDIM, {{"thresholding", true}}, "thresholding"},
      {SamplerKind::LCM, {{"thresholding", true}}, "thresholding"},
      {SamplerKind::DDIM, {{"beta_schedule", "sigmoid"}}, "beta_schedule"},
      {SamplerKind::Euler, {{"timestep_spacing", "uniform"}}, "timestep_spacing"},
      {SamplerKind::Euler, {{"interpolation_type", "cubic"}}, "interpolation_type"},
      {SamplerKind::Euler, {{"prediction_type", "flow_prediction"}}, "prediction_type"},
      {SamplerKind::EulerAncestral, {{"prediction_type", "sample"}}, "prediction_type"},
      {SamplerKind::PNDM, {{"prediction_type", "sample"}}, "prediction_type"},
      {SamplerKind::PNDM, {{"timestep_spacing", "uniform"}}, "timestep_spacing"},
      {SamplerKind::Euler, {{"final_sigmas_type", "sigma_max"}}, "final_sigmas_type"},
      {SamplerKind::DDIM, {{"num_train_timesteps", "1000"}}, "num_train_timesteps"},
      {SamplerKind::DDIM,
       {{"num_train_timesteps", 10}, {"trained_betas", {0.1, 0.2}}},
       "trained_betas"},
      {SamplerKind::LCM, {{"original_inference_steps", 2000}}, "original_inference_steps"},
  };
  for (const auto& c : cases) {
    const std::string message = make_error(c.kind, c.config);
    EXPECT_NE(message.find('"' + c.key + '"'), std::string::npos)
        << sampler_name(c.kind) << " with " << c.config.dump() << ": expected an error naming \""
        << c.key << "\", got " << (message.empty() ? "no error" : message);
  }
}

TEST(SchedulerConfig, KarrasOnlyForSamplersWhoseClassSupportsIt) {
  for (SamplerKind kind :
       {SamplerKind::EulerAncestral, SamplerKind::DDIM, SamplerKind::LCM, SamplerKind::PNDM}) {
    const std::string message = make_error(kind, json::object(), SigmaSchedule::Karras);
    EXPECT_NE(message.find("use_karras_sigmas"), std::string::npos)
        << sampler_name(kind) << ": got " << (message.empty() ? "no error" : message);
  }
  EXPECT_EQ(make_error(SamplerKind::Euler, json::object(), SigmaSchedule::Karras), "");
  EXPECT_EQ(make_error(SamplerKind::DPMPP2M, json::object(), SigmaSchedule::Karras), "");
  EXPECT_NE(make_error(SamplerKind::Euler, json::array()), "");
}

TEST(SchedulerConfig, UseKarrasSigmasInTheConfigIsHonoured) {
  const json config = {{"beta_schedule", "scaled_linear"},
                       {"beta_start", 0.00085},
                       {"beta_end", 0.012},
                       {"use_karras_sigmas", true}};
  auto from_config = make_scheduler(SamplerKind::DPMPP2M, SigmaSchedule::Default, config);
  auto requested = make_scheduler(SamplerKind::DPMPP2M, SigmaSchedule::Karras, config);
  from_config->set_timesteps(10);
  requested->set_timesteps(10);
  EXPECT_EQ(from_config->sigmas(), requested->sigmas());
}

TEST(SchedulerConfig, NullMeansTheClassDefaultAndUnknownKeysAreIgnored) {
  const json with_nulls = {{"trained_betas", nullptr},
                           {"timestep_spacing", nullptr},
                           {"skip_prk_steps", true},
                           {"some_future_option", {1, 2}}};
  auto with = make_scheduler(SamplerKind::DDIM, SigmaSchedule::Default, with_nulls);
  auto without = make_scheduler(SamplerKind::DDIM, SigmaSchedule::Default, json::object());
  with->set_timesteps(7);
  without->set_timesteps(7);
  EXPECT_EQ(with->timesteps(), without->timesteps());
}

TEST(SchedulerConfig, KeysListedAsDefaultedTakeThisClassDefaults) {
  // diffusers' in-memory configs list the keys that took the original class's defaults in
  // "_use_default_values"; from_config gives those keys the target class's defaults.
  const json defaulted = {{"timestep_spacing", "trailing"},
                          {"_use_default_values", {"timestep_spacing"}}};
  auto with = make_scheduler(SamplerKind::Euler, SigmaSchedule::Default, defaulted);
  auto without = make_scheduler(SamplerKind::Euler, SigmaSchedule::Default, json::object());
  with->set_timesteps(7);
  without->set_timesteps(7);
  EXPECT_EQ(with->timesteps(), without->timesteps());
}

TEST(SchedulerStep, RejectsOutOfRangeAndOutOfOrderSteps) {
  auto scheduler = make_scheduler(SamplerKind::DPMPP2M, SigmaSchedule::Default, json::object());
  TorchGenerator generator(0);
  const Tensor sample = generator.randn_nhwc(1, 4, 2, 2);
  EXPECT_THROW(scheduler->step(sample, 0, sample, generator), Error);  // before set_timesteps
  scheduler->set_timesteps(4);
  EXPECT_THROW(scheduler->step(sample, 4, sample, generator), Error);
  EXPECT_THROW(scheduler->step(sample, 1, sample, generator), Error);  // skips step 0
  EXPECT_NO_THROW(scheduler->step(sample, 0, sample, generator));
  EXPECT_THROW(scheduler->set_timesteps(0), Error);
}

TEST(SchedulerStep, PndmRejectsOutOfOrderStepsAndTimestepsPastTheSchedule) {
  // PNDM keeps the Runge-Kutta start and the multistep history between steps.
  auto scheduler = make_scheduler(SamplerKind::PNDM, SigmaSchedule::Default,
                                  {{"skip_prk_steps", true}, {"steps_offset", 1}});
  TorchGenerator generator(0);
  const Tensor sample = generator.randn_nhwc(1, 4, 2, 2);
  scheduler->set_timesteps(4);
  EXPECT_THROW(scheduler->step(sample, 1, sample, generator), Error);  // skips step 0
  EXPECT_NO_THROW(scheduler->step(sample, 0, sample, generator));
  // 1000 steps with steps_offset 1 reach timestep 1000, past alphas_cumprod (diffusers
  // raises IndexError there).
  scheduler->set_timesteps(1000);
  EXPECT_EQ(scheduler->timesteps().front(), 1000.0f);
  EXPECT_THROW(scheduler->step(sample, 0, sample, generator), Error);
}

}  // namespace
}  // namespace kiln
