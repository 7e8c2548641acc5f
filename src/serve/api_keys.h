// API keys and the per-key rate limit.
//
// The keys file has one key per line: an id (what logs and metrics show), the
// secret the client sends as "Authorization: Bearer SECRET", and optionally the
// models the key may use (comma-separated; "*" or nothing: all). '#' starts a comment.
//
//   # id     secret                          models
//   alice    sk-alice-2f9c1e7d4b8a6035       *
//   shop     sk-shop-9d1a33c0e5f7b2a4        kiln-tiny
#pragma once

#include <chrono>
#include <filesystem>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

namespace kiln::serve {

struct ApiKey {
  std::string id;
  std::string secret;
  std::vector<std::string> models;  // empty: every model

  bool allows_model(std::string_view model) const;
};

class ApiKeys {
 public:
  ApiKeys() = default;  // no keys: authentication off
  // Throws kiln::Error naming the file and line of a malformed entry, a duplicate
  // id or secret, or a secret shorter than 16 characters.
  static ApiKeys load(const std::filesystem::path& file);

  bool enabled() const { return !keys_.empty(); }
  std::size_t size() const { return keys_.size(); }
  // The key whose secret is `secret`, or null. Compares against every key, each
  // in time that depends only on the lengths, so timing tells nothing about how
  // much of a guess matched.
  const ApiKey* find(std::string_view secret) const;

 private:
  std::vector<ApiKey> keys_;
};

// A token bucket per key id: `per_minute` requests per minute, bursts of up to
// max(1, per_minute / 6) (ten seconds' worth).
class RateLimiter {
 public:
  explicit RateLimiter(double per_minute);
  bool enabled() const { return per_minute_ > 0; }
  // 0 when the request may go ahead (a token is taken); otherwise the seconds
  // until it may.
  double acquire(const std::string& key_id);

 private:
  struct Bucket {
    double tokens;
    std::chrono::steady_clock::time_point updated;
  };
  double per_minute_, burst_;
  std::mutex mutex_;
  std::map<std::string, Bucket> buckets_;
};

}  // namespace kiln::serve
