// A job: one client request for one or more images, from acceptance to a final
// state (succeeded, failed with a reason, or cancelled), with its progress, its
// events for server-sent-event streams and its images. Thread-safe.
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

class Job {
 public:
  using Clock = std::chrono::steady_clock;

  Job(std::string id, std::string key_id, JobSpec spec, std::function<void(Job&)> on_end);

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
  // Ends a job that was never accepted (the queue was full): no end hook.
  void discard(const std::string& reason);

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
  void publish_locked(std::string type, const nlohmann::json& data);
  nlohmann::json to_json_locked(int queue_position) const;
  bool finish_locked(JobState state, const std::string& reason);

  const std::string id_, key_id_;
  const JobSpec spec_;
  const std::function<void(Job&)> on_end_;
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
};

}  // namespace kiln::serve
