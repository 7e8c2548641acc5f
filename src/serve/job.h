// A job: one client request for one or more images, from acceptance to a final
// state (succeeded, failed with a reason, or cancelled), with its progress, its
// events for server-sent-event streams and its images. Thread-safe. With a journal
// (--results-dir) every change of state is written to it, and a job can be rebuilt
// from what the journal kept.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "pipelines/text_to_image.h"
#include "serve/image_formats.h"

namespace kiln::serve {

enum class JobState { Queued, Running, Succeeded, Failed, Cancelled };
std::string_view state_name(JobState state);
inline bool is_terminal(JobState s) {
  return s != JobState::Queued && s != JobState::Running;
}

// Which API made the job (metrics; A1111's progress and interrupt see only theirs).
enum class Api { Jobs, OpenAI, A1111 };
std::string_view api_name(Api api);

struct JobSpec {
  std::string model;
  std::vector<ResolvedRequest> images;  // one per image, seeds filled in
  ImageFormat format = ImageFormat::Png;
  int quality = 90;  // JPEG and WebP
  int priority = 0;  // higher first; first come, first served within a priority
  std::string webhook_url;
  std::string base_url;  // "http://host:port", for the result URLs
  Api api = Api::Jobs;
  std::string idempotency_key;  // as the client sent it; empty: none
  std::string request_hash;     // of method, path and body: the same key with another body is a
                                // conflict
};

struct StoredImage {
  std::string bytes;           // in memory, or
  std::filesystem::path file;  // on disk (--results-dir)
};

struct JobEvent {
  uint64_t id = 0;
  std::string type;  // status, progress, preview, image, done
  std::string data;  // JSON
};

// "/v1/results/<job>/<index>.<ext>"
std::string result_path(const std::string& job_id, int index, ImageFormat format);
// "<job>-<index>.<ext>": the image's file under --results-dir.
std::string result_file_name(const std::string& job_id, int index, ImageFormat format);

// The part of a job that changes, as the journal (job_journal.h) keeps it beside the
// job's id, key id and spec.
struct JobRecord {
  using SystemTime = std::chrono::system_clock::time_point;
  uint64_t revision = 0;  // bumped by every change; a write never replaces a newer one
  JobState state = JobState::Queued;
  std::string reason;
  bool interrupted = false;                    // A1111's interrupt
  SystemTime created, started, finished;       // started, finished: the epoch until then
  std::vector<std::filesystem::path> results;  // per image: its file, empty where none
  bool webhook_pending = false;  // ended; the webhook was neither delivered nor given up
  int resumes = 0;               // times --resume-interrupted queued it again after a restart
};

class JobJournal;

class Job : public std::enable_shared_from_this<Job> {
 public:
  using Clock = std::chrono::steady_clock;

  // A new job. With a journal, every change of state from here on is written to it.
  Job(std::string id, std::string key_id, JobSpec spec, std::function<void(Job&)> on_end,
      JobJournal* journal = nullptr);
  // A job as the journal kept it; its images are the files `record.results` names.
  Job(std::string id, std::string key_id, JobSpec spec, std::function<void(Job&)> on_end,
      JobJournal* journal, const JobRecord& record);

  const std::string& id() const { return id_; }
  const std::string& key_id() const { return key_id_; }
  const JobSpec& spec() const { return spec_; }
  int64_t created_unix() const { return created_unix_; }
  int images() const { return int(spec_.images.size()); }

  // First generation admitted to a batch.
  void mark_running();
  void set_progress(int image, int step, int total);
  void set_preview(int image, int step, const std::string& png);
  // Image `index` is ready, or (nullopt) will not be made because the job was
  // interrupted before it started; the job succeeds once every image is accounted for.
  void add_image(int index, std::optional<StoredImage> image);
  // Ends the job; the first call wins and returns true. Runs the end hook.
  bool finish(JobState state, const std::string& reason);
  // Ends a job that was never accepted (the queue was full): no end hook, no journal.
  void discard(const std::string& reason);

  // Writes the job's record to the journal and returns once it is on disk (acceptance).
  // Throws kiln::Error if it cannot be written. Without a journal: nothing.
  void persist() const;
  // The journal no longer keeps this job (it expired): later changes are not written.
  void forget();
  JobRecord record() const;
  // --resume-interrupted: a job restored unfinished is queued again; the images it
  // already has are kept. The count of resumes is on disk when this returns true;
  // false: the job ended meanwhile (a client cancelled it while the models loaded).
  bool prepare_resume();
  bool image_done(int index) const;
  bool all_images_done() const;
  // The webhook was delivered, or given up on: a restart need not send it again.
  void webhook_settled();

  JobState state() const;
  bool ended() const { return ended_.load(); }
  // A1111's interrupt: finish now with what the latents show.
  void interrupt() { interrupted_ = true; }
  bool interrupted() const { return interrupted_.load(); }

  // Seconds spent queued / computing / in all (so far, while not ended).
  struct Times {
    double queued = 0, compute = 0, total = 0;
  };
  Times times() const;
  Clock::time_point finished_at() const;

  std::optional<StoredImage> image(int index) const;
  // The newest preview (PNG), empty if none.
  std::string last_preview() const;
  std::pair<int, int> steps() const;  // summed over images: done, total

  // The job as the native API shows it. `queue_position` < 0: not queued.
  nlohmann::json to_json(int queue_position) const;

  bool wait_until_ended(Clock::time_point deadline) const;
  struct EventBatch {
    std::vector<JobEvent> events;  // id > after
    bool finished = false;         // the job ended and `events` reach its last event
  };
  EventBatch wait_events(uint64_t after, Clock::time_point deadline,
                         const std::atomic<bool>& stop) const;
  void wake() const { changed_.notify_all(); }

  std::atomic<int> watchers{0};  // open event streams: previews are made only when > 0

 private:
  Job(std::string id, std::string key_id, JobSpec spec, std::function<void(Job&)> on_end,
      JobJournal* journal, JobRecord::SystemTime created_wall, Clock::time_point created);
  void publish_locked(std::string type, const nlohmann::json& data);
  nlohmann::json to_json_locked(int queue_position) const;
  bool finish_locked(JobState state, const std::string& reason, bool journal = true);
  JobRecord record_locked() const;
  JobRecord::SystemTime wall_time(Clock::time_point t) const;
  // Writes the record now (the caller holds the job's lock), logging a failure: the job
  // goes on in memory.
  void write_locked() const;

  const std::string id_, key_id_;
  const JobSpec spec_;
  const std::function<void(Job&)> on_end_;
  JobJournal* journal_;  // null: none, or forgotten
  const JobRecord::SystemTime created_wall_;
  const int64_t created_unix_;
  const Clock::time_point created_;

  mutable std::mutex mutex_;
  mutable std::condition_variable changed_;
  JobState state_ = JobState::Queued;
  std::atomic<bool> ended_{false}, interrupted_{false};
  std::string reason_;
  Clock::time_point started_{}, finished_{};
  std::vector<int> steps_done_, steps_total_;
  std::vector<std::optional<StoredImage>> images_;
  std::vector<bool> image_done_;
  int images_done_ = 0;
  std::string last_preview_;
  std::vector<JobEvent> events_;
  uint64_t next_event_ = 1;
  uint64_t revision_ = 1;
  bool webhook_pending_ = false;
  int resumes_ = 0;
};

}  // namespace kiln::serve
