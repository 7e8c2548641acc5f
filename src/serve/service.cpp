#include "serve/service.h"

#include <pthread.h>
#include <signal.h>

#include <chrono>
#include <cstdio>
#include <ctime>
#include <exception>
#include <thread>

#include "serve/http_server.h"

namespace kiln::serve {
namespace {

void log_job_end(const Job& job, const Job::Times& t) {
  const nlohmann::json j = job.to_json(-1);
  nlohmann::json line = {{"event", "job_end"},        {"job_id", job.id()},
                         {"key_id", job.key_id()},    {"api", api_name(job.spec().api)},
                         {"model", job.spec().model}, {"status", j["status"]},
                         {"reason", j["reason"]},     {"images", job.images()},
                         {"queued_s", t.queued},      {"compute_s", t.compute},
                         {"total_s", t.total}};
  const std::string text = line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  std::printf("%s\n", text.c_str());
  std::fflush(stdout);
}

// A job that a restart resumed this many times is failed at the next: it may be what
// keeps killing the server.
constexpr int kMaxResumes = 2;

std::string utc_now() {
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  char text[32];
  std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return text;
}

// With --resume-interrupted, the recovered jobs to queue again once the models
// have loaded, and the reason each fails with if that cannot be done.
struct Resumable {
  std::vector<std::shared_ptr<Job>> jobs;
  std::string reason;
};

// The jobs the last process left queued or running: failed as interrupted, or with
// --resume-interrupted left to resume_jobs; one whose images are all on disk had
// finished (only its record's last update was lost) and succeeds without running
// again.
Resumable settle_unfinished(const std::vector<std::shared_ptr<Job>>& jobs,
                            const ServeConfig& config, const ModelRegistry& models,
                            Metrics& metrics, const JobStore::Recovered& recovered) {
  const std::string restart = utc_now();
  Resumable resumable;
  resumable.reason =
      str("interrupted: the server stopped before this job finished (restart at ", restart, ")");
  int interrupted = 0, completed = 0;
  for (const auto& job : jobs) {
    if (job->all_images_done()) {
      job->finish(JobState::Succeeded, "");
      ++completed;
      continue;
    }
    std::string reason =
        str("interrupted: the server stopped before this job finished (restart at ", restart, ")");
    if (config.resume_interrupted) {
      if (!models.known(job->spec().model)) {
        reason += str("; not resumed: model \"", job->spec().model, "\" is not served now");
      } else if (job->record().resumes >= kMaxResumes) {
        reason += str("; not resumed again after ", kMaxResumes, " resumes");
      } else {
        resumable.jobs.push_back(job);
        continue;
      }
    }
    job->finish(JobState::Failed, reason);
    ++interrupted;
  }
  const int resumed = int(resumable.jobs.size());
  metrics.count_recovered("restored", recovered.restored);
  metrics.count_recovered("interrupted", interrupted);
  metrics.count_recovered("completed", completed);
  metrics.count_recovered("expired", recovered.expired);
  metrics.count_recovered("unreadable", recovered.unreadable);
  std::fprintf(stderr,
               "kiln serve: journal: %d finished jobs restored, %d interrupted (failed), %d "
               "resumed, %d completed from their images, %d expired, %d unreadable records "
               "skipped\n",
               recovered.restored, interrupted, resumed, completed, recovered.expired,
               recovered.unreadable);
  return resumable;
}

// Queued again once the models have loaded, so that a stop during start-up does not
// count as one of a job's resumes (the journal keeps it as it was for the next start).
void resume_jobs(const Resumable& resumable, BatchScheduler& scheduler, Metrics& metrics) {
  int resumed = 0, failed = 0;
  for (const auto& job : resumable.jobs) {
    try {
      if (!job->prepare_resume()) continue;  // cancelled while the models loaded
      scheduler.submit(job, true);
      ++resumed;
    } catch (const Error& e) {
      job->finish(JobState::Failed, str(resumable.reason, "; not resumed: ", e.what()));
      ++failed;
    }
  }
  metrics.count_recovered("resumed", resumed);
  metrics.count_recovered("interrupted", failed);
}

}  // namespace

int run_server(const ServeConfig& config) {
  // Every thread started from here on inherits this mask; the main thread takes the
  // signals with sigwait. Writes to a closed connection fail instead of killing us.
  std::signal(SIGPIPE, SIG_IGN);
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  for (const std::string& line : describe(config))
    std::fprintf(stderr, "kiln serve: %s\n", line.c_str());
  const ApiKeys keys =
      config.api_keys_file.empty() ? ApiKeys() : ApiKeys::load(config.api_keys_file);
  if (keys.enabled()) std::fprintf(stderr, "kiln serve: %zu API keys loaded\n", keys.size());

  ModelRegistry models(config.models);
  Metrics metrics;
  JobStore store(config, metrics);
  RateLimiter limiter(config.rate_limit_per_minute);
  WebhookSender webhooks(config.webhook_retries, std::chrono::milliseconds(1000));
  BatchScheduler scheduler(config, models, store, metrics);
  std::atomic<bool> draining{false}, stopping{false};

  auto send_webhook = [&](Job& job) {
    if (job.spec().webhook_url.empty()) return;
    const std::string status(state_name(job.state()));
    webhooks.send(job.spec().webhook_url, "job." + status,
                  nlohmann::json{{"event", "job." + status}, {"job", job.to_json(-1)}}.dump(
                      -1, ' ', false, nlohmann::json::error_handler_t::replace),
                  [job = job.shared_from_this()] { job->webhook_settled(); });
  };
  auto on_job_end = [&](Job& job) {
    const Job::Times t = job.times();
    int made = 0;
    for (int i = 0; i < job.images(); ++i) made += job.image(i).has_value();
    const std::string status(state_name(job.state()));
    metrics.observe_job(job.spec().model, std::string(api_name(job.spec().api)), status, t.queued,
                        t.compute, t.total, made);
    log_job_end(job, t);
    send_webhook(job);
  };
  Resumable resumable;
  if (store.journal()) {
    // Before the socket opens, so a client never sees a known job missing.
    const JobStore::Recovered recovered = store.recover(on_job_end);
    resumable = settle_unfinished(recovered.unfinished, config, models, metrics, recovered);
    for (const auto& job : recovered.webhooks_due) send_webhook(*job);
  }
  ServerParts parts{config, models,  store,    scheduler, metrics,
                    keys,   limiter, draining, stopping,  on_job_end};
  HttpServer http(parts, [&] {
    Gauges g;
    g.queue_depth = scheduler.queued_images();
    g.running = scheduler.running_generations();
    g.memory_bytes = resident_memory_bytes();
    g.ready = models.ready();
    g.draining = draining;
    return g;
  });

  const int port = http.bind(config.host, config.port);
  std::fprintf(stderr, "kiln serve: listening on http://%s:%d\n", config.host.c_str(), port);
  std::thread http_thread([&] { http.run(); });
  http.wait_until_running();

  const auto load_start = std::chrono::steady_clock::now();
  // Loaded on a thread of its own that then ends, taking its OpenMP team with it (see
  // BatchScheduler::start on why idle teams slow the step loop). A stop signal while
  // it runs ends the start-up at the next model or warm-up bucket, rather than after
  // all of them (a large model's load and warm-up can outlast an orchestrator's grace
  // period).
  struct StartupStopped {};
  std::exception_ptr load_error;
  std::atomic<bool> stop_startup{false}, loaded{false};
  std::thread loader([&] {
    try {
      models.load_all(config.placement, [&](const ModelSpec& spec, const TextToImagePipeline& p) {
        if (stop_startup) throw StartupStopped{};
        if (config.warmup_batch <= 0) return;
        // A failed warm-up (out of memory at a large batch, say) is not a failed start:
        // what it did not prepare is prepared on first use, as without it.
        const auto start = std::chrono::steady_clock::now();
        int warmed = 0;
        try {
          p.warm_up_buckets(config.warmup_batch, [&](int n) {
            warmed = n;
            if (stop_startup) throw StartupStopped{};
          });
        } catch (const StartupStopped&) {
          throw;
        } catch (const std::exception& e) {
          std::fprintf(stderr,
                       "kiln serve: warning: warm-up of %s stopped after %d generations per "
                       "call: %s (the rest is prepared on first use; --warmup off skips it)\n",
                       spec.name.c_str(), warmed, e.what());
          return;
        }
        std::fprintf(stderr, "kiln serve: %s warmed up: 1..%d generations at %dx%d in %.1f s\n",
                     spec.name.c_str(), config.warmup_batch, p.native_width(), p.native_height(),
                     std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
      });
    } catch (const StartupStopped&) {
    } catch (...) {
      load_error = std::current_exception();
    }
    loaded = true;
  });
  int signal_number = 0;
  while (!loaded) {
    const timespec poll{0, 100 * 1000 * 1000};
    siginfo_t info;
    const int got = sigtimedwait(&stop_signals, &info, &poll);
    if (got == SIGTERM || got == SIGINT) {
      signal_number = got;
      stop_startup = true;
      draining = true;  // no job is taken from here on, even if the load has just finished
      std::fprintf(stderr,
                   "kiln serve: %s while starting: stopping after the current model or "
                   "warm-up bucket\n",
                   got == SIGINT ? "SIGINT" : "SIGTERM");
      break;
    }
  }
  loader.join();
  // After the jobs: webhooks due are delivered, what a crash may lose is written
  // (undelivered webhooks stay due), waiting requests get their answers and event
  // streams end; then the socket closes.
  auto shut_down = [&](const char* how) {
    webhooks.stop(std::chrono::steady_clock::now() + std::chrono::seconds(5));
    store.flush();
    stopping = true;
    store.wake_all();
    http.stop();
    http_thread.join();
    std::fprintf(stderr, "kiln serve: %s\n", how);
    return 0;
  };
  // Stopped while starting: no job has been taken (requests get 503 until the server
  // opens below, even when the load has just finished), so nothing drains; jobs
  // recovered from the journal stay there as they were for the next start.
  if (signal_number != 0) return shut_down("stopped before ready");
  if (load_error) {
    http.stop();
    http_thread.join();
    std::rethrow_exception(load_error);
  }
  // The recovered jobs are queued before any new request can be, and /v2/health/ready
  // turns 200 only once the scheduler runs.
  if (store.journal()) resume_jobs(resumable, scheduler, metrics);
  scheduler.start();
  models.open();
  std::fprintf(
      stderr, "kiln serve: ready: %zu model%s loaded in %.2f s\n", config.models.size(),
      config.models.size() == 1 ? "" : "s",
      std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start).count());

  if (signal_number == 0) sigwait(&stop_signals, &signal_number);
  draining = true;
  std::fprintf(stderr, "kiln serve: %s: no new jobs; draining for up to %d s\n",
               signal_number == SIGINT ? "SIGINT" : "SIGTERM", config.drain_timeout_s);
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::seconds(config.drain_timeout_s);
  scheduler.drain(deadline, str("server shutting down: not finished within the drain timeout (",
                                config.drain_timeout_s, " s)"));
  return shut_down("stopped");
}

}  // namespace kiln::serve
