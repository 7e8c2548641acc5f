// The execution machinery around the kernels: the caching allocator (no device
// allocation once a shape has run), host/device copies, CUDA-graph capture and
// replay of a whole UNet forward, the f32 latents path the samplers take, and
// the plan cache on disk.
#include <unistd.h>

#include <cstring>
#include <filesystem>

#include "../golden/golden.h"
#include "backend/plan_file.h"
#include "backend_test.h"
#include "io/image.h"
#include "models/unet_2d_condition.h"

namespace kiln::backend_test {
namespace {

class Runtime : public CudaTest {};

TEST_F(Runtime, CopiesRoundTripEveryDtype) {
  for (DType dt : {DType::F32, DType::F16, DType::BF16}) {
    const Tensor cpu = ops::cast(random_tensor({3, 5, 7}, dt, next_seed()), dt);
    const Tensor back = cpu.to(Device::CUDA).clone().to(Device::CPU);
    ASSERT_EQ(back.dtype(), dt);
    EXPECT_EQ(std::memcmp(back.raw(), cpu.raw(), cpu.nbytes()), 0) << name(dt);
  }
  Tensor ids = Tensor::empty({4}, DType::I32);
  for (int i = 0; i < 4; ++i) ids.data<int32_t>()[i] = 1000 * i - 7;
  EXPECT_EQ(std::memcmp(ids.to(Device::CUDA).to(Device::CPU).raw(), ids.raw(), ids.nbytes()), 0);
}

// Small host-to-device copies (a step's timesteps) go by cudaMemcpyAsync from pageable
// memory, which returns once the bytes are staged: each size from an odd host address
// into an odd device offset lands with its neighbours untouched, and the host buffer,
// overwritten at once after the call as a caller's temporary would be, does not leak
// into the copy. (That the call does not wait for the stream either:
// tools/probe/h2d_pageable_probe.cu, 6 µs for 8 bytes behind a 2 ms kernel on an H100.)
TEST_F(Runtime, SmallHostCopiesLandIntact) {
  for (const size_t bytes : {size_t(1), size_t(7), size_t(8), size_t(255), size_t(256),
                             size_t(257), size_t(4096)}) {
    std::vector<unsigned char> host(bytes + 1);
    for (size_t i = 0; i < host.size(); ++i) host[i] = (unsigned char)(i * 37 + bytes);
    Tensor dev = Tensor::zeros({int64_t(bytes + 5) / 4}, DType::I32, Device::CUDA);
    allocator_for(Device::CUDA)
        .copy(static_cast<unsigned char*>(dev.raw()) + 1, Device::CUDA, host.data() + 1,
              Device::CPU, bytes);
    std::fill(host.begin(), host.end(), 0xAB);
    const Tensor back = dev.to(Device::CPU);
    const auto* got = static_cast<const unsigned char*>(back.raw());
    EXPECT_EQ(got[0], 0) << bytes;
    EXPECT_EQ(got[bytes + 1], 0) << bytes;
    for (size_t i = 0; i < bytes; ++i)
      ASSERT_EQ(got[i + 1], (unsigned char)((i + 1) * 37 + bytes)) << bytes << " bytes, byte " << i;
  }
}

TEST_F(Runtime, RowViewsReadAndWriteTheirOwnRows) {
  const Tensor all = on_cuda(random_tensor({4, 3, 8}, DType::F32, next_seed()), DType::F16);
  Tensor target = Tensor::zeros({4, 3, 8}, DType::F16, Device::CUDA);
  target.rows(1, 3).copy_from(all.rows(1, 3));
  const Tensor got = on_cpu(target), want = on_cpu(all);
  for (int64_t i = 0; i < got.numel(); ++i) {
    const int64_t row = i / 24;
    EXPECT_EQ(got.data<float>()[i], row == 1 || row == 2 ? want.data<float>()[i] : 0.0f) << i;
  }
}

// Weights (long-lived allocations) are packed into 64 MiB slabs, not rounded to the
// reuse classes: 240 blocks of 1 MiB + 1 KiB, which the classes would round to 1.25
// MiB (300 MiB in all), take four slabs. Each keeps its bytes, a freed block's place
// is reused, freed neighbours merge, and empty slabs go back to the driver.
TEST_F(Runtime, LongLivedAllocationsArePackedAndReturned) {
  cuda::set_poison_allocations(false);
  cuda::release_cached_memory();
  const size_t start = cuda::memory_stats().reserved;
  constexpr size_t kMiB = size_t(1) << 20;
  std::vector<Tensor> host, device;
  auto upload = [](const Tensor& t) {
    const LongLivedAllocations weights;
    return t.to(Device::CUDA);
  };
  size_t bytes = 0;
  for (int i = 0; i < 240; ++i) {
    Tensor t = Tensor::empty({int64_t(512 * 1024 + 512)}, DType::F16);  // 1 MiB + 1 KiB
    std::memset(t.raw(), i + 1, t.nbytes());
    bytes += t.nbytes();
    host.push_back(t);
    device.push_back(upload(t));
  }
  const size_t packed = cuda::memory_stats().reserved - start;
  EXPECT_GE(packed, bytes);
  EXPECT_LE(packed, 256 * kMiB) << "rounded to classes these take 300 MiB";

  // The same place for a block of the same size.
  const void* third = device[3].raw();
  device[3] = {};
  device[3] = upload(host[3]);
  EXPECT_EQ(device[3].raw(), third);
  // Three neighbours freed out of order merge into one range that a block of their
  // total size fills exactly.
  char* tenth = static_cast<char*>(device[10].raw());
  const size_t three = static_cast<char*>(device[13].raw()) - tenth;
  device[10] = {};
  device[12] = {};
  device[11] = {};
  Tensor merged = upload(Tensor::zeros({int64_t(three / 2)}, DType::F16));
  EXPECT_EQ(merged.raw(), tenth);
  EXPECT_EQ(cuda::memory_stats().reserved - start, packed) << "a new slab for blocks that fit";

  for (size_t i = 0; i < device.size(); ++i) {
    if (i >= 10 && i <= 12) continue;
    EXPECT_EQ(std::memcmp(device[i].to(Device::CPU).raw(), host[i].raw(), host[i].nbytes()), 0)
        << "block " << i;
  }
  device.clear();
  EXPECT_GT(cuda::memory_stats().reserved, start) << "the merged block is still live";
  merged = {};
  EXPECT_EQ(cuda::memory_stats().reserved, start) << "empty slabs are returned to the driver";
}

// The SDXL reference inputs already on the device, as a captured forward needs them.
UNet2DConditionModel::Inputs unet_inputs_on_cuda(const golden::References& ref,
                                                 const std::string& c) {
  UNet2DConditionModel::Inputs in = golden::unet_inputs(ref, c);
  for (Tensor* t : {&in.sample, &in.timesteps, &in.time_ids}) *t = t->to(Device::CUDA);
  for (Tensor* t : {&in.encoder_hidden_states, &in.text_embeds}) *t = on_cuda(*t, DType::F16);
  return in;
}

TEST_F(Runtime, NoDeviceAllocationOnceAShapeHasRun) {
  cuda::set_poison_allocations(false);
  const golden::References ref("sdxl");
  const auto unet = UNet2DConditionModel::load(golden::data_dir() / "sdxl/model/unet",
                                               {Device::CUDA, DType::F16, ""});
  const UNet2DConditionModel::Inputs in = unet_inputs_on_cuda(ref, "unet");
  (void)unet->forward(in);
  cuda::synchronize();
  const size_t before = cuda::memory_stats().device_mallocs;
  for (int i = 0; i < 3; ++i) (void)unet->forward(in);
  cuda::synchronize();
  EXPECT_EQ(cuda::memory_stats().device_mallocs, before);
}

TEST_F(Runtime, CapturedUNetForwardReplaysTheEagerResult) {
  cuda::set_poison_allocations(false);
  const golden::References ref("sdxl");
  const auto unet = UNet2DConditionModel::load(golden::data_dir() / "sdxl/model/unet",
                                               {Device::CUDA, DType::F16, ""});
  UNet2DConditionModel::Inputs in = unet_inputs_on_cuda(ref, "unet");
  (void)unet->forward(in);  // the plans are made (their timing runs count FLOPs too)
  cuda::reset_flop_count();
  const Tensor eager = on_cpu(unet->forward(in));
  const double forward_flops = cuda::flop_count();
  ASSERT_GT(forward_flops, 0.0);
  // The FLOP counter counts work done: the warm pass, not the capture, then each replay.
  cuda::reset_flop_count();
  cuda::CapturedForward graph([&] { return unet->forward(in); });
  EXPECT_EQ(cuda::flop_count(), forward_flops);
  const Tensor replayed = on_cpu(graph.replay());
  EXPECT_EQ(nmse(replayed, eager), 0.0);
  EXPECT_EQ(cuda::flop_count(), 2 * forward_flops);
  // New values in the same input buffers: the replay computes on them.
  const Tensor other = ref.get("unet_odd.sample");
  if (other.shape() == in.sample.shape()) {
    in.sample.copy_from(other.to(Device::CUDA));
  } else {
    in.sample.copy_from(random_tensor(in.sample.shape(), DType::F32, next_seed()).to(Device::CUDA));
  }
  const Tensor expected = on_cpu(unet->forward(in));
  EXPECT_EQ(nmse(on_cpu(graph.replay()), expected), 0.0);
  // And it still matches diffusers.
  in.sample.copy_from(ref.get("unet.sample").to(Device::CUDA));
  EXPECT_LE(nmse(graph.replay(), ref.get("unet.out")), 1e-3);
}

TEST_F(Runtime, SamplerMathOnF32Latents) {
  // The pipeline keeps latents in f32 on the device and casts the UNet output.
  const Tensor latents = random_tensor({1, 64, 64, 4}, DType::F32, next_seed());
  const Tensor out16 = on_cuda(random_tensor({2, 64, 64, 4}, DType::F16, next_seed()), DType::F16);
  const Tensor noise_pred = ops::cast(out16, DType::F32);
  const Tensor guided =
      ops::linear_combination({{-6.5f, noise_pred.rows(0, 1)}, {7.5f, noise_pred.rows(1, 2)}});
  const Tensor next = ops::linear_combination({{1.0f, latents.to(Device::CUDA)}, {-0.25f, guided}});
  const Tensor cpu_pred = on_cpu(out16);
  const Tensor cpu_guided =
      ops::linear_combination({{-6.5f, cpu_pred.rows(0, 1)}, {7.5f, cpu_pred.rows(1, 2)}});
  const Tensor cpu_next = ops::linear_combination({{1.0f, latents}, {-0.25f, cpu_guided}});
  EXPECT_EQ(next.dtype(), DType::F32);
  EXPECT_LE(nmse(next, cpu_next), 1e-12);
}

// Plans kept in a fresh folder; the default setting is back afterwards.
class PlanCache : public CudaTest {
 protected:
  void SetUp() override {
    CudaTest::SetUp();
    if (IsSkipped()) return;
    dir_ = std::filesystem::temp_directory_path() /
           ("kiln-plan-cache-test-" + std::to_string(::getpid()));
    std::filesystem::remove_all(dir_);
    cuda::set_plan_cache(dir_.string());
    cuda::forget_plans();
  }
  void TearDown() override {
    if (!IsSkipped()) {
      cuda::set_plan_cache("");
      cuda::forget_plans();
      std::filesystem::remove_all(dir_);
    }
    CudaTest::TearDown();
  }

