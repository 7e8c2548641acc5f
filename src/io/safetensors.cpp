#include "io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>

#include "io/image.h"
#include "kiln/error.h"

namespace kiln::io {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// The data area is read in place as little-endian values.
static_assert(std::endian::native == std::endian::little, "kiln assumes a little-endian host");

// The reference implementation's limit; a larger "length" means the file is
// not safetensors at all (or is hostile), and refusing it bounds the JSON work.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

// A valid header nests three deep (header → entry → shape); a little room is
// left for extensions, but a "[[[[..." bomb is refused before it costs memory.
constexpr int kMaxHeaderNesting = 4;
// An index's metadata is free-form; only bombs are refused.
constexpr int kMaxIndexNesting = 64;

struct StoredDType {
  std::string_view name;
  int bits;
  std::optional<DType> dtype;  // none: kiln cannot compute with it
};

// Every dtype the reference implementation knows, so that sizes of entries we
// cannot load are still checked.
constexpr StoredDType kStoredDTypes[] = {
    {"F32", 32, DType::F32},          {"F16", 16, DType::F16},
    {"BF16", 16, DType::BF16},        {"I32", 32, DType::I32},
    {"I64", 64, DType::I64},          {"F64", 64, std::nullopt},
    {"I8", 8, std::nullopt},          {"U8", 8, std::nullopt},
    {"BOOL", 8, std::nullopt},        {"I16", 16, std::nullopt},
    {"U16", 16, std::nullopt},        {"U32", 32, std::nullopt},
    {"U64", 64, std::nullopt},        {"C64", 64, std::nullopt},
    {"F8_E4M3", 8, std::nullopt},     {"F8_E5M2", 8, std::nullopt},
    {"F8_E4M3FNUZ", 8, std::nullopt}, {"F8_E5M2FNUZ", 8, std::nullopt},
    {"F8_E8M0", 8, std::nullopt},     {"F6_E2M3", 6, std::nullopt},
    {"F6_E3M2", 6, std::nullopt},     {"F4", 4, std::nullopt},
};

const StoredDType* find_stored_dtype(std::string_view name) {
  for (const StoredDType& d : kStoredDTypes)
    if (d.name == name) return &d;
  return nullptr;
}

std::string_view stored_name(DType dtype) {
  for (const StoredDType& d : kStoredDTypes)
    if (d.dtype == dtype) return d.name;
  KILN_CHECK(false, "no safetensors name for ", dtype_name(dtype));
}

// For messages about a JSON value of the wrong kind.
std::string describe_json(const json& value) {
  std::string text = value.dump(-1, ' ', false, json::error_handler_t::replace);
  if (text.size() > 60) text = text.substr(0, 57) + "...";
  return str(value.type_name(), " ", text);
}

// A JSON integer that fits in [0, 2^63): the only kind of number a shape or
// an offset may be.
std::optional<uint64_t> non_negative_integer(const json& value) {
  if (value.is_number_unsigned()) {
    const uint64_t v = value.get<uint64_t>();
    if (v <= uint64_t(std::numeric_limits<int64_t>::max())) return v;
  } else if (value.is_number_integer() && value.get<int64_t>() >= 0) {
    return uint64_t(value.get<int64_t>());
  }
  return std::nullopt;
}

json parse_json_object(std::string_view text, const std::string& label, std::string_view what,
                       int max_nesting) {
  std::set<std::string, std::less<>> top_level_keys;
  // Refuses deep nesting and repeated top-level keys while parsing, which a
  // plain json::parse would silently accept (keeping the last duplicate).
  auto guard = [&](int depth, json::parse_event_t event, json& parsed) {
    if ((event == json::parse_event_t::object_start || event == json::parse_event_t::array_start) &&
        depth >= max_nesting)
      KILN_FAIL(label, ": ", what, " nests deeper than any valid one (", max_nesting, " levels)");
    if (event == json::parse_event_t::key && depth == 1 &&
        !top_level_keys.insert(parsed.get<std::string>()).second)
      KILN_FAIL(label, ": ", what, " names \"", parsed.get<std::string>(), "\" twice");
    return true;
  };
  json parsed;
  try {
    parsed = json::parse(text.begin(), text.end(), guard);
  } catch (const json::exception& e) {
    KILN_FAIL(label, ": ", what, " is not valid JSON (", e.what(), ")");
  }
  if (!parsed.is_object())
    KILN_FAIL(label, ": ", what, " is not a JSON object but ", describe_json(parsed));
  return parsed;
}

TensorEntry parse_entry(const std::string& name, const json& value, uint64_t data_bytes,
                        const std::string& label) {
  const std::string where = str(label, ": tensor '", name, "'");
  if (!value.is_object())
    KILN_FAIL(where, ": expected an object with dtype, shape and data_offsets, got ",
              describe_json(value));
  for (const char* field : {"dtype", "shape", "data_offsets"})
    if (!value.contains(field)) KILN_FAIL(where, ": missing \"", field, "\"");

  TensorEntry entry;
  entry.name = name;
  const json& dtype = value["dtype"];
  if (!dtype.is_string())
    KILN_FAIL(where, ": \"dtype\" must be a string, got ", describe_json(dtype));
  entry.stored_dtype = dtype.get<std::string>();
  const StoredDType* stored = find_stored_dtype(entry.stored_dtype);
  if (!stored) KILN_FAIL(where, ": unknown dtype \"", entry.stored_dtype, "\"");
  entry.dtype_supported = stored->dtype.has_value();
  entry.dtype = stored->dtype.value_or(DType::F32);

  const json& shape = value["shape"];
  if (!shape.is_array())
    KILN_FAIL(where, ": \"shape\" must be an array, got ", describe_json(shape));
  if (shape.size() > size_t(Shape::kMaxDims))
    KILN_FAIL(where, ": shape has ", shape.size(), " dims; kiln supports at most ",
              Shape::kMaxDims);
  std::vector<int64_t> dims;
  uint64_t numel = 1;
  bool numel_overflows = false;
  for (const json& dim : shape) {
    const std::optional<uint64_t> d = non_negative_integer(dim);
    if (!d)
      KILN_FAIL(where, ": shape ", describe_json(shape), " must hold non-negative integers, found ",
                describe_json(dim));
    dims.push_back(int64_t(*d));
    numel_overflows |= __builtin_mul_overflow(numel, *d, &numel);
  }
  entry.shape = Shape(dims);

  const json& offsets = value["data_offsets"];
  std::optional<uint64_t> begin, end;
  if (offsets.is_array() && offsets.size() == 2) {
    begin = non_negative_integer(offsets[0]);
    end = non_negative_integer(offsets[1]);
  }
  if (!begin || !end || *begin > *end)
    KILN_FAIL(where, ": \"data_offsets\" must be [begin, end] with 0 <= begin <= end, got ",
              describe_json(offsets));
  if (*end > data_bytes)
    KILN_FAIL(where, ": data_offsets end ", *end, " is beyond the data area (", data_bytes,
              " bytes)");
  entry.data_begin = *begin;
  entry.data_end = *end;

  uint64_t bits = 0;
  numel_overflows |= __builtin_mul_overflow(numel, uint64_t(stored->bits), &bits);
  const uint64_t stored_bytes = *end - *begin;
  if (numel_overflows || bits % 8 != 0 || bits / 8 != stored_bytes)
    KILN_FAIL(where, ": data_offsets [", *begin, ", ", *end, "] hold ", stored_bytes,
              " bytes, but ", entry.stored_dtype, " ", entry.shape.str(), " needs ",
              numel_overflows ? std::string("more than 2^64 bits")
              : bits % 8      ? str(bits, " bits, not a whole number of bytes")
                              : str(bits / 8, " bytes"));
  return entry;
}

void check_no_overlap(const std::vector<TensorEntry>& entries, const std::string& label) {
  // Entries are sorted by data_begin; empty tensors occupy nothing.
  const TensorEntry* previous = nullptr;
  for (const TensorEntry& e : entries) {
    if (e.data_begin == e.data_end) continue;
    if (previous && e.data_begin < previous->data_end)
      KILN_FAIL(label, ": tensors '", previous->name, "' [", previous->data_begin, ", ",
                previous->data_end, ") and '", e.name, "' [", e.data_begin, ", ", e.data_end,
                ") overlap in the data area");
    if (!previous || e.data_end > previous->data_end) previous = &e;
  }
}

}  // namespace

