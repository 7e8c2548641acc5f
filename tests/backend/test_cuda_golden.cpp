// The golden suite on CUDA: the tiny models of tests/golden/data loaded in f16
// and bf16 on the GPU, against the references diffusers/transformers made in
// f32, held to DESIGN.md's contract for CUDA: each component's NMSE ≤ 1e-3 and
// every final image's PSNR ≥ 30 dB.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>
#include <vector>

#include "../golden/golden.h"
#include "backend_test.h"
#include "core/random.h"
#include "io/image.h"
#include "models/autoencoder_kl.h"
#include "models/clip_text_model.h"
#include "models/unet_2d_condition.h"
#include "pipelines/text_to_image.h"

namespace kiln::backend_test {
namespace {

using golden::References;

constexpr double kCudaComponentNmse = 1e-3;
constexpr double kCudaImagePsnr = 30.0;
// Where diffusers itself, run at the same precision, stays below kCudaImagePsnr
// against its fp32 image (tests/golden/data/<model>/reference_precision.json, made by
// tools/py/reference_precision.py), kiln's image is held to within this much of the
// reference's own drift instead: classifier-free guidance can amplify rounding past
// 30 dB in any implementation (SDXL's ddim_empty_negative: diffusers in bf16 19.7 dB,
// in fp16 34.4).
constexpr double kReferenceDriftMargin = 3.0;

// The bound for one case at one precision: kCudaImagePsnr, or the reference's own
// PSNR at that precision less the margin where that is lower.
double image_bound(const std::string& model, const std::string& case_name, DType dtype) {
  std::ifstream in(golden::data_dir() / model / "reference_precision.json");
  if (!in) return kCudaImagePsnr;
  const nlohmann::json j = nlohmann::json::parse(in);
  const char* key = dtype == DType::BF16 ? "bf16" : dtype == DType::F16 ? "fp16" : "fp32";
  const nlohmann::json& cases = j.at("cases");
  const auto c = cases.find(case_name);
  if (c == cases.end() || !c->contains(key) || c->at(key).is_null()) return kCudaImagePsnr;
  return std::min(kCudaImagePsnr, c->at(key).get<double>() - kReferenceDriftMargin);
}

class CudaGolden : public ::testing::TestWithParam<std::tuple<std::string, DType>> {
 protected:
  void SetUp() override {
    if (!cuda::available()) GTEST_SKIP() << "no CUDA device";
  }
  std::string model() const { return std::get<0>(GetParam()); }
  Placement placement() const { return {Device::CUDA, std::get<1>(GetParam()), ""}; }
  std::filesystem::path model_dir() const { return golden::data_dir() / model() / "model"; }
  bool is_xl() const { return model() == "sdxl"; }
  // NMSE of a CUDA result against an f32 CPU reference, printed for the record.
  double check(const std::string& what, const Tensor& actual, const Tensor& expected) {
    const double e = nmse(actual, expected);
    std::printf("[ %s %s ] %-28s nmse %.3g\n", model().c_str(), name(placement().dtype).c_str(),
                what.c_str(), e);
    EXPECT_LE(e, kCudaComponentNmse) << what;
    return e;
  }
};

TEST_P(CudaGolden, TextEncoders) {
  const References ref(model());
  std::vector<std::string> encoders{"text_encoder"};
  if (is_xl()) encoders.push_back("text_encoder_2");
  for (const std::string& encoder : encoders) {
    const auto m = ClipTextModel::load(model_dir() / encoder, placement());
    const ClipTextModel::Output out = m->forward(ref.ids(encoder + ".input_ids"));
    check(encoder + " last_hidden_state", out.last_hidden_state,
          ref.get(encoder + ".last_hidden_state"));
    check(encoder + " penultimate", out.penultimate, ref.get(encoder + ".penultimate"));
    if (ref.has(encoder + ".text_embeds"))
      check(encoder + " text_embeds", out.text_embeds, ref.get(encoder + ".text_embeds"));
    else
      check(encoder + " pooled", out.pooled, ref.get(encoder + ".pooled"));
  }
}

TEST_P(CudaGolden, UNetForward) {
  const References ref(model());
  const auto unet = UNet2DConditionModel::load(model_dir() / "unet", placement());
  for (const std::string c : {"unet", "unet_odd"}) {
    check(c, unet->forward(golden::unet_inputs(ref, c)), ref.get(c + ".out"));
  }
}

TEST_P(CudaGolden, VaeDecodeAndEncode) {
  const References ref(model());
  const auto vae = AutoencoderKL::load(model_dir() / "vae", placement());
  check("vae decode", vae->decode(ref.get("vae.decode.latents")), ref.get("vae.decode.out"));
  const AutoencoderKL::Posterior p = vae->encode(ref.get("vae.encode.image"));
  check("vae encode mean", p.mean, ref.get("vae.encode.mean"));
  check("vae encode logvar", p.logvar, ref.get("vae.encode.logvar"));
}

TEST_P(CudaGolden, ImagesMatchDiffusers) {
  const auto pipeline =
      TextToImagePipeline::load(golden::data_dir() / model() / "model", placement());
  const std::vector<golden::GoldenCase> cases = golden::golden_cases(model());
  ASSERT_FALSE(cases.empty());
  for (const golden::GoldenCase& c : cases) {
    SCOPED_TRACE(c.name);
    const io::Image got = pipeline->generate(pipeline->resolve(c.request));
    const io::Image want = io::decode_png(io::read_file(c.image));
    ASSERT_EQ(got.width, want.width);
    ASSERT_EQ(got.height, want.height);
    const double p = golden::psnr(got, want);
    const double bound = image_bound(model(), c.name, placement().dtype);
    std::printf("[ %s %s ] %-22s (bound %.1f) PSNR %.1f dB\n", model().c_str(),
                name(placement().dtype).c_str(), c.name.c_str(), bound, p);
    EXPECT_GE(p, bound);
  }
}

// The pipeline replays its denoiser and its decoder from CUDA graphs (graph_cache.h):
// the images must be those of the eager pass, and the graphs must actually have been
// used.
TEST_P(CudaGolden, GraphReplayMatchesEager) {
  const std::filesystem::path dir = golden::data_dir() / model() / "model";
  ::setenv("KILN_CUDA_GRAPHS", "0", 1);
  const auto eager = TextToImagePipeline::load(dir, placement());
  ::unsetenv("KILN_CUDA_GRAPHS");
  const auto graphed = TextToImagePipeline::load(dir, placement());
  const std::vector<golden::GoldenCase> cases = golden::golden_cases(model());
  for (size_t i = 0; i < std::min<size_t>(cases.size(), 3); ++i) {
    SCOPED_TRACE(cases[i].name);
    const ResolvedRequest r = graphed->resolve(cases[i].request);
    const io::Image a = eager->generate(r), b = graphed->generate(r);
    const double p = golden::psnr(a, b);
    std::printf("[ %s %s ] %-22s graphs vs eager PSNR %.1f dB\n", model().c_str(),
                name(placement().dtype).c_str(), cases[i].name.c_str(), p);
    EXPECT_GE(p, 60.0);
  }
  const DenoiserGraphs::Stats st = graphed->graph_stats();
  std::printf("[ %s %s ] graphs: %llu eager, %llu captures, %llu replays\n", model().c_str(),
              name(placement().dtype).c_str(), (unsigned long long)st.eager,
              (unsigned long long)st.captures, (unsigned long long)st.replays);
  EXPECT_GT(st.replays, 0u);
  EXPECT_EQ(eager->graph_stats().replays, 0u);
  // The decodes too (the goldens' latents are far below the size limit).
  EXPECT_GT(graphed->decoder_graph_stats().replays, 0u);
  EXPECT_EQ(eager->decoder_graph_stats().replays + eager->decoder_graph_stats().eager, 0u);
}

// The server decodes on a side thread while its batch thread steps: a decode captured
// there must neither record the steps' ops into its graph nor leave them out of the
// generation (both queue on the one stream; the device lock keeps them apart). The side
// thread decodes a latent size not seen before three times (eager, capture, replay)
// while the main thread generates again and again an image it made alone before.
TEST_P(CudaGolden, DecodeCapturedBesideSteps) {
  const auto pipeline =
      TextToImagePipeline::load(golden::data_dir() / model() / "model", placement());
  const ResolvedRequest r = pipeline->resolve(golden::golden_cases(model()).front().request);
  const io::Image alone = pipeline->generate(r);
  (void)pipeline->generate(r);  // its own size's decode captured before the race
  const uint64_t captures_before = pipeline->decoder_graph_stats().captures;

  TorchGenerator noise(7);
  const Tensor latents = noise.randn_nhwc(1, 4, 12, 20).to(Device::CUDA);
  std::vector<io::Image> side;
  std::atomic<bool> side_done{false};
  std::thread decoder([&] {
    for (int i = 0; i < 3; ++i) side.push_back(pipeline->decode_latents(latents));
    side_done = true;
  });
  std::vector<io::Image> beside;
  while (!side_done || beside.empty()) beside.push_back(pipeline->generate(r));
  decoder.join();

  EXPECT_EQ(pipeline->decoder_graph_stats().captures, captures_before + 1);
  for (size_t i = 0; i < beside.size(); ++i)
    EXPECT_GE(golden::psnr(beside[i], alone), 60.0) << "generation " << i << " beside the decodes";
  ASSERT_EQ(side.size(), 3u);
  EXPECT_GE(golden::psnr(side[1], side[0]), 60.0) << "captured decode against eager";
  EXPECT_GE(golden::psnr(side[2], side[0]), 60.0) << "replayed decode against eager";
  std::printf("[ %s %s ] %zu generations beside three decodes\n", model().c_str(),
              name(placement().dtype).c_str(), beside.size());
}

// Step-level batching on CUDA, through the graphs and their row buckets (the batch's 5
// and 7 rows run padded to 6 and 8): a request's image is the one it makes alone, up
// to the rounding of GEMMs of another height. That rounding scales with the dtype's
// unit roundoff, 8x larger in bf16 (8 bits of mantissa) than in f16 (11), about 18 dB
// of PSNR. SDXL's "late arrival" case measured 39.5-47.3 dB in bf16 over the runs of
// v11-v39 (the plans are timed, so the GEMMs of the two heights differ from process to
// process), and 55.1 dB in f16 in v39. A row that took another row's conditioning or
// noise makes another image, far below either bound.
double batched_bound(DType dtype) {
  return dtype == DType::BF16 ? 30.0 : 40.0;
}

TEST_P(CudaGolden, BatchedImagesEqualImagesMadeAlone) {
  const auto pipeline =
      TextToImagePipeline::load(golden::data_dir() / model() / "model", placement());
  for (const golden::BatchedVsAlone& r : golden::batched_vs_alone(*pipeline)) {
    std::printf("[ %s %s ] %-24s batched vs alone PSNR %.1f dB\n", model().c_str(),
                name(placement().dtype).c_str(), r.prompt.c_str(), r.psnr);
    EXPECT_GE(r.psnr, batched_bound(placement().dtype)) << r.prompt;
  }
  EXPECT_GT(pipeline->graph_stats().replays, 0u);
}

INSTANTIATE_TEST_SUITE_P(Golden, CudaGolden,
                         ::testing::Combine(::testing::Values("sd1", "sd2v", "sdxl"),
                                            ::testing::Values(DType::F16, DType::BF16)),
                         [](const auto& info) {
                           return std::get<0>(info.param) + "_" + name(std::get<1>(info.param));
                         });

}  // namespace
}  // namespace kiln::backend_test
