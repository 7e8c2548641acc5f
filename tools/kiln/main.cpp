// kiln: the command-line entry point.
#include <cstdio>
#include <exception>
#include <new>
#include <string>
#include <vector>

#include "args.h"
#include "commands.h"

namespace {

const char* kUsage =
    "usage: kiln <command> [options]\n"
    "\n"
    "commands:\n"
    "  generate   make images from a prompt      kiln generate \"a red circle\" --output out.png\n"
    "  info       show what a model folder holds  kiln info --model DIR\n"
    "  bench      time the models on this GPU     kiln bench --arch sd15 --what unet\n"
    "  serve      HTTP API server and web page     kiln serve --port 8080\n"
    "  build      time this GPU's plans ahead     kiln build --arch sd15 --shapes 512x512\n"
    "\n"
    "Run kiln <command> --help for its options.\n";

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty() || args[0] == "--help" || args[0] == "-h" || args[0] == "help") {
    std::fputs(kUsage, args.empty() ? stderr : stdout);
    return args.empty() ? 2 : 0;
  }
  if (args[0] == "--version") {
    std::printf("kiln %s\n", KILN_VERSION);
    return 0;
  }
  const std::string command = args[0];
  args.erase(args.begin());
  try {
    if (command == "generate") return kiln::cli::generate(args);
    if (command == "info") return kiln::cli::info(args);
    if (command == "bench") return kiln::cli::bench(args);
    if (command == "serve") return kiln::cli::serve(args);
    if (command == "build") return kiln::cli::build(args);
    std::fprintf(stderr, "kiln: unknown command \"%s\"\n\n%s", command.c_str(), kUsage);
    return 2;
  } catch (const kiln::cli::UsageError& e) {
    std::fprintf(stderr, "kiln %s: %s (see kiln %s --help)\n", command.c_str(), e.what(),
                 command.c_str());
    return 2;
  } catch (const kiln::Error& e) {
    std::fprintf(stderr, "kiln %s: error: %s\n", command.c_str(), e.what());
    return 1;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "kiln %s: error: out of memory\n", command.c_str());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kiln %s: error: %s\n", command.c_str(), e.what());
    return 1;
  }
}
