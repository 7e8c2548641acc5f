// Every job the server accepted, by id, with idempotency keys and the images;
// finished jobs are dropped after the result TTL or when more than max_jobs are kept.
#pragma once

#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "serve/config.h"
#include "serve/job.h"

namespace kiln::serve {

class JobStore {
 public:
  explicit JobStore(const ServeConfig& config);

  // A new random id ("job_" + 32 hex digits): ids are unguessable, so result URLs
  // can be fetched without a key, as OpenAI's image URLs can.
  static std::string new_id();

  struct Added {
    std::shared_ptr<Job> job;  // the new job, or the earlier one with this idempotency key
    bool created = false;
    bool conflict = false;  // the idempotency key was used with a different body
  };
  // Registers `job`. With an idempotency key already seen from this key id, returns
  // the job it made instead (or a conflict when `body_hash` differs).
  Added add(std::shared_ptr<Job> job, const std::string& idempotency_key,
            const std::string& body_hash);
  // Forgets a job that was never queued (rejected after add).
  void remove(const std::string& id);

  std::shared_ptr<Job> find(const std::string& id) const;
  // Newest first; key_id empty: every key.
  std::vector<std::shared_ptr<Job>> list(const std::string& key_id, size_t limit) const;
  std::vector<std::shared_ptr<Job>> unfinished() const;

  // Keeps image `index` of `job` in memory or writes it under --results-dir.
  StoredImage store_image(const Job& job, int index, std::string bytes) const;
  std::string read_image(const StoredImage& image) const;

  void wake_all() const;  // event streams and waiters look at the stop flag

 private:
  void evict_locked();

  const ServeConfig& config_;
  mutable std::mutex mutex_;
  std::map<std::string, std::shared_ptr<Job>> jobs_;
  std::deque<std::string> order_;  // oldest first
  struct Idempotent {
    std::string job_id, body_hash;
  };
  std::map<std::string, Idempotent> idempotency_;  // key id + '\n' + key
};

}  // namespace kiln::serve
