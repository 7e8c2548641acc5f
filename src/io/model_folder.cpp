#include "io/model_folder.h"

#include <fstream>
#include <sstream>

#include "kiln/error.h"

namespace kiln::io {

nlohmann::json read_json(const std::filesystem::path& path) {
  std::ifstream in(path);
  if (!in) KILN_FAIL("cannot read ", path.string(), ": no such file");
  std::stringstream text;
  text << in.rdbuf();
  nlohmann::json j = nlohmann::json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) KILN_FAIL(path.string(), " is not valid JSON (corrupt file?)");
  return j;
}

ModelFolder ModelFolder::open(const std::filesystem::path& dir) {
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec))
    KILN_FAIL("model folder ", dir.string(), " does not exist or is not a directory");
  const std::filesystem::path index_path = dir / "model_index.json";
  if (!std::filesystem::exists(index_path, ec))
    KILN_FAIL(dir.string(), " is not a diffusers model folder: it has no model_index.json");
  ModelFolder f;
  f.dir_ = dir;
  f.index_ = read_json(index_path);
  if (!f.index_.is_object()) KILN_FAIL(index_path.string(), " is not a JSON object");
  auto cls = f.index_.find("_class_name");
  if (cls == f.index_.end() || !cls->is_string())
    KILN_FAIL(index_path.string(), " does not name the pipeline class (_class_name)");
  f.pipeline_class_ = cls->get<std::string>();
  for (const auto& [key, value] : f.index_.items()) {
    // Components are [library, class]; [null, null] marks an absent optional one.
    if (key.empty() || key[0] == '_' || !value.is_array() || value.size() != 2) continue;
    if (value[0].is_null() || value[1].is_null()) continue;
    if (!value[0].is_string() || !value[1].is_string())
      KILN_FAIL(index_path.string(), ": component ", key, " is not [library, class]");
    ComponentRef ref{value[0].get<std::string>(), value[1].get<std::string>(), dir / key};
    if (!std::filesystem::is_directory(ref.dir, ec))
      KILN_FAIL(dir.string(), ": model_index.json lists component ", key, " but the folder has no ",
                key, "/ subfolder");
    f.components_.emplace(key, std::move(ref));
  }
  return f;
}

std::string ModelFolder::name() const {
  std::filesystem::path p = dir_;
  if (p.filename().empty()) p = p.parent_path();
  return p.filename().string();
}

const ComponentRef& ModelFolder::component(const std::string& name) const {
  auto it = components_.find(name);
  if (it == components_.end())
    KILN_FAIL(dir_.string(), ": the model has no ", name, " component (model_index.json)");
  return it->second;
}

}  // namespace kiln::io
