#include "serve/model_registry.h"

#include <set>

namespace kiln::serve {

ModelRegistry::ModelRegistry(std::vector<ModelSpec> specs) : specs_(std::move(specs)) {
  KILN_CHECK(!specs_.empty(), "a server needs at least one model");
  std::set<std::string> names;
  for (const ModelSpec& s : specs_)
    if (!names.insert(s.name).second) KILN_FAIL("two models are named \"", s.name, "\"");
}

void ModelRegistry::load_all(
    const Placement& placement,
    const std::function<void(const ModelSpec&, const TextToImagePipeline&)>& prepare) {
  for (const ModelSpec& s : specs_) {
    pipelines_[s.name] = TextToImagePipeline::load(s.dir, placement);
    if (prepare) prepare(s, *pipelines_[s.name]);
  }
  loaded_.store(true, std::memory_order_release);
}

bool ModelRegistry::known(std::string_view name) const {
  for (const ModelSpec& s : specs_)
    if (s.name == name) return true;
  return false;
}

const TextToImagePipeline* ModelRegistry::find(std::string_view name) const {
  if (!loaded()) return nullptr;
  auto it = pipelines_.find(name);
  return it == pipelines_.end() ? nullptr : it->second.get();
}

}  // namespace kiln::serve
