#include "serve/api_keys.h"

#include <algorithm>
#include <fstream>
#include <set>
#include <sstream>

#include "kiln/error.h"

namespace kiln::serve {
namespace {

// 0 when equal; the time taken depends on the lengths only.
unsigned constant_time_differs(std::string_view a, std::string_view b) {
  unsigned diff = unsigned(a.size() != b.size());
  const size_t n = std::max(a.size(), b.size());
  for (size_t i = 0; i < n; ++i) {
    const unsigned char x = i < a.size() ? uint8_t(a[i]) : 0;
    const unsigned char y = i < b.size() ? uint8_t(b[i]) : 0;
    diff |= unsigned(x ^ y);
  }
  return diff;
}

}  // namespace

bool ApiKey::allows_model(std::string_view model) const {
  return models.empty() || std::find(models.begin(), models.end(), model) != models.end();
}

ApiKeys ApiKeys::load(const std::filesystem::path& file) {
  std::ifstream in(file);
  if (!in) KILN_FAIL("cannot read the API keys file ", file.string());
  ApiKeys keys;
  std::set<std::string> ids, secrets;
  std::string line;
  for (int number = 1; std::getline(in, line); ++number) {
    if (const size_t hash = line.find('#'); hash != std::string::npos) line.resize(hash);
    std::istringstream words(line);
    std::vector<std::string> fields;
    for (std::string w; words >> w;) fields.push_back(w);
    if (fields.empty()) continue;
    const std::string where = str(file.string(), ":", number, ": ");
    if (fields.size() < 2 || fields.size() > 3)
      KILN_FAIL(where, "expected \"ID SECRET [MODELS]\", got ", fields.size(), " fields");
    ApiKey key{fields[0], fields[1], {}};
    if (key.secret.size() < 16)
      KILN_FAIL(where, "the secret of key ", key.id, " is shorter than 16 characters");
    if (!ids.insert(key.id).second) KILN_FAIL(where, "key id ", key.id, " appears twice");
    if (!secrets.insert(key.secret).second) KILN_FAIL(where, "a secret appears twice");
    if (fields.size() == 3 && fields[2] != "*") {
      std::istringstream models(fields[2]);
      for (std::string m; std::getline(models, m, ',');)
        if (!m.empty()) key.models.push_back(m);
    }
    keys.keys_.push_back(std::move(key));
  }
  if (keys.keys_.empty()) KILN_FAIL("the API keys file ", file.string(), " holds no key");
  return keys;
}

const ApiKey* ApiKeys::find(std::string_view secret) const {
  const ApiKey* found = nullptr;
  for (const ApiKey& key : keys_)  // no early exit: every key is compared
    if (constant_time_differs(key.secret, secret) == 0) found = &key;
  return found;
}

RateLimiter::RateLimiter(double per_minute)
    : per_minute_(per_minute), burst_(std::max(1.0, per_minute / 6.0)) {}

double RateLimiter::acquire(const std::string& key_id) {
  if (!enabled()) return 0.0;
  const auto now = std::chrono::steady_clock::now();
  std::lock_guard<std::mutex> lock(mutex_);
  auto [it, inserted] = buckets_.try_emplace(key_id, Bucket{burst_, now});
  Bucket& b = it->second;
  const double elapsed = std::chrono::duration<double>(now - b.updated).count();
  b.tokens = std::min(burst_, b.tokens + elapsed * per_minute_ / 60.0);
  b.updated = now;
  if (b.tokens >= 1.0) {
    b.tokens -= 1.0;
    return 0.0;
  }
  return (1.0 - b.tokens) * 60.0 / per_minute_;
}

}  // namespace kiln::serve
