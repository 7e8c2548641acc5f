// kiln bench: times the models on this machine, on a model folder or on random
// weights with the real SD 1.5 / SDXL architectures (no checkpoint needed). Medians
// of CUDA-event timings after warm-up; a markdown table on stdout and, with
// --json, the same rows with the GPU, the commit and the dtype in every row.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "args.h"
#include "backend/cpu/cpu_backend.h"
#include "commands.h"
#include "io/model_folder.h"
#include "model_source.h"
#include "models/autoencoder_kl.h"
#include "models/clip_text_model.h"
#include "models/unet_2d_condition.h"
#include "nn/blocks.h"
#include "ops/ops.h"
#include "pipelines/text_to_image.h"
#include "schedulers/scheduler.h"
#include "text/clip_tokenizer.h"
#if defined(KILN_WITH_CUDA)
#include "backend/cuda/cuda_backend.h"
#endif

#if !defined(KILN_COMMIT)
#define KILN_COMMIT "unknown"
#endif

namespace kiln::cli {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

const char* kHelp =
    "usage: kiln bench [options]\n"
    "\n"
    "  --model DIR          a diffusers folder to time (default: random weights of --arch)\n"
    "  --arch sd15|sdxl     the architecture for random weights (default sd15)\n"
    "  --what LIST          unet,vae,text,e2e (default unet,vae,text)\n"
    "  --size LIST          image sizes in pixels, e.g. 512,1024 (default: 512 sd15, 1024 sdxl)\n"
    "  --batch LIST         batch sizes, e.g. 1,2,8 (default: 2 for the UNet, one CFG step;\n"
    "                       1 for the VAE and text encoders)\n"
    "  --steps N            denoising steps of the e2e run (default 30)\n"
    "  --device cuda|cpu    where to run (default: cuda when a GPU is present)\n"
    "  --dtype fp16|bf16    precision on cuda (default fp16)\n"
    "  --plan-cache DIR|off where timed algorithm choices are kept (default: $KILN_PLAN_CACHE,\n"
    "                       else ~/.cache/kiln/plans; off: time them in memory, every run)\n"
    "  --warmup N           untimed runs first (default 3)\n"
    "  --reps N             timed runs; the median is reported (default 10)\n"
    "  --per-op             time each op kind in one eager pass of each workload\n"
    "  --per-shape          the same, one row per op kind and shapes\n"
    "  --no-graphs          skip the CUDA-graph replay of each workload\n"
    "  --flash-warp-rows N  query rows per warp in flash attention, 16 or 32 (default 16;\n"
    "                       for comparing the two kernels)\n"
    "  --flash-short-kv B   1 or 0: flash attention over at most 128 keys in four-warp\n"
    "                       blocks, or eight-warp ones (default 1; for A/B)\n"
    "  --flash-wgmma B      1 or 0: on Hopper, kiln's flash attention on warpgroup MMAs\n"
    "                       where it applies, or on mma.sync (default 0; for A/B)\n"
    "  --flash-wgmma-rows N query rows a block of the wgmma kernel: 128 or 192 (default:\n"
    "                       by head dim)\n"
    "  --flash-wgmma-producer B  1: the wgmma kernel with a producer warp and ping-pong\n"
    "                       (default 0; for A/B)\n"
    "  --flash-wgmma-keys N keys a tile of the producer kernel: 64 or 128 (128: a\n"
    "                       producer warpgroup and setmaxnreg; default 64; for A/B)\n"
    "  --flash-wgmma-anchor B  1: with 128 keys, a store that keeps the softmax under\n"
    "                       its own P·V (default 0; for A/B)\n"
    "  --flash-wgmma-loader B  1: with the anchor, the producer's copies from offsets\n"
    "                       worked out once and the fence on its side (default 0; A/B)\n"
    "  --flash-short-kv-kernel B  1 or 0: attention over at most 128 keys (cross-\n"
    "                       attention) in a kernel of its own, or in the flash kernel\n"
    "                       (default 1; for A/B)\n"
    "  --short-kv-unrolled B  1: that kernel's loads as straight-line copies (default 0;\n"
    "                       for A/B)\n"
    "  --geglu-fused B      1 or 0: the feed-forward's GEGLU in its projection's GEMM\n"
    "                       (CUTLASS, Hopper), or the projection and a GEGLU pass\n"
    "                       (default 1 where built; for A/B)\n"
    "  --geglu-form K       auto, pingpong or cooperative: the fused GEGLU GEMM's CUTLASS\n"
    "                       kernel (default auto: timed per shape; for A/B)\n"
    "  --conv-workspace-mib N  the largest workspace a cuDNN convolution may take\n"
    "                       (default 512; for A/B)\n"
    "  --narrow-conv-form F auto, 0 (CUDA cores) or 1-4 (tensor cores: 16, 4 or 2 rows a\n"
    "                       block of 4 warps, 16 of 8): the 3x3 kernel for few output\n"
    "                       channels, where it beats cuDNN (default auto: all timed; A/B)\n"
    "  --interleave-norm-fused B  1 or 0: on CUDA, an upsampler's phase copy and the next\n"
    "                       GroupNorm's statistics in one pass (default 1; for A/B)\n"
    "  --norm-conv-fused B  1 or 0: on CUDA, a GroupNorm folded into the few-output\n"
    "                       convolution after it (conv_out; default 1; for A/B)\n"
    "  --group-norm-apply-reuse B  1 or 0: on CUDA, the GroupNorm apply's scale and\n"
    "                       shift loaded once a batch row a thread (default 1; for A/B)\n"
    "  --group-norm-stats-spread B  1 or 0: on CUDA, the GroupNorm statistics' shared\n"
    "                       sums laid out without bank conflicts (default 1; for A/B)\n"
    "  --group-norm-pdl B   1 or 0: on CUDA (sm_90), the GroupNorm apply launched as a\n"
    "                       programmatic dependent of its statistics (default 0; for A/B)\n"
    "  --group-norm-stats-loads N  auto, 8 or 4: on CUDA, loads in flight a thread in\n"
    "                       the GroupNorm statistics on large tensors (default auto: 4\n"
    "                       from 16M values a batch row, else 8; for A/B)\n"
    "  --norm-residual B    1 or 0: a transformer block's attention residual adds in the\n"
    "                       LayerNorms after them, or in the GEMMs before (default 0;\n"
    "                       for A/B)\n"
    "  --upsample-phases B  1 or 0: on CUDA, upsampling convolutions by output phase (2x2\n"
    "                       taps on the small image), or upsampling and a 3x3 convolution\n"
    "                       (default 1; for A/B)\n"

