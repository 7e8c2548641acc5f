#include "models/model_config.h"

#include <fstream>
#include <sstream>

namespace kiln {

ModelConfig ModelConfig::load(const std::filesystem::path& dir) {
  const std::filesystem::path path = dir / "config.json";
  std::ifstream in(path);
  if (!in) KILN_FAIL("cannot read ", path.string(), ": no such file");
  std::stringstream text;
  text << in.rdbuf();
  nlohmann::json j = nlohmann::json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object())
    KILN_FAIL(path.string(), " is not a JSON object (corrupt config file)");
  return ModelConfig(std::move(j), path.string());
}

const nlohmann::json* ModelConfig::find(const std::string& key) const {
  auto it = json_.find(key);
  if (it == json_.end() || it->is_null()) return nullptr;
  return &*it;
}

bool ModelConfig::has(const std::string& key) const {
  return find(key) != nullptr;
}

int64_t ModelConfig::integer(const std::string& key) const {
  const nlohmann::json* v = find(key);
  if (!v) KILN_FAIL(label_, ": required key \"", key, "\" is missing");
  if (!v->is_number_integer() &&
      !(v->is_number_float() && v->get<double>() == double(int64_t(v->get<double>()))))
    KILN_FAIL(label_, ": \"", key, "\" should be an integer, found ", v->dump());
  return v->is_number_integer() ? v->get<int64_t>() : int64_t(v->get<double>());
}

int64_t ModelConfig::integer(const std::string& key, int64_t fallback) const {
  return has(key) ? integer(key) : fallback;
}

double ModelConfig::number(const std::string& key, double fallback) const {
  const nlohmann::json* v = find(key);
  if (!v) return fallback;
  if (!v->is_number()) KILN_FAIL(label_, ": \"", key, "\" should be a number, found ", v->dump());
  return v->get<double>();
}

bool ModelConfig::boolean(const std::string& key, bool fallback) const {
  const nlohmann::json* v = find(key);
  if (!v) return fallback;
  if (!v->is_boolean())
    KILN_FAIL(label_, ": \"", key, "\" should be true or false, found ", v->dump());
  return v->get<bool>();
}

std::string ModelConfig::string(const std::string& key, const std::string& fallback) const {
  const nlohmann::json* v = find(key);
  if (!v) return fallback;
  if (!v->is_string()) KILN_FAIL(label_, ": \"", key, "\" should be a string, found ", v->dump());
  return v->get<std::string>();
}

std::vector<int64_t> ModelConfig::integers(const std::string& key, size_t count,
                                           int64_t fallback) const {
  const nlohmann::json* v = find(key);
  if (!v) return std::vector<int64_t>(count, fallback);
  if (v->is_number_integer()) return std::vector<int64_t>(count, v->get<int64_t>());
  std::vector<int64_t> out = integer_list(key);
  if (out.size() != count)
    KILN_FAIL(label_, ": \"", key, "\" has ", out.size(), " entries, expected ", count);
  return out;
}

std::vector<int64_t> ModelConfig::integer_list(const std::string& key) const {
  const nlohmann::json* v = find(key);
  if (!v) KILN_FAIL(label_, ": required key \"", key, "\" is missing");
  if (!v->is_array()) KILN_FAIL(label_, ": \"", key, "\" should be a list, found ", v->dump());
  std::vector<int64_t> out;
  for (const auto& e : *v) {
    if (!e.is_number_integer())
      KILN_FAIL(label_, ": \"", key, "\" should hold integers, found ", e.dump());
    out.push_back(e.get<int64_t>());
  }
  return out;
}

std::vector<std::string> ModelConfig::string_list(const std::string& key) const {
  const nlohmann::json* v = find(key);
  if (!v) KILN_FAIL(label_, ": required key \"", key, "\" is missing");
  if (!v->is_array()) KILN_FAIL(label_, ": \"", key, "\" should be a list, found ", v->dump());
  std::vector<std::string> out;
  for (const auto& e : *v) {
    if (!e.is_string()) KILN_FAIL(label_, ": \"", key, "\" should hold strings, found ", e.dump());
    out.push_back(e.get<std::string>());
  }
  return out;
}

}  // namespace kiln