// ---------------------------------------------------------------- SafetensorsFile

std::shared_ptr<const SafetensorsFile> SafetensorsFile::open(const fs::path& path) {
  std::shared_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->label_ = path.string();
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) KILN_FAIL("cannot open '", path.string(), "': ", std::strerror(errno));
  struct stat info {};
  if (::fstat(fd, &info) != 0 || !S_ISREG(info.st_mode)) {
    const int error = errno;
    ::close(fd);
    KILN_FAIL("cannot read '", path.string(),
              "': ", S_ISDIR(info.st_mode) ? "it is a folder" : std::strerror(error));
  }
  const size_t file_bytes = size_t(info.st_size);
  if (file_bytes > 0) {
    void* map = ::mmap(nullptr, file_bytes, PROT_READ, MAP_PRIVATE, fd, 0);
    const int error = errno;
    ::close(fd);
    if (map == MAP_FAILED)
      KILN_FAIL("cannot map '", path.string(), "' (", file_bytes,
                " bytes): ", std::strerror(error));
    file->map_ = static_cast<const char*>(map);
    file->map_bytes_ = file_bytes;
    file->mapping_ = std::make_shared<Buffer>(Device::CPU, map, file_bytes,
                                              [file_bytes](void* p) { ::munmap(p, file_bytes); });
  } else {
    ::close(fd);
  }
  file->parse_header(std::string_view(file->map_, file->map_bytes_));
  return file;
}

