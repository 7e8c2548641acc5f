#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <random>

#include "args.h"
#include "commands.h"
#include "io/image.h"
#include "pipelines/text_to_image.h"

namespace kiln::cli {
namespace {

const char* kHelp =
    "usage: kiln generate [PROMPT] [options]\n"
    "\n"
    "  --model DIR             diffusers model folder (default: the embedded kiln-tiny)\n"
    "  --prompt TEXT           the prompt (or give it as the first argument)\n"
    "  --negative-prompt TEXT  what to steer away from\n"
    "  --width W, --height H   image size, multiples of 8 (default: the model's native size)\n"
    "  --steps N               denoising steps (default 50)\n"
    "  --cfg-scale F           classifier-free guidance (default 7.5; SDXL 5)\n"
    "  --sampler NAME          euler | euler_a | ddim | dpmpp_2m | lcm | pndm\n"
    "                          (default: the model's)\n"
    "  --scheduler NAME        default | karras (sigma schedule)\n"
    "  --seed N                seed; the same seed gives diffusers' picture (default: random)\n"
    "  --batch-count N         images to make, with seeds N, N+1, ... (default 1)\n"
    "  --output FILE.png       where to write (default kiln-<seed>.png); with a batch\n"
    "                          count above 1, FILE-1.png, FILE-2.png, ...\n"
    "  --device cuda|cpu       where to run (default: cuda when a GPU is present)\n"
    "  --dtype fp16|bf16|fp32  the model's precision (default: fp16 on cuda, fp32 on cpu)\n"
    "  --plan-cache DIR|off    where the GPU's timed algorithm choices are kept (default:\n"
    "                          $KILN_PLAN_CACHE, else ~/.cache/kiln/plans; off: memory only)\n"
    "  --quiet                 no progress bar\n";

std::filesystem::path numbered(const std::filesystem::path& out, int index, int count) {
  if (count == 1) return out;
  std::filesystem::path p = out;
  p.replace_filename(out.stem().string() + "-" + std::to_string(index + 1) +
                     out.extension().string());
  return p;
}

class ProgressBar {
 public:
  ProgressBar(bool enabled, int image, int images)
      : enabled_(enabled), image_(image), images_(images) {}
  bool operator()(const Progress& p) {
    if (!enabled_) return true;
    constexpr int kWidth = 30;
    const int filled = p.total ? p.step * kWidth / p.total : kWidth;
    const double elapsed =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    std::fprintf(stderr, "\r%s[%.*s%.*s] %d/%d steps  %.1f s", label().c_str(), filled,
                 "##############################", kWidth - filled,
                 "..............................", p.step, p.total, elapsed);
    if (p.step == p.total) std::fputc('\n', stderr);
    std::fflush(stderr);
    return true;
  }

