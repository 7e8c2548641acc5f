// The plan cache's state in this process: this GPU's file read once, the choices
// made here since the last save, and the save itself (on request and at exit).
// The file format, the header check and the merge are backend/plan_file.cpp.
#include "backend/cuda/plan_cache.h"

#include <cstdio>
#include <mutex>

#include "backend/cuda/context.h"

namespace kiln::cuda {
namespace {

namespace fs = std::filesystem;

// What a choice depends on besides its shape.
plans::Header current_header() {
  const DeviceInfo info = device_info();
  plans::Header h;
  h.kiln = plans::kiln_version();
  h.gpu = info.name;
  h.compute_major = info.compute_major;
  h.compute_minor = info.compute_minor;
  h.multiprocessors = info.multiprocessors;
  h.cublaslt = info.cublaslt;
  h.cudnn = info.cudnn.empty() ? "none" : info.cudnn;
  h.cuda_runtime = info.cuda_runtime;
  h.cuda_driver = info.cuda_driver;
  return h;
}

void warn(const std::string& line) {
  std::fprintf(stderr, "kiln: %s\n", line.c_str());
}

class Store {
 public:
  // At exit: what was made and not yet saved is not lost (an error path, or a
  // program that never calls save_plans()). No CUDA call happens here.
  ~Store() { save(); }

  std::optional<plans::GemmChoice> gemm(const std::string& key) {
    std::lock_guard<std::mutex> lock(mu_);
    load();
    auto it = known_.gemm.find(key);
    if (it == known_.gemm.end()) return std::nullopt;
    return it->second;
  }
  template <class Choice>
  std::optional<Choice> find(std::map<std::string, Choice> plans::Plans::*part,
                             const std::string& key) {
    std::lock_guard<std::mutex> lock(mu_);
    load();
    const auto& choices = known_.*part;
    auto it = choices.find(key);
    if (it == choices.end()) return std::nullopt;
    return it->second;
  }
  template <class Choice>
  void record(std::map<std::string, Choice> plans::Plans::*part, const std::string& key,
              const Choice& c) {
    std::lock_guard<std::mutex> lock(mu_);
    (known_.*part)[key] = c;
    unsaved_ = true;
    ++stats_.timed;
  }
  void count_reused() {
    std::lock_guard<std::mutex> lock(mu_);
    ++stats_.reused;
  }
  PlanStats stats() {
    std::lock_guard<std::mutex> lock(mu_);
    return stats_;
  }
  std::string file() {
    std::lock_guard<std::mutex> lock(mu_);
    load();
    return file_ ? file_->string() : "";
  }

  void save() {
    std::lock_guard<std::mutex> lock(mu_);
    if (!file_ || !writable_ || !unsaved_) return;
    try {
      plans::save(*file_, header_, known_);
      unsaved_ = false;
    } catch (const std::exception& e) {
      // Once: the plans stay in memory and the run goes on.
      warn(str("cannot save plans (", e.what(), "); they are kept in memory only"));
      writable_ = false;
    }
  }

  // Saves what was made, then starts over (with `setting` where one is given).
  void reset(const std::optional<std::string>& setting = std::nullopt) {
    save();
    std::lock_guard<std::mutex> lock(mu_);
    if (setting) setting_ = *setting;
    loaded_ = false;
    file_.reset();
    known_ = {};
    unsaved_ = false;
    stats_ = {};
  }

 private:
  // Under mu_. The first lookup reads the file: by then the device is in use,
  // so its header can be filled.
  void load() {
    if (loaded_) return;
    loaded_ = true;
    const std::optional<fs::path> dir = plans::folder(setting_);
    if (!dir) return;
    header_ = current_header();
    file_ = *dir / plans::file_name(header_);
    const std::string problem = plans::check_writable(*dir);
    writable_ = problem.empty();
    // A folder that cannot be written may still hold plans made ahead of time.
    if (!writable_)
      warn(str("cannot write plans to ", dir->string(), " (", problem,
               "); plans made now are kept in memory only"));
    plans::Loaded loaded = plans::load(*file_, header_);
    if (!loaded.note.empty()) warn(loaded.note);
    known_ = std::move(loaded.plans);
  }

  std::mutex mu_;
  std::string setting_;  // set_plan_cache's argument
  bool loaded_ = false;
  std::optional<fs::path> file_;  // null: in memory only
  bool writable_ = false;
  plans::Header header_;
  plans::Plans known_;    // read from the file, and made here
  bool unsaved_ = false;  // choices made since the last save
  PlanStats stats_;
};

Store& store() {
  static Store s;
  return s;
}

}  // namespace

std::optional<plans::GemmChoice> stored_gemm_plan(const std::string& key) {
  return store().find(&plans::Plans::gemm, key);
}

std::optional<plans::ConvChoice> stored_conv_plan(const std::string& key) {
  return store().find(&plans::Plans::conv, key);
}

std::optional<plans::AttentionChoice> stored_attention_plan(const std::string& key) {
  return store().find(&plans::Plans::attention, key);
}

void count_reused_plan() {
  store().count_reused();
}

void record_gemm_plan(const std::string& key, const plans::GemmChoice& choice) {
  store().record(&plans::Plans::gemm, key, choice);
}

void record_conv_plan(const std::string& key, const plans::ConvChoice& choice) {
  store().record(&plans::Plans::conv, key, choice);
}

void record_attention_plan(const std::string& key, const plans::AttentionChoice& choice) {
  store().record(&plans::Plans::attention, key, choice);
}

void set_plan_cache(const std::string& dir) {
  store().reset(dir);
}

std::string plan_cache_file() {
  return store().file();
}

PlanStats plan_stats() {
  return store().stats();
}

void save_plans() {
  store().save();
}

void forget_plans() {
  forget_gemm_plans();
  forget_conv_plans();
  forget_attention_plans();
  store().reset();
}

}  // namespace kiln::cuda