std::shared_ptr<const SafetensorsFile> SafetensorsFile::parse(std::string_view file,
                                                              std::string label) {
  std::shared_ptr<SafetensorsFile> parsed(new SafetensorsFile());
  parsed->label_ = std::move(label);
  parsed->parse_header(file);
  return parsed;
}

SafetensorsFile::~SafetensorsFile() = default;

void SafetensorsFile::parse_header(std::string_view file) {
  if (file.size() < 8)
    KILN_FAIL(label_, ": ", file.size(),
              " bytes is too short for a safetensors file, which starts with an 8-byte header "
              "length");
  uint64_t header_bytes;
  std::memcpy(&header_bytes, file.data(), 8);
  if (header_bytes > kMaxHeaderBytes)
    KILN_FAIL(label_, ": header length ", header_bytes, " exceeds the limit of ", kMaxHeaderBytes,
              " bytes; is this a safetensors file?");
  if (header_bytes > file.size() - 8)
    KILN_FAIL(label_, ": header length ", header_bytes, " runs past the end of the file (",
              file.size(), " bytes); the file is truncated or not safetensors");
  data_start_ = 8 + size_t(header_bytes);
  const uint64_t data_bytes = file.size() - data_start_;

  const json header =
      parse_json_object(file.substr(8, header_bytes), label_, "header", kMaxHeaderNesting);
  for (const auto& [key, value] : header.items()) {
    if (key == "__metadata__") {
      if (!value.is_object())
        KILN_FAIL(label_, ": __metadata__ must be an object of strings, got ",
                  describe_json(value));
      for (const auto& [meta_key, meta_value] : value.items()) {
        if (!meta_value.is_string())
          KILN_FAIL(label_, ": __metadata__ value of \"", meta_key, "\" must be a string, got ",
                    describe_json(meta_value));
        metadata_[meta_key] = meta_value.get<std::string>();
      }
      continue;
    }
    entries_.push_back(parse_entry(key, value, data_bytes, label_));
  }
  // File order, so that a loader walking entries() reads the file front to back.
  std::sort(entries_.begin(), entries_.end(), [](const TensorEntry& a, const TensorEntry& b) {
    return a.data_begin != b.data_begin ? a.data_begin < b.data_begin : a.name < b.name;
  });
  check_no_overlap(entries_, label_);
  for (size_t i = 0; i < entries_.size(); ++i) index_.emplace(entries_[i].name, i);
}

const TensorEntry* SafetensorsFile::find(std::string_view name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : &entries_[it->second];
}

void SafetensorsFile::check_owned(const TensorEntry& entry) const {
  KILN_CHECK(find(entry.name) == &entry, "tensor '", entry.name, "' is not an entry of ", label_);
  if (!map_)
    KILN_FAIL(label_, ": was parsed from memory, without a mapping; tensor '", entry.name,
              "' has no data to read");
}

