// A diffusers model folder: model_index.json naming the pipeline class and its
// components, each component in a subfolder with its own config.
#pragma once

#include <filesystem>
#include <map>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

namespace kiln::io {

struct ComponentRef {
  std::string library;     // "diffusers", "transformers"
  std::string class_name;  // "UNet2DConditionModel", "CLIPTokenizer", ...
  std::filesystem::path dir;
};

class ModelFolder {
 public:
  // Reads `dir`/model_index.json. A missing folder or index, malformed JSON or
  // a component whose folder is missing is a kiln::Error naming the problem.
  static ModelFolder open(const std::filesystem::path& dir);

  const std::filesystem::path& dir() const { return dir_; }
  const std::string& pipeline_class() const { return pipeline_class_; }
  // The name to show for the model: the folder's name.
  std::string name() const;

  bool has(const std::string& component) const { return components_.count(component) != 0; }
  // Throws naming the component when the index does not list it.
  const ComponentRef& component(const std::string& name) const;
  const std::map<std::string, ComponentRef>& components() const { return components_; }
  // Pipeline-level settings in model_index.json (force_zeros_for_empty_prompt, ...).
  const nlohmann::json& index() const { return index_; }

 private:
  std::filesystem::path dir_;
  std::string pipeline_class_;
  std::map<std::string, ComponentRef> components_;
  nlohmann::json index_;
};

// The contents of a JSON file, or a kiln::Error naming it.
nlohmann::json read_json(const std::filesystem::path& path);

}  // namespace kiln::io
