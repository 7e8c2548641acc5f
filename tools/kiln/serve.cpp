// kiln serve: the HTTP server (src/serve). This file only reads the flags.
#include <algorithm>
#include <cstdio>

#include "args.h"
#include "commands.h"

#if KILN_WITH_SERVE
#include "serve/service.h"
#endif

namespace kiln::cli {
namespace {

const char* kHelp =
    "usage: kiln serve [options]\n"
    "\n"
    "  --model [NAME=]DIR       a diffusers model folder, repeatable; the first is the\n"
    "                           default (default: the embedded kiln-tiny); NAME defaults\n"
    "                           to the folder's name\n"
    "  --device cuda|cpu        where the models run (default cuda when a GPU is present)\n"
    "  --dtype fp16|bf16|fp32   weights and activations (default fp16 on cuda, fp32 on cpu)\n"
    "  --plan-cache DIR|off     where the GPU's timed algorithm choices are kept (default:\n"
    "                           $KILN_PLAN_CACHE, else ~/.cache/kiln/plans; off: memory\n"
    "                           only); kiln build makes them ahead of time\n"
    "  --host ADDR              address to listen on (default 127.0.0.1: this machine only)\n"
    "  --port N                 port (default 8080; 0: any free port, printed at start)\n"
    "  --api-keys FILE          require \"Authorization: Bearer KEY\"; FILE has lines\n"
    "                           \"ID SECRET [MODEL,MODEL...]\" (docs/serving.md)\n"
    "  --batching MODE          step (default): requests join a running batch at every\n"
    "                           step; request: only requests arriving together batch;\n"
    "                           none: one generation at a time\n"
    "  --max-batch N            generations per denoiser call (default 8)\n"
    "  --batch-window-ms T      from idle, wait T ms for company (default 20)\n"
    "  --max-queue N            images waiting to start before 429 (default 256)\n"
    "  --worker-threads N       threads encoding prompts and decoding images beside the\n"
    "                           step loop (default 1; 0: on the step loop)\n"
    "  --preview-every N        preview every N steps for watched jobs (default 5; 0: off)\n"
    "  --warmup on|off          before reporting ready, run two steps of up to --max-batch\n"
    "                           (at most 32) generations, one per row bucket, at each\n"
    "                           model's native size, so the first requests do not wait for\n"
    "                           plans and CUDA graphs (default: on with --device cuda)\n"
    "  --rate-limit N           job requests per minute per key (default 0: no limit)\n"
    "  --request-timeout S      synchronous calls give up after S s (default 300)\n"
    "  --drain-timeout S        on SIGTERM, time given to jobs (default 30)\n"
    "  --max-body-bytes N       largest request body (default 1048576)\n"
    "  --http-threads N         connections served at once (default 64)\n"
    "  --results-dir DIR        keep images and a journal of the jobs in DIR: accepted\n"
    "                           jobs survive a crash or restart (default: memory only)\n"
    "  --resume-interrupted     at start-up, run again the jobs the last process left\n"
    "                           unfinished (default: they fail as interrupted)\n"
    "  --result-ttl S           keep finished jobs and images S s (default 3600)\n"
    "  --max-jobs N             and at most N finished jobs (default 10000)\n"
    "  --max-images N           images per request (default 16)\n"
    "  --max-steps N            steps per image (default 150)\n"
    "  --max-side N             pixels per side (default 2048)\n"
    "  --webhook-retries N      retries after a failed webhook (default 3)\n"
    "  --inject-faults          testing only: prompts with [[kiln:fail-step]] or\n"
    "                           [[kiln:oom]] make their denoising step fail\n";

#if KILN_WITH_SERVE
serve::ModelSpec model_spec(const std::string& value) {
  const size_t eq = value.find('=');
  serve::ModelSpec spec;
  if (eq != std::string::npos && eq > 0 && value.find('/') > eq) {
    spec.name = value.substr(0, eq);
    spec.dir = value.substr(eq + 1);
  } else {
    spec.dir = value;
  }
  if (spec.dir.empty()) throw UsageError("--model needs a folder");
  if (spec.name.empty()) {
    std::filesystem::path p = spec.dir.lexically_normal();
    if (p.filename().empty()) p = p.parent_path();
    spec.name = p.filename().string();
  }
  return spec;
}
#endif

}  // namespace

int serve(const std::vector<std::string>& argv) {
  // --model may be given several times; Args takes each flag once.
  std::vector<std::string> rest, model_values;
  for (size_t i = 0; i < argv.size(); ++i) {
    if (argv[i] == "--model") {
      if (i + 1 >= argv.size()) throw UsageError("--model needs a value");
      model_values.push_back(argv[++i]);
    } else if (argv[i].rfind("--model=", 0) == 0) {
      model_values.push_back(argv[i].substr(8));
    } else {
      rest.push_back(argv[i]);
    }
  }
  const Args args(
      rest, {"host",          "device",      "dtype",           "port",          "api-keys",
             "batching",      "max-batch",   "batch-window-ms", "max-queue",     "worker-threads",
             "preview-every", "rate-limit",  "request-timeout", "drain-timeout", "max-body-bytes",
             "http-threads",  "results-dir", "result-ttl",      "max-jobs",      "max-images",
             "max-steps",     "max-side",    "webhook-retries", "plan-cache",    "warmup"},
      {"inject-faults", "resume-interrupted", "help"});
  if (args.has("help")) {
    std::fputs(kHelp, stdout);
    return 0;
  }
  if (!args.positional().empty())
    throw UsageError("unexpected argument \"" + args.positional()[0] + "\"");
#if !KILN_WITH_SERVE
  throw Error(
      "this build of kiln has no server: cpp-httplib was not found when it was built "
      "(install libcpp-httplib-dev and rebuild)");
#else
  serve::ServeConfig c;
  for (const std::string& v : model_values) c.models.push_back(model_spec(v));
  if (c.models.empty()) c.models.push_back({"kiln-tiny", default_model_dir()});
  c.host = args.get_or("host", c.host);
  c.port = int(args.integer("port", 0, 65535).value_or(c.port));
  if (auto f = args.get("api-keys")) c.api_keys_file = *f;
  if (auto b = args.get("batching")) {
    auto mode = serve::parse_batching_mode(*b);
    if (!mode) throw UsageError("unknown batching mode \"" + *b + "\" (step, request, none)");
    c.batching = *mode;
  }
  c.placement = placement_from_flags(args.get("device"), args.get("dtype"));
  configure_plan_cache(args.get("plan-cache"), c.placement);
  c.max_batch = int(args.integer("max-batch", 1, 1024).value_or(c.max_batch));
  c.batch_window_ms = int(args.integer("batch-window-ms", 0, 60000).value_or(c.batch_window_ms));
  c.max_queue = int(args.integer("max-queue", 0, 1000000).value_or(c.max_queue));
  c.worker_threads = int(args.integer("worker-threads", 0, 64).value_or(c.worker_threads));
  c.preview_every = int(args.integer("preview-every", 0, 1000).value_or(c.preview_every));
  const std::string warmup = args.get_or("warmup", c.placement.device == Device::CUDA ? "on" : "off");
  if (warmup != "on" && warmup != "off")
    throw UsageError("--warmup is on or off, got \"" + warmup + "\"");
  if (warmup == "on")
    c.warmup_batch = c.batching == serve::BatchingMode::None ? 1 : std::min(c.max_batch, 32);
  c.rate_limit_per_minute = args.number("rate-limit", 0, 1e9).value_or(0);
  c.request_timeout_s =
      int(args.integer("request-timeout", 1, 86400).value_or(c.request_timeout_s));
  c.drain_timeout_s = int(args.integer("drain-timeout", 0, 86400).value_or(c.drain_timeout_s));
  c.max_body_bytes = size_t(
      args.integer("max-body-bytes", 1024, int64_t(1) << 32).value_or(int64_t(c.max_body_bytes)));
  c.http_threads = int(args.integer("http-threads", 2, 4096).value_or(c.http_threads));
  if (auto d = args.get("results-dir")) c.results_dir = *d;
  c.resume_interrupted = args.has("resume-interrupted");
  if (c.resume_interrupted && c.results_dir.empty())
    throw UsageError("--resume-interrupted needs --results-dir (where the jobs are kept)");
  c.result_ttl_s = int(args.integer("result-ttl", 1, 86400 * 30).value_or(c.result_ttl_s));
  c.max_jobs = int(args.integer("max-jobs", 1, 10000000).value_or(c.max_jobs));
  c.max_images_per_request =
      int(args.integer("max-images", 1, 1000).value_or(c.max_images_per_request));
  c.max_steps = int(args.integer("max-steps", 1, 1000).value_or(c.max_steps));
  c.max_side = int(args.integer("max-side", 8, 16384).value_or(c.max_side));
  c.webhook_retries = int(args.integer("webhook-retries", 0, 20).value_or(c.webhook_retries));
  c.inject_faults = args.has("inject-faults");
  return serve::run_server(c);
#endif
}

}  // namespace kiln::cli
