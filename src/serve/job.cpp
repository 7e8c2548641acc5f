#include "serve/job.h"

#include <chrono>
#include <cstdio>

#include "serve/job_journal.h"

namespace kiln::serve {
namespace {

constexpr size_t kMaxEventsKept = 512;

double seconds(Job::Clock::duration d) {
  return std::chrono::duration<double>(d).count();
}

int64_t unix_seconds(JobRecord::SystemTime t) {
  return std::chrono::duration_cast<std::chrono::seconds>(t.time_since_epoch()).count();
}

// The steady-clock time that was `t` on the wall clock (a restored job's times).
Job::Clock::time_point steady_time(JobRecord::SystemTime t) {
  return Job::Clock::now() -
         std::chrono::duration_cast<Job::Clock::duration>(std::chrono::system_clock::now() - t);
}

}  // namespace

std::string_view state_name(JobState state) {
  switch (state) {
    case JobState::Queued:
      return "queued";
    case JobState::Running:
      return "running";
    case JobState::Succeeded:
      return "succeeded";
    case JobState::Failed:
      return "failed";
    case JobState::Cancelled:
      return "cancelled";
  }
  return "?";
}

std::string_view api_name(Api api) {
  switch (api) {
    case Api::Jobs:
      return "jobs";
    case Api::OpenAI:
      return "openai";
    case Api::A1111:
      return "a1111";
  }
  return "?";
}

std::string result_path(const std::string& job_id, int index, ImageFormat format) {
  return "/v1/results/" + job_id + "/" + std::to_string(index) + "." +
         std::string(format_name(format));
}

std::string result_file_name(const std::string& job_id, int index, ImageFormat format) {
  return job_id + "-" + std::to_string(index) + "." + std::string(format_name(format));
}

Job::Job(std::string id, std::string key_id, JobSpec spec, std::function<void(Job&)> on_end,
         JobJournal* journal)
    : Job(std::move(id), std::move(key_id), std::move(spec), std::move(on_end), journal,
          std::chrono::system_clock::now(), Clock::now()) {}

Job::Job(std::string id, std::string key_id, JobSpec spec, std::function<void(Job&)> on_end,
         JobJournal* journal, JobRecord::SystemTime created_wall, Clock::time_point created)
    : id_(std::move(id)),
      key_id_(std::move(key_id)),
      spec_(std::move(spec)),
      on_end_(std::move(on_end)),
      journal_(journal),
      created_wall_(created_wall),
      created_unix_(unix_seconds(created_wall)),
      created_(created),
      steps_done_(spec_.images.size(), 0),
      steps_total_(spec_.images.size(), 0),
      images_(spec_.images.size()),
      image_done_(spec_.images.size(), false) {
  for (size_t i = 0; i < spec_.images.size(); ++i)
    steps_total_[i] = spec_.images[i].request.num_inference_steps;
}

Job::Job(std::string id, std::string key_id, JobSpec spec, std::function<void(Job&)> on_end,
         JobJournal* journal, const JobRecord& record)
    : Job(std::move(id), std::move(key_id), std::move(spec), std::move(on_end), journal,
          record.created, steady_time(record.created)) {
  auto steady = [&](JobRecord::SystemTime t) {
    return t == JobRecord::SystemTime{} ? Clock::time_point{} : steady_time(t);
  };
  std::lock_guard<std::mutex> lock(mutex_);
  revision_ = record.revision;
  state_ = record.state;
  reason_ = record.reason;
  interrupted_ = record.interrupted;
  started_ = steady(record.started);
  finished_ = steady(record.finished);
  webhook_pending_ = record.webhook_pending;
  resumes_ = record.resumes;
  for (size_t i = 0; i < images_.size() && i < record.results.size(); ++i) {
    if (record.results[i].empty()) continue;
    images_[i] = StoredImage{{}, record.results[i]};
    image_done_[i] = true;
    ++images_done_;
    steps_done_[i] = steps_total_[i];
  }
  if (!is_terminal(state_)) return;
  ended_ = true;
  // A late subscriber to a restored job's events sees what it would have seen before.
  for (size_t i = 0; i < images_.size(); ++i)
    if (images_[i])
      publish_locked("image", {{"index", i},
                               {"url", spec_.base_url + result_path(id_, int(i), spec_.format)},
                               {"seed", spec_.images[i].request.seed}});
  publish_locked("done", to_json_locked(-1));
}

void Job::publish_locked(std::string type, const nlohmann::json& data) {
  events_.push_back({next_event_++, std::move(type), data.dump()});
  if (events_.size() > kMaxEventsKept) events_.erase(events_.begin());
}

void Job::mark_running() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (state_ != JobState::Queued) return;
  state_ = JobState::Running;
  started_ = Clock::now();
  ++revision_;
  // Off the step loop's path: only a restart's timings depend on this record.
  if (journal_) journal_->write_later(*this, record_locked());
  publish_locked("status", to_json_locked(-1));
  changed_.notify_all();
}

