// The batch scheduler: turns accepted jobs into denoiser batches on one step loop
// per server (one worker; a GPU build would run one per device).
//
// Each image of a job is one Generation. Generations are grouped by (model, width,
// height): one denoiser call takes one group. With --batching step (the default), at
// every step boundary the loop drops generations of jobs that were cancelled or
// failed, moves finished ones out, lets prepared newcomers in (up to --max-batch
// generations per group), and steps the group that has waited longest, so groups of
// different sizes or models alternate step by step and none starves. From idle, the
// first step waits --batch-window-ms for company.
//
// Text encoding (start) and VAE decoding plus image encoding (finish) run on
// --worker-threads side threads, so the step loop only steps; previews of watched
// jobs are decoded there too. No lock is held across a denoiser call or any of that
// work. --batching request and none are the baselines (see config.h).
#pragma once

#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "serve/config.h"
#include "serve/job.h"
#include "serve/job_store.h"
#include "serve/metrics.h"
#include "serve/model_registry.h"
#include "serve/task_pool.h"

namespace kiln::serve {

class BatchScheduler {
 public:
  using Clock = std::chrono::steady_clock;

  BatchScheduler(const ServeConfig& config, const ModelRegistry& models, const JobStore& store,
                 Metrics& metrics);
  ~BatchScheduler();

  void start();

  enum class Admission { Accepted, QueueFull, Stopped };
  // Queues every image of `job` unless the queue would pass --max-queue images. A job
  // resumed after a restart (--resume-interrupted) was accepted before: it is queued
  // whatever the queue holds, without the images it already has.
  Admission submit(const std::shared_ptr<Job>& job, bool resumed = false);
  // A job ended (cancelled) or was interrupted from outside: its queued images leave
  // now, its running ones at the next step boundary.
  void poke(const Job& job);

  int queue_position(const Job& job) const;  // images ahead of its first queued one; -1: none
  int queued_images() const;
  int running_generations() const;
  int retry_after_seconds() const;  // a guess at when the queue has room again

  // Stops intake; keeps running queued and running jobs until `deadline`, then cancels
  // what is left with `reason`. Returns when the loop and its side threads are done.
  void drain(Clock::time_point deadline, const std::string& reason);

 private:
  struct Pending {
    std::shared_ptr<Job> job;
    int image;
    uint64_t seq;
  };
  struct PendingOrder {
    bool operator()(const Pending& a, const Pending& b) const {
      const int pa = a.job->spec().priority, pb = b.job->spec().priority;
      return pa != pb ? pa > pb : a.seq < b.seq;
    }
  };
  struct Active {
    std::shared_ptr<Job> job;
    int image;
    uint64_t seq;
    std::unique_ptr<Generation> generation;
  };
  struct GroupKey {
    std::string model;
    int width, height;
    auto operator<=>(const GroupKey&) const = default;
  };
  struct Group {
    const TextToImagePipeline* pipeline = nullptr;
    std::vector<Active> members;  // in the batch; touched by the loop only
    std::vector<Active> ready;    // prepared, joining at the next step boundary
    int preparing = 0;
    uint64_t last_step = 0;  // loop tick of its last step: the least recent steps next
    int size() const { return int(members.size() + ready.size()) + preparing; }
  };

  static GroupKey key_of(const Job& job, int image);
  void loop();
  bool idle_locked() const;  // nothing in any batch, ready or preparing
  void drop_ended_locked();
  void admit_locked();
  void prepare_locked(Pending item);
  Group* pick_locked();
  void step_group(std::unique_lock<std::mutex>& lock, Group& group);
  void finish_generation(Active active, const TextToImagePipeline* pipeline);
  void preview(std::shared_ptr<Job> job, int image, int step, const TextToImagePipeline* pipeline,
               Tensor latents);
  void run_side(std::function<void()> task);  // on a side thread, or inline on the loop
  void cancel_everything_locked(const std::string& reason);

  const ServeConfig& config_;
  const ModelRegistry& models_;
  const JobStore& store_;
  Metrics& metrics_;

  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::set<Pending, PendingOrder> pending_;
  std::map<GroupKey, Group> groups_;
  std::vector<std::function<void()>> inline_tasks_;  // --worker-threads 0
  uint64_t next_seq_ = 0, tick_ = 0;
  int finishing_ = 0;
  Clock::time_point window_until_{};
  bool intake_open_ = true, stopping_ = false;
  Clock::time_point drain_deadline_ = Clock::time_point::max();
  std::string drain_reason_;
  double step_seconds_ewma_ = 0.05;

  std::unique_ptr<TaskPool> side_;
  std::thread loop_;
};

}  // namespace kiln::serve
