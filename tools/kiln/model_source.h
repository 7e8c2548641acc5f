// The model a timing command runs: a diffusers folder (--model DIR) or, with no
// checkpoint at hand, the real SD 1.5 / SDXL architectures with random weights
// (--arch sd15|sdxl). kiln bench and kiln build share it.
#pragma once

#include <filesystem>
#include <optional>
#include <string>

#include "nn/weights.h"

namespace kiln::cli {

class ModelSource {
 public:
  // Usage errors for an unknown architecture or both flags; `tool` names the
  // temporary folder. For --arch, the folder is written now and weights loaded
  // while this object lives are drawn at random.
  ModelSource(const std::optional<std::string>& model, const std::optional<std::string>& arch,
              const std::string& tool);
  ~ModelSource();  // removes the temporary folder
  ModelSource(const ModelSource&) = delete;
  ModelSource& operator=(const ModelSource&) = delete;

  const std::filesystem::path& dir() const { return dir_; }
  bool xl() const { return xl_; }
  // For tables and logs: the folder, or "random sd15".
  const std::string& label() const { return label_; }

 private:
  std::filesystem::path dir_;
  bool xl_ = false;
  std::string label_;
  bool temporary_ = false;
  std::optional<nn::RandomWeights> random_;
};

}  // namespace kiln::cli
