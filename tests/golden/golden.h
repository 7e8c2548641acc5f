// Helpers for the golden tests: reference tensors written by
// tools/py/make_goldens.py (NCHW, as torch produces them) are converted to
// kiln's NHWC here, at the test boundary, and compared by normalised MSE.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <string>

#include <fstream>
#include <nlohmann/json.hpp>
#include <vector>

#include "io/image.h"
#include "io/safetensors.h"
#include "pipelines/text_to_image.h"

namespace kiln::golden {

inline std::filesystem::path data_dir() {
  return KILN_GOLDEN_DATA;
}

// [B, C, H, W] → [B, H, W, C]; other ranks unchanged (as f32).
inline Tensor to_nhwc(const Tensor& t) {
  const Tensor src = t.dtype() == DType::F32 ? t : Tensor();
  KILN_CHECK(src.defined(), "golden tensor ", t.describe(), " is not f32");
  if (t.ndim() != 4) return t.clone();
  const int64_t b = t.dim(0), c = t.dim(1), h = t.dim(2), w = t.dim(3);
  Tensor out = Tensor::empty({b, h, w, c}, DType::F32);
  const float* s = t.data<float>();
  float* d = out.data<float>();
  for (int64_t n = 0; n < b; ++n)
    for (int64_t ch = 0; ch < c; ++ch)
      for (int64_t p = 0; p < h * w; ++p) d[(n * h * w + p) * c + ch] = s[(n * c + ch) * h * w + p];
  return out;
}

class References {
 public:
  explicit References(const std::string& model)
      : weights_(io::WeightSet::open_file(data_dir() / model / "components.safetensors")) {}
  // The named reference, NHWC when 4-D.
  Tensor get(const std::string& name) const { return to_nhwc(weights_.load(name, DType::F32)); }
  Tensor ids(const std::string& name) const { return weights_.load(name, DType::I32); }
  bool has(const std::string& name) const { return weights_.contains(name); }

