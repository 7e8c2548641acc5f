// safetensors files: parsed and validated header, data mmap'd read-only.
//
// Format: u64 little-endian header length N, N bytes of JSON
// {"name": {"dtype": "F16", "shape": [..], "data_offsets": [begin, end]}, ...,
//  "__metadata__": {"k": "v"}}, then the data area the offsets index into.
// A file whose header is truncated, malformed, or lies about sizes or offsets is
// rejected with a kiln::Error naming the file and the problem.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/tensor.h"

namespace kiln::io {

struct TensorEntry {
  std::string name;
  // The header's dtype string ("F16", "I8", "F8_E4M3", ...). A dtype kiln has no
  // DType for still parses, so a file holding one odd tensor (an unused int8
  // buffer) opens; such an entry has dtype_supported == false, `dtype` means
  // nothing, and view() / WeightSet::load() refuse it (load() converts F64).
  std::string stored_dtype;
  bool dtype_supported = true;
  DType dtype = DType::F32;
  Shape shape;
  uint64_t data_begin = 0;  // offsets into the data area, as in the header
  uint64_t data_end = 0;
};

class SafetensorsFile {
 public:
  static std::shared_ptr<const SafetensorsFile> open(const std::filesystem::path& path);

  // Header parsing on its own, for tests and fuzzing: `file` is the whole file's
  // bytes; `label` names it in errors. The result has no mapping (view() fails).
  static std::shared_ptr<const SafetensorsFile> parse(std::string_view file, std::string label);

  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& label() const { return label_; }
  const std::vector<TensorEntry>& entries() const { return entries_; }
  const TensorEntry* find(std::string_view name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  // A CPU tensor over the mapped bytes (no copy); it keeps the mapping alive.
  // The mapping is read-only: writing through the tensor faults. Data that
  // another writer left misaligned for its element type is copied instead.
  Tensor view(const TensorEntry& entry) const;
  // The entry's stored bytes, whatever its dtype (for loaders of types that
  // have no DType, such as fp8 or int8 weights); valid while this file lives.
  std::string_view bytes(const TensorEntry& entry) const;
  // Drops the entry's pages from memory once they have been converted, so a
  // loaded model is not held twice.
  void release(const TensorEntry& entry) const;

 private:
  SafetensorsFile() = default;
  void parse_header(std::string_view file);
  void check_owned(const TensorEntry& entry) const;

  std::string label_;
  std::vector<TensorEntry> entries_;
  std::map<std::string, size_t, std::less<>> index_;
  std::map<std::string, std::string> metadata_;
  const char* map_ = nullptr;  // whole file, when mapped
  size_t map_bytes_ = 0;
  size_t data_start_ = 0;  // 8 + header length
  std::shared_ptr<Buffer> mapping_;
};

// The weights of one model component: one file, or shards listed in an index.
class WeightSet {
 public:
  // In a component folder, the weights named `stem` ("diffusion_pytorch_model"
  // or "model"): `<stem>[.<variant>].safetensors` or the sharded form with
  // `<stem>.safetensors.index[.<variant>].json`. With no variant asked for,
  // the plain files are preferred and a lone variant (say only fp16 files) is
  // used when no plain file exists.
  static WeightSet open(const std::filesystem::path& dir, std::string_view stem,
                        std::string_view variant = "");
  static WeightSet open_file(const std::filesystem::path& file);
  // A sharded set: `<stem>.safetensors.index[.<variant>].json` and the files
  // its weight_map names, which must lie beside it.
  static WeightSet open_index(const std::filesystem::path& index_file);

  bool contains(std::string_view name) const;
  const TensorEntry& entry(std::string_view name) const;  // throws naming the tensor
  std::vector<std::string> names() const;
  std::string describe() const;  // the file(s), for messages

  // An owned CPU tensor of `dtype` holding the named weight; the mapped pages
  // are released after the copy. Floats (F32, F16, BF16, F64) convert among
  // f32/f16/bf16 rounding to nearest even; I32 and I64 load as i32 or i64 (to
  // i32 only when every value fits); anything else is a kiln::Error.
  Tensor load(std::string_view name, DType dtype = DType::F32) const;

 private:
  struct Located {
    const SafetensorsFile* file;
    const TensorEntry* entry;
  };
  const Located& locate(std::string_view name) const;
  void add_file(std::shared_ptr<const SafetensorsFile> file);

  std::string description_;
  std::vector<std::shared_ptr<const SafetensorsFile>> files_;
  std::map<std::string, Located, std::less<>> tensors_;
};

// Writes tensors (any supported dtype and device) as a safetensors file, laid
// out as the reference implementation does (header padded with spaces to a
// multiple of 8, data ordered by dtype then name), through a temporary file
// and a rename.
void write_safetensors(const std::filesystem::path& path,
                       const std::vector<std::pair<std::string, Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace kiln::io
