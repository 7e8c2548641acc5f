#include "serve/config.h"

#include "kiln/error.h"

namespace kiln::serve {

std::string_view batching_mode_name(BatchingMode mode) {
  switch (mode) {
    case BatchingMode::Step:
      return "step";
    case BatchingMode::Request:
      return "request";
    case BatchingMode::None:
      return "none";
  }
  return "?";
}

std::optional<BatchingMode> parse_batching_mode(std::string_view name) {
  for (BatchingMode m : {BatchingMode::Step, BatchingMode::Request, BatchingMode::None})
    if (batching_mode_name(m) == name) return m;
  return std::nullopt;
}

std::vector<std::string> describe(const ServeConfig& c) {
  std::vector<std::string> lines;
  for (size_t i = 0; i < c.models.size(); ++i)
    lines.push_back(str("model: ", c.models[i].name, " = ", c.models[i].dir.string(),
                        i == 0 ? " (default)" : ""));
  lines.push_back(
      str("device: ", device_name(c.placement.device), ", dtype ", dtype_name(c.placement.dtype)));
  lines.push_back(str("listen: http://", c.host, ":", c.port));
  lines.push_back(str("http threads: ", c.http_threads));
  lines.push_back(str("max body: ", c.max_body_bytes, " bytes"));
  lines.push_back(str("api keys: ", c.api_keys_file.empty() ? "none (no authentication)"
                                                            : c.api_keys_file.string()));
  lines.push_back(str("batching: ", batching_mode_name(c.batching)));
  lines.push_back(str("max batch: ", c.max_batch, " generations per denoiser call"));
  lines.push_back(str("batch window: ", c.batch_window_ms, " ms"));
  lines.push_back(str("max queue: ", c.max_queue, " images"));
  lines.push_back(str("worker threads: ", c.worker_threads,
                      c.worker_threads == 0 ? " (encode and decode on the step loop)" : ""));
  lines.push_back(str("preview every: ", c.preview_every, " steps"));
  lines.push_back(c.warmup_batch > 0
                      ? str("warm-up: 1..", c.warmup_batch, " generations at each model's native size")
                      : std::string("warm-up: none"));
  lines.push_back(str("rate limit: ", c.rate_limit_per_minute > 0
                                          ? str(c.rate_limit_per_minute, " requests/min per key")
                                          : std::string("none")));
  lines.push_back(str("request timeout: ", c.request_timeout_s, " s"));
  lines.push_back(str("drain timeout: ", c.drain_timeout_s, " s"));
  lines.push_back(str("results: ",
                      c.results_dir.empty()
                          ? std::string("in memory (jobs are lost when the process stops; "
                                        "--results-dir keeps them)")
                          : c.results_dir.string() + " (images, and the job journal in jobs/)",
                      ", kept ", c.result_ttl_s, " s, at most ", c.max_jobs, " jobs"));
  if (!c.results_dir.empty())
    lines.push_back(str("interrupted jobs: ", c.resume_interrupted
                                                  ? "resumed at start-up (--resume-interrupted)"
                                                  : "failed at start-up, with a reason"));
  lines.push_back(str("limits: ", c.max_images_per_request, " images per request, ", c.max_steps,
                      " steps, ", c.max_side, " px per side, ", c.max_prompt_chars,
                      " prompt characters"));
  lines.push_back(str("webhook retries: ", c.webhook_retries));
  if (c.inject_faults) lines.push_back("fault injection: on (testing only)");
  return lines;
}

}  // namespace kiln::serve