 private:
  io::WeightSet weights_;
};

// The UNet inputs of reference case `c` ("unet", "unet_odd"), SDXL's extras when it has them.
inline UNet2DConditionModel::Inputs unet_inputs(const References& ref, const std::string& c) {
  UNet2DConditionModel::Inputs in;
  in.sample = ref.get(c + ".sample");
  in.timesteps = ref.get(c + ".timesteps");
  in.encoder_hidden_states = ref.get(c + ".encoder_hidden_states");
  if (ref.has(c + ".text_embeds")) {
    in.text_embeds = ref.get(c + ".text_embeds");
    in.time_ids = ref.get(c + ".time_ids");
  }
  return in;
}

// ‖actual − expected‖² / ‖expected‖²; shapes must agree.
inline double nmse(const Tensor& actual, const Tensor& expected) {
  const Tensor a = actual.dtype() == DType::F32 && actual.is_cpu() ? actual : Tensor();
  EXPECT_TRUE(a.defined()) << "compare on CPU f32, got " << actual.describe();
  EXPECT_EQ(actual.shape(), expected.shape());
  if (!a.defined() || actual.shape() != expected.shape()) return INFINITY;
  double err = 0.0, ref = 0.0;
  const float* x = a.data<float>();
  const float* y = expected.data<float>();
  for (int64_t i = 0; i < expected.numel(); ++i) {
    const double d = double(x[i]) - double(y[i]);
    if (!std::isfinite(x[i])) return INFINITY;
    err += d * d;
    ref += double(y[i]) * y[i];
  }
  return ref > 0.0 ? err / ref : err;
}

// Peak signal-to-noise ratio of two 8-bit images of one size, in dB (inf when equal).
inline double psnr(const io::Image& a, const io::Image& b) {
  double se = 0.0;
  for (size_t i = 0; i < a.pixels.size(); ++i) {
    const double d = double(a.pixels[i]) - double(b.pixels[i]);
    se += d * d;
  }
  return se == 0.0 ? INFINITY : 10.0 * std::log10(255.0 * 255.0 * double(a.pixels.size()) / se);
}

// One whole-pipeline case of a golden model (cases.json): the request diffusers ran
// and the image it made.
struct GoldenCase {
  std::string name;
  TextToImageRequest request;
  std::filesystem::path image;
};

inline std::vector<GoldenCase> golden_cases(const std::string& model) {
  const std::filesystem::path dir = data_dir() / model;
  std::ifstream in(dir / "cases.json");
  const nlohmann::json cases = nlohmann::json::parse(in);
  std::vector<GoldenCase> out;
  for (const nlohmann::json& c : cases) {
    GoldenCase g;
    g.name = c["name"];
    TextToImageRequest& r = g.request;
    r.prompt = c["prompt"];
    if (!c["negative_prompt"].is_null())
      r.negative_prompt = c["negative_prompt"].get<std::string>();
    r.width = c["width"];
    r.height = c["height"];
    r.num_inference_steps = c["steps"];
    r.guidance_scale = c["guidance_scale"].get<float>();
    // "default" cases leave the sampler to the folder's own scheduler_config.json.
    if (c["sampler_case"] != "default") {
      r.sampler = parse_sampler(c["sampler"].get<std::string>());
      KILN_CHECK(r.sampler.has_value(), "cases.json names an unknown sampler ",
                 c["sampler"].dump());
    }
    r.schedule = c["scheduler"] == "karras" ? SigmaSchedule::Karras : SigmaSchedule::Default;
    r.seed = c["seed"];
    g.image = dir / c["image"].get<std::string>();
    out.push_back(std::move(g));
  }
  return out;
}

// DESIGN.md's numerics contract for CPU fp32 against the fp32 reference.
constexpr double kComponentNmse = 1e-8;
constexpr double kImagePsnr = 40.0;
constexpr double kRegressionPsnr = 60.0;

// Step-level batching: four generations with different prompts, seeds, samplers,
// guidance (with and without CFG) and step counts, joining a running batch at step
// boundaries (so the batch has 4, 5 and 7 rows) and leaving when done, against the
// images each makes alone.
struct BatchedVsAlone {
  std::string prompt;
  double psnr = 0.0;
};
inline std::vector<BatchedVsAlone> batched_vs_alone(const TextToImagePipeline& pipeline) {
  struct Case {
    const char* prompt;
    const char* sampler;
    int steps;
    float guidance;
    uint64_t seed;
    int joins_after;  // batch steps taken before this request arrives
  };
  const std::vector<Case> cases{{"a red circle", "euler", 6, 7.5f, 1, 0},
                                {"a blue square, Ünïcödé", "dpmpp_2m", 8, 5.0f, 2, 0},
                                {"a star without guidance", "euler_a", 5, 1.0f, 3, 2},
                                {"late arrival", "ddim", 4, 3.0f, 4, 3}};
  std::vector<ResolvedRequest> requests;
  std::vector<io::Image> alone;
  for (const Case& c : cases) {
    TextToImageRequest r;
    r.prompt = c.prompt;
    r.num_inference_steps = c.steps;
    r.guidance_scale = c.guidance;
    r.sampler = parse_sampler(c.sampler);
    r.seed = c.seed;
    requests.push_back(pipeline.resolve(r));
    alone.push_back(pipeline.generate(requests.back()));
  }
  std::vector<std::unique_ptr<Generation>> generations(cases.size());
  std::vector<io::Image> batched(cases.size());
  size_t finished = 0;
  for (int tick = 0; finished < cases.size(); ++tick) {
    std::vector<Generation*> batch;
    for (size_t i = 0; i < cases.size(); ++i) {
      if (!generations[i] && cases[i].joins_after == tick)
        generations[i] = pipeline.start(requests[i]);
      if (generations[i] && !generations[i]->done()) batch.push_back(generations[i].get());
    }
    KILN_CHECK(!batch.empty(), "a batching test tick with nothing to step");
    pipeline.step(batch);
    for (size_t i = 0; i < cases.size(); ++i)
      if (generations[i] && generations[i]->done() && batched[i].pixels.empty()) {
        batched[i] = pipeline.decode(*generations[i]);
        ++finished;
      }
  }
  std::vector<BatchedVsAlone> out;
  for (size_t i = 0; i < cases.size(); ++i)
    out.push_back({cases[i].prompt, psnr(batched[i], alone[i])});
  return out;
}

}  // namespace kiln::golden
