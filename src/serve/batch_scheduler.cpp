#include "serve/batch_scheduler.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <new>

#include <omp.h>

#include "serve/image_formats.h"

namespace kiln::serve {
namespace {

constexpr int kPreviewSide = 128;

// --inject-faults: lets the end-to-end tests make a denoising step fail.
void inject_faults(const std::vector<Generation*>& batch) {
  for (const Generation* g : batch) {
    const std::string& prompt = g->request().request.prompt;
    if (prompt.find("[[kiln:fail-step]]") != std::string::npos)
      throw Error("injected fault: a kernel failed");
    if (prompt.find("[[kiln:oom]]") != std::string::npos) throw std::bad_alloc();
  }
}

}  // namespace

BatchScheduler::BatchScheduler(const ServeConfig& config, const ModelRegistry& models,
                               const JobStore& store, Metrics& metrics)
    : config_(config), models_(models), store_(store), metrics_(metrics) {}

BatchScheduler::~BatchScheduler() {
  if (loop_.joinable()) drain(Clock::now(), "server stopped");
}

void BatchScheduler::start() {
  // On the CPU, every thread that runs OpenMP keeps a team; once there are more team
  // threads than cores, libgomp stops spinning at barriers and every parallel region
  // pays for a wake-up (measured: a batch-1 step 27 -> 35 ms). The side threads
  // therefore run their work on one thread each and leave the cores' teams to the loop.
  if (config_.worker_threads > 0)
    side_ = std::make_unique<TaskPool>(config_.worker_threads, [] { omp_set_num_threads(1); });
  loop_ = std::thread([this] { loop(); });
}

BatchScheduler::GroupKey BatchScheduler::key_of(const Job& job, int image) {
  const TextToImageRequest& q = job.spec().images[size_t(image)].request;
  return {job.spec().model, q.width, q.height};
}

BatchScheduler::Admission BatchScheduler::submit(const std::shared_ptr<Job>& job, bool resumed) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!intake_open_) return Admission::Stopped;
    if (!resumed && !pending_.empty() && int(pending_.size()) + job->images() > config_.max_queue)
      return Admission::QueueFull;
    if (pending_.empty() && idle_locked())
      window_until_ = Clock::now() + std::chrono::milliseconds(config_.batch_window_ms);
    for (int i = 0; i < job->images(); ++i)
      if (!resumed || !job->image_done(i)) pending_.insert({job, i, next_seq_++});
  }
  wake_.notify_all();
  return Admission::Accepted;
}

void BatchScheduler::poke(const Job& job) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    // Queued images of an ended or interrupted job leave now.
    for (auto it = pending_.begin(); it != pending_.end();) {
      if (it->job.get() != &job) {
        ++it;
        continue;
      }
      if (job.interrupted() && !job.ended()) it->job->add_image(it->image, std::nullopt);
      it = pending_.erase(it);
    }
  }
  wake_.notify_all();
}

int BatchScheduler::queue_position(const Job& job) const {
  std::lock_guard<std::mutex> lock(mutex_);
  int ahead = 0;
  for (const Pending& p : pending_) {
    if (p.job.get() == &job) return ahead;
    ++ahead;
  }
  return -1;
}

int BatchScheduler::queued_images() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return int(pending_.size());
}

int BatchScheduler::running_generations() const {
  std::lock_guard<std::mutex> lock(mutex_);
  int n = finishing_;
  for (const auto& [key, g] : groups_) n += g.size();
  return n;
}

int BatchScheduler::retry_after_seconds() const {
  std::lock_guard<std::mutex> lock(mutex_);
  double steps = 0;
  for (const Pending& p : pending_)
    steps += p.job->spec().images[size_t(p.image)].request.num_inference_steps;
  const int batch = config_.batching == BatchingMode::None ? 1 : std::max(1, config_.max_batch);
  return int(std::clamp(std::ceil(steps * step_seconds_ewma_ / batch), 1.0, 120.0));
}

void BatchScheduler::drain(Clock::time_point deadline, const std::string& reason) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    intake_open_ = false;
    stopping_ = true;
    drain_deadline_ = std::min(drain_deadline_, deadline);
    drain_reason_ = reason;
  }
  wake_.notify_all();
  if (loop_.joinable()) loop_.join();
  if (side_) side_->join();
}

bool BatchScheduler::idle_locked() const {
  for (const auto& [key, g] : groups_)
    if (g.size() > 0) return false;
  return true;
}

void BatchScheduler::run_side(std::function<void()> task) {
  if (side_)
    side_->post(std::move(task));
  else
    inline_tasks_.push_back(std::move(task));
}