std::string_view SafetensorsFile::bytes(const TensorEntry& entry) const {
  check_owned(entry);
  return {map_ + data_start_ + entry.data_begin, size_t(entry.data_end - entry.data_begin)};
}

Tensor SafetensorsFile::view(const TensorEntry& entry) const {
  check_owned(entry);
  if (!entry.dtype_supported)
    KILN_FAIL(label_, ": tensor '", entry.name, "' is stored as ", entry.stored_dtype,
              ", which kiln cannot view (it computes with F32, F16, BF16, I32 and I64)");
  const size_t offset = data_start_ + size_t(entry.data_begin);
  if (offset % dtype_size(entry.dtype) == 0)
    return Tensor(entry.shape, entry.dtype, mapping_, offset);
  // Only a writer that neither pads the header to 8 bytes nor orders tensors by
  // element size leaves data misaligned; kernels may not read it in place.
  Tensor copy = Tensor::empty(entry.shape, entry.dtype);
  if (copy.nbytes()) std::memcpy(copy.raw(), map_ + offset, copy.nbytes());
  return copy;
}

void SafetensorsFile::release(const TensorEntry& entry) const {
  check_owned(entry);
  // Only pages wholly inside the entry: a neighbour's bytes may still be wanted.
  // The mapping is private and read-only, so a dropped page that is read again
  // is simply faulted back in from the file.
  const uintptr_t page = uintptr_t(::sysconf(_SC_PAGESIZE));
  const uintptr_t begin = uintptr_t(map_ + data_start_ + entry.data_begin);
  const uintptr_t end = uintptr_t(map_ + data_start_ + entry.data_end);
  const uintptr_t first_page = (begin + page - 1) / page * page;
  const uintptr_t last_page = end / page * page;
  if (first_page < last_page)
    ::madvise(reinterpret_cast<void*>(first_page), last_page - first_page, MADV_DONTNEED);
}

// ---------------------------------------------------------------- WeightSet

