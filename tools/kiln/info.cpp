#include <cstdio>

#include "args.h"
#include "commands.h"
#include "pipelines/text_to_image.h"

namespace kiln::cli {

int info(const std::vector<std::string>& argv) {
  const Args args(argv, {"model"}, {"help"});
  if (args.has("help")) {
    std::puts(
        "usage: kiln info [--model DIR]\n\nLoads a diffusers model folder and prints what kiln "
        "detected in it.\nWithout --model: the embedded kiln-tiny model.");
    return 0;
  }
  if (!args.positional().empty())
    throw UsageError("unexpected argument \"" + args.positional()[0] + "\"");
  const auto model = args.get("model");
  const std::filesystem::path dir = model ? std::filesystem::path(*model) : default_model_dir();
  const auto pipeline = TextToImagePipeline::load(dir, Placement{});
  std::printf("%s\n", pipeline->describe().c_str());
  return 0;
}

}  // namespace kiln::cli
