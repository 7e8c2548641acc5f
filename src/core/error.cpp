#include "kiln/error.h"

#include <cstring>

namespace kiln::detail {

void check_failed(const char* file, int line, const char* condition, const std::string& message) {
  const char* base = std::strrchr(file, '/');
  throw Error(str(message, " [", base ? base + 1 : file, ":", line, ": ", condition, "]"));
}

}  // namespace kiln::detail
