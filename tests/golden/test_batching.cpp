// Step-level batching: generations with different prompts, seeds, samplers,
// guidance (with and without CFG) and step counts, joining a running batch at
// step boundaries and leaving when done, give the images they give alone.
#include <cmath>
#include <cstdio>

#include "golden.h"
#include "pipelines/text_to_image.h"

namespace kiln::golden {
namespace {

class Batching : public ::testing::TestWithParam<std::string> {};

TEST_P(Batching, BatchedImagesEqualImagesMadeAlone) {
  const auto pipeline = TextToImagePipeline::load(data_dir() / GetParam() / "model", Placement{});
  for (const BatchedVsAlone& r : batched_vs_alone(*pipeline)) {
    std::printf("[ %s ] %-24s batched vs alone PSNR %.1f dB\n", GetParam().c_str(),
                r.prompt.c_str(), r.psnr);
    EXPECT_GE(r.psnr, 60.0) << r.prompt;
  }
}

// The row counts CUDA graphs are captured for: every count up to 4, then fewer than
// half as many rows again as asked.
TEST(DenoiserGraphs, RowBuckets) {
  const std::vector<int64_t> want{1, 2, 3, 4, 6, 6, 8, 8, 12, 12, 12, 12, 16, 16, 16, 16, 24};
  for (int64_t rows = 1; rows <= int64_t(want.size()); ++rows)
    EXPECT_EQ(DenoiserGraphs::bucket_rows(rows), want[size_t(rows - 1)]) << rows;
  for (int64_t rows = 1; rows <= 1000; ++rows) {
    const int64_t b = DenoiserGraphs::bucket_rows(rows);
    EXPECT_GE(b, rows);
    EXPECT_LT(2 * b, 3 * rows) << rows;
  }
}

INSTANTIATE_TEST_SUITE_P(Golden, Batching, ::testing::Values("sd1", "sdxl"));

}  // namespace
}  // namespace kiln::golden