    "  --attention K        auto, kiln or cudnn: the fused attention kernel (default auto:\n"
    "                       per shape, the faster of kiln's and cuDNN's, timed once)\n"
    "  --group-norm K       auto, grid, two-launch or cluster: grid tries the grid-wide\n"
    "                       one-launch GroupNorm first, cluster the one over thread block\n"
    "                       clusters (sm_90); two-launch never takes the one-block kernel\n"
    "                       (default auto; for A/B)\n"
    "  --conv K             auto or cudnn: auto times cuDNN against kiln's narrow 3x3\n"
    "                       kernels and im2col + GEMM per shape; cudnn takes cuDNN's alone\n"
    "  --plan-timing T      warm or step: how plans time GEMM candidates and convolution\n"
    "                       paths; step overwrites the L2 before each run, so that the\n"
    "                       weights come from memory as inside a step (default warm; A/B)\n"
    "  --gemm-search S      heuristic or wide: which GEMM algorithms a plan times\n"
    "                       (default heuristic, cuBLASLt's 16 best fits; wide: also\n"
    "                       split-K, swizzle and cluster variants, 50-80 a shape; A/B)\n"
    "  --json FILE          also write the rows as JSON\n"
    "  --commit SHA         the commit to record (default: the one kiln was configured at)\n";

struct Settings {
  Placement placement;
  int warmup = 3, reps = 10;
  bool per_op = false, per_shape = false, graphs = true;
  bool cuda() const { return placement.device == Device::CUDA; }
};

struct Row {
  std::string workload;
  int size = 0, batch = 0, steps = 0;
  std::string mode;  // eager, graph, e2e
  double ms = 0.0, min_ms = 0.0, gflop = 0.0, peak_mib = 0.0;
  // Of peak_mib (what the allocator took from the device), the most in blocks handed
  // out at once. A block can be larger than its tensor (size classes round up, and a
  // free block up to twice a request is reused), so this bounds live tensors from above.
  double peak_in_use_mib = 0.0;
};

void sync(const Settings& s) {
#if defined(KILN_WITH_CUDA)
  if (s.cuda()) cuda::synchronize();
#endif
}

// Median and minimum of `reps` timed calls after `warmup` untimed ones: CUDA
// events around each call on the GPU, the host clock (after a sync) otherwise.
std::pair<double, double> time_runs(const Settings& s, const std::function<void()>& fn, int warmup,
                                    int reps) {
  for (int i = 0; i < warmup; ++i) fn();
  sync(s);
  std::vector<double> ms;
  for (int i = 0; i < reps; ++i) {
#if defined(KILN_WITH_CUDA)
    if (s.cuda()) {
      cuda::EventTimer timer;
      timer.start();
      fn();
      timer.stop();
      ms.push_back(timer.elapsed_ms());
      continue;
    }
#endif
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    ms.push_back(
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  return {ms[ms.size() / 2], ms.front()};
}

class Bench {
 public:
  explicit Bench(Settings s) : s_(std::move(s)) {}

  // FLOPs of one call, counted by the backend (GEMMs, convolutions, attention).
  double count_gflop(const std::function<void()>& fn) {
#if defined(KILN_WITH_CUDA)
    if (s_.cuda()) {
      cuda::reset_flop_count();
      fn();
      sync(s_);
      return cuda::flop_count() / 1e9;
    }
#endif
    cpu::reset_flop_count();
    fn();
    return cpu::flop_count() / 1e9;
  }

  void start_memory() {
#if defined(KILN_WITH_CUDA)
    if (s_.cuda()) {
      cuda::release_cached_memory();
      cuda::reset_peak_memory();
    }
#endif
  }
  double peak_mib() const {
#if defined(KILN_WITH_CUDA)
    // What the allocator took at most, and the workspace it does not hand out (torch's
    // reserved memory holds cuBLAS's workspace too).
    if (s_.cuda())
      return double(cuda::memory_stats().peak_reserved + cuda::fixed_device_bytes()) /
             double(1 << 20);
#endif
    return 0.0;
  }

  // Times `forward` eagerly and, on CUDA, as a replayed graph; adds the rows.
  void measure(const std::string& workload, int size, int batch,
               const std::function<Tensor()>& forward, bool graph_ok) {
    Tensor out;
    auto eager = [&] { out = forward(); };
    // Plans and autotuning happen in the first call, outside the timings; the FLOPs are
    // counted in a second on the GPU (plan timing runs ops more than once), in the
    // first on the CPU (where a call can take seconds).
    if (s_.cuda()) eager();
    const double gflop = count_gflop(eager);
    const auto [ms, min_ms] = time_runs(s_, eager, s_.warmup, s_.reps);
    const double peak = peak_mib();
    add({workload, size, batch, 0, "eager", ms, min_ms, gflop, peak});
    if (s_.per_op)
      per_op(workload + " batch " + std::to_string(batch), forward, graph_ok && s_.graphs);
#if defined(KILN_WITH_CUDA)
    if (s_.cuda() && s_.graphs && graph_ok) {
      // The graph row's peak is its own: the eager pass's cache is given back first,
      // as the pipeline does before it captures (CapturedForward).
      out = Tensor();
      start_memory();
      cuda::CapturedForward graph(forward);
      const auto [gms, gmin] = time_runs(
          s_, [&] { graph.replay(); }, s_.warmup, s_.reps);
      add({workload, size, batch, 0, "graph", gms, gmin, gflop, peak_mib()});
    }
#else
    (void)graph_ok;
#endif
  }

  void add(Row r) {
#if defined(KILN_WITH_CUDA)
    if (s_.cuda()) r.peak_in_use_mib = double(cuda::memory_stats().peak_in_use) / double(1 << 20);
#endif
    rows_.push_back(r);
    // TF/s with three decimals below 1 (a CPU's 0.05), one above.
    const double tflops = r.gflop > 0 ? r.gflop / r.ms : 0.0;
    char rate[32];
    std::snprintf(rate, sizeof(rate), tflops < 1.0 ? "%.3f" : "%.1f", tflops);
    std::printf("| %s | %d | %d | %s | %s | %.3f | %s | %.0f | %.0f |\n", r.workload.c_str(),
                r.size, r.batch, dtype_name(s_.placement.dtype).data(), r.mode.c_str(), r.ms, rate,
                r.gflop, r.peak_mib);
    std::fflush(stdout);
  }

  // Each op's time on the GPU alone: a graph of the forward with timed event
  // nodes around every op, replayed once (eagerly, with events, where no graph
  // can be made).
  void per_op(const std::string& label, const std::function<Tensor()>& forward, bool graph_ok) {
#if defined(KILN_WITH_CUDA)
    if (!s_.cuda()) return;
    cuda::reset_op_profile();
    std::string how = "eager, events around each op";
    bool graphed = false;
    if (graph_ok) {
      cuda::set_op_profiling(false, s_.per_shape);
      try {
        cuda::CapturedForward graph(forward, /*profile_ops=*/true);
        graph.replay();
        cuda::synchronize();
        how = "graph replay, event nodes around each op";
        graphed = true;
      } catch (const Error& e) {
        std::fprintf(stderr, "kiln bench: per-op profile of a graph failed (%s); eager instead\n",
                     e.what());
        cuda::reset_op_profile();
      }
    }
    if (!graphed) {
      cuda::set_op_profiling(true, s_.per_shape);
      (void)forward();
      cuda::set_op_profiling(false, s_.per_shape);
    }
    const std::vector<cuda::OpTime> ops = cuda::op_profile();
    double total = 0.0;
    for (const auto& o : ops) total += o.ms;
    std::ostringstream os;
    os << "\nper-op: " << label << " (" << dtype_name(s_.placement.dtype) << ", " << how << "; "
       << total << " ms in ops)\n\n"
       << "| op | calls | ms | % | TFLOP/s |\n|---|---|---|---|---|\n";
    json j = json::array();
    int shown = 0;
    for (const auto& o : ops) {
      char line[256];
      std::snprintf(line, sizeof line, "| %s | %d | %.3f | %.1f | %s |\n", o.op.c_str(), o.calls,
                    o.ms, total > 0 ? 100.0 * o.ms / total : 0.0,
                    o.flops > 0 ? std::to_string(int(o.flops / 1e9 / o.ms)).c_str() : "");
      if (shown++ < 40) os << line;
      j.push_back({{"op", o.op}, {"calls", o.calls}, {"ms", o.ms}, {"gflop", o.flops / 1e9}});
    }
    std::printf("%s\n", os.str().c_str());
    per_op_[label] = j;
#else
    (void)label;
    (void)forward;
    (void)graph_ok;
#endif
  }

  const std::vector<Row>& rows() const {
    return rows_;
  }
  const json& per_op_json() const {
    return per_op_;
  }
  const Settings& settings() const {
    return s_;
  }

 private:
  Settings s_;
  std::vector<Row> rows_;
  json per_op_ = json::object();
};

Tensor random_device(Shape shape, DType dtype, Device device, uint64_t seed) {
  TorchGenerator g(seed);
  Tensor t = Tensor::empty(shape, DType::F32);
  g.randn(t.data<float>(), t.numel());
  return ops::to(t, device, dtype);
}

void bench_unet(Bench& b, const fs::path& dir, bool xl, const std::vector<int>& sizes,
                const std::vector<int>& batches) {
  const Settings& s = b.settings();
  b.start_memory();
  const auto unet = UNet2DConditionModel::load(dir / "unet", s.placement);
  const UNetConfig& c = unet->config();
  const Device dev = s.placement.device;
  for (int size : sizes) {
    for (int batch : batches) {
      const int64_t side = size / 8;
      UNet2DConditionModel::Inputs in;
      in.sample = random_device({batch, side, side, c.in_channels}, DType::F32, dev, 1);
      std::vector<float> t(size_t(batch), 500.0f);
      in.timesteps = Tensor::from_floats({batch}, t.data()).to(dev);
      in.encoder_hidden_states =
          random_device({batch, 77, c.cross_attention_dim[0]}, s.placement.dtype, dev, 2);
      if (c.addition_text_time) {
        in.text_embeds = random_device(
            {batch, c.projection_class_embeddings_input_dim - 6 * c.addition_time_embed_dim},
            s.placement.dtype, dev, 3);
        const float px = float(size);
        std::vector<float> ids;
        for (int i = 0; i < batch; ++i) ids.insert(ids.end(), {px, px, 0.0f, 0.0f, px, px});
        in.time_ids = Tensor::from_floats({batch, 6}, ids.data()).to(dev);
      }
      b.measure(
          xl ? "sdxl-unet" : "sd15-unet", size, batch, [&] { return unet->forward(in); }, true);
    }
  }
}

void bench_vae(Bench& b, const fs::path& dir, const std::vector<int>& sizes,
               const std::vector<int>& batches) {
  const Settings& s = b.settings();
  b.start_memory();
  const auto vae = AutoencoderKL::load(dir / "vae", s.placement);
  for (int size : sizes) {
    for (int batch : batches) {
      const int64_t side = size / 8;
      const Tensor z = random_device({batch, side, side, vae->config().latent_channels}, DType::F32,
                                     s.placement.device, 4);
      b.measure(
          "vae-" + std::to_string(size), size, batch, [&] { return vae->decode(z); }, true);
    }
  }
}

void bench_text(Bench& b, const fs::path& dir, bool xl, const std::vector<int>& batches) {
  const Settings& s = b.settings();
  std::vector<std::pair<std::string, std::string>> encoders{{"clip-l", "text_encoder"}};
  if (xl) encoders.emplace_back("clip-bigg", "text_encoder_2");
  for (const auto& [name, folder] : encoders) {
    b.start_memory();
    const auto model = ClipTextModel::load(dir / folder, s.placement);
    for (int batch : batches) {
      Tensor ids = Tensor::empty({batch, 77}, DType::I32);
      for (int64_t i = 0; i < ids.numel(); ++i)
        ids.data<int32_t>()[i] = int32_t((i * 7919 + 13) % 49406);
      // Ids come from the host each call, as in the pipeline: no graph.
      b.measure(
          name, 0, batch, [&] { return model->forward(ids).last_hidden_state; }, false);
    }
  }
}

// The SD 1.x generation of TextToImagePipeline (CFG, Euler, the folder's
// scheduler config) with the UNet and the decode replayed from CUDA graphs, as the
// pipeline replays them, without its bookkeeping. Prompt to pixels on the host, as e2e.
// Host time of each part of one generation (e2e-graph with --per-op): where a part
// takes long on the host, the host waited there (a synchronising call); the GPU time
// of the ops outside the replays comes from the op profile of a second run.
struct E2eParts {
  double encode = 0, inputs = 0, timesteps = 0, replay = 0, sampler = 0, decode = 0;
};

double e2e_with_graph(const fs::path& dir, const Settings& s, int size, int steps, int reps) {
#if defined(KILN_WITH_CUDA)
  const auto tokenizer = text::ClipTokenizer::load(dir / "tokenizer");
  const auto encoder = ClipTextModel::load(dir / "text_encoder", s.placement);
  const auto unet = UNet2DConditionModel::load(dir / "unet", s.placement);
  const auto vae = AutoencoderKL::load(dir / "vae", s.placement);
  const json scheduler_config = io::read_json(dir / "scheduler/scheduler_config.json");
  const int64_t side = size / 8;
  const Device dev = Device::CUDA;
  // The graph's inputs: fixed device tensors that each step refills.
  UNet2DConditionModel::Inputs in;
  in.sample = Tensor::zeros({2, side, side, unet->config().in_channels}, DType::F32, dev);
  in.timesteps = Tensor::zeros({2}, DType::F32, dev);
  in.encoder_hidden_states =
      Tensor::zeros({2, 77, unet->config().cross_attention_dim[0]}, s.placement.dtype, dev);
  cuda::CapturedForward graph([&] { return unet->forward(in); });
  // The decode replayed too, as the pipeline replays it (graph_cache.h) at this size.
  Tensor z = Tensor::zeros({1, side, side, unet->config().in_channels}, DType::F32, dev);
  cuda::CapturedForward decode_graph([&] { return vae->decode(z); });
  E2eParts parts;
  bool timing_parts = false;
  auto clock = std::chrono::steady_clock::now();
  // Adds the host time since the last mark to `part` (only while timing_parts).
  auto mark = [&](double& part) {
    if (!timing_parts) return;
    const auto now = std::chrono::steady_clock::now();
    part += std::chrono::duration<double, std::milli>(now - clock).count();
    clock = now;
  };
  auto generate = [&] {
    clock = std::chrono::steady_clock::now();
    Tensor ids = Tensor::empty({2, 77}, DType::I32);
    const std::vector<int32_t> negative = tokenizer.encode_for_model("");
    const std::vector<int32_t> prompt = tokenizer.encode_for_model("an astronaut riding a horse");
    std::copy(negative.begin(), negative.end(), ids.data<int32_t>());
    std::copy(prompt.begin(), prompt.end(), ids.data<int32_t>() + 77);
    in.encoder_hidden_states.copy_from(encoder->forward(ids).last_hidden_state);
    const auto scheduler =
        make_scheduler(SamplerKind::Euler, SigmaSchedule::Default, scheduler_config);
    scheduler->set_timesteps(steps);
    TorchGenerator generator(42);
    Tensor latents = ops::cast(
        ops::scale(generator.randn_nhwc(1, 4, side, side).to(dev), scheduler->init_noise_sigma()),
        DType::F32);
    const float guidance = 7.5f;
    mark(parts.encode);
    for (int i = 0; i < scheduler->num_steps(); ++i) {
      in.sample.copy_from(scheduler->scale_model_input(ops::concat_rows({latents, latents}), i));
      mark(parts.inputs);
      const float t = scheduler->timesteps()[size_t(i)];
      const float ts[2] = {t, t};
      in.timesteps.copy_from(Tensor::from_floats({2}, ts));
      mark(parts.timesteps);
      const Tensor& replayed = graph.replay();
      mark(parts.replay);
      const Tensor out = ops::cast(replayed, DType::F32);
      const Tensor guided =
          ops::linear_combination({{1.0f - guidance, out.rows(0, 1)}, {guidance, out.rows(1, 2)}});
      latents = scheduler->step(guided, i, latents, generator);
      mark(parts.sampler);
    }
    z.copy_from(ops::scale(latents, float(1.0 / vae->config().scaling_factor)));
    (void)ops::cast(decode_graph.replay(), DType::F32).to(Device::CPU);
    mark(parts.decode);
  };
  Settings host = s;
  host.placement.device = Device::CPU;
  generate();
  const double ms = time_runs(host, generate, 0, reps).first;
  if (s.per_op) {
    // Host side first (nothing else on), then the GPU time of the ops outside the
    // replays (events around each; the replays themselves are not ops).
    cuda::synchronize();
    timing_parts = true;
    generate();
    timing_parts = false;
    cuda::reset_op_profile();
    cuda::set_op_profiling(true, s.per_shape);
    generate();
    cuda::set_op_profiling(false, s.per_shape);
    double gpu = 0.0;
    const std::vector<cuda::OpTime> ops = cuda::op_profile();
    for (const auto& o : ops) gpu += o.ms;
    std::printf(
        "\ne2e-graph %d², %d steps, host ms by part of one generation (a long part is a wait):"
        " text %.3f, step inputs %.3f, timestep copies %.3f, replay launches %.3f, CFG and"
        " sampler %.3f, decode and copy back %.3f\n\n"
        "ops outside the replays on the GPU (events around each op): %.3f ms\n\n"
        "| op | calls | ms |\n|---|---|---|\n",
        size, steps, parts.encode, parts.inputs, parts.timesteps, parts.replay, parts.sampler,
        parts.decode, gpu);
    int shown = 0;
    for (const auto& o : ops)
      if (shown++ < 25) std::printf("| %s | %d | %.3f |\n", o.op.c_str(), o.calls, o.ms);
    std::printf("\n");
  }
  return ms;
#else
  (void)dir, (void)s, (void)size, (void)steps, (void)reps;
  return 0.0;
#endif
}

void bench_e2e(Bench& b, const fs::path& dir, const std::vector<int>& sizes, int steps) {
  const Settings& s = b.settings();
  b.start_memory();
  const int reps = std::max(1, std::min(s.reps, 3));
  for (int size : sizes) {
    double peak = 0.0, gflop = 0.0;
    std::string name;
    bool xl = false;
    {
      const auto pipeline = TextToImagePipeline::load(dir, s.placement);
      xl = pipeline->is_xl();
      name = std::string(xl ? "sdxl" : "sd15") + "-e2e";
      TextToImageRequest request;
      request.prompt = "a photograph of an astronaut riding a horse";
      request.width = request.height = size;
      request.num_inference_steps = steps;
      const ResolvedRequest r = pipeline->resolve(request);
      auto run = [&] { (void)pipeline->generate(r); };
      // Host clock: one image, prompt to pixels on the host.
      Settings host = s;
      host.placement.device = Device::CPU;
      // The FLOPs of one image (text, every step's UNet, VAE), counted as measure()
      // counts them: on the GPU once the plans are made and every graph is captured
      // (the UNet's in the first run, the decode's in the second: a capture runs its
      // forward once more), in the first run on the CPU.
      if (s.cuda()) {
        run();
        run();
      }
      gflop = b.count_gflop(run);
      const auto [ms, min_ms] = time_runs(host, run, 0, reps);
      peak = b.peak_mib();
      b.add({name, size, 1, steps, "e2e", ms, min_ms, gflop, peak});
    }
    if (s.cuda() && s.graphs && !xl) {
      b.start_memory();
      const double ms = e2e_with_graph(dir, s, size, steps, reps);
      // The graph's generation samples with Euler: the same work as the pipeline's
      // where the folder's scheduler is Euler too (--arch folders), else not counted
      // (PNDM, for one, calls the UNet once more).
      const std::string scheduler =
          io::read_json(dir / "scheduler/scheduler_config.json").value("_class_name", "");
      const bool same = sampler_for_scheduler_class(scheduler) == SamplerKind::Euler;
      b.add({name, size, 1, steps, "e2e-graph", ms, ms, same ? gflop : 0.0, b.peak_mib()});
    }
  }
}

}  // namespace

int bench(const std::vector<std::string>& argv) {
  const Args args(argv,
                  {"model",
                   "arch",
                   "what",
                   "size",
                   "batch",
                   "steps",
                   "device",
                   "dtype",
                   "warmup",
                   "reps",
                   "json",
                   "commit",
                   "flash-warp-rows",
                   "flash-short-kv",
                   "flash-wgmma",
                   "flash-wgmma-rows",
                   "flash-wgmma-producer",
                   "flash-wgmma-keys",
                   "flash-wgmma-anchor",
                   "flash-wgmma-loader",
                   "flash-short-kv-kernel",
                   "short-kv-unrolled",
                   "geglu-fused",
                   "geglu-form",
                   "upsample-phases",
                   "norm-residual",
                   "conv-workspace-mib",
                   "narrow-conv-form",
                   "interleave-norm-fused",
                   "norm-conv-fused",
                   "group-norm-apply-reuse",
                   "group-norm-stats-spread",
                   "group-norm-pdl",
                   "group-norm-stats-loads",
                   "attention",
                   "group-norm",
                   "conv",
                   "plan-timing",
                   "gemm-search",
                   "plan-cache"},
                  {"per-op", "per-shape", "no-graphs", "help"});
  if (args.has("help")) {
    std::fputs(kHelp, stdout);
    return 0;
  }
  if (!args.positional().empty())
    throw UsageError("unexpected argument \"" + args.positional()[0] + "\"");
  Settings s;
  s.placement = placement_from_flags(args.get("device"), args.get("dtype"));
  configure_plan_cache(args.get("plan-cache"), s.placement);
  s.warmup = int(args.integer("warmup", 0, 1000).value_or(3));
  s.reps = int(args.integer("reps", 1, 10000).value_or(10));
  s.per_op = args.has("per-op") || args.has("per-shape");
  s.per_shape = args.has("per-shape");
  s.graphs = !args.has("no-graphs");
  const int steps = int(args.integer("steps", 1, 1000).value_or(30));

  const ModelSource source(args.get("model"), args.get("arch"), "bench");
  const fs::path& dir = source.dir();
  const bool xl = source.xl();

  const std::vector<std::string> what = split_list(args.get_or("what", "unet,vae,text"));
  const std::vector<int> sizes = args.get("size") ? int_list("size", *args.get("size"), 64, 4096)
                                                  : std::vector<int>{xl ? 1024 : 512};
  for (int size : sizes)
    if (size % 64 != 0) throw UsageError(str("--size must be a multiple of 64, got ", size));
  const auto batch_flag = args.get("batch");
  const std::vector<int> batches =
      batch_flag ? int_list("batch", *batch_flag, 1, 256) : std::vector<int>{};
  auto batches_or = [&](int fallback) {
    return batches.empty() ? std::vector<int>{fallback} : batches;
  };

  if (const auto on = args.integer("upsample-phases", 0, 1))
    nn::block_options().upsample_phases = *on == 1;
  if (const auto on = args.integer("norm-residual", 0, 1))
    nn::block_options().residual_in_norm = *on == 1;
  std::string gpu = "cpu";
#if defined(KILN_WITH_CUDA)
  if (const auto rows = args.integer("flash-warp-rows", 16, 32)) {
    if (*rows != 16 && *rows != 32) throw UsageError("--flash-warp-rows is 16 or 32");
    if (s.cuda()) cuda::options().flash_two_tiles_per_warp = *rows == 32;
  }
  if (const auto on = args.integer("flash-short-kv", 0, 1))
    if (s.cuda()) cuda::options().flash_short_kv_blocks = *on == 1;
  if (const auto on = args.integer("flash-wgmma", 0, 1))
    if (s.cuda()) cuda::options().flash_wgmma = *on == 1;
  if (const auto on = args.integer("flash-wgmma-producer", 0, 1))
    if (s.cuda()) cuda::options().flash_wgmma_producer = *on == 1;
  if (const auto keys = args.integer("flash-wgmma-keys", 64, 128)) {
    if (*keys != 64 && *keys != 128) throw UsageError("--flash-wgmma-keys is 64 or 128");
    if (s.cuda()) cuda::options().flash_wgmma_keys = *keys;
  }
  if (const auto on = args.integer("flash-wgmma-anchor", 0, 1))
    if (s.cuda()) cuda::options().flash_wgmma_anchor = *on == 1;
  if (const auto on = args.integer("flash-wgmma-loader", 0, 1))
    if (s.cuda()) cuda::options().flash_wgmma_loader = *on == 1;
  if (const auto on = args.integer("flash-short-kv-kernel", 0, 1))
    if (s.cuda()) cuda::options().flash_short_kv_kernel = *on == 1;
  if (const auto on = args.integer("short-kv-unrolled", 0, 1))
    if (s.cuda()) cuda::options().flash_short_kv_unrolled = *on == 1;
  if (const auto on = args.integer("geglu-fused", 0, 1))
    if (s.cuda()) cuda::options().geglu_fused = *on == 1;
  if (const auto on = args.integer("interleave-norm-fused", 0, 1))
    if (s.cuda()) cuda::options().interleave_norm_fused = *on == 1;
  if (const auto on = args.integer("norm-conv-fused", 0, 1))
    if (s.cuda()) cuda::options().norm_conv_fused = *on == 1;
  if (const auto on = args.integer("group-norm-apply-reuse", 0, 1))
    if (s.cuda()) cuda::options().group_norm_apply_reuse = *on == 1;
  if (const auto on = args.integer("group-norm-stats-spread", 0, 1))
    if (s.cuda()) cuda::options().group_norm_stats_spread = *on == 1;
  if (const auto on = args.integer("group-norm-pdl", 0, 1))
    if (s.cuda()) cuda::options().group_norm_pdl = *on == 1;
  if (const auto loads = args.get("group-norm-stats-loads"); loads && *loads != "auto") {
    if (*loads != "4" && *loads != "8")
      throw UsageError("--group-norm-stats-loads is auto, 4 or 8, got \"" + *loads + "\"");
    if (s.cuda()) cuda::options().group_norm_stats_loads = std::stoi(*loads);
  }
  if (const auto mib = args.integer("conv-workspace-mib", 0, 1 << 16))
    if (s.cuda()) cuda::options().conv_workspace_mib = int(*mib);
  if (args.get("narrow-conv-form") != std::optional<std::string>("auto"))
    if (const auto form = args.integer("narrow-conv-form", 0, 4))
      if (s.cuda()) cuda::options().narrow_conv_form = int(*form);
  if (const auto rows = args.integer("flash-wgmma-rows", 128, 192)) {
    if (*rows != 128 && *rows != 192) throw UsageError("--flash-wgmma-rows is 128 or 192");
    if (s.cuda()) cuda::options().flash_wgmma_rows = *rows;
  }
  // A flag naming one of an enum's values, set on the backend's options on CUDA.
  auto kernel_flag = [&](const std::string& flag, const auto& values, auto& option) {
    const auto value = args.get(flag);
    if (!value) return;
    const auto it = values.find(*value);
    if (it == values.end()) {
      std::string names;
      for (const auto& [name, _] : values) names += (names.empty() ? "" : ", ") + name;
      throw UsageError(str("--", flag, " is one of ", names, ", got \"", *value, "\""));
    }
    if (s.cuda()) option = it->second;
  };
  using Attn = cuda::Options::AttentionKernel;
  kernel_flag("attention",
              std::map<std::string, Attn>{
                  {"auto", Attn::Auto}, {"kiln", Attn::Kiln}, {"cudnn", Attn::Cudnn}},
              cuda::options().attention_kernel);
  using GN = cuda::Options::GroupNormKernel;
  kernel_flag("group-norm",
              std::map<std::string, GN>{{"auto", GN::Auto},
                                        {"grid", GN::Grid},
                                        {"two-launch", GN::TwoLaunch},
                                        {"cluster", GN::Cluster}},
              cuda::options().group_norm_kernel);
  using Conv = cuda::Options::ConvKernel;
  kernel_flag("conv", std::map<std::string, Conv>{{"auto", Conv::Auto}, {"cudnn", Conv::Cudnn}},
              cuda::options().conv_kernel);
  using Timing = cuda::Options::PlanTiming;
  kernel_flag("plan-timing",
              std::map<std::string, Timing>{{"warm", Timing::Warm}, {"step", Timing::Step}},
              cuda::options().plan_timing);
  using Search = cuda::Options::GemmSearch;
  kernel_flag(
      "gemm-search",
      std::map<std::string, Search>{{"heuristic", Search::Heuristic}, {"wide", Search::Wide}},
      cuda::options().gemm_search);
  using GegluForm = cuda::Options::GegluForm;
  kernel_flag("geglu-form",
              std::map<std::string, GegluForm>{{"auto", GegluForm::Auto},
                                               {"pingpong", GegluForm::PingPong},
                                               {"cooperative", GegluForm::Cooperative}},
              cuda::options().geglu_form);
  if (s.cuda()) {
    const cuda::DeviceInfo info = cuda::device_info();
    gpu = info.name;
    std::fprintf(stderr, "kiln bench: %s (%d SMs, %zu MiB), %s\n", info.name.c_str(),
                 info.multiprocessors, info.total_memory >> 20, info.libraries.c_str());
  }
#endif
  const std::string commit = args.get_or("commit", KILN_COMMIT);
  std::printf(
      "\n| workload | size | batch | dtype | mode | ms | TFLOP/s | GFLOP | peak MiB |"
      "  (%s, kiln %s, commit %s, %s)\n|---|---|---|---|---|---|---|---|---|\n",
      gpu.c_str(), KILN_VERSION, commit.c_str(), source.label().c_str());
  std::fflush(stdout);

  Bench b(s);
  for (const std::string& w : what) {
    if (w == "unet")
      bench_unet(b, dir, xl, sizes, batches_or(2));
    else if (w == "vae")
      bench_vae(b, dir, sizes, batches_or(1));
    else if (w == "text")
      bench_text(b, dir, xl, batches_or(1));
    else if (w == "e2e")
      bench_e2e(b, dir, sizes, steps);
    else
      throw UsageError("unknown workload \"" + w + "\" in --what (unet, vae, text, e2e)");
  }

  if (const auto path = args.get("json")) {
    json rows = json::array();
    for (const Row& r : b.rows())
      rows.push_back({{"workload", r.workload},
                      {"size", r.size},
                      {"batch", r.batch},
                      {"steps", r.steps},
                      {"mode", r.mode},
                      {"dtype", dtype_name(s.placement.dtype)},
                      {"ms", r.ms},
                      {"min_ms", r.min_ms},
                      {"gflop", r.gflop},
                      {"tflops", r.gflop > 0 ? r.gflop / r.ms : 0.0},
                      {"peak_mib", r.peak_mib},
                      {"peak_in_use_mib", r.peak_in_use_mib},
                      {"gpu", gpu},
                      {"commit", commit},
                      {"weights", source.label()}});
    std::ofstream out(*path);
    out << json{{"rows", rows}, {"per_op", b.per_op_json()}}.dump(1) << "\n";
    if (!out) KILN_FAIL("cannot write ", *path);
  }
  return 0;
}

}  // namespace kiln::cli
