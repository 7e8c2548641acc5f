// Webhook deliveries: a POST of the finished job to the URL the client gave, off
// the step loop and the HTTP threads, retried with exponential backoff.
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <queue>
#include <string>
#include <thread>
#include <vector>

namespace kiln::serve {

// Checks a webhook URL (http:// or https:// with a host); the message says what is wrong.
std::string webhook_url_problem(const std::string& url);

class WebhookSender {
 public:
  using Clock = std::chrono::steady_clock;

  // `retries` attempts after the first, `first_backoff` before the first retry,
  // doubling each time.
  WebhookSender(int retries, std::chrono::milliseconds first_backoff);
  ~WebhookSender();

  // `settled` runs (on the sender's thread) once the delivery succeeded or its retries
  // ran out; not for one dropped at shutdown.
  void send(const std::string& url, const std::string& event, std::string body,
            std::function<void()> settled = {});
  // Delivers what is due or queued until `deadline` (backoff is skipped), then stops.
  void stop(Clock::time_point deadline);

 private:
  struct Delivery {
    std::string url, event, body;
    std::function<void()> settled;
    int attempt = 0;
    Clock::time_point due;
    bool operator>(const Delivery& other) const { return due > other.due; }
  };
  void run();
  bool deliver(const Delivery& d, std::string& error) const;

  const int retries_;
  const std::chrono::milliseconds first_backoff_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::priority_queue<Delivery, std::vector<Delivery>, std::greater<Delivery>> queue_;
  bool stopping_ = false;
  Clock::time_point deadline_ = Clock::time_point::max();
  std::thread thread_;
};

}  // namespace kiln::serve