void Job::set_progress(int image, int step, int total) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (ended_) return;
  steps_done_.at(size_t(image)) = step;
  steps_total_.at(size_t(image)) = total;
  int done = 0, all = 0;
  for (size_t i = 0; i < steps_done_.size(); ++i) done += steps_done_[i], all += steps_total_[i];
  publish_locked(
      "progress",
      {{"image", image}, {"step", step}, {"steps", total}, {"job_step", done}, {"job_steps", all}});
  changed_.notify_all();
}

void Job::set_preview(int image, int step, const std::string& png) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (ended_) return;
  last_preview_ = png;
  publish_locked("preview", {{"image", image},
                             {"step", step},
                             {"content_type", "image/png"},
                             {"b64_json", base64_encode(png)}});
  changed_.notify_all();
}

void Job::add_image(int index, std::optional<StoredImage> image) {
  bool ended_now = false;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (ended_ || image_done_.at(size_t(index))) return;
    image_done_[size_t(index)] = true;
    ++images_done_;
    if (image) {
      ++revision_;
      images_[size_t(index)] = std::move(image);
      steps_done_[size_t(index)] = steps_total_[size_t(index)];
      publish_locked("image", {{"index", index},
                               {"url", spec_.base_url + result_path(id_, index, spec_.format)},
                               {"seed", spec_.images[size_t(index)].request.seed}});
    }
    if (images_done_ == int(images_.size()))
      ended_now = finish_locked(JobState::Succeeded, interrupted_ ? "interrupted" : "");
    changed_.notify_all();
  }
  if (ended_now && on_end_) on_end_(*this);
}

bool Job::finish_locked(JobState state, const std::string& reason, bool journal) {
  if (ended_) return false;
  state_ = state;
  reason_ = reason;
  finished_ = Clock::now();
  if (started_ == Clock::time_point{}) started_ = finished_;
  ++revision_;
  webhook_pending_ = !spec_.webhook_url.empty();
  // On disk before anyone can see the end (waiters, event streams, GET): a client that
  // saw it sees it again after a crash. Under this job's lock only.
  if (journal) write_locked();
  ended_ = true;
  // Previews matter only while the job runs; a finished job keeps the rest (small).
  std::erase_if(events_, [](const JobEvent& e) { return e.type == "preview"; });
  last_preview_.clear();
  publish_locked("done", to_json_locked(-1));
  changed_.notify_all();
  return true;
}

bool Job::finish(JobState state, const std::string& reason) {
  bool ended_now;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    ended_now = finish_locked(state, reason);
  }
  if (ended_now && on_end_) on_end_(*this);
  return ended_now;
}

void Job::discard(const std::string& reason) {
  std::lock_guard<std::mutex> lock(mutex_);
  finish_locked(JobState::Failed, reason, false);
}

JobRecord::SystemTime Job::wall_time(Clock::time_point t) const {
  if (t == Clock::time_point{}) return {};
  return created_wall_ + std::chrono::duration_cast<JobRecord::SystemTime::duration>(t - created_);
}

JobRecord Job::record_locked() const {
  JobRecord r;
  r.revision = revision_;
  r.state = state_;
  r.reason = reason_;
  r.interrupted = interrupted_;
  r.created = created_wall_;
  r.started = wall_time(started_);
  if (is_terminal(state_)) r.finished = wall_time(finished_);
  for (const auto& image : images_) r.results.push_back(image ? image->file : "");
  r.webhook_pending = webhook_pending_;
  r.resumes = resumes_;
  return r;
}

JobRecord Job::record() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return record_locked();
}

void Job::write_locked() const {
  if (!journal_) return;
  try {
    journal_->write(*this, record_locked());
  } catch (const std::exception& e) {
    // The job goes on in memory; after a restart it shows its last record's state.
    std::fprintf(stderr, "kiln serve: error: job %s: %s\n", id_.c_str(), e.what());
  }
}

void Job::persist() const {
  JobRecord record;
  JobJournal* journal;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!journal_) return;
    journal = journal_;
    record = record_locked();
  }
  // Not under the job's lock: the step loop may be starting this job meanwhile.
  journal->write(*this, record);
}

void Job::forget() {
  std::lock_guard<std::mutex> lock(mutex_);
  journal_ = nullptr;
}

bool Job::prepare_resume() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (ended_) return false;
  state_ = JobState::Queued;
  started_ = {};
  ++resumes_;
  ++revision_;
  if (journal_) journal_->write(*this, record_locked());
  return true;
}