 private:
  std::string label() const {
    return images_ > 1 ? "image " + std::to_string(image_ + 1) + "/" + std::to_string(images_) + " "
                       : "";
  }
  bool enabled_;
  int image_, images_;
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
};

}  // namespace

Placement placement_from_flags(const std::optional<std::string>& device,
                               const std::optional<std::string>& dtype) {
  Placement p;
  const bool gpu = device_available(Device::CUDA);
  const std::string dev = device.value_or(gpu ? "cuda" : "cpu");
  if (dev == "cuda") {
    if (!gpu)
#if defined(KILN_WITH_CUDA)
      throw Error("no CUDA device is available; use --device cpu");
#else
      throw Error("this build of kiln has no CUDA backend; use --device cpu");
#endif
    p.device = Device::CUDA;
  } else if (dev != "cpu") {
    throw UsageError("unknown device \"" + dev + "\" (cpu, cuda)");
  }
  const std::string type = dtype.value_or(p.device == Device::CUDA ? "fp16" : "fp32");
  if (type == "fp16" || type == "f16" || type == "float16")
    p.dtype = DType::F16;
  else if (type == "bf16" || type == "bfloat16")
    p.dtype = DType::BF16;
  else if (type == "fp32" || type == "f32" || type == "float32")
    p.dtype = DType::F32;
  else
    throw UsageError("unknown dtype \"" + type + "\" (fp16, bf16, fp32)");
  if (p.device == Device::CPU && p.dtype != DType::F32)
    throw UsageError("the CPU backend computes in fp32; --dtype " + type + " needs --device cuda");
  return p;
}

int generate(const std::vector<std::string>& argv) {
  const Args args(
      argv,
      {"model", "prompt", "negative-prompt", "width", "height", "steps", "cfg-scale", "sampler",
       "scheduler", "seed", "batch-count", "output", "device", "dtype", "plan-cache"},
      {"quiet", "help"});
  if (args.has("help")) {
    std::fputs(kHelp, stdout);
    return 0;
  }
  TextToImageRequest request;
  if (args.get("prompt")) {
    if (!args.positional().empty())
      throw UsageError("give the prompt either as an argument or with --prompt, not both");
    request.prompt = *args.get("prompt");
  } else if (args.positional().size() == 1) {
    request.prompt = args.positional()[0];
  } else if (args.positional().empty()) {
    throw UsageError("no prompt: kiln generate \"a red circle on a blue background\"");
  } else {
    throw UsageError("more than one prompt given; quote the prompt");
  }
  request.negative_prompt = args.get("negative-prompt");
  request.width = int(args.integer("width", 8, 4096).value_or(0));
  request.height = int(args.integer("height", 8, 4096).value_or(0));
  request.num_inference_steps = int(args.integer("steps", 1, 1000).value_or(50));
  if (auto g = args.number("cfg-scale", 0.0, 100.0)) request.guidance_scale = float(*g);
  if (auto s = args.get("sampler")) {
    request.sampler = parse_sampler(*s);
    if (!request.sampler)
      throw UsageError("unknown sampler \"" + *s +
                       "\" (euler, euler_a, ddim, dpmpp_2m, lcm, pndm)");
  }
  const std::string schedule = args.get_or("scheduler", "default");
  if (schedule == "karras")
    request.schedule = SigmaSchedule::Karras;
  else if (schedule != "default")
    throw UsageError("unknown scheduler \"" + schedule + "\" (default, karras)");
  const int count = int(args.integer("batch-count", 1, 10000).value_or(1));
  const Placement placement = placement_from_flags(args.get("device"), args.get("dtype"));
  configure_plan_cache(args.get("plan-cache"), placement);
  uint64_t seed;
  if (auto s = args.unsigned_integer("seed")) {
    seed = *s;
  } else {
    std::random_device rd;
    seed = (uint64_t(rd()) << 32 | rd()) % 4294967296ull;
  }
  const std::filesystem::path output =
      args.get("output").value_or("kiln-" + std::to_string(seed) + ".png");
  if (output.extension() != ".png") throw UsageError("--output must name a .png file");
  if (!output.parent_path().empty() && !std::filesystem::is_directory(output.parent_path()))
    throw Error("cannot write " + output.string() + ": folder " + output.parent_path().string() +
                " does not exist");

  const auto model_flag = args.get("model");
  const std::filesystem::path model =
      model_flag ? std::filesystem::path(*model_flag) : default_model_dir();
  const auto start = std::chrono::steady_clock::now();
  const auto pipeline = TextToImagePipeline::load(model, placement);
  const bool show_progress = !args.has("quiet") && isatty(STDERR_FILENO);
  for (int i = 0; i < count; ++i) {
    request.seed = seed + uint64_t(i);
    const ResolvedRequest resolved = pipeline->resolve(request);
    const io::Image image = pipeline->generate(resolved, ProgressBar(show_progress, i, count));
    const std::string png =
        io::encode_png(image, {{"parameters", pipeline->a1111_parameters(resolved)}});
    const std::filesystem::path path = numbered(output, i, count);
    io::write_file_atomic(path, png);
    std::printf("%s\n", path.string().c_str());
    std::fflush(stdout);
  }
  if (!args.has("quiet")) {
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::fprintf(stderr, "kiln: %d image%s from %s in %.2f s (seed %llu)\n", count,
                 count == 1 ? "" : "s", pipeline->name().c_str(), seconds,
                 static_cast<unsigned long long>(seed));
  }
  return 0;
}

std::filesystem::path default_model_dir() {
  // Next to the executable (build/bin/kiln → the checkout's models/), installed
  // (bin/kiln → share/kiln/models), then the source tree kiln was built from.
  std::error_code ec;
  const std::filesystem::path exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  std::vector<std::filesystem::path> candidates;
  if (!ec) {
    candidates.push_back(exe.parent_path() / "../../models/kiln-tiny");
    candidates.push_back(exe.parent_path() / "../share/kiln/models/kiln-tiny");
  }
  candidates.push_back(std::filesystem::path(KILN_SOURCE_DIR) / "models/kiln-tiny");
  for (const auto& c : candidates)
    if (std::filesystem::exists(c / "model_index.json", ec)) return c.lexically_normal();
  throw Error(
      "no --model given and the embedded model (models/kiln-tiny) was not found; "
      "pass --model DIR with a diffusers model folder");
}

}  // namespace kiln::cli
