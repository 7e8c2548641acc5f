// The kiln subcommands. Each returns the process exit status and throws
// kiln::Error (or cli::UsageError) on failure; main() turns those into one line.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "models/model_config.h"

namespace kiln::cli {

int generate(const std::vector<std::string>& args);
int info(const std::vector<std::string>& args);
int bench(const std::vector<std::string>& args);
int serve(const std::vector<std::string>& args);
int build(const std::vector<std::string>& args);

// --device (cuda | cpu; cuda when a GPU is present) and --dtype (fp16 | bf16 |
// fp32; fp16 on cuda, fp32 on cpu) as a placement, with usage errors for the rest.
Placement placement_from_flags(const std::optional<std::string>& device,
                               const std::optional<std::string>& dtype);

// --plan-cache DIR|off: where the CUDA backend keeps its plans (cuda_backend.h's
// set_plan_cache); accepted and ignored on the CPU.
void configure_plan_cache(const std::optional<std::string>& flag, const Placement& placement);

// The model used when --model is not given: the embedded kiln-tiny.
std::filesystem::path default_model_dir();

}  // namespace kiln::cli
