// The settings of kiln serve: one struct, printed one line per setting at start-up.
#pragma once

#include <cstddef>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "models/model_config.h"

namespace kiln::serve {

// How the scheduler forms denoiser batches.
//   step:    continuous batching: requests join a running batch at the next step
//            boundary and leave when done (the default).
//   request: whole-request batching: requests that arrive together (within the batch
//            window, same model and size) run as one batch to completion; later ones
//            wait for the whole batch to finish (Triton-style dynamic batching).
//   none:    one generation at a time (A1111, stable-diffusion.cpp).
enum class BatchingMode { Step, Request, None };
std::string_view batching_mode_name(BatchingMode mode);
std::optional<BatchingMode> parse_batching_mode(std::string_view name);

struct ModelSpec {
  std::string name;  // what clients ask for ("model": ...)
  std::filesystem::path dir;
};

struct ServeConfig {
  std::vector<ModelSpec> models;  // the first is the default model
  Placement placement;            // device and dtype every model runs on
  std::string host = "127.0.0.1";
  int port = 8080;
  int http_threads = 64;  // connections served at once (SSE streams and waiting calls hold one)
  std::size_t max_body_bytes = 1 << 20;
  std::filesystem::path api_keys_file;  // empty: no authentication

  BatchingMode batching = BatchingMode::Step;
  int max_queue = 256;       // images accepted but not yet started; beyond it, 429
  int max_batch = 8;         // generations (images) per denoiser call; each is 1 or 2 rows (CFG)
  int batch_window_ms = 20;  // from idle, wait this long for company before the first step
  int worker_threads = 1;    // text encoding, VAE decoding, image encoding off the step loop;
                             // 0: all of it on the step loop
  int preview_every = 5;     // steps between previews for jobs someone watches; 0: none
  // Before the server reports ready, one step of 1..warmup_batch generations (with
  // CFG) at each model's native size, so that the first requests do not pay for
  // timing plans and capturing CUDA graphs. 0: none (the default on the CPU).
  int warmup_batch = 0;

  double rate_limit_per_minute = 0;  // job-creating requests per API key; 0: unlimited
  int request_timeout_s = 300;       // synchronous endpoints give up (504) and cancel after this
  int drain_timeout_s = 30;          // on SIGTERM, time given to queued and running jobs

  int result_ttl_s = 3600;  // finished jobs and their images are kept this long
  int max_jobs = 10000;     // and at most this many finished jobs
  // Images and the job journal: jobs survive a restart. Empty: everything is in memory
  // and lost when the process stops.
  std::filesystem::path results_dir;
  // At start-up, jobs the last process left queued or running run again (from their
  // seeds) instead of failing as interrupted. Needs results_dir.
  bool resume_interrupted = false;

  int max_images_per_request = 16;
  int max_steps = 150;
  int max_side = 2048;
  int max_prompt_chars = 32000;
  int webhook_retries = 3;  // after the first attempt; backoff 1 s, 2 s, 4 s, ...

  bool inject_faults = false;  // testing only: prompts with [[kiln:fail-step]] / [[kiln:oom]]
};

// "name: value" lines, one per setting.
std::vector<std::string> describe(const ServeConfig& config);

}  // namespace kiln::serve
