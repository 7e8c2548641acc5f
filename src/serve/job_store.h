// Every job the server accepted, by id, with idempotency keys and the images;
// finished jobs are dropped after the result TTL or when more than max_jobs are kept.
// With --results-dir the images are files there and the jobs are kept in a journal
// (job_journal.h), from which a restarted server recovers them.
#pragma once

#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "serve/config.h"
#include "serve/job.h"
#include "serve/job_journal.h"
#include "serve/metrics.h"

namespace kiln::serve {

class JobStore {
 public:
  // With --results-dir, opens the journal there (kiln::Error if another server holds it).
  JobStore(const ServeConfig& config, Metrics& metrics);

  // A new random id ("job_" + 32 hex digits): ids are unguessable, so result URLs
  // can be fetched without a key, as OpenAI's image URLs can.
  static std::string new_id();

  // Null without --results-dir.
  JobJournal* journal() const { return journal_.get(); }

  struct Added {
    std::shared_ptr<Job> job;  // the new job, or the earlier one with this idempotency key
    bool created = false;
    bool conflict = false;  // the idempotency key was used with a different body
  };
  // Registers `job`. With an idempotency key (its spec's) already seen from this key id,
  // returns the job it made instead (or a conflict when the request hash differs).
  Added add(std::shared_ptr<Job> job);
  // Forgets a job that was not accepted after all, with its record and images.
  void remove(const std::string& id);

  // At start-up, before any request: registers the journal's jobs (ids, idempotency
  // keys, images) as they were, dropping those past their TTL.
  struct Recovered {
    std::vector<std::shared_ptr<Job>> unfinished;    // queued or running at the stop
    std::vector<std::shared_ptr<Job>> webhooks_due;  // ended; webhook not delivered yet
    int restored = 0, expired = 0, unreadable = 0;
  };
  Recovered recover(const std::function<void(Job&)>& on_end);
  // Returns once the journal's queued writes are on disk.
  void flush() const;

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
  // Deletes the job's record, then its images: a crash in between leaves images that
  // no record names, which the next start deletes.
  void delete_files(Job& job) const;

  const ServeConfig& config_;
  std::unique_ptr<JobJournal> journal_;
  mutable std::mutex mutex_;
  std::map<std::string, std::shared_ptr<Job>> jobs_;
  std::deque<std::string> order_;                   // oldest first
  std::map<std::string, std::string> idempotency_;  // key id + '\n' + key -> job id
};

}  // namespace kiln::serve