  // One GEMM shape (bias fused) and one 3×3 convolution (cuDNN's where the build
  // has it), on the same inputs every time; the outputs' bytes on the host.
  std::vector<Tensor> run_ops() {
    const Tensor x = on_cuda(random_tensor({300, 320}, DType::F16, 1), DType::F16);
    const Tensor w = on_cuda(random_tensor({640, 320}, DType::F16, 2, 0.05f), DType::F16);
    const Tensor b = on_cuda(random_tensor({640}, DType::F16, 3), DType::F16);
    const Tensor image = on_cuda(random_tensor({1, 32, 32, 64}, DType::F16, 4), DType::F16);
    const Tensor filter = on_cuda(random_tensor({64, 3, 3, 64}, DType::F16, 5, 0.05f), DType::F16);
    const Tensor fb = on_cuda(random_tensor({64}, DType::F16, 6), DType::F16);
    std::vector<Tensor> out{
        ops::linear(x, w, b).to(Device::CPU),
        ops::conv2d(image, filter, fb, ops::Conv2dGeometry::same(3)).to(Device::CPU)};
    cuda::synchronize();
    return out;
  }

  std::filesystem::path dir_;
};

void expect_same_bytes(const std::vector<Tensor>& a, const std::vector<Tensor>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    ASSERT_EQ(a[i].nbytes(), b[i].nbytes()) << i;
    EXPECT_EQ(std::memcmp(a[i].raw(), b[i].raw(), a[i].nbytes()), 0)
        << "output " << i << " differs with the stored plan";
  }
}

TEST_F(PlanCache, SavedPlansAreTakenWithoutTimingAndGiveTheSameOutput) {
  const std::vector<Tensor> first = run_ops();
  const cuda::PlanStats made = cuda::plan_stats();
  EXPECT_GE(made.timed, cuda::cudnn_enabled() ? 2u : 1u) << "a GEMM and a convolution were timed";
  EXPECT_EQ(made.reused, 0u) << "the folder was empty";
  cuda::save_plans();
  const std::filesystem::path file = cuda::plan_cache_file();
  ASSERT_TRUE(std::filesystem::exists(file)) << file;
  EXPECT_EQ(file.parent_path(), dir_);
  EXPECT_EQ(plans::parse(io::read_file(file)).second.size(), made.timed);

  cuda::forget_plans();
  const std::vector<Tensor> second = run_ops();
  EXPECT_EQ(cuda::plan_stats().timed, 0u) << "every plan came from the file";
  EXPECT_EQ(cuda::plan_stats().reused, made.timed);
  expect_same_bytes(first, second);

  // Nothing new: the file is not written again.
  const auto written = std::filesystem::last_write_time(file);
  cuda::save_plans();
  EXPECT_EQ(std::filesystem::last_write_time(file), written);
}

TEST_F(PlanCache, AFileFromAnotherGpuIsRebuilt) {
  (void)run_ops();
  cuda::save_plans();
  const std::filesystem::path file = cuda::plan_cache_file();
  auto [header, stored] = plans::parse(io::read_file(file));
  const std::string real_gpu = header.gpu;
  header.gpu = "Some Other GPU";
  io::write_file_atomic(file, plans::serialize(header, stored));

  cuda::forget_plans();
  (void)run_ops();
  EXPECT_EQ(cuda::plan_stats().reused, 0u) << "a plan from another GPU was trusted";
  EXPECT_EQ(cuda::plan_stats().timed, stored.size());
  cuda::save_plans();
  const auto [rebuilt_header, rebuilt] = plans::parse(io::read_file(file));
  EXPECT_EQ(rebuilt_header.gpu, real_gpu);
  EXPECT_EQ(rebuilt.size(), stored.size());
}

// Plans timed as inside a step (the L2 overwritten before each run) give the same
// results within the reference's tolerance and are kept under keys of their own: a
// process timing the default way does not take them.
TEST_F(PlanCache, StepTimedPlansAreKeptApart) {
  const std::vector<Tensor> warm = run_ops();
  cuda::forget_plans();
  const size_t step_runs = cuda::step_timed_runs();
  std::vector<Tensor> step;
  {
    struct Restore {
      ~Restore() { cuda::options().plan_timing = cuda::Options::PlanTiming::Warm; }
    } restore;
    cuda::options().plan_timing = cuda::Options::PlanTiming::Step;
    step = run_ops();
  }
  // The GEMM has several candidates and the convolution is timed against our paths.
  EXPECT_GT(cuda::step_timed_runs(), step_runs) << "nothing was timed as inside a step";
  EXPECT_GE(cuda::plan_stats().timed, cuda::cudnn_enabled() ? 2u : 1u);
  EXPECT_EQ(cuda::plan_stats().reused, 0u) << "a step-timed plan came from the warm ones";
  ASSERT_EQ(warm.size(), step.size());
  for (size_t i = 0; i < warm.size(); ++i)
    EXPECT_LE(nmse(step[i], warm[i]), 1e-5) << "output " << i;
  cuda::save_plans();
  const auto [header, stored] = plans::parse(io::read_file(cuda::plan_cache_file()));
  size_t step_keys = 0;
  for (const auto& [name, choice] : stored.gemm) step_keys += name.ends_with(" step-timed");
  for (const auto& [name, choice] : stored.conv) step_keys += name.ends_with(" step-timed");
  EXPECT_GE(step_keys, cuda::cudnn_enabled() ? 2u : 1u) << "step-timed plans on disk";
  EXPECT_EQ(stored.gemm.size() + stored.conv.size(), 2 * step_keys) << "warm and step apart";
}

TEST_F(PlanCache, OffKeepsPlansInMemoryOnly) {
  cuda::set_plan_cache("off");
  (void)run_ops();
  EXPECT_GT(cuda::plan_stats().timed, 0u);
  EXPECT_EQ(cuda::plan_cache_file(), "");
  cuda::save_plans();
  EXPECT_FALSE(std::filesystem::exists(dir_)) << "nothing is written with the cache off";
}

}  // namespace
}  // namespace kiln::backend_test
