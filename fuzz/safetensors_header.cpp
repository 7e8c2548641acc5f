// libFuzzer target: safetensors header parsing on arbitrary bytes. Any input
// must end in a parsed file or a kiln::Error, never a crash or a sanitizer report.
#include <cstdint>
#include <string_view>

#include "io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    kiln::io::SafetensorsFile::parse(std::string_view(reinterpret_cast<const char*>(data), size),
                                     "fuzz");
  } catch (const kiln::Error&) {
  }
  return 0;
}
