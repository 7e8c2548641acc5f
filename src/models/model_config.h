// Reading a component's config.json: typed getters that name the file and key
// in their errors, and the placement (device, dtype) a component is loaded to.
#pragma once

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace kiln {

struct Placement {
  Device device = Device::CPU;
  DType dtype = DType::F32;
  std::string variant;  // weight file variant to prefer ("fp16"), empty for plain files
};

class ModelConfig {
 public:
  // Parses `dir`/config.json; a missing or malformed file is a kiln::Error.
  static ModelConfig load(const std::filesystem::path& dir);
  ModelConfig(nlohmann::json json, std::string label)
      : json_(std::move(json)), label_(std::move(label)) {}

  bool has(const std::string& key) const;  // present and not null
  int64_t integer(const std::string& key) const;
  int64_t integer(const std::string& key, int64_t fallback) const;
  double number(const std::string& key, double fallback) const;
  bool boolean(const std::string& key, bool fallback) const;
  std::string string(const std::string& key, const std::string& fallback) const;
  // A key that is either one value or a list of `count` values (diffusers'
  // int-or-tuple config fields).
  std::vector<int64_t> integers(const std::string& key, size_t count, int64_t fallback) const;
  std::vector<int64_t> integer_list(const std::string& key) const;
  std::vector<std::string> string_list(const std::string& key) const;

  const nlohmann::json& json() const { return json_; }
  const std::string& label() const { return label_; }

 private:
  const nlohmann::json* find(const std::string& key) const;
  nlohmann::json json_;
  std::string label_;
};

}  // namespace kiln