void BatchScheduler::drop_ended_locked() {
  for (auto it = pending_.begin(); it != pending_.end();) {
    if (it->job->ended()) {
      it = pending_.erase(it);
    } else if (it->job->interrupted()) {
      it->job->add_image(it->image, std::nullopt);
      it = pending_.erase(it);
    } else {
      ++it;
    }
  }
  for (auto& [key, g] : groups_) {
    const TextToImagePipeline* pipeline = g.pipeline;
    for (std::vector<Active>* list : {&g.members, &g.ready}) {
      std::vector<Active> keep;
      for (Active& a : *list) {
        if (a.job->ended()) continue;  // cancelled or failed: its generation is dropped here
        if (a.job->interrupted()) {
          ++finishing_;
          auto moved = std::make_shared<Active>(std::move(a));
          run_side([this, moved, pipeline] { finish_generation(std::move(*moved), pipeline); });
          continue;
        }
        keep.push_back(std::move(a));
      }
      *list = std::move(keep);
    }
  }
}

void BatchScheduler::prepare_locked(Pending item) {
  const GroupKey key = key_of(*item.job, item.image);
  Group& g = groups_[key];
  if (!g.pipeline) g.pipeline = models_.find(key.model);
  const TextToImagePipeline* pipeline = g.pipeline;
  ++g.preparing;
  item.job->mark_running();
  run_side([this, item, key, pipeline] {
    std::unique_ptr<Generation> generation;
    std::string error;
    try {
      KILN_CHECK(pipeline, "model ", key.model, " is not loaded");
      generation = pipeline->start(item.job->spec().images[size_t(item.image)]);
    } catch (const std::bad_alloc&) {
      error = "out of memory while encoding the prompt";
    } catch (const std::exception& e) {
      error = str("encoding the prompt failed: ", e.what());
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      Group& group = groups_[key];
      --group.preparing;
      if (generation && !item.job->ended())
        group.ready.push_back({item.job, item.image, item.seq, std::move(generation)});
    }
    wake_.notify_all();
    if (!error.empty()) item.job->finish(JobState::Failed, error);
  });
}

void BatchScheduler::admit_locked() {
  if (pending_.empty()) return;
  const int max_batch = std::max(1, config_.max_batch);
  switch (config_.batching) {
    case BatchingMode::Step:
      for (auto it = pending_.begin(); it != pending_.end();) {
        Group& g = groups_[key_of(*it->job, it->image)];
        if (g.size() < max_batch) {
          Pending item = *it;
          it = pending_.erase(it);
          prepare_locked(std::move(item));
        } else {
          ++it;
        }
      }
      break;
    case BatchingMode::Request: {
      // Only from idle, after the window: whoever arrived together, same model and size.
      if (!idle_locked() || Clock::now() < window_until_) return;
      const GroupKey key = key_of(*pending_.begin()->job, pending_.begin()->image);
      int taken = 0;
      for (auto it = pending_.begin(); it != pending_.end() && taken < max_batch;) {
        if (key_of(*it->job, it->image) == key) {
          Pending item = *it;
          it = pending_.erase(it);
          prepare_locked(std::move(item));
          ++taken;
        } else {
          ++it;
        }
      }
      break;
    }
    case BatchingMode::None:
      if (!idle_locked()) return;
      {
        Pending item = *pending_.begin();
        pending_.erase(pending_.begin());
        prepare_locked(std::move(item));
      }
      break;
  }
}

BatchScheduler::Group* BatchScheduler::pick_locked() {
  Group* best = nullptr;
  for (auto& [key, g] : groups_) {
    if (g.members.empty()) continue;
    if (!best || g.last_step < best->last_step ||
        (g.last_step == best->last_step && g.members.front().seq < best->members.front().seq))
      best = &g;
  }
  return best;
}

void BatchScheduler::cancel_everything_locked(const std::string& reason) {
  for (const Pending& p : pending_) p.job->finish(JobState::Cancelled, reason);
  pending_.clear();
  for (auto& [key, g] : groups_) {
    for (Active& a : g.members) a.job->finish(JobState::Cancelled, reason);
    for (Active& a : g.ready) a.job->finish(JobState::Cancelled, reason);
    g.members.clear();
    g.ready.clear();
  }
}

void BatchScheduler::loop() {
  std::unique_lock<std::mutex> lock(mutex_);
  for (;;) {
    if (Clock::now() >= drain_deadline_) cancel_everything_locked(drain_reason_);
    drop_ended_locked();
    admit_locked();
    if (!inline_tasks_.empty()) {  // --worker-threads 0: prepare and finish here
      std::vector<std::function<void()>> tasks;
      tasks.swap(inline_tasks_);
      lock.unlock();
      for (auto& task : tasks) task();
      lock.lock();
      continue;
    }
    bool any_members = false;
    for (auto& [key, g] : groups_) {  // newcomers join at this step boundary
      for (Active& a : g.ready) g.members.push_back(std::move(a));
      g.ready.clear();
      any_members = any_members || !g.members.empty();
    }
    const Clock::time_point now = Clock::now();
    const Clock::time_point wait_until = std::min(window_until_, drain_deadline_);
    if (now < window_until_ && (any_members || !pending_.empty())) {
      // From idle: give others the batch window to arrive (they are prepared meanwhile).
      wake_.wait_until(lock, wait_until);
      continue;
    }
    Group* group = pick_locked();
    if (!group) {
      if (stopping_ && pending_.empty() && idle_locked()) break;
      for (auto it = groups_.begin(); it != groups_.end();)
        it = it->second.size() == 0 ? groups_.erase(it) : std::next(it);
      if (drain_deadline_ != Clock::time_point::max())
        wake_.wait_until(lock, drain_deadline_);
      else
        wake_.wait(lock);
      continue;
    }
    step_group(lock, *group);
  }
}

