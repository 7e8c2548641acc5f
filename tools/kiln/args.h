// Command-line parsing for the kiln subcommands: --name value, --name=value,
// boolean --flag, and positional words. Unknown flags are usage errors.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "kiln/error.h"

namespace kiln::cli {

// A usage mistake: the command prints it with a hint and exits with status 2.
class UsageError : public Error {
 public:
  using Error::Error;
};

class Args {
 public:
  // `valued` flags take a value; `switches` do not. Names without the dashes.
  Args(const std::vector<std::string>& argv, const std::set<std::string>& valued,
       const std::set<std::string>& switches);

  bool has(const std::string& name) const { return values_.count(name) || switches_.count(name); }
  std::optional<std::string> get(const std::string& name) const;
  std::string get_or(const std::string& name, const std::string& fallback) const;
  // Parsed numbers, with a usage error naming the flag when malformed or outside [lo, hi].
  std::optional<int64_t> integer(const std::string& name, int64_t lo, int64_t hi) const;
  std::optional<uint64_t> unsigned_integer(const std::string& name) const;
  std::optional<double> number(const std::string& name, double lo, double hi) const;
  const std::vector<std::string>& positional() const { return positional_; }

 private:
  std::map<std::string, std::string> values_;
  std::set<std::string> switches_;
  std::vector<std::string> positional_;
};

// "a,b,,c" → {"a", "b", "c"}.
std::vector<std::string> split_list(const std::string& list);
// A comma-separated list of whole numbers in [lo, hi] given to --flag; usage
// errors for a bad item or an empty list.
std::vector<int> int_list(const std::string& flag, const std::string& list, int lo, int hi);

}  // namespace kiln::cli
