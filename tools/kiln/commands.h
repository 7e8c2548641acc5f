// The kiln subcommands. Each returns the process exit status and throws
// kiln::Error (or cli::UsageError) on failure; main() turns those into one line.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

namespace kiln::cli {

int generate(const std::vector<std::string>& args);
int info(const std::vector<std::string>& args);
int serve(const std::vector<std::string>& args);

// The model used when --model is not given: the embedded kiln-tiny.
std::filesystem::path default_model_dir();

}  // namespace kiln::cli
