// Step-level batching: generations with different prompts, seeds, samplers,
// guidance (with and without CFG) and step counts, joining a running batch at
// step boundaries and leaving when done, give the images they give alone.
#include <cmath>

#include "golden.h"
#include "pipelines/text_to_image.h"

namespace kiln::golden {
namespace {

struct Case {
  const char* prompt;
  const char* sampler;
  int steps;
  float guidance;
  uint64_t seed;
  int joins_after;  // batch steps taken before this request arrives
};

class Batching : public ::testing::TestWithParam<std::string> {};

TEST_P(Batching, BatchedImagesEqualImagesMadeAlone) {
  const auto pipeline = TextToImagePipeline::load(data_dir() / GetParam() / "model", Placement{});
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
    requests.push_back(pipeline->resolve(r));
    alone.push_back(pipeline->generate(requests.back()));
  }

  std::vector<std::unique_ptr<Generation>> generations(cases.size());
  std::vector<io::Image> batched(cases.size());
  size_t finished = 0;
  for (int tick = 0; finished < cases.size(); ++tick) {
    std::vector<Generation*> batch;
    for (size_t i = 0; i < cases.size(); ++i) {
      if (!generations[i] && cases[i].joins_after == tick)
        generations[i] = pipeline->start(requests[i]);
      if (generations[i] && !generations[i]->done()) batch.push_back(generations[i].get());
    }
    ASSERT_FALSE(batch.empty());
    pipeline->step(batch);
    for (size_t i = 0; i < cases.size(); ++i)
      if (generations[i] && generations[i]->done() && batched[i].pixels.empty()) {
        batched[i] = pipeline->decode(*generations[i]);
        ++finished;
      }
  }
  for (size_t i = 0; i < cases.size(); ++i) {
    const double p = psnr(batched[i], alone[i]);
    std::printf("[ %s ] %-24s batched vs alone PSNR %.1f dB\n", GetParam().c_str(), cases[i].prompt,
                p);
    EXPECT_GE(p, 60.0) << cases[i].prompt;
  }
}

INSTANTIATE_TEST_SUITE_P(Golden, Batching, ::testing::Values("sd1", "sdxl"));

}  // namespace
}  // namespace kiln::golden
