// The plan cache's file: the algorithm the CUDA backend chose for each GEMM and
// convolution shape, timed once per GPU and kept on disk so that later processes
// skip the timing. Plain C++ with no CUDA types, so that the format, the header
// check and the merge are tested without a GPU; backend/cuda/plan_cache.cpp
// fills the header from the device and converts the choices to and from the
// libraries' types.
//
// One JSON file per device identity in the cache folder. Its header names
// everything a choice depends on besides the shape (GPU, libraries, kiln
// version); a file whose header differs from the running one is not trusted:
// its entries are dropped and it is rewritten.
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>

namespace kiln::plans {

// Raised when the layout of the file changes; older files are then rebuilt.
constexpr int kFormatVersion = 2;  // 2: attention kernels

struct Header {
  int format = kFormatVersion;
  std::string kiln;  // kiln_version()
  std::string gpu;   // "NVIDIA H100 80GB HBM3"
  int compute_major = 0, compute_minor = 0;
  int multiprocessors = 0;
  std::string cublaslt, cudnn;  // library versions; cudnn "none" when not loaded
  std::string cuda_runtime, cuda_driver;
  bool operator==(const Header&) const = default;
};

// The project version and, where the build knew it, the git commit:
// "0.1.0 (b8ce682a1f3c)".
std::string kiln_version();

// Why a file made under `file` must not be used under `current`, in words for a
// log line ("it was made on NVIDIA A100-SXM4-80GB"); empty when they match.
std::string mismatch(const Header& file, const Header& current);

// The file of a device identity inside the cache folder:
// "nvidia-h100-80gb-hbm3-sm90.json".
std::string file_name(const Header& header);

struct GemmChoice {
  bool valid = false;              // false: cuBLASLt offered no algorithm for the key
  std::array<uint8_t, 64> algo{};  // cublasLtMatmulAlgo_t's bytes, as cuBLASLt filled them
  uint64_t workspace = 0;          // bytes the algorithm needs
  bool operator==(const GemmChoice&) const = default;
};

// Algorithm codes for kiln's own convolution paths, beside cuDNN's (which are >= 0).
inline constexpr int kConvNarrowAlgo = -1;  // the narrow 3x3 kernels (3, 4 or 8 channels)
inline constexpr int kConvIm2colAlgo = -2;  // im2col + a cuBLASLt GEMM

struct ConvChoice {
  bool valid = false;  // false: cuDNN offered no algorithm within the workspace limit
  int algo = 0;        // cudnnConvolutionFwdAlgo_t, or kConvNarrowAlgo / kConvIm2colAlgo
  int math_type = 0;   // cudnnMathType_t
  uint64_t workspace = 0;
  bool fused = false;  // cuDNN's bias + residual call was accepted with this algorithm
  bool operator==(const ConvChoice&) const = default;
};

// Which attention kernel a shape runs with: ours, or one of cuDNN's SDPA plans
// (the index among its heuristics' plans for the shape).
struct AttentionChoice {
  bool cudnn = false;
  int plan = 0;
  bool operator==(const AttentionChoice&) const = default;
};

// Choices by key: strings the backend makes from every field of its plan keys.
struct Plans {
  std::map<std::string, GemmChoice> gemm;
  std::map<std::string, ConvChoice> conv;
  std::map<std::string, AttentionChoice> attention;
  size_t size() const { return gemm.size() + conv.size() + attention.size(); }
  bool operator==(const Plans&) const = default;
};

// Adds `newer` to `base`; where both hold a key, `newer` wins.
void merge(Plans& base, const Plans& newer);

std::string serialize(const Header& header, const Plans& plans);
// Throws kiln::Error naming what is malformed; every field is checked, so a
// damaged file never reaches the libraries.
std::pair<Header, Plans> parse(std::string_view text);

struct Loaded {
  Plans plans;       // empty unless the file exists, parses and matches
  std::string note;  // why an existing file was not used, for one log line; else empty
};
// Never throws: a missing, unreadable, corrupt or foreign file gives no plans.
Loaded load(const std::filesystem::path& file, const Header& current);

// Writes `plans` merged over the entries another process may have written to
// `file` meanwhile (when its header matches `current`; otherwise they are
// dropped), through a temporary file and a rename, holding a lock on the folder
// so that concurrent savers do not lose each other's entries. Returns the
// number of entries written; throws kiln::Error when the file cannot be written.
size_t save(const std::filesystem::path& file, const Header& current, const Plans& plans);

// Where plans are kept. `setting` is --plan-cache's value: "off" for memory
// only, a folder, or empty for the default: KILN_PLAN_CACHE (which may also be
// "off"), then $XDG_CACHE_HOME/kiln/plans, then $HOME/.cache/kiln/plans.
// nullopt: memory only.
// `env` looks up environment variables (tests pass their own).
using Environment = std::function<const char*(const char*)>;
std::optional<std::filesystem::path> folder(const std::string& setting, const Environment& env);
std::optional<std::filesystem::path> folder(const std::string& setting);

// Creates `dir` if needed; empty when plans can be written there, else why not.
std::string check_writable(const std::filesystem::path& dir);

}  // namespace kiln::plans
