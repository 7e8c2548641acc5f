// The one exception type that crosses kiln's module boundaries. Its message is
// written for the person running kiln: it names what was wrong and, where it can,
// what to do about it.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace kiln {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

// Concatenates its arguments with operator<<: str("expected ", 4, " dims").
template <class... Args>
std::string str(Args&&... args) {
  std::ostringstream os;
  (os << ... << std::forward<Args>(args));
  return os.str();
}

namespace detail {
[[noreturn]] void check_failed(const char* file, int line, const char* condition,
                               const std::string& message);
}  // namespace detail

}  // namespace kiln

// Invariant check: throws kiln::Error with the message, the condition and its place.
#define KILN_CHECK(cond, ...)                                                     \
  do {                                                                            \
    if (!(cond)) [[unlikely]]                                                     \
      ::kiln::detail::check_failed(__FILE__, __LINE__, #cond, ::kiln::str(__VA_ARGS__)); \
  } while (0)

// A user-facing failure: throws kiln::Error with just the message.
#define KILN_FAIL(...) throw ::kiln::Error(::kiln::str(__VA_ARGS__))
