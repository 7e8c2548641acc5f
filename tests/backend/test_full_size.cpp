// Full-size correctness: random-weight UNets with the real SD1.5 and SDXL
// architectures, kiln on CUDA in f16 against diffusers in fp32 on the same
// (fp16-rounded) weights, NMSE ≤ 1e-3 on one CFG step's output. The references are
// gigabytes, so they are made where the test runs, by
// tools/py/make_full_size_reference.py (scripts/gpu-check.sh, stage fullsize), into
// $KILN_FULL_SIZE_DIR/<arch>/{unet/, io.safetensors}. Without that variable (CI,
// a plain run of the suite) the test is skipped. KILN_FULL_SIZE_DEVICE=cpu runs kiln's
// f32 CPU path instead (slow; for checking the references themselves).
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "../golden/golden.h"
#include "backend_test.h"
#include "models/unet_2d_condition.h"

namespace kiln::backend_test {
namespace {

constexpr double kFullSizeNmse = 1e-3;

class FullSize : public ::testing::TestWithParam<std::tuple<std::string, DType>> {};

TEST_P(FullSize, UNetMatchesDiffusersFp32) {
  const char* root = std::getenv("KILN_FULL_SIZE_DIR");
  if (!root || !*root) GTEST_SKIP() << "KILN_FULL_SIZE_DIR is not set";
  const char* device = std::getenv("KILN_FULL_SIZE_DEVICE");
  const bool cpu = device && std::string(device) == "cpu";
  if (!cpu && !cuda::available()) GTEST_SKIP() << "no CUDA device";
  const auto [arch, param_dtype] = GetParam();
  const DType dtype = cpu ? DType::F32 : param_dtype;
  const std::filesystem::path dir = std::filesystem::path(root) / arch;
  if (!std::filesystem::exists(dir / "io.safetensors")) GTEST_SKIP() << "no reference in " << dir;

  const io::WeightSet ref = io::WeightSet::open_file(dir / "io.safetensors");
  auto get = [&](const std::string& n) { return golden::to_nhwc(ref.load(n, DType::F32)); };
  const auto unet =
      UNet2DConditionModel::load(dir / "unet", {cpu ? Device::CPU : Device::CUDA, dtype, ""});
  UNet2DConditionModel::Inputs in;
  in.sample = get("sample");
  in.timesteps = get("timesteps");
  in.encoder_hidden_states = get("encoder_hidden_states");
  if (ref.contains("text_embeds")) {
    in.text_embeds = get("text_embeds");
    in.time_ids = get("time_ids");
  }
  const Tensor out = on_cpu(unet->forward(in));  // NHWC f32
  const double e = golden::nmse(out, get("out"));
  std::printf("[ full-size %s %s ] unet nmse %.3g (limit %.0e)\n", arch.c_str(),
              name(dtype).c_str(), e, kFullSizeNmse);
  EXPECT_LE(e, kFullSizeNmse);
}

INSTANTIATE_TEST_SUITE_P(Arch, FullSize,
                         ::testing::Combine(::testing::Values("sd15", "sdxl"),
                                            ::testing::Values(DType::F16)),
                         [](const auto& info) {
                           return std::get<0>(info.param) + "_" + name(std::get<1>(info.param));
                         });

}  // namespace
}  // namespace kiln::backend_test
