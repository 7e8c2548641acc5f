#include "serve/job_store.h"

#include <random>

#include "io/image.h"

namespace kiln::serve {

JobStore::JobStore(const ServeConfig& config, Metrics& metrics) : config_(config) {
  if (config_.results_dir.empty()) return;
  std::filesystem::create_directories(config_.results_dir);
  journal_ = std::make_unique<JobJournal>(config_.results_dir, metrics);
}

std::string JobStore::new_id() {
  thread_local std::mt19937_64 rng = [] {
    std::random_device rd;
    std::seed_seq seq{rd(), rd(), rd(), rd(), rd(), rd(), rd(), rd()};
    return std::mt19937_64(seq);
  }();
  static constexpr char kHex[] = "0123456789abcdef";
  std::string id = "job_";
  for (int i = 0; i < 2; ++i) {
    uint64_t v = rng();
    for (int d = 0; d < 16; ++d, v >>= 4) id.push_back(kHex[v & 15]);
  }
  return id;
}

JobStore::Added JobStore::add(std::shared_ptr<Job> job) {
  std::lock_guard<std::mutex> lock(mutex_);
  evict_locked();
  const JobSpec& spec = job->spec();
  if (!spec.idempotency_key.empty()) {
    const std::string idem = job->key_id() + "\n" + spec.idempotency_key;
    auto it = idempotency_.find(idem);
    if (it != idempotency_.end()) {
      auto found = jobs_.find(it->second);
      if (found != jobs_.end()) {
        Added a;
        a.job = found->second;
        a.conflict = found->second->spec().request_hash != spec.request_hash;
        return a;
      }
      idempotency_.erase(it);  // its job was evicted: the key may be used again
    }
    idempotency_[idem] = job->id();
  }
  jobs_[job->id()] = job;
  order_.push_back(job->id());
  return {job, true, false};
}

void JobStore::remove(const std::string& id) {
  std::shared_ptr<Job> job;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto found = jobs_.find(id);
    if (found == jobs_.end()) return;
    job = found->second;
    jobs_.erase(found);
    for (auto it = idempotency_.begin(); it != idempotency_.end();)
      it = it->second == id ? idempotency_.erase(it) : std::next(it);
  }
  job->forget();
  delete_files(*job);
}

void JobStore::delete_files(Job& job) const {
  if (config_.results_dir.empty()) return;
  if (journal_) journal_->remove(job.id());
  // Every image the job may have written, listed or not (one finished as the job was
  // cancelled is on disk but not in the job).
  for (int i = 0; i < job.images(); ++i) {
    std::error_code ec;
    std::filesystem::remove(config_.results_dir / result_file_name(job.id(), i, job.spec().format),
                            ec);
  }
}

JobStore::Recovered JobStore::recover(const std::function<void(Job&)>& on_end) {
  Recovered out;
  if (!journal_) return out;
  JobJournal::Loaded loaded = journal_->load(std::chrono::seconds(config_.result_ttl_s));
  out.unreadable = loaded.unreadable;
  std::lock_guard<std::mutex> lock(mutex_);
  for (JobJournal::Entry& e : loaded.entries) {
    auto job =
        std::make_shared<Job>(e.id, e.key_id, std::move(e.spec), on_end, journal_.get(), e.record);
    jobs_[job->id()] = job;
    order_.push_back(job->id());
    if (!job->spec().idempotency_key.empty())
      idempotency_[job->key_id() + "\n" + job->spec().idempotency_key] = job->id();
    if (!job->ended())
      out.unfinished.push_back(job);
    else if (e.record.webhook_pending)
      out.webhooks_due.push_back(job);
  }
  const size_t before = jobs_.size();
  evict_locked();
  out.expired = int(before - jobs_.size());
  out.restored = int(jobs_.size() - out.unfinished.size());
  std::erase_if(out.webhooks_due, [&](const auto& job) { return !jobs_.contains(job->id()); });
  return out;
}

void JobStore::flush() const {
  if (journal_) journal_->flush();
}

void JobStore::evict_locked() {
  const auto now = Job::Clock::now();
  // Finished jobs leave oldest first: past the TTL, or while more than max_jobs are kept.
  for (auto it = order_.begin(); it != order_.end();) {
    auto found = jobs_.find(*it);
    if (found == jobs_.end()) {
      it = order_.erase(it);
      continue;
    }
    Job& job = *found->second;
    const bool over = jobs_.size() > size_t(config_.max_jobs);
    if (!job.ended()) {  // unfinished jobs stay
      ++it;
      continue;
    }
    // Jobs finish roughly in the order they came, so the first one still fresh ends the scan.
    if (!over && now - job.finished_at() < std::chrono::seconds(config_.result_ttl_s)) break;
    job.forget();
    delete_files(job);
    jobs_.erase(found);
    it = order_.erase(it);
  }
}

std::shared_ptr<Job> JobStore::find(const std::string& id) const {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = jobs_.find(id);
  return it == jobs_.end() ? nullptr : it->second;
}

std::vector<std::shared_ptr<Job>> JobStore::list(const std::string& key_id, size_t limit) const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<std::shared_ptr<Job>> out;
  for (auto it = order_.rbegin(); it != order_.rend() && out.size() < limit; ++it) {
    auto found = jobs_.find(*it);
    if (found != jobs_.end() && (key_id.empty() || found->second->key_id() == key_id))
      out.push_back(found->second);
  }
  return out;
}

std::vector<std::shared_ptr<Job>> JobStore::unfinished() const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<std::shared_ptr<Job>> out;
  for (const auto& [id, job] : jobs_)
    if (!job->ended()) out.push_back(job);
  return out;
}

StoredImage JobStore::store_image(const Job& job, int index, std::string bytes) const {
  if (config_.results_dir.empty()) return {std::move(bytes), {}};
  const std::filesystem::path file =
      config_.results_dir / result_file_name(job.id(), index, job.spec().format);
  io::write_file_atomic(file, bytes);
  return {{}, file};
}

std::string JobStore::read_image(const StoredImage& image) const {
  return image.file.empty() ? image.bytes : io::read_file(image.file);
}

void JobStore::wake_all() const {
  std::lock_guard<std::mutex> lock(mutex_);
  for (const auto& [id, job] : jobs_) job->wake();
}

}  // namespace kiln::serve
