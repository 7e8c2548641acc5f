#include "args.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <sstream>

namespace kiln::cli {

Args::Args(const std::vector<std::string>& argv, const std::set<std::string>& valued,
           const std::set<std::string>& switches) {
  for (size_t i = 0; i < argv.size(); ++i) {
    const std::string& a = argv[i];
    if (a.size() < 3 || a.rfind("--", 0) != 0) {
      if (a.size() > 1 && a[0] == '-' && a != "-") throw UsageError("unknown option " + a);
      positional_.push_back(a);
      continue;
    }
    std::string name = a.substr(2), value;
    const size_t eq = name.find('=');
    const bool inline_value = eq != std::string::npos;
    if (inline_value) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    }
    if (switches.count(name)) {
      if (inline_value) throw UsageError("--" + name + " takes no value");
      switches_.insert(name);
    } else if (valued.count(name)) {
      if (!inline_value) {
        if (i + 1 >= argv.size()) throw UsageError("--" + name + " needs a value");
        value = argv[++i];
      }
      if (values_.count(name)) throw UsageError("--" + name + " given twice");
      values_[name] = value;
    } else {
      throw UsageError("unknown option --" + name);
    }
  }
}

std::optional<std::string> Args::get(const std::string& name) const {
  auto it = values_.find(name);
  if (it == values_.end()) return std::nullopt;
  return it->second;
}

std::string Args::get_or(const std::string& name, const std::string& fallback) const {
  return get(name).value_or(fallback);
}

std::optional<int64_t> Args::integer(const std::string& name, int64_t lo, int64_t hi) const {
  auto v = get(name);
  if (!v) return std::nullopt;
  errno = 0;
  char* end = nullptr;
  const long long n = std::strtoll(v->c_str(), &end, 10);
  if (v->empty() || *end != '\0' || errno == ERANGE)
    throw UsageError(str("--", name, " expects a whole number, got \"", *v, "\""));
  if (n < lo || n > hi)
    throw UsageError(str("--", name, " must be between ", lo, " and ", hi, ", got ", n));
  return n;
}

std::optional<uint64_t> Args::unsigned_integer(const std::string& name) const {
  auto v = get(name);
  if (!v) return std::nullopt;
  errno = 0;
  char* end = nullptr;
  const unsigned long long n = std::strtoull(v->c_str(), &end, 10);
  if (v->empty() || (*v)[0] == '-' || *end != '\0' || errno == ERANGE)
    throw UsageError(str("--", name, " expects a non-negative whole number, got \"", *v, "\""));
  return n;
}

std::optional<double> Args::number(const std::string& name, double lo, double hi) const {
  auto v = get(name);
  if (!v) return std::nullopt;
  char* end = nullptr;
  const double d = std::strtod(v->c_str(), &end);
  if (v->empty() || *end != '\0' || !std::isfinite(d))
    throw UsageError(str("--", name, " expects a number, got \"", *v, "\""));
  if (d < lo || d > hi)
    throw UsageError(str("--", name, " must be between ", lo, " and ", hi, ", got ", d));
  return d;
}

std::vector<std::string> split_list(const std::string& list) {
  std::vector<std::string> out;
  std::stringstream ss(list);
  std::string item;
  while (std::getline(ss, item, ','))
    if (!item.empty()) out.push_back(item);
  return out;
}

std::vector<int> int_list(const std::string& flag, const std::string& list, int lo, int hi) {
  std::vector<int> out;
  for (const std::string& s : split_list(list)) {
    char* end = nullptr;
    const long v = std::strtol(s.c_str(), &end, 10);
    if (*end != '\0' || v < lo || v > hi)
      throw UsageError(
          str("--", flag, " takes numbers from ", lo, " to ", hi, ", got \"", s, "\""));
    out.push_back(int(v));
  }
  if (out.empty()) throw UsageError("--" + flag + " is empty");
  return out;
}

}  // namespace kiln::cli
