// kiln build: makes the CUDA backend's plans ahead of time. For each image shape
// and batch it runs what a generation runs (the text encoders, one denoising step
// of the whole batch, the VAE decode), so that every GEMM and convolution shape
// a generation meets is timed now and kept in the plan cache, rather than on a
// user's first request.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>

#include "args.h"
#include "backend/plan_file.h"
#include "commands.h"
#include "model_source.h"
#include "pipelines/text_to_image.h"
#if defined(KILN_WITH_CUDA)
#include "backend/cuda/cuda_backend.h"
#endif

namespace kiln::cli {
namespace {

const char* kHelp =
    "usage: kiln build [options]\n"
    "\n"
    "Times the CUDA backend's algorithm choices (plans) for the given image shapes on\n"
    "this GPU and keeps them on disk, so that generate, bench and serve skip the\n"
    "timing on first use.\n"
    "\n"
    "  --model DIR          a diffusers model folder\n"
    "  --arch sd15|sdxl     or that architecture with random weights (default sd15)\n"
    "  --shapes LIST        image sizes WIDTHxHEIGHT, e.g. 512x512,768x512 (default: the\n"
    "                       model's native size)\n"
    "  --batch LIST         images per denoiser call, as kiln serve batches them, e.g.\n"
    "                       1,2,4 (default 1)\n"
    "  --dtype fp16|bf16    the precision the plans are for (default fp16)\n"
    "  --no-cfg             plans for guidance scale 1 (one row per image, not two)\n"
    "  --plan-cache DIR     where plans are kept (default: $KILN_PLAN_CACHE, else\n"
    "                       $XDG_CACHE_HOME/kiln/plans, else ~/.cache/kiln/plans)\n";

struct ImageShape {
  int width = 0, height = 0;
};

// "512x512,768x512": each a WIDTHxHEIGHT of multiples of 8, as generate takes.
std::vector<ImageShape> parse_shapes(const std::string& list) {
  std::vector<ImageShape> out;
  for (const std::string& item : split_list(list)) {
    ImageShape s;
    char* end = nullptr;
    const long w = std::strtol(item.c_str(), &end, 10);
    const bool has_x = end != item.c_str() && *end == 'x';
    const char* h_begin = has_x ? end + 1 : end;
    const long h = has_x ? std::strtol(h_begin, &end, 10) : 0;
    if (!has_x || end == h_begin || *end != '\0' || item[0] == '-' || *h_begin == '-')
      throw UsageError("--shapes takes WIDTHxHEIGHT sizes such as 512x512, got \"" + item + "\"");
    if (w < 8 || h < 8 || w > 4096 || h > 4096 || w % 8 != 0 || h % 8 != 0)
      throw UsageError(
          str("--shapes: width and height must be multiples of 8 from 8 to 4096, got ", item));
    s.width = int(w);
    s.height = int(h);
    out.push_back(s);
  }
  if (out.empty()) throw UsageError("--shapes is empty");
  return out;
}

}  // namespace

void configure_plan_cache(const std::optional<std::string>& flag, const Placement& placement) {
  if (flag && flag->empty()) throw UsageError("--plan-cache needs a folder, or off");
#if defined(KILN_WITH_CUDA)
  if (flag && placement.device == Device::CUDA) cuda::set_plan_cache(*flag);
#else
  (void)placement;
#endif
}

int build(const std::vector<std::string>& argv) {
  const Args args(argv, {"model", "arch", "shapes", "batch", "dtype", "plan-cache"},
                  {"no-cfg", "help"});
  if (args.has("help")) {
    std::fputs(kHelp, stdout);
    return 0;
  }
  if (!args.positional().empty())
    throw UsageError("unexpected argument \"" + args.positional()[0] + "\"");
  // Every flag is checked before the GPU is looked for, so that a mistake is
  // reported as such on any machine.
  const auto shapes_flag = args.get("shapes");
  const std::vector<ImageShape> requested =
      shapes_flag ? parse_shapes(*shapes_flag) : std::vector<ImageShape>{};
  const auto batch_flag = args.get("batch");
  const std::vector<int> batches =
      batch_flag ? int_list("batch", *batch_flag, 1, 256) : std::vector<int>{1};
  const std::string dtype = args.get_or("dtype", "fp16");
  if (dtype != "fp16" && dtype != "bf16")
    throw UsageError("--dtype is fp16 or bf16, got \"" + dtype + "\"");
  const std::string setting = args.get_or("plan-cache", "");
  if (args.get("plan-cache") && setting.empty()) throw UsageError("--plan-cache needs a folder");
  const std::optional<std::filesystem::path> folder = plans::folder(setting);
  if (!folder)
    throw UsageError(
        "plans are off (--plan-cache off or KILN_PLAN_CACHE=off); kiln build needs a folder "
        "to keep them in");
  const bool cfg = !args.has("no-cfg");
  const ModelSource source(args.get("model"), args.get("arch"), "build");

#if !defined(KILN_WITH_CUDA)
  (void)requested, (void)batches, (void)cfg;
  throw Error(
      "this build of kiln has no CUDA backend, and plans are the CUDA backend's "
      "(rebuild with -DKILN_CUDA=ON)");
#else
  if (!device_available(Device::CUDA))
    throw Error("no CUDA device is available; plans are made on the GPU that will use them");
  if (const std::string problem = plans::check_writable(*folder); !problem.empty())
    throw Error(str("cannot write plans to ", folder->string(), ": ", problem));
  cuda::set_plan_cache(folder->string());
  const Placement placement = placement_from_flags("cuda", dtype);
  const cuda::DeviceInfo info = cuda::device_info();
  std::fprintf(stderr, "kiln build: %s on %s (%d SMs), %s\n", source.label().c_str(),
               info.name.c_str(), info.multiprocessors, info.libraries.c_str());

  const auto pipeline = TextToImagePipeline::load(source.dir(), placement);
  // Reads this GPU's file now, so that a note about a stale one comes first.
  const std::string file = cuda::plan_cache_file();
  const std::vector<ImageShape> shapes =
      requested.empty()
          ? std::vector<ImageShape>{{pipeline->native_width(), pipeline->native_height()}}
          : requested;
  size_t total_new = 0, total_cached = 0;
  for (const ImageShape& shape : shapes) {
    for (int batch : batches) {
      const cuda::PlanStats before = cuda::plan_stats();
      const auto start = std::chrono::steady_clock::now();
      pipeline->warm_up(shape.width, shape.height, batch, cfg);
      cuda::synchronize();
      // Kept as it goes, so that an interrupted build loses nothing it made.
      cuda::save_plans();
      const cuda::PlanStats after = cuda::plan_stats();
      const size_t made = after.timed - before.timed, cached = after.reused - before.reused;
      total_new += made;
      total_cached += cached;
      const double seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      std::printf("%dx%d batch %d: %.1f s, %zu new plans, %zu already cached\n", shape.width,
                  shape.height, batch, seconds, made, cached);
      std::fflush(stdout);
    }
  }
  std::printf("kiln build: %zu new plans, %zu already cached; kept in %s\n", total_new,
              total_cached, file.c_str());
  return 0;
#endif
}

}  // namespace kiln::cli