void BatchScheduler::step_group(std::unique_lock<std::mutex>& lock, Group& group) {
  std::vector<Generation*> batch;
  for (Active& a : group.members) batch.push_back(a.generation.get());
  const TextToImagePipeline* pipeline = group.pipeline;
  const std::string model = group.members.front().job->spec().model;
  const TextToImageRequest& first = batch.front()->request().request;
  const int width = first.width, height = first.height;
  group.last_step = ++tick_;

  // The members are the loop's own: nothing else touches them while it is unlocked.
  lock.unlock();
  std::string error;
  const Clock::time_point t0 = Clock::now();
  try {
    if (config_.inject_faults) inject_faults(batch);
    pipeline->step(batch);
  } catch (const std::bad_alloc&) {
    error = str("out of memory in a denoising step (", batch.size(), " generations at ", width, "x",
                height, ")");
  } catch (const std::exception& e) {
    error = str("a denoising step failed: ", e.what());
  }
  const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  metrics_.observe_batch(model, int(batch.size()), seconds);
  lock.lock();
  step_seconds_ewma_ = 0.9 * step_seconds_ewma_ + 0.1 * seconds;

  if (!error.empty()) {
    std::fprintf(stderr, "kiln serve: %s; failing the %zu jobs in that batch\n", error.c_str(),
                 batch.size());
    std::vector<std::shared_ptr<Job>> failed;
    for (Active& a : group.members) failed.push_back(a.job);
    group.members.clear();
    // Each end is written to the journal (--results-dir): not under the scheduler's lock.
    lock.unlock();
    for (const auto& job : failed) job->finish(JobState::Failed, error);
    lock.lock();
    return;
  }
  const bool previews_allowed = config_.preview_every > 0 && (!side_ || side_->backlog() == 0);
  std::vector<Active> keep;
  for (Active& a : group.members) {
    if (a.job->ended()) continue;
    const Generation& g = *a.generation;
    a.job->set_progress(a.image, g.steps_done(), g.total_steps());
    if (g.done() || a.job->interrupted()) {
      ++finishing_;
      auto moved = std::make_shared<Active>(std::move(a));
      run_side([this, moved, pipeline] { finish_generation(std::move(*moved), pipeline); });
      continue;
    }
    if (previews_allowed && a.job->watchers.load() > 0 &&
        g.steps_done() % config_.preview_every == 0)
      run_side([this, job = a.job, image = a.image, step = g.steps_done(), pipeline,
                latents = g.latents()] { preview(job, image, step, pipeline, latents); });
    keep.push_back(std::move(a));
  }
  group.members = std::move(keep);
}

void BatchScheduler::finish_generation(Active a, const TextToImagePipeline* pipeline) {
  Job& job = *a.job;
  try {
    if (job.ended()) {
      // cancelled meanwhile: nothing to make
    } else if (a.generation->steps_done() == 0) {
      job.add_image(a.image, std::nullopt);  // interrupted before its first step
    } else {
      const io::Image image = pipeline->decode(*a.generation);
      a.generation.reset();  // its memory goes before the encoded image is made
      const ResolvedRequest& r = job.spec().images[size_t(a.image)];
      std::string bytes = encode_image(image, job.spec().format, job.spec().quality,
                                       {{"parameters", pipeline->a1111_parameters(r)}});
      job.add_image(a.image, store_.store_image(job, a.image, std::move(bytes)));
    }
  } catch (const std::bad_alloc&) {
    job.finish(JobState::Failed, "out of memory while decoding the image");
  } catch (const std::exception& e) {
    job.finish(JobState::Failed, str("decoding the image failed: ", e.what()));
  }
  {
    std::lock_guard<std::mutex> lock(mutex_);
    --finishing_;
  }
  wake_.notify_all();
}

void BatchScheduler::preview(std::shared_ptr<Job> job, int image, int step,
                             const TextToImagePipeline* pipeline, Tensor latents) {
  if (job->ended()) return;
  try {
    const io::Image small = downscale(pipeline->decode_latents(latents), kPreviewSide);
    job->set_preview(image, step, io::encode_png(small));
  } catch (const std::exception& e) {
    // A preview is a courtesy: the job goes on without it.
    std::fprintf(stderr, "kiln serve: preview of %s failed: %s\n", job->id().c_str(), e.what());
  }
}

}  // namespace kiln::serve
