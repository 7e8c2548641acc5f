// A fixed set of threads running queued tasks in order.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace kiln::serve {

class TaskPool {
 public:
  // `setup` runs first on each thread.
  explicit TaskPool(int threads, std::function<void()> setup = {}) {
    for (int i = 0; i < threads; ++i)
      threads_.emplace_back([this, setup] {
        if (setup) setup();
        run();
      });
  }
  ~TaskPool() { join(); }
  TaskPool(const TaskPool&) = delete;
  TaskPool& operator=(const TaskPool&) = delete;

  int threads() const { return int(threads_.size()); }
  void post(std::function<void()> task) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      tasks_.push_back(std::move(task));
    }
    ready_.notify_one();
  }
  // Tasks waiting (not running).
  size_t backlog() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return tasks_.size();
  }
  // Runs what is queued, then stops the threads.
  void join() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    ready_.notify_all();
    for (std::thread& t : threads_)
      if (t.joinable()) t.join();
  }

 private:
  void run() {
    for (;;) {
      std::function<void()> task;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        ready_.wait(lock, [&] { return stop_ || !tasks_.empty(); });
        if (tasks_.empty()) return;
        task = std::move(tasks_.front());
        tasks_.pop_front();
      }
      task();  // tasks catch their own exceptions
    }
  }

  mutable std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<std::function<void()>> tasks_;
  bool stop_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace kiln::serve
