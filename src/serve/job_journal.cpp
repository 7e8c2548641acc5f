#include "serve/job_journal.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <set>

#include "io/image.h"

namespace kiln::serve {
namespace {

constexpr int kRecordVersion = 1;
using SystemTime = JobRecord::SystemTime;

[[noreturn]] void fail_errno(const std::string& what, const std::filesystem::path& path,
                             int error) {
  throw Error(str("cannot ", what, " '", path.string(), "': ", std::strerror(error)));
}

void sync_folder(int fd, const std::filesystem::path& path) {
  if (::fsync(fd) != 0) fail_errno("sync the folder", path, errno);
}

bool is_job_id(std::string_view s) {
  if (s.size() != 36 || !s.starts_with("job_")) return false;
  return std::all_of(s.begin() + 4, s.end(),
                     [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

// A leftover of a write that a crash interrupted (io::write_file_atomic's naming).
bool is_temporary(const std::string& name) {
  return name.starts_with(".job_") && name.find(".tmp.") != std::string::npos;
}

// "job_<hex>-<index>.<ext>": the job id of an image file, or "".
std::string image_owner(const std::string& name) {
  const size_t dash = name.rfind('-'), dot = name.rfind('.');
  if (dash == std::string::npos || dot == std::string::npos || dot < dash + 2) return "";
  const std::string id = name.substr(0, dash);
  const std::string index = name.substr(dash + 1, dot - dash - 1);
  if (!is_job_id(id) || !std::all_of(index.begin(), index.end(), ::isdigit) ||
      !parse_image_format(name.substr(dot + 1)))
    return "";
  return id;
}

nlohmann::json time_json(SystemTime t) {
  if (t == SystemTime{}) return nullptr;
  return std::chrono::duration<double>(t.time_since_epoch()).count();
}

SystemTime time_from(const nlohmann::json& j) {
  if (j.is_null()) return {};
  return SystemTime(std::chrono::duration_cast<SystemTime::duration>(
      std::chrono::duration<double>(j.get<double>())));
}

void require(bool ok, const std::string& what) {
  if (!ok) throw Error(what);
}

template <typename Enum, typename Name>
Enum parse_enum(const std::string& name, std::initializer_list<Enum> values, Name name_of,
                const char* field) {
  for (Enum v : values)
    if (name_of(v) == name) return v;
  throw Error(str("unknown ", field, " \"", name, "\""));
}

std::string encode(const Job& job, const JobRecord& r) {
  const JobSpec& s = job.spec();
  nlohmann::json images = nlohmann::json::array();
  for (const ResolvedRequest& image : s.images) {
    const TextToImageRequest& q = image.request;
    images.push_back(
        {{"prompt", q.prompt},
         {"negative_prompt", q.negative_prompt ? nlohmann::json(*q.negative_prompt) : nullptr},
         {"width", q.width},
         {"height", q.height},
         {"steps", q.num_inference_steps},
         {"guidance_scale", image.guidance_scale},
         {"sampler", sampler_name(image.sampler)},
         {"scheduler", q.schedule == SigmaSchedule::Karras ? "karras" : "default"},
         {"seed", q.seed}});
  }
  nlohmann::json results = nlohmann::json::array();
  for (const std::filesystem::path& file : r.results)
    results.push_back(file.empty() ? nlohmann::json() : nlohmann::json(file.filename().string()));
  const nlohmann::json j = {
      {"kiln_job_record", kRecordVersion},
      {"id", job.id()},
      {"revision", r.revision},
      {"key_id", job.key_id()},
      {"status", state_name(r.state)},
      {"reason", r.reason.empty() ? nlohmann::json() : nlohmann::json(r.reason)},
      {"interrupted", r.interrupted},
      {"created_at", time_json(r.created)},
      {"started_at", time_json(r.started)},
      {"finished_at", time_json(r.finished)},
      {"results", results},
      {"webhook_pending", r.webhook_pending},
      {"resumes", r.resumes},
      {"idempotency_key",
       s.idempotency_key.empty() ? nlohmann::json() : nlohmann::json(s.idempotency_key)},
      {"request_hash", s.request_hash},
      {"spec",
       {{"model", s.model},
        {"api", api_name(s.api)},
        {"output_format", format_name(s.format)},
        {"quality", s.quality},
        {"priority", s.priority},
        {"webhook_url", s.webhook_url},
        {"base_url", s.base_url},
        {"images", images}}},
  };
  return j.dump(1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
}

// Throws (kiln::Error or nlohmann's exceptions) for anything that is not a whole record
// of job `id`.
JobJournal::Entry decode(const std::string& text, const std::string& id,
                         const std::filesystem::path& results_dir) {
  const nlohmann::json j = nlohmann::json::parse(text);
  require(j.is_object() && j.value("kiln_job_record", 0) == kRecordVersion,
          str("not a kiln job record of version ", kRecordVersion));
  JobJournal::Entry e;
  e.id = j.at("id").get<std::string>();
  require(e.id == id, str("it names job ", e.id, ", not ", id));
  e.key_id = j.at("key_id").get<std::string>();

  const nlohmann::json& s = j.at("spec");
  JobSpec& spec = e.spec;
  spec.model = s.at("model").get<std::string>();
  spec.api = parse_enum(s.at("api").get<std::string>(), {Api::Jobs, Api::OpenAI, Api::A1111},
                        api_name, "api");
  const auto format = parse_image_format(s.at("output_format").get<std::string>());
  require(format.has_value(), "unknown output_format");
  spec.format = *format;
  spec.quality = s.at("quality").get<int>();
  spec.priority = s.at("priority").get<int>();
  spec.webhook_url = s.at("webhook_url").get<std::string>();
  spec.base_url = s.at("base_url").get<std::string>();
  const nlohmann::json& idem = j.at("idempotency_key");
  spec.idempotency_key = idem.is_null() ? "" : idem.get<std::string>();
  spec.request_hash = j.at("request_hash").get<std::string>();
  const nlohmann::json& images = s.at("images");
  require(images.is_array() && !images.empty() && images.size() <= 100000,
          "spec.images must be a non-empty list");
  for (const nlohmann::json& image : images) {
    ResolvedRequest r;
    TextToImageRequest& q = r.request;
    q.prompt = image.at("prompt").get<std::string>();
    if (!image.at("negative_prompt").is_null())
      q.negative_prompt = image.at("negative_prompt").get<std::string>();
    q.width = image.at("width").get<int>();
    q.height = image.at("height").get<int>();
    q.num_inference_steps = image.at("steps").get<int>();
    require(q.width >= 8 && q.height >= 8 && q.width % 8 == 0 && q.height % 8 == 0 &&
                q.width <= 65536 && q.height <= 65536,
            str("bad image size ", q.width, "x", q.height));
    require(q.num_inference_steps >= 1 && q.num_inference_steps <= 100000,
            str("bad step count ", q.num_inference_steps));
    r.guidance_scale = image.at("guidance_scale").get<float>();
    const auto sampler = parse_sampler(image.at("sampler").get<std::string>());
    require(sampler.has_value(), "unknown sampler");
    r.sampler = *sampler;
    // As TextToImagePipeline::resolve leaves them.
    q.guidance_scale = r.guidance_scale;
    q.sampler = r.sampler;
    q.schedule = image.at("scheduler").get<std::string>() == "karras" ? SigmaSchedule::Karras
                                                                      : SigmaSchedule::Default;
    q.seed = image.at("seed").get<uint64_t>();
    spec.images.push_back(std::move(r));
  }

  JobRecord& r = e.record;
  r.revision = j.at("revision").get<uint64_t>();
  r.state = parse_enum(j.at("status").get<std::string>(),
                       {JobState::Queued, JobState::Running, JobState::Succeeded, JobState::Failed,
                        JobState::Cancelled},
                       state_name, "status");
  r.reason = j.at("reason").is_null() ? "" : j.at("reason").get<std::string>();
  r.interrupted = j.at("interrupted").get<bool>();
  r.created = time_from(j.at("created_at"));
  r.started = time_from(j.at("started_at"));
  r.finished = time_from(j.at("finished_at"));
  require(r.created != SystemTime{}, "created_at is missing");
  require(!is_terminal(r.state) || r.finished != SystemTime{}, "finished_at is missing");
  r.webhook_pending = j.at("webhook_pending").get<bool>();
  r.resumes = j.at("resumes").get<int>();
  const nlohmann::json& results = j.at("results");
  require(results.is_array() && results.size() == spec.images.size(),
          "results must have one entry per image");
  r.results.resize(spec.images.size());
  for (size_t i = 0; i < spec.images.size(); ++i) {
    const std::string expected = result_file_name(id, int(i), spec.format);
    const std::filesystem::path file = results_dir / expected;
    const bool listed = !results[i].is_null();
    require(!listed || results[i].get<std::string>() == expected,
            str("result ", i, " is not ", expected));
    std::error_code ec;
    const bool exists = std::filesystem::is_regular_file(file, ec);
    // A finished job has what its record lists. An unfinished one has every image that
    // reached the disk: a crash may have come between an image and the record.
    if (exists && (listed || !is_terminal(r.state))) r.results[i] = file;
    if (listed && !exists)
      std::fprintf(stderr, "kiln serve: warning: job %s: its image %s is missing\n", id.c_str(),
                   file.string().c_str());
  }
  return e;
}

}  // namespace

JobJournal::JobJournal(const std::filesystem::path& results_dir, Metrics& metrics)
    : results_dir_(results_dir), jobs_dir_(results_dir / "jobs"), metrics_(metrics) {
  std::filesystem::create_directories(jobs_dir_);
  const std::filesystem::path lock_file = jobs_dir_ / "lock";
  lock_fd_ = ::open(lock_file.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (lock_fd_ < 0) fail_errno("open", lock_file, errno);
  if (::flock(lock_fd_, LOCK_EX | LOCK_NB) != 0) {
    char pid[32] = {};
    const ssize_t n = ::pread(lock_fd_, pid, sizeof pid - 1, 0);
    ::close(lock_fd_);
    throw Error(str("--results-dir ", results_dir.string(), " is in use by another kiln serve",
                    n > 0 ? str(" (pid ", std::string(pid, size_t(n)), ")") : std::string()));
  }
  const std::string pid = std::to_string(::getpid());
  if (::ftruncate(lock_fd_, 0) != 0 || ::pwrite(lock_fd_, pid.data(), pid.size(), 0) < 0)
    fail_errno("write", lock_file, errno);
  results_fd_ = ::open(results_dir_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (results_fd_ < 0) fail_errno("open", results_dir_, errno);
  jobs_fd_ = ::open(jobs_dir_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (jobs_fd_ < 0) fail_errno("open", jobs_dir_, errno);
  // The folder entry of jobs/ itself must survive a crash.
  sync_folder(results_fd_, results_dir_);
  thread_ = std::thread([this] { run(); });
}

JobJournal::~JobJournal() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
  for (int fd : {results_fd_, jobs_fd_, lock_fd_})
    if (fd >= 0) ::close(fd);
}

std::mutex& JobJournal::stripe(const std::string& id) {
  return stripes_[std::hash<std::string>{}(id) % stripes_.size()];
}

void JobJournal::write(const Job& job, const JobRecord& record) {
  std::lock_guard<std::mutex> hold(stripe(job.id()));
  const bool has_results = std::any_of(record.results.begin(), record.results.end(),
                                       [](const auto& f) { return !f.empty(); });
  write_text(job.id(), record.revision, encode(job, record), has_results);
}

void JobJournal::write_later(const Job& job, const JobRecord& record) {
  Queued item{job.id(), record.revision, encode(job, record), false};
  {
    std::lock_guard<std::mutex> lock(mutex_);
    // A newer state of a job replaces its queued older one.
    auto same = std::find_if(queue_.begin(), queue_.end(),
                             [&](const Queued& q) { return q.id == item.id; });
    if (same == queue_.end())
      queue_.push_back(std::move(item));
    else if (same->revision < item.revision)
      *same = std::move(item);
  }
  wake_.notify_all();
}

void JobJournal::write_text(const std::string& id, uint64_t revision, const std::string& text,
                            bool has_results) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    const auto it = written_.find(id);
    if (it != written_.end() && it->second >= revision) return;  // as new is on disk
  }
  const auto start = std::chrono::steady_clock::now();
  try {
    // The images a record names reach the disk before it: their renames are made
    // durable by syncing their folder.
    if (has_results) sync_folder(results_fd_, results_dir_);
    io::write_file_atomic(jobs_dir_ / (id + ".json"), text);
    sync_folder(jobs_fd_, jobs_dir_);
  } catch (const std::exception& e) {
    metrics_.count_journal_error();
    throw Error(str("the job journal could not be written: ", e.what()));
  }
  metrics_.observe_journal_write(
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  std::lock_guard<std::mutex> lock(mutex_);
  written_[id] = revision;
}

void JobJournal::run() {
  for (;;) {
    std::string id;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [&] { return !queue_.empty() || stopping_; });
      if (queue_.empty()) break;  // stopping, and everything is written
      id = queue_.front().id;
      busy_ = true;
    }
    {
      // The stripe first, as write() and remove() take it: a removed job's queued
      // record is gone from the queue by the time its stripe is free.
      std::lock_guard<std::mutex> hold(stripe(id));
      std::optional<Queued> item;
      {
        std::lock_guard<std::mutex> lock(mutex_);
        if (!queue_.empty() && queue_.front().id == id) {
          item = std::move(queue_.front());
          queue_.pop_front();
        }
      }
      if (item) try {
          write_text(item->id, item->revision, item->text, item->has_results);
        } catch (const std::exception& e) {
          std::fprintf(stderr, "kiln serve: error: job %s: %s\n", id.c_str(), e.what());
        }
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      busy_ = false;
    }
    idle_.notify_all();
  }
}

void JobJournal::flush() {
  std::unique_lock<std::mutex> lock(mutex_);
  idle_.wait(lock, [&] { return queue_.empty() && !busy_; });
}

void JobJournal::remove(const std::string& job_id) {
  std::lock_guard<std::mutex> hold(stripe(job_id));
  {
    std::lock_guard<std::mutex> lock(mutex_);
    std::erase_if(queue_, [&](const Queued& q) { return q.id == job_id; });
    written_.erase(job_id);
  }
  std::error_code ec;
  std::filesystem::remove(jobs_dir_ / (job_id + ".json"), ec);
}

JobJournal::Loaded JobJournal::load(std::chrono::seconds ttl) {
  Loaded out;
  std::set<std::string> kept;  // ids whose record file stays
  const auto now = std::filesystem::file_time_type::clock::now();
  std::error_code ec;
  for (const auto& item : std::filesystem::directory_iterator(jobs_dir_, ec)) {
    const std::string name = item.path().filename().string();
    if (is_temporary(name)) {
      std::filesystem::remove(item.path(), ec);
      continue;
    }
    if (!name.ends_with(".json") || !item.is_regular_file(ec)) continue;
    const std::string id = name.substr(0, name.size() - 5);
    try {
      require(is_job_id(id), "the file name is not a job id");
      Entry entry = decode(io::read_file(item.path()), id, results_dir_);
      {
        std::lock_guard<std::mutex> lock(mutex_);
        written_[id] = entry.record.revision;
      }
      kept.insert(id);
      out.entries.push_back(std::move(entry));
    } catch (const std::exception& e) {
      // A record nobody can read is kept for a person to look at, until it expires.
      ++out.unreadable;
      const auto modified = std::filesystem::last_write_time(item.path(), ec);
      const bool expired = !ec && now - modified > ttl;
      std::fprintf(stderr, "kiln serve: warning: skipping the unreadable job record %s: %s%s\n",
                   item.path().string().c_str(), e.what(),
                   expired ? " (deleted: older than --result-ttl)" : "");
      if (expired)
        std::filesystem::remove(item.path(), ec);
      else
        kept.insert(id);
    }
  }
  if (ec)
    std::fprintf(stderr, "kiln serve: warning: reading %s: %s\n", jobs_dir_.string().c_str(),
                 ec.message().c_str());
  std::sort(out.entries.begin(), out.entries.end(),
            [](const Entry& a, const Entry& b) { return a.record.created < b.record.created; });

  int orphans = 0;
  for (const auto& item : std::filesystem::directory_iterator(results_dir_, ec)) {
    const std::string name = item.path().filename().string();
    std::error_code remove_ec;
    if (is_temporary(name)) {
      std::filesystem::remove(item.path(), remove_ec);
      continue;
    }
    const std::string owner = image_owner(name);
    if (!owner.empty() && !kept.contains(owner) && item.is_regular_file(remove_ec))
      orphans += std::filesystem::remove(item.path(), remove_ec);
  }
  if (orphans > 0)
    std::fprintf(stderr, "kiln serve: deleted %d images that no job record names\n", orphans);
  return out;
}

}  // namespace kiln::serve
