#include "serve/job_store.h"

#include <random>

#include "io/image.h"

namespace kiln::serve {

JobStore::JobStore(const ServeConfig& config) : config_(config) {
  if (!config_.results_dir.empty()) std::filesystem::create_directories(config_.results_dir);
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

JobStore::Added JobStore::add(std::shared_ptr<Job> job, const std::string& idempotency_key,
                              const std::string& body_hash) {
  std::lock_guard<std::mutex> lock(mutex_);
  evict_locked();
  const std::string idem = job->key_id() + "\n" + idempotency_key;
  if (!idempotency_key.empty()) {
    auto it = idempotency_.find(idem);
    if (it != idempotency_.end()) {
      auto found = jobs_.find(it->second.job_id);
      if (found != jobs_.end()) {
        Added a;
        a.job = found->second;
        a.conflict = it->second.body_hash != body_hash;
        return a;
      }
      idempotency_.erase(it);  // its job was evicted: the key may be used again
    }
    idempotency_[idem] = {job->id(), body_hash};
  }
  jobs_[job->id()] = job;
  order_.push_back(job->id());
  return {job, true, false};
}

void JobStore::remove(const std::string& id) {
  std::lock_guard<std::mutex> lock(mutex_);
  jobs_.erase(id);
  for (auto it = idempotency_.begin(); it != idempotency_.end();)
    it = it->second.job_id == id ? idempotency_.erase(it) : std::next(it);
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
    const Job& job = *found->second;
    const bool over = jobs_.size() > size_t(config_.max_jobs);
    if (!job.ended()) {  // unfinished jobs stay
      ++it;
      continue;
    }
    // Jobs finish roughly in the order they came, so the first one still fresh ends the scan.
    if (!over && now - job.finished_at() < std::chrono::seconds(config_.result_ttl_s)) break;
    if (!config_.results_dir.empty())
      for (int i = 0; i < job.images(); ++i)
        if (auto image = job.image(i); image && !image->file.empty()) {
          std::error_code ec;
          std::filesystem::remove(image->file, ec);
        }
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
      config_.results_dir /
      (job.id() + "-" + std::to_string(index) + "." + std::string(format_name(job.spec().format)));
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
