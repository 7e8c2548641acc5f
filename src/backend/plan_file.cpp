#include "backend/plan_file.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <nlohmann/json.hpp>

#include "io/image.h"
#include "kiln/error.h"

#if !defined(KILN_COMMIT)
#define KILN_COMMIT ""
#endif

namespace kiln::plans {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

json header_json(const Header& h) {
  return {{"format", h.format},
          {"kiln", h.kiln},
          {"gpu", h.gpu},
          {"compute_capability", str(h.compute_major, ".", h.compute_minor)},
          {"multiprocessors", h.multiprocessors},
          {"cublaslt", h.cublaslt},
          {"cudnn", h.cudnn},
          {"cuda_runtime", h.cuda_runtime},
          {"cuda_driver", h.cuda_driver}};
}

Header header_from(const json& j) {
  Header h;
  h.format = j.at("format").get<int>();
  h.kiln = j.at("kiln").get<std::string>();
  h.gpu = j.at("gpu").get<std::string>();
  const std::string cc = j.at("compute_capability").get<std::string>();
  if (std::sscanf(cc.c_str(), "%d.%d", &h.compute_major, &h.compute_minor) != 2)
    KILN_FAIL("compute capability \"", cc, "\" is not MAJOR.MINOR");
  h.multiprocessors = j.at("multiprocessors").get<int>();
  h.cublaslt = j.at("cublaslt").get<std::string>();
  h.cudnn = j.at("cudnn").get<std::string>();
  h.cuda_runtime = j.at("cuda_runtime").get<std::string>();
  h.cuda_driver = j.at("cuda_driver").get<std::string>();
  return h;
}

constexpr char kHexDigits[] = "0123456789abcdef";

std::string to_hex(const std::array<uint8_t, 64>& bytes) {
  std::string out;
  for (uint8_t b : bytes) {
    out += kHexDigits[b >> 4];
    out += kHexDigits[b & 15];
  }
  return out;
}

std::array<uint8_t, 64> from_hex(const std::string& hex) {
  std::array<uint8_t, 64> out{};
  if (hex.size() != 2 * out.size())
    KILN_FAIL("an algorithm is ", hex.size(), " hex digits, not ", 2 * out.size());
  auto digit = [&](char c) {
    const char* p = std::strchr(kHexDigits, c);
    if (c == '\0' || !p) KILN_FAIL("an algorithm holds '", c, "', not a lowercase hex digit");
    return uint8_t(p - kHexDigits);
  };
  for (size_t i = 0; i < out.size(); ++i)
    out[i] = uint8_t(digit(hex[2 * i]) << 4 | digit(hex[2 * i + 1]));
  return out;
}

json gemm_json(const GemmChoice& c) {
  if (!c.valid) return {{"valid", false}};
  return {{"algo", to_hex(c.algo)}, {"workspace", c.workspace}};
}

GemmChoice gemm_from(const json& j) {
  GemmChoice c;
  c.valid = j.value("valid", true);
  if (!c.valid) return c;
  c.algo = from_hex(j.at("algo").get<std::string>());
  c.workspace = j.at("workspace").get<uint64_t>();
  return c;
}

json conv_json(const ConvChoice& c) {
  if (!c.valid) return {{"valid", false}};
  return {
      {"algo", c.algo}, {"math_type", c.math_type}, {"workspace", c.workspace}, {"fused", c.fused}};
}

ConvChoice conv_from(const json& j) {
  ConvChoice c;
  c.valid = j.value("valid", true);
  if (!c.valid) return c;
  c.algo = j.at("algo").get<int>();
  c.math_type = j.at("math_type").get<int>();
  c.workspace = j.at("workspace").get<uint64_t>();
  c.fused = j.at("fused").get<bool>();
  // The enums are small (and kiln's own paths are -1 and -2); anything else is damage
  // that cuDNN must not see.
  if (c.algo < kConvIm2colAlgo || c.algo > 64 || c.math_type < 0 || c.math_type > 64)
    KILN_FAIL("a convolution algorithm or math type is out of range");
  return c;
}

json attention_json(const AttentionChoice& c) {
  return {{"kernel", c.cudnn ? "cudnn" : "kiln"}, {"plan", c.plan}};
}

AttentionChoice attention_from(const json& j) {
  AttentionChoice c;
  const std::string kernel = j.at("kernel").get<std::string>();
  if (kernel != "cudnn" && kernel != "kiln") KILN_FAIL("unknown attention kernel \"", kernel, "\"");
  c.cudnn = kernel == "cudnn";
  c.plan = j.at("plan").get<int>();
  if (c.plan < 0 || c.plan > 1024) KILN_FAIL("an attention plan index is out of range");
  return c;
}

// Holds an exclusive lock on a folder (flock on its descriptor) while alive.
class FolderLock {
 public:
  explicit FolderLock(const fs::path& dir) : fd_(::open(dir.c_str(), O_RDONLY | O_DIRECTORY)) {
    if (fd_ < 0) KILN_FAIL("cannot open ", dir.string(), ": ", std::strerror(errno));
    while (::flock(fd_, LOCK_EX) != 0) {
      if (errno == EINTR) continue;
      const int error = errno;
      ::close(fd_);
      KILN_FAIL("cannot lock ", dir.string(), ": ", std::strerror(error));
    }
  }
  ~FolderLock() { ::close(fd_); }  // closing releases the lock
  FolderLock(const FolderLock&) = delete;
  FolderLock& operator=(const FolderLock&) = delete;

 private:
  int fd_;
};

}  // namespace

std::string kiln_version() {
  const std::string commit = KILN_COMMIT;
  return commit.empty() ? std::string(KILN_VERSION) : str(KILN_VERSION, " (", commit, ")");
}