namespace {

// Files that hold weights in some format, for the message when none is usable.
bool looks_like_weights(const fs::path& file) {
  static const std::set<std::string, std::less<>> kWeightExtensions = {
      ".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".onnx", ".msgpack", ".h5"};
  const std::string name = file.filename().string();
  return kWeightExtensions.count(file.extension().string()) ||
         name.find(".index") != std::string::npos;
}

bool is_pickle(const fs::path& file) {
  const std::string ext = file.extension().string();
  return ext == ".bin" || ext == ".pt" || ext == ".pth" || ext == ".ckpt";
}

// Names of the entries in `dir`; an unreadable folder lists as empty, since
// the caller's own message then says what was expected there.
std::vector<std::string> list_dir(const fs::path& dir) {
  std::vector<std::string> names;
  std::error_code error;
  for (fs::directory_iterator it(dir, error), end; !error && it != end; it.increment(error))
    names.push_back(it->path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

std::string single_file_name(std::string_view stem, std::string_view variant) {
  return variant.empty() ? str(stem, ".safetensors") : str(stem, ".", variant, ".safetensors");
}

std::string index_file_name(std::string_view stem, std::string_view variant) {
  return variant.empty() ? str(stem, ".safetensors.index.json")
                         : str(stem, ".safetensors.index.", variant, ".json");
}

// The variants present for `stem`: "fp16" from `<stem>.fp16.safetensors` or
// `<stem>.safetensors.index.fp16.json`. Shards (`<stem>.fp16-00001-of-00002`)
// are reached through their index and are not variants of their own.
std::vector<std::string> variants_in(const fs::path& dir, std::string_view stem) {
  std::set<std::string> variants;
  const std::string single_prefix = str(stem, "."), index_prefix = str(stem, ".safetensors.index.");
  auto middle = [](const std::string& name, const std::string& prefix,
                   std::string_view suffix) -> std::optional<std::string> {
    if (name.size() <= prefix.size() + suffix.size() || !name.starts_with(prefix) ||
        !name.ends_with(suffix))
      return std::nullopt;
    std::string m = name.substr(prefix.size(), name.size() - prefix.size() - suffix.size());
    if (m.find_first_of(".-") != std::string::npos) return std::nullopt;
    return m;
  };
  for (const std::string& name : list_dir(dir)) {
    if (auto v = middle(name, index_prefix, ".json"))
      variants.insert(*v);
    else if (auto w = middle(name, single_prefix, ".safetensors"))
      variants.insert(*w);
  }
  return {variants.begin(), variants.end()};
}

std::string join(const std::vector<std::string>& items) {
  std::string joined;
  for (const std::string& item : items) joined += (joined.empty() ? "" : ", ") + item;
  return joined;
}

[[noreturn]] void fail_no_weights(const fs::path& dir, std::string_view stem,
                                  std::string_view variant) {
  std::vector<std::string> found;
  bool pickles = false;
  for (const std::string& name : list_dir(dir)) {
    if (!looks_like_weights(name)) continue;
    found.push_back(name);
    pickles |= is_pickle(name);
  }
  const std::string wanted =
      variant.empty() ? str(single_file_name(stem, ""), " or ", index_file_name(stem, ""))
                      : str(single_file_name(stem, variant), " or ", index_file_name(stem, variant),
                            " (variant \"", variant, "\")");
  KILN_FAIL("no weights in '", dir.string(), "': expected ", wanted, "; ",
            found.empty() ? std::string("the folder holds no weight files")
                          : str("the folder holds ", join(found)),
            pickles ? ". kiln reads only safetensors; convert the PyTorch pickle files, e.g. "
                      "with diffusers' save_pretrained(..., safe_serialization=True)"
                    : "");
}

// A float source read element by element: data from a file may be unaligned.
template <class Stored>
Stored read_element(const char* data, int64_t i) {
  Stored value;
  std::memcpy(&value, data + i * int64_t(sizeof(Stored)), sizeof(Stored));
  return value;
}

template <class ReadFloat>
void convert_floats(int64_t n, ReadFloat read, Tensor& out) {
  switch (out.dtype()) {
    case DType::F32: {
      float* dst = out.data<float>();
#pragma omp parallel for if (n > (1 << 18))
      for (int64_t i = 0; i < n; ++i) dst[i] = read(i);
      return;
    }
    case DType::F16: {
      f16* dst = out.data<f16>();
#pragma omp parallel for if (n > (1 << 18))
      for (int64_t i = 0; i < n; ++i) dst[i].bits = float_to_f16(read(i));
      return;
    }
    case DType::BF16: {
      bf16* dst = out.data<bf16>();
#pragma omp parallel for if (n > (1 << 18))
      for (int64_t i = 0; i < n; ++i) dst[i].bits = float_to_bf16(read(i));
      return;
    }
    default:
      KILN_CHECK(false, "not a float dtype: ", dtype_name(out.dtype()));
  }
}

}  // namespace

WeightSet WeightSet::open(const fs::path& dir, std::string_view stem, std::string_view variant) {
  std::error_code error;
  if (!fs::is_directory(dir, error))
    KILN_FAIL("model folder '", dir.string(), "' ",
              fs::exists(dir, error) ? "is not a folder" : "does not exist");
  auto open_variant = [&](std::string_view v) -> std::optional<WeightSet> {
    const fs::path single = dir / single_file_name(stem, v);
    if (fs::is_regular_file(single, error)) return open_file(single);
    const fs::path index = dir / index_file_name(stem, v);
    if (fs::is_regular_file(index, error)) return open_index(index);
    return std::nullopt;
  };
  if (!variant.empty()) {
    if (auto weights = open_variant(variant)) return *weights;
    fail_no_weights(dir, stem, variant);
  }
  if (auto weights = open_variant("")) return *weights;
  const std::vector<std::string> variants = variants_in(dir, stem);
  if (variants.size() == 1) return *open_variant(variants[0]);
  if (variants.size() > 1)
    KILN_FAIL("'", dir.string(), "' holds no plain ", stem, " weights but several variants (",
              join(variants), "); choose one with the variant option");
  fail_no_weights(dir, stem, variant);
}

WeightSet WeightSet::open_file(const fs::path& file) {
  WeightSet weights;
  weights.description_ = file.string();
  weights.add_file(SafetensorsFile::open(file));
  return weights;
}

WeightSet WeightSet::open_index(const fs::path& index_file) {
  const std::string label = index_file.string();
  const json index = parse_json_object(read_file(index_file), label, "index", kMaxIndexNesting);
  if (!index.contains("weight_map") || !index["weight_map"].is_object())
    KILN_FAIL(label, ": an index needs a \"weight_map\" object (tensor name → shard file)");
  const json& weight_map = index["weight_map"];
  if (weight_map.empty()) KILN_FAIL(label, ": weight_map lists no tensors");

  WeightSet weights;
  std::map<std::string, std::shared_ptr<const SafetensorsFile>> shards;
  for (const auto& [name, shard] : weight_map.items()) {
    if (!shard.is_string())
      KILN_FAIL(label, ": weight_map entry for '", name, "' must be a file name, got ",
                describe_json(shard));
    const std::string shard_name = shard.get<std::string>();
    // Shards lie beside the index; a name that reaches elsewhere is refused.
    if (shard_name.empty() || shard_name == "." || shard_name == ".." ||
        shard_name.find_first_of("/\\") != std::string::npos ||
        shard_name.find('\0') != std::string::npos)
      KILN_FAIL(label, ": weight_map names shard \"", shard_name,
                "\", which is not a file name in the index's folder");
    if (shards.count(shard_name)) continue;
    const fs::path shard_path = index_file.parent_path() / shard_name;
    std::error_code error;
    if (!fs::exists(shard_path, error))
      KILN_FAIL(label, ": names shard '", shard_name, "' (for tensor '", name,
                "'), which is not in '", index_file.parent_path().string(), "'");
    shards.emplace(shard_name, SafetensorsFile::open(shard_path));
  }
  for (const auto& [shard_name, file] : shards) weights.add_file(file);
  for (const auto& [name, shard] : weight_map.items()) {
    const auto it = weights.tensors_.find(name);
    const SafetensorsFile* named = shards.at(shard.get<std::string>()).get();
    if (it == weights.tensors_.end() || it->second.file != named)
      KILN_FAIL(label, ": says tensor '", name, "' is in ", named->label(),
                ", which does not hold it");
  }
  weights.description_ = str(label, " (", shards.size(), " shards)");
  return weights;
}

void WeightSet::add_file(std::shared_ptr<const SafetensorsFile> file) {
  for (const TensorEntry& entry : file->entries()) {
    const auto [it, added] = tensors_.emplace(entry.name, Located{file.get(), &entry});
    if (!added)
      KILN_FAIL("tensor '", entry.name, "' is in both ", it->second.file->label(), " and ",
                file->label());
  }
  files_.push_back(std::move(file));
}

bool WeightSet::contains(std::string_view name) const {
  return tensors_.find(name) != tensors_.end();
}

const TensorEntry& WeightSet::entry(std::string_view name) const {
  return *locate(name).entry;
}

std::vector<std::string> WeightSet::names() const {
  std::vector<std::string> names;
  names.reserve(tensors_.size());
  for (const auto& [name, located] : tensors_) names.push_back(name);
  return names;
}

std::string WeightSet::describe() const {
  return description_;
}

const WeightSet::Located& WeightSet::locate(std::string_view name) const {
  const auto it = tensors_.find(name);
  if (it == tensors_.end()) KILN_FAIL("tensor '", name, "' is not in ", describe());
  return it->second;
}

Tensor WeightSet::load(std::string_view name, DType dtype) const {
  const Located& at = locate(name);
  const TensorEntry& entry = *at.entry;
  const char* data = at.file->bytes(entry).data();
  const int64_t n = entry.shape.numel();
  const std::string_view stored = entry.stored_dtype;
  const bool stored_float =
      stored == "F32" || stored == "F16" || stored == "BF16" || stored == "F64";
  const bool stored_int = stored == "I32" || stored == "I64";
  auto refuse = [&](std::string_view why) {
    KILN_FAIL("tensor '", entry.name, "' in ", at.file->label(), " is stored as ", stored, why,
              dtype_name(dtype));
  };
  if (!stored_float && !stored_int)
    KILN_FAIL("tensor '", entry.name, "' in ", at.file->label(), " is stored as ", stored,
              ", which kiln cannot load (it reads F32, F16, BF16, F64, I32 and I64)");

  Tensor out = Tensor::empty(entry.shape, dtype);
  if (entry.dtype_supported && entry.dtype == dtype) {
    if (out.nbytes()) std::memcpy(out.raw(), data, out.nbytes());
  } else if (stored_float) {
    if (!is_floating(dtype)) refuse(" (floating point) and cannot be loaded as ");
    if (stored == "F32")
      convert_floats(
          n, [&](int64_t i) { return read_element<float>(data, i); }, out);
    else if (stored == "F16")
      convert_floats(
          n, [&](int64_t i) { return f16_to_float(read_element<uint16_t>(data, i)); }, out);
    else if (stored == "BF16")
      convert_floats(
          n, [&](int64_t i) { return bf16_to_float(read_element<uint16_t>(data, i)); }, out);
    else
      convert_floats(
          n, [&](int64_t i) { return float(read_element<double>(data, i)); }, out);
  } else if (dtype == DType::I64) {  // stored I32
    int64_t* dst = out.data<int64_t>();
    for (int64_t i = 0; i < n; ++i) dst[i] = read_element<int32_t>(data, i);
  } else if (dtype == DType::I32) {  // stored I64
    int32_t* dst = out.data<int32_t>();
    for (int64_t i = 0; i < n; ++i) {
      const int64_t value = read_element<int64_t>(data, i);
      if (value < std::numeric_limits<int32_t>::min() ||
          value > std::numeric_limits<int32_t>::max())
        KILN_FAIL("tensor '", entry.name, "' in ", at.file->label(), " holds ", value, " at index ",
                  i, ", which does not fit in i32");
      dst[i] = int32_t(value);
    }
  } else {
    refuse(" (integers) and cannot be loaded as ");
  }
  at.file->release(entry);
  return out;
}

// ---------------------------------------------------------------- writing

void write_safetensors(const fs::path& path,
                       const std::vector<std::pair<std::string, Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  // Host copies of device tensors live until the file is written.
  std::vector<Tensor> host;
  host.reserve(tensors.size());
  std::set<std::string_view> names;
  for (const auto& [name, tensor] : tensors) {
    KILN_CHECK(tensor.defined(), "tensor '", name, "' to write to ", path.string(), " is empty");
    if (name == "__metadata__" || !names.insert(name).second)
      KILN_FAIL("cannot write ", path.string(), ": tensor name '", name,
                name == "__metadata__" ? "' is reserved" : "' appears twice");
    host.push_back(tensor.is_cpu() ? tensor : tensor.to(Device::CPU));
  }
  // The reference writer's order (its Dtype enum, descending, then the name),
  // which puts wider elements first and so keeps every tensor aligned, and
  // makes our files byte for byte the ones the Python package writes.
  constexpr DType kReferenceOrder[] = {DType::I64, DType::F32, DType::I32, DType::BF16, DType::F16};
  auto reference_rank = [&](DType dtype) {
    return std::find(std::begin(kReferenceOrder), std::end(kReferenceOrder), dtype) -
           std::begin(kReferenceOrder);
  };
  std::vector<size_t> order(tensors.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    const auto rank_a = reference_rank(host[a].dtype()), rank_b = reference_rank(host[b].dtype());
    return rank_a != rank_b ? rank_a < rank_b : tensors[a].first < tensors[b].first;
  });

  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<std::string_view> pieces(2);
  uint64_t offset = 0;
  for (size_t i : order) {
    const Tensor& t = host[i];
    header[tensors[i].first] = {{"dtype", stored_name(t.dtype())},
                                {"shape", t.shape().vec()},
                                {"data_offsets", {offset, offset + t.nbytes()}}};
    offset += t.nbytes();
    pieces.emplace_back(static_cast<const char*>(t.raw()), t.nbytes());
  }
  std::string header_text;
  try {
    header_text = header.dump();
  } catch (const nlohmann::json::exception& e) {
    KILN_FAIL("cannot write ", path.string(), ": a tensor name or metadata is not UTF-8 (",
              e.what(), ")");
  }
  header_text.append((8 - header_text.size() % 8) % 8, ' ');
  const uint64_t header_bytes = header_text.size();
  char length[8];
  std::memcpy(length, &header_bytes, 8);
  pieces[0] = std::string_view(length, 8);
  pieces[1] = header_text;
  write_file_atomic(path, pieces);
}

}  // namespace kiln::io
