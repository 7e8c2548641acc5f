// The models a server offers, by name, loaded once at start-up.
#pragma once

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "pipelines/text_to_image.h"
#include "serve/config.h"

namespace kiln::serve {

class ModelRegistry {
 public:
  explicit ModelRegistry(std::vector<ModelSpec> specs);

  // Loads every model (kiln::Error on failure) and hands each to `prepare` (the
  // warm-up), then loaded() turns true.
  void load_all(const Placement& placement,
                const std::function<void(const ModelSpec&, const TextToImagePipeline&)>& prepare =
                    {});
  bool loaded() const { return loaded_.load(std::memory_order_acquire); }
  // Taking new requests: set by open() once the models are loaded and the server's
  // scheduler runs with the jobs recovered from its journal queued first.
  bool ready() const { return ready_.load(std::memory_order_acquire); }
  void open() { ready_.store(loaded(), std::memory_order_release); }

  const std::vector<ModelSpec>& specs() const { return specs_; }
  const std::string& default_model() const { return specs_.front().name; }
  bool known(std::string_view name) const;
  // The loaded pipeline, or null while loading or for an unknown name (jobs already
  // taken use it before the server opens).
  const TextToImagePipeline* find(std::string_view name) const;

 private:
  std::vector<ModelSpec> specs_;
  std::map<std::string, std::unique_ptr<TextToImagePipeline>, std::less<>> pipelines_;
  std::atomic<bool> loaded_{false}, ready_{false};
};

}  // namespace kiln::serve
