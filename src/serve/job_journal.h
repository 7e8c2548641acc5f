// The job journal under --results-dir: what the server accepted survives a crash.
//
// One JSON file per job, DIR/jobs/<id>.json, holding its spec (prompts, settings,
// seeds), key id (never the secret), idempotency key, state, times, failure reason
// and result file names. Every write replaces the whole file: a temporary file
// beside it, fsync, rename over the old one, fsync of the folder. A crash therefore
// leaves the old record or the new one, never half of one; the record of a job that
// succeeded is written after its images are on disk (they are in DIR, fsynced too).
// Per-job files rather than one append-only log: a record is a few hundred bytes,
// expiry is an unlink (no compaction), and a bad file costs one job, not the log's tail.
//
// Writes of one job are ordered by the record's revision: one that is older than
// what is already on disk is skipped, so a slow write never undoes a newer one.
#pragma once

#include <array>
#include <condition_variable>
#include <deque>
#include <filesystem>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "serve/job.h"
#include "serve/metrics.h"

namespace kiln::serve {

class JobJournal {
 public:
  // Creates DIR/jobs and locks it: a second server on the same folder is refused
  // (kiln::Error naming the folder).
  JobJournal(const std::filesystem::path& results_dir, Metrics& metrics);
  ~JobJournal();  // writes what is queued
  JobJournal(const JobJournal&) = delete;
  JobJournal& operator=(const JobJournal&) = delete;

  // On disk when this returns; throws kiln::Error when the record cannot be written.
  void write(const Job& job, const JobRecord& record);
  // On the journal's own thread, for changes a crash may lose (a job started running,
  // its webhook was delivered): the caller does not wait for the disk.
  void write_later(const Job& job, const JobRecord& record);
  // Deletes the record (the job expired); its images are the caller's.
  void remove(const std::string& job_id);
  // Returns once every queued write is done.
  void flush();

  struct Entry {
    std::string id, key_id;
    JobSpec spec;
    JobRecord record;  // results: the job's image files that exist, whatever the record said
  };
  struct Loaded {
    std::vector<Entry> entries;  // oldest first
    int unreadable = 0;          // skipped with a warning
  };
  // Every record in the folder. A record that cannot be read is skipped with a warning
  // on stderr (and deleted once older than `ttl`, with its images); temporary files of
  // interrupted writes and images of jobs without a record are deleted.
  Loaded load(std::chrono::seconds ttl);

  const std::filesystem::path& results_dir() const { return results_dir_; }

 private:
  struct Queued {
    std::string id;
    uint64_t revision;
    std::string text;
    bool has_results;
  };
  void write_text(const std::string& id, uint64_t revision, const std::string& text,
                  bool has_results);
  void run();
  std::mutex& stripe(const std::string& id);

  const std::filesystem::path results_dir_, jobs_dir_;
  Metrics& metrics_;
  int results_fd_ = -1, jobs_fd_ = -1, lock_fd_ = -1;

  // One job's writes take its stripe's lock from the revision check to the rename.
  std::array<std::mutex, 16> stripes_;
  std::mutex mutex_;  // written_, queue_, busy_, stopping_
  std::condition_variable wake_, idle_;
  std::map<std::string, uint64_t> written_;  // job id -> newest revision on disk
  std::deque<Queued> queue_;
  bool busy_ = false, stopping_ = false;
  std::thread thread_;
};

}  // namespace kiln::serve
