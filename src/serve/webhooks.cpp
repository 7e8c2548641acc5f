#include "serve/webhooks.h"

#include <httplib.h>

#include <cstdio>

namespace kiln::serve {
namespace {

struct Url {
  std::string origin;  // scheme://host[:port]
  std::string path;
};

bool split_url(const std::string& url, Url& out) {
  const size_t scheme_end = url.find("://");
  if (scheme_end == std::string::npos) return false;
  const std::string scheme = url.substr(0, scheme_end);
  if (scheme != "http" && scheme != "https") return false;
  const size_t path_start = url.find('/', scheme_end + 3);
  out.origin = url.substr(0, path_start);
  out.path = path_start == std::string::npos ? "/" : url.substr(path_start);
  return out.origin.size() > scheme_end + 3;
}

}  // namespace

std::string webhook_url_problem(const std::string& url) {
  Url parts;
  if (url.size() > 2048) return "is longer than 2048 characters";
  if (!split_url(url, parts)) return "must be an http:// or https:// URL with a host";
  for (char c : url)
    if (uint8_t(c) <= 0x20 || c == 0x7f) return "contains spaces or control characters";
  return "";
}

WebhookSender::WebhookSender(int retries, std::chrono::milliseconds first_backoff)
    : retries_(retries), first_backoff_(first_backoff), thread_([this] { run(); }) {}

WebhookSender::~WebhookSender() {
  stop(Clock::now());
}

void WebhookSender::send(const std::string& url, const std::string& event, std::string body,
                         std::function<void()> settled) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (stopping_ && Clock::now() >= deadline_) return;
    queue_.push({url, event, std::move(body), std::move(settled), 0, Clock::now()});
  }
  wake_.notify_all();
}

void WebhookSender::stop(Clock::time_point deadline) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
    deadline_ = std::min(deadline_, deadline);
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
}

bool WebhookSender::deliver(const Delivery& d, std::string& error) const {
  Url url;
  if (!split_url(d.url, url)) {
    error = "bad URL";
    return false;
  }
  httplib::Client client(url.origin);
  client.set_connection_timeout(5);
  client.set_read_timeout(10);
  client.set_write_timeout(10);
  const httplib::Headers headers = {{"X-Kiln-Event", d.event},
                                    {"X-Kiln-Attempt", std::to_string(d.attempt + 1)},
                                    {"User-Agent", "kiln/" KILN_VERSION}};
  const auto res = client.Post(url.path, headers, d.body, "application/json");
  if (!res) {
    error = httplib::to_string(res.error());
    return false;
  }
  if (res->status < 200 || res->status >= 300) {
    error = "status " + std::to_string(res->status);
    return false;
  }
  return true;
}

void WebhookSender::run() {
  std::unique_lock<std::mutex> lock(mutex_);
  for (;;) {
    if (stopping_ && (queue_.empty() || Clock::now() >= deadline_)) break;
    if (queue_.empty()) {
      wake_.wait(lock);
      continue;
    }
    // While stopping, retries do not wait for their backoff.
    const Clock::time_point due = stopping_ ? Clock::now() : queue_.top().due;
    if (Clock::now() < due) {
      wake_.wait_until(lock, due);
      continue;
    }
    Delivery d = queue_.top();
    queue_.pop();
    lock.unlock();
    std::string error;
    const bool ok = deliver(d, error);
    if (!ok && d.attempt >= retries_)
      std::fprintf(stderr, "kiln serve: webhook %s to %s failed after %d attempts: %s\n",
                   d.event.c_str(), d.url.c_str(), d.attempt + 1, error.c_str());
    if ((ok || d.attempt >= retries_) && d.settled) d.settled();
    lock.lock();
    if (ok || d.attempt >= retries_) continue;
    d.due = Clock::now() + first_backoff_ * (1 << std::min(d.attempt, 16));
    ++d.attempt;
    queue_.push(std::move(d));
  }
  if (!queue_.empty())
    std::fprintf(stderr, "kiln serve: %zu webhook deliveries dropped at shutdown\n", queue_.size());
}

}  // namespace kiln::serve
