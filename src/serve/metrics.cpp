#include "serve/metrics.h"

#include <unistd.h>

#include <cstdio>
#include <fstream>

namespace kiln::serve {
namespace {

const std::vector<double> kSecondsBuckets = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
                                             2.5,   5,    10,    30,   60,  120,  300};
const std::vector<double> kBatchBuckets = {1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64};
// An fsync costs from tens of microseconds (NVMe with a write cache) to tens of
// milliseconds (a disk or network storage without one).
const std::vector<double> kJournalBuckets = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                                             0.01,   0.025,   0.05,   0.1,   0.25,   1};

std::string number(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

// A label value with \, " and newlines escaped.
std::string quoted(const std::string& v) {
  std::string out = "\"";
  for (char c : v) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out + "\"";
}

void header(std::string& out, const char* name, const char* type, const char* help) {
  out += "# HELP ";
  out += name;
  out += ' ';
  out += help;
  out += "\n# TYPE ";
  out += name;
  out += ' ';
  out += type;
  out += '\n';
}

void counters(std::string& out, const char* name, const char* help,
              const std::map<std::string, uint64_t>& values) {
  header(out, name, "counter", help);
  for (const auto& [labels, v] : values)
    out += std::string(name) + "{" + labels + "} " + std::to_string(v) + "\n";
}

void histograms(std::string& out, const char* name, const char* help,
                const std::map<std::string, Histogram>& values) {
  header(out, name, "histogram", help);
  for (const auto& [labels, h] : values) h.render(out, name, labels);
}

void gauge(std::string& out, const char* name, const char* help, const std::string& labels,
           double v) {
  header(out, name, "gauge", help);
  out += std::string(name) + (labels.empty() ? "" : "{" + labels + "}") + " " + number(v) + "\n";
}

Histogram& slot(std::map<std::string, Histogram>& m, const std::string& labels,
                const std::vector<double>& bounds) {
  return m.try_emplace(labels, bounds).first->second;
}

}  // namespace

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {}

void Histogram::observe(double value) {
  size_t i = 0;
  while (i < bounds_.size() && value > bounds_[i]) ++i;
  ++counts_[i];
  sum_ += value;
  ++count_;
}

void Histogram::render(std::string& out, const std::string& name, const std::string& labels) const {
  const std::string sep = labels.empty() ? "" : ",";
  uint64_t cumulative = 0;
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    cumulative += counts_[i];
    const std::string le = i < bounds_.size() ? number(bounds_[i]) : "+Inf";
    out += name + "_bucket{" + labels + sep + "le=\"" + le + "\"} " + std::to_string(cumulative) +
           "\n";
  }
  const std::string braces = labels.empty() ? "" : "{" + labels + "}";
  out += name + "_sum" + braces + " " + number(sum_) + "\n";
  out += name + "_count" + braces + " " + std::to_string(count_) + "\n";
}

Metrics::Metrics() : journal_write_(kJournalBuckets) {}

void Metrics::count_request(const std::string& endpoint, const std::string& method, int status) {
  const std::string labels = "endpoint=" + quoted(endpoint) + ",method=" + quoted(method) +
                             ",code=\"" + std::to_string(status) + "\"";
  std::lock_guard<std::mutex> lock(mutex_);
  ++requests_[labels];
}

void Metrics::observe_job(const std::string& model, const std::string& api,
                          const std::string& outcome, double queue_s, double compute_s,
                          double total_s, int images_made) {
  const std::string m = "model=" + quoted(model);
  std::lock_guard<std::mutex> lock(mutex_);
  ++jobs_[m + ",api=" + quoted(api) + ",outcome=" + quoted(outcome)];
  if (images_made > 0) images_[m] += uint64_t(images_made);
  slot(queue_, m, kSecondsBuckets).observe(queue_s);
  if (outcome == "succeeded") {
    slot(compute_, m, kSecondsBuckets).observe(compute_s);
    slot(latency_, m, kSecondsBuckets).observe(total_s);
  }
}

void Metrics::observe_batch(const std::string& model, int generations, double step_seconds) {
  const std::string m = "model=" + quoted(model);
  std::lock_guard<std::mutex> lock(mutex_);
  slot(batch_, m, kBatchBuckets).observe(generations);
  slot(step_, m, kSecondsBuckets).observe(step_seconds);
}

void Metrics::observe_journal_write(double seconds) {
  std::lock_guard<std::mutex> lock(mutex_);
  journal_write_.observe(seconds);
}

void Metrics::count_journal_error() {
  std::lock_guard<std::mutex> lock(mutex_);
  ++journal_errors_;
}

void Metrics::count_recovered(const std::string& outcome, int n) {
  std::lock_guard<std::mutex> lock(mutex_);
  recovered_["outcome=" + quoted(outcome)] += uint64_t(n);
}

std::string Metrics::render(const Gauges& g) const {
  std::string out;
  std::lock_guard<std::mutex> lock(mutex_);
  counters(out, "kiln_http_requests_total", "HTTP requests by endpoint, method and status code.",
           requests_);
  counters(out, "kiln_jobs_total", "Jobs that ended, by model, API and outcome.", jobs_);
  counters(out, "kiln_images_generated_total", "Images made, by model.", images_);
  histograms(out, "kiln_job_queue_seconds", "Time from acceptance to the first denoising step.",
             queue_);
  histograms(out, "kiln_job_compute_seconds",
             "Time from the first denoising step to the last image (succeeded jobs).", compute_);
  histograms(out, "kiln_job_latency_seconds",
             "Time from acceptance to the last image (succeeded jobs).", latency_);
  histograms(out, "kiln_batch_size", "Generations per denoiser call.", batch_);
  histograms(out, "kiln_step_seconds", "Duration of one denoiser call.", step_);
  counters(out, "kiln_jobs_recovered_total",
           "Job records read from the journal at start-up, by what became of them.", recovered_);
  header(out, "kiln_journal_write_seconds", "histogram",
         "Time to write one job record durably (fsyncs included).");
  journal_write_.render(out, "kiln_journal_write_seconds", "");
  header(out, "kiln_journal_write_errors_total", "counter",
         "Job records that could not be written.");
  out += "kiln_journal_write_errors_total " + std::to_string(journal_errors_) + "\n";
  gauge(out, "kiln_queue_depth", "Images accepted and not started.", "", g.queue_depth);
  gauge(out, "kiln_running_generations", "Generations started and not finished.", "", g.running);
  gauge(out, "kiln_device_memory_bytes", "Memory in use on the device (resident set on the CPU).",
        "device=\"cpu\"", double(g.memory_bytes));
  gauge(out, "kiln_ready", "1 once every model is loaded and the server takes jobs.", "",
        g.ready && !g.draining ? 1 : 0);
  gauge(out, "kiln_draining", "1 after SIGTERM, while jobs drain.", "", g.draining ? 1 : 0);
  return out;
}

long long resident_memory_bytes() {
  std::ifstream statm("/proc/self/statm");
  long long pages_total = 0, pages_resident = 0;
  if (!(statm >> pages_total >> pages_resident)) return 0;
  return pages_resident * sysconf(_SC_PAGESIZE);
}

}  // namespace kiln::serve
