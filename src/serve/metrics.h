// Prometheus metrics (text exposition format 0.0.4). The names are documented in
// docs/serving.md; keep the two in step.
#pragma once

#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace kiln::serve {

class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds);
  void observe(double value);
  // `labels` is "" or `key="value",...` without braces.
  void render(std::string& out, const std::string& name, const std::string& labels) const;

 private:
  std::vector<double> bounds_;
  std::vector<uint64_t> counts_;  // one per bound, then +Inf
  double sum_ = 0;
  uint64_t count_ = 0;
};

// Values read when /metrics is scraped.
struct Gauges {
  int queue_depth = 0;         // images accepted, not started
  int running = 0;             // generations in a batch or being prepared/finished
  long long memory_bytes = 0;  // resident set on the CPU
  bool ready = false;
  bool draining = false;
};

class Metrics {
 public:
  Metrics();
  void count_request(const std::string& endpoint, const std::string& method, int status);
  void observe_job(const std::string& model, const std::string& api, const std::string& outcome,
                   double queue_s, double compute_s, double total_s, int images_made);
  void observe_batch(const std::string& model, int generations, double step_seconds);
  // The job journal (--results-dir): one record written to disk, or not.
  void observe_journal_write(double seconds);
  void count_journal_error();
  // Job records read at start-up, by what became of them: restored (finished, served
  // again), interrupted (failed), resumed, completed (its images were all on disk),
  // expired, unreadable.
  void count_recovered(const std::string& outcome, int n);

  std::string render(const Gauges& gauges) const;

 private:
  mutable std::mutex mutex_;
  std::map<std::string, uint64_t> requests_;  // labels -> count
  std::map<std::string, uint64_t> jobs_;      // labels -> count
  std::map<std::string, uint64_t> images_;    // labels -> count
  std::map<std::string, Histogram> queue_, compute_, latency_, batch_, step_;
  std::map<std::string, uint64_t> recovered_;  // labels -> count
  Histogram journal_write_;
  uint64_t journal_errors_ = 0;
};

// Resident memory of this process in bytes (/proc/self/statm), 0 if unknown.
long long resident_memory_bytes();

}  // namespace kiln::serve