std::string mismatch(const Header& file, const Header& current) {
  if (file.format != current.format)
    return str("it is in format ", file.format, " and this kiln reads format ", current.format);
  if (file.kiln != current.kiln) return str("it was made by kiln ", file.kiln);
  if (file.gpu != current.gpu) return str("it was made on ", file.gpu);
  if (file.compute_major != current.compute_major || file.compute_minor != current.compute_minor)
    return str("it was made on compute capability ", file.compute_major, ".", file.compute_minor);
  if (file.multiprocessors != current.multiprocessors)
    return str("it was made on ", file.multiprocessors, " SMs and this GPU has ",
               current.multiprocessors);
  if (file.cublaslt != current.cublaslt) return str("it was made with cuBLASLt ", file.cublaslt);
  if (file.cudnn != current.cudnn) return str("it was made with cuDNN ", file.cudnn);
  if (file.cuda_runtime != current.cuda_runtime)
    return str("it was made with CUDA runtime ", file.cuda_runtime);
  if (file.cuda_driver != current.cuda_driver)
    return str("it was made with CUDA driver ", file.cuda_driver);
  return "";
}

std::string file_name(const Header& header) {
  std::string name;
  for (char c : header.gpu) {
    if (std::isalnum(static_cast<unsigned char>(c)))
      name += char(std::tolower(static_cast<unsigned char>(c)));
    else if (!name.empty() && name.back() != '-')
      name += '-';
  }
  if (!name.empty() && name.back() == '-') name.pop_back();
  if (name.empty()) name = "gpu";
  return str(name, "-sm", header.compute_major, header.compute_minor, ".json");
}

void merge(Plans& base, const Plans& newer) {
  for (const auto& [key, choice] : newer.gemm) base.gemm[key] = choice;
  for (const auto& [key, choice] : newer.conv) base.conv[key] = choice;
  for (const auto& [key, choice] : newer.attention) base.attention[key] = choice;
}

std::string serialize(const Header& header, const Plans& plans) {
  json gemm = json::object(), conv = json::object(), attention = json::object();
  for (const auto& [key, choice] : plans.gemm) gemm[key] = gemm_json(choice);
  for (const auto& [key, choice] : plans.conv) conv[key] = conv_json(choice);
  for (const auto& [key, choice] : plans.attention) attention[key] = attention_json(choice);
  return json{{"header", header_json(header)},
              {"gemm", gemm},
              {"conv", conv},
              {"attention", attention}}
             .dump(1) +
         "\n";
}

std::pair<Header, Plans> parse(std::string_view text) {
  try {
    const json j = json::parse(text);
    if (!j.at("header").is_object()) KILN_FAIL("\"header\" is not an object");
    std::pair<Header, Plans> out{header_from(j.at("header")), Plans{}};
    // Another format's entries are not read: the header's mismatch rebuilds the file.
    if (out.first.format != kFormatVersion) return out;
    for (const char* part : {"gemm", "conv", "attention"})
      if (!j.at(part).is_object()) KILN_FAIL("\"", part, "\" is not an object");
    for (const auto& [key, value] : j.at("gemm").items()) out.second.gemm[key] = gemm_from(value);
    for (const auto& [key, value] : j.at("conv").items()) out.second.conv[key] = conv_from(value);
    for (const auto& [key, value] : j.at("attention").items())
      out.second.attention[key] = attention_from(value);
    return out;
  } catch (const json::exception& e) {
    KILN_FAIL(e.what());
  }
}

Loaded load(const fs::path& file, const Header& current) {
  Loaded out;
  std::error_code ec;
  if (!fs::exists(file, ec)) return out;
  try {
    auto [header, plans] = parse(io::read_file(file));
    const std::string why = mismatch(header, current);
    if (!why.empty()) {
      out.note = str("plans in ", file.string(), " are rebuilt: ", why);
      return out;
    }
    out.plans = std::move(plans);
  } catch (const Error& e) {
    out.note = str("plans in ", file.string(), " are unreadable and rebuilt (", e.what(), ")");
  }
  return out;
}

size_t save(const fs::path& file, const Header& current, const Plans& plans) {
  const FolderLock lock(file.parent_path());
  // Under the lock, what is on disk now is what other processes saved; keep it.
  Plans all = load(file, current).plans;
  merge(all, plans);
  io::write_file_atomic(file, serialize(current, all));
  return all.size();
}

std::optional<fs::path> folder(const std::string& setting, const Environment& env) {
  if (setting == "off") return std::nullopt;
  if (!setting.empty()) return fs::path(setting);
  auto variable = [&](const char* name) {
    const char* v = env(name);
    return std::string(v ? v : "");
  };
  const std::string chosen = variable("KILN_PLAN_CACHE");
  if (chosen == "off") return std::nullopt;
  if (!chosen.empty()) return fs::path(chosen);
  // The XDG base directory rules: a relative XDG_CACHE_HOME is to be ignored.
  const std::string xdg = variable("XDG_CACHE_HOME");
  if (!xdg.empty() && xdg[0] == '/') return fs::path(xdg) / "kiln" / "plans";
  const std::string home = variable("HOME");
  if (!home.empty()) return fs::path(home) / ".cache" / "kiln" / "plans";
  return std::nullopt;
}

std::optional<fs::path> folder(const std::string& setting) {
  return folder(setting,
                [](const char* name) { return static_cast<const char*>(std::getenv(name)); });
}

std::string check_writable(const fs::path& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return ec.message();
  if (!fs::is_directory(dir, ec)) return "it is not a folder";
  if (::access(dir.c_str(), W_OK) != 0) return std::strerror(errno);
  return "";
}

}  // namespace kiln::plans