bool Job::image_done(int index) const {
  std::lock_guard<std::mutex> lock(mutex_);
  return image_done_.at(size_t(index));
}

bool Job::all_images_done() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return images_done_ == int(images_.size());
}

void Job::webhook_settled() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!webhook_pending_) return;
  webhook_pending_ = false;
  ++revision_;
  if (journal_) journal_->write_later(*this, record_locked());
}

JobState Job::state() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return state_;
}

Job::Times Job::times() const {
  std::lock_guard<std::mutex> lock(mutex_);
  const Clock::time_point now = Clock::now();
  const Clock::time_point end = ended_ ? finished_ : now;
  const Clock::time_point start = started_ == Clock::time_point{} ? end : started_;
  return {seconds(start - created_), seconds(end - start), seconds(end - created_)};
}

Job::Clock::time_point Job::finished_at() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return finished_;
}

std::optional<StoredImage> Job::image(int index) const {
  std::lock_guard<std::mutex> lock(mutex_);
  if (index < 0 || size_t(index) >= images_.size()) return std::nullopt;
  return images_[size_t(index)];
}

std::string Job::last_preview() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return last_preview_;
}

std::pair<int, int> Job::steps() const {
  std::lock_guard<std::mutex> lock(mutex_);
  int done = 0, all = 0;
  for (size_t i = 0; i < steps_done_.size(); ++i) done += steps_done_[i], all += steps_total_[i];
  return {done, all};
}

nlohmann::json Job::to_json(int queue_position) const {
  std::lock_guard<std::mutex> lock(mutex_);
  return to_json_locked(queue_position);
}

nlohmann::json Job::to_json_locked(int queue_position) const {
  const Clock::time_point now = Clock::now();
  const Clock::time_point end = ended_ ? finished_ : now;
  const Clock::time_point start = started_ == Clock::time_point{} ? end : started_;
  int done = 0, all = 0;
  for (size_t i = 0; i < steps_done_.size(); ++i) done += steps_done_[i], all += steps_total_[i];
  const ResolvedRequest& first = spec_.images.front();
  const TextToImageRequest& q = first.request;
  nlohmann::json results = nlohmann::json::array();
  for (size_t i = 0; i < images_.size(); ++i)
    if (images_[i])
      results.push_back({{"index", i},
                         {"url", spec_.base_url + result_path(id_, int(i), spec_.format)},
                         {"seed", spec_.images[i].request.seed}});
  nlohmann::json j = {
      {"id", id_},
      {"object", "job"},
      {"status", state_name(state_)},
      {"model", spec_.model},
      {"created", created_unix_},
      {"priority", spec_.priority},
      {"queue_position", queue_position >= 0 ? nlohmann::json(queue_position) : nlohmann::json()},
      {"progress", {{"step", done}, {"steps", all}, {"fraction", all ? double(done) / all : 0.0}}},
      {"timings",
       {{"queued_s", seconds(start - created_)},
        {"compute_s", seconds(end - start)},
        {"total_s", seconds(end - created_)}}},
      {"reason", reason_.empty() ? nlohmann::json() : nlohmann::json(reason_)},
      {"results", results},
      {"request",
       {{"prompt", q.prompt},
        {"negative_prompt", q.negative_prompt ? nlohmann::json(*q.negative_prompt) : nullptr},
        {"width", q.width},
        {"height", q.height},
        {"steps", q.num_inference_steps},
        {"guidance_scale", first.guidance_scale},
        {"sampler", sampler_name(first.sampler)},
        {"scheduler", q.schedule == SigmaSchedule::Karras ? "karras" : "default"},
        {"seed", q.seed},
        {"n", spec_.images.size()},
        {"output_format", format_name(spec_.format)}}},
  };
  if (interrupted_) j["interrupted"] = true;
  if (resumes_ > 0) j["resumes"] = resumes_;
  return j;
}

bool Job::wait_until_ended(Clock::time_point deadline) const {
  std::unique_lock<std::mutex> lock(mutex_);
  return changed_.wait_until(lock, deadline, [&] { return ended_.load(); });
}

Job::EventBatch Job::wait_events(uint64_t after, Clock::time_point deadline,
                                 const std::atomic<bool>& stop) const {
  std::unique_lock<std::mutex> lock(mutex_);
  changed_.wait_until(lock, deadline, [&] { return next_event_ - 1 > after || stop.load(); });
  EventBatch batch;
  for (const JobEvent& e : events_)
    if (e.id > after) batch.events.push_back(e);
  batch.finished = ended_ && (events_.empty() || batch.events.empty() ||
                              batch.events.back().id == events_.back().id);
  return batch;
}

}  // namespace kiln::serve
