// safetensors reading and writing: files written by the Python `safetensors`
// package and diffusers (tests/data/io, made by tools/py/make_io_test_files.py),
// malformed files built here, and model-folder resolution.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include "io/safetensors.h"

namespace kiln::io {
namespace {

namespace fs = std::filesystem;

const fs::path kData = fs::path(KILN_TEST_DATA) / "io";

// A fresh folder, removed with everything in it at the end of the test.
class TempDir {
 public:
  TempDir() {
    static int counter = 0;
    path_ = fs::temp_directory_path() / ("kiln_safetensors_test_" + std::to_string(::getpid()) +
                                         "_" + std::to_string(counter++));
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ignored;
    fs::remove_all(path_, ignored);
  }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

void write_bytes(const fs::path& path, std::string_view bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), std::streamsize(bytes.size()));
  ASSERT_TRUE(out.good()) << "could not write " << path;
}

// A safetensors file: the header's length, the header, then `data`.
std::string make_file(std::string_view header, std::string_view data = "") {
  std::string file(8, '\0');
  const uint64_t length = header.size();
  std::memcpy(file.data(), &length, 8);
  file += header;
  file += data;
  return file;
}

// The message of the kiln::Error that `action` throws, or a note that it threw none.
template <class Action>
std::string error_of(Action&& action) {
  try {
    action();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error thrown)";
}

std::string parse_error(std::string_view file) {
  return error_of([&] { SafetensorsFile::parse(file, "bad.safetensors"); });
}

void expect_mentions(const std::string& message, std::initializer_list<std::string_view> parts) {
  for (std::string_view part : parts)
    EXPECT_NE(message.find(part), std::string::npos)
        << "expected the message to mention \"" << part << "\"; it was: " << message;
}

std::vector<float> floats_of(const Tensor& t) {
  const float* p = t.data<float>();
  return {p, p + t.numel()};
}

std::vector<uint16_t> half_bits_of(const Tensor& t) {
  std::vector<uint16_t> bits(size_t(t.numel()));
  std::memcpy(bits.data(), t.raw(), t.nbytes());
  return bits;
}

// ---------------------------------------------------------------- files from Python

TEST(Safetensors, ReadsEachDtypeWrittenByThePythonPackage) {
  const auto file = SafetensorsFile::open(kData / "safetensors" / "mixed.safetensors");
  EXPECT_EQ(file->metadata().at("format"), "pt");

  std::vector<float> grid;
  for (int i = 0; i < 12; ++i) grid.push_back(float(i) * 0.25f - 1.5f);
  const TensorEntry* f32 = file->find("f32.weight");
  ASSERT_NE(f32, nullptr);
  EXPECT_EQ(f32->stored_dtype, "F32");
  EXPECT_EQ(f32->shape, Shape({3, 4}));
  EXPECT_EQ(floats_of(file->view(*f32)), grid);

  const WeightSet weights = WeightSet::open_file(kData / "safetensors" / "mixed.safetensors");
  const Tensor f16 = weights.load("f16.weight");
  EXPECT_EQ(f16.shape(), Shape({2, 3, 2}));
  EXPECT_EQ(floats_of(f16), grid);
  EXPECT_EQ(file->view(*file->find("f16.weight")).dtype(), DType::F16);
  EXPECT_EQ(floats_of(weights.load("bf16.weight")),
            std::vector<float>(grid.begin(), grid.begin() + 4));

  const Tensor i32 = weights.load("i32.ids", DType::I32);
  EXPECT_EQ(std::vector<int32_t>(i32.data<int32_t>(), i32.data<int32_t>() + 4),
            (std::vector<int32_t>{0, -1, 2147483647, -2147483647 - 1}));
  const Tensor i64 = weights.load("i64.ids", DType::I64);
  EXPECT_EQ(std::vector<int64_t>(i64.data<int64_t>(), i64.data<int64_t>() + 4),
            (std::vector<int64_t>{5, -7, 49407, 0}));

  const Tensor scalar = weights.load("scalar");
  EXPECT_EQ(scalar.ndim(), 0);
  EXPECT_EQ(scalar.data<float>()[0], 2.5f);
  EXPECT_EQ(weights.load("empty").shape(), Shape({0, 3}));
}

TEST(Safetensors, EntriesAreInFileOrder) {
  const auto file = SafetensorsFile::open(kData / "safetensors" / "mixed.safetensors");
  ASSERT_EQ(file->entries().size(), 11u);
  for (size_t i = 1; i < file->entries().size(); ++i)
    EXPECT_LE(file->entries()[i - 1].data_begin, file->entries()[i].data_begin);
}

// Equal bits, except that any NaN matches any NaN: torch's vectorised bf16
// conversion writes NaN as 0xffff, its scalar one as 0x7fc0.
void expect_same_16_bit_floats(const std::vector<uint16_t>& got, const std::vector<uint16_t>& want,
                               int exponent_bits) {
  ASSERT_EQ(got.size(), want.size());
  const uint16_t exponent_mask = uint16_t(((1u << exponent_bits) - 1) << (15 - exponent_bits));
  const uint16_t mantissa_mask = uint16_t((1u << (15 - exponent_bits)) - 1);
  auto is_nan = [&](uint16_t bits) {
    return (bits & exponent_mask) == exponent_mask && (bits & mantissa_mask) != 0;
  };
  for (size_t i = 0; i < got.size(); ++i)
    if (!(is_nan(got[i]) && is_nan(want[i]))) {
      EXPECT_EQ(got[i], want[i]) << "element " << i;
    }
}

TEST(Safetensors, LoadRoundsToHalfAndBfloat16ExactlyAsTorchDoes) {
  const WeightSet weights = WeightSet::open_file(kData / "safetensors" / "mixed.safetensors");
  // The file holds torch's .half() and .bfloat16() of the same values.
  expect_same_16_bit_floats(half_bits_of(weights.load("rounding.f32", DType::F16)),
                            half_bits_of(weights.load("rounding.as_f16", DType::F16)), 5);
  expect_same_16_bit_floats(half_bits_of(weights.load("rounding.f32", DType::BF16)),
                            half_bits_of(weights.load("rounding.as_bf16", DType::BF16)), 8);
  // And widening is exact: f16 → f32 → f16 gives the stored bits back.
  const Tensor widened = weights.load("rounding.as_f16", DType::F32);
  const std::vector<uint16_t> stored = half_bits_of(weights.load("rounding.as_f16", DType::F16));
  for (size_t i = 0; i < stored.size(); ++i) {
    const float value = widened.data<float>()[i];
    if (std::isnan(value)) continue;
    EXPECT_EQ(float_to_f16(value), stored[i]) << "element " << i;
  }
}

TEST(Safetensors, IntegerLoadsNarrowOnlyWhenValuesFit) {
  const WeightSet weights = WeightSet::open_file(kData / "safetensors" / "mixed.safetensors");
  const Tensor narrowed = weights.load("i64.ids", DType::I32);
  EXPECT_EQ(narrowed.data<int32_t>()[2], 49407);
  const Tensor widened = weights.load("i32.ids", DType::I64);
  EXPECT_EQ(widened.data<int64_t>()[3], -2147483648LL);
  expect_mentions(error_of([&] { weights.load("i64.too_big", DType::I32); }),
                  {"i64.too_big", "1099511627776", "does not fit in i32"});
  expect_mentions(error_of([&] { weights.load("i64.ids", DType::F32); }),
                  {"i64.ids", "I64", "cannot be loaded as f32"});
  expect_mentions(error_of([&] { weights.load("f32.weight", DType::I32); }),
                  {"f32.weight", "cannot be loaded as i32"});
}

TEST(Safetensors, OpensAFileWithDtypesKilnCannotComputeWith) {
  const fs::path path = kData / "safetensors" / "odd_dtypes.safetensors";
  const auto file = SafetensorsFile::open(path);
  for (const char* name : {"int8.buffer", "u8.mask", "bool.flags", "f8.weight", "f64.values"})
    EXPECT_FALSE(file->find(name)->dtype_supported) << name;
  EXPECT_EQ(file->find("f8.weight")->stored_dtype, "F8_E4M3");
  EXPECT_TRUE(file->find("ok.f32")->dtype_supported);

  const WeightSet weights = WeightSet::open_file(path);
  EXPECT_EQ(floats_of(weights.load("ok.f32")), (std::vector<float>{1.0f, 2.0f}));
  expect_mentions(error_of([&] { weights.load("int8.buffer"); }),
                  {"int8.buffer", "I8", "odd_dtypes.safetensors", "cannot load"});
  expect_mentions(error_of([&] { file->view(*file->find("bool.flags")); }), {"bool.flags", "BOOL"});
  // F64 converts; 1e300 is beyond f32 and becomes infinity, as torch's .float() does.
  EXPECT_EQ(floats_of(weights.load("f64.values")),
            (std::vector<float>{1.5f, -2.25f, 1e-3f, std::numeric_limits<float>::infinity()}));
  // Raw bytes stay reachable for loaders of other types: torch's e4m3 encodings.
  EXPECT_EQ(file->bytes(*file->find("f8.weight")), std::string_view("\x30\xb8\x7e\x00", 4));
}

TEST(Safetensors, ViewSharesTheMappingAndOutlivesTheFileObject) {
  auto file = SafetensorsFile::open(kData / "safetensors" / "mixed.safetensors");
  const TensorEntry& entry = *file->find("f32.weight");
  const Tensor first = file->view(entry), second = file->view(entry);
  EXPECT_EQ(first.raw(), second.raw()) << "a view should not copy";
  EXPECT_EQ(first.raw(), file->bytes(entry).data());
  file.reset();
  EXPECT_EQ(first.data<float>()[11], 1.25f);
}

TEST(Safetensors, MisalignedDataIsCopiedToAnAlignedTensor) {
  // A 9-byte header puts the data area at byte 17, so an f32 there is misaligned.
  const std::string header = R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  std::string padded = header;
  while ((8 + padded.size()) % 4 != 1) padded += ' ';
  const float values[2] = {3.5f, -1.25f};
  TempDir dir;
  write_bytes(dir.path() / "odd.safetensors",
              make_file(padded, std::string_view(reinterpret_cast<const char*>(values), 8)));
  const auto file = SafetensorsFile::open(dir.path() / "odd.safetensors");
  const Tensor x = file->view(*file->find("x"));
  EXPECT_EQ(reinterpret_cast<uintptr_t>(x.raw()) % alignof(float), 0u);
  EXPECT_EQ(floats_of(x), (std::vector<float>{3.5f, -1.25f}));
}

// ---------------------------------------------------------------- malformed files

struct MalformedCase {
  const char* what;
  std::string file;
  std::vector<std::string_view> mentions;
};

std::string entry_file(std::string_view entry_json, size_t data_bytes = 16) {
  return make_file(str("{\"t\":", entry_json, "}"), std::string(data_bytes, '\0'));
}

TEST(Safetensors, RejectsMalformedFilesNamingTheProblem) {
  const std::string huge_length = [] {
    std::string f(16, ' ');
    const uint64_t length = uint64_t(1) << 40;
    std::memcpy(f.data(), &length, 8);
    return f;
  }();
  const std::vector<MalformedCase> cases = {
      {"empty file", "", {"0 bytes", "too short"}},
      {"7 bytes", std::string(7, '\0'), {"7 bytes", "too short"}},
      {"absurd header length", huge_length, {"1099511627776", "exceeds the limit"}},
      {"header past the end", make_file("{}").substr(0, 9), {"runs past the end"}},
      {"not JSON", make_file("{\"t\": nope}"), {"not valid JSON"}},
      {"not UTF-8", make_file("{\"\xff\":1}"), {"not valid JSON"}},
      {"JSON array", make_file("[1, 2]"), {"not a JSON object", "array"}},
      {"entry is a number", make_file("{\"t\": 3}"), {"'t'", "expected an object"}},
      {"missing dtype",
       entry_file(R"({"shape":[1],"data_offsets":[0,4]})"),
       {"'t'", "missing \"dtype\""}},
      {"missing shape",
       entry_file(R"({"dtype":"F32","data_offsets":[0,4]})"),
       {"missing \"shape\""}},
      {"missing offsets",
       entry_file(R"({"dtype":"F32","shape":[1]})"),
       {"missing \"data_offsets\""}},
      {"dtype a number",
       entry_file(R"({"dtype":3,"shape":[1],"data_offsets":[0,4]})"),
       {"\"dtype\" must be a string"}},
      {"unknown dtype",
       entry_file(R"({"dtype":"F99","shape":[1],"data_offsets":[0,4]})"),
       {"unknown dtype \"F99\""}},
      {"shape an object",
       entry_file(R"({"dtype":"F32","shape":{},"data_offsets":[0,4]})"),
       {"\"shape\" must be an array"}},
      {"negative dim",
       entry_file(R"({"dtype":"F32","shape":[-1],"data_offsets":[0,4]})"),
       {"non-negative integers", "-1"}},
      {"fractional dim",
       entry_file(R"({"dtype":"F32","shape":[2.5],"data_offsets":[0,4]})"),
       {"non-negative integers", "2.5"}},
      {"float dim",
       entry_file(R"({"dtype":"F32","shape":[1.0],"data_offsets":[0,4]})"),
       {"non-negative integers"}},
      {"string dim",
       entry_file(R"({"dtype":"F32","shape":["1"],"data_offsets":[0,4]})"),
       {"non-negative integers"}},
      {"dim beyond int64",
       entry_file(R"({"dtype":"F32","shape":[18446744073709551615],"data_offsets":[0,4]})"),
       {"non-negative integers"}},
      {"seven dims",
       entry_file(R"({"dtype":"F32","shape":[1,1,1,1,1,1,1],"data_offsets":[0,4]})"),
       {"7 dims", "at most 6"}},
      {"one offset",
       entry_file(R"({"dtype":"F32","shape":[1],"data_offsets":[4]})"),
       {"[begin, end]"}},
      {"offsets reversed",
       entry_file(R"({"dtype":"F32","shape":[1],"data_offsets":[8,4]})"),
       {"begin <= end", "[8,4]"}},
      {"negative offset",
       entry_file(R"({"dtype":"F32","shape":[1],"data_offsets":[-4,0]})"),
       {"[begin, end]"}},
      {"string offsets",
       entry_file(R"({"dtype":"F32","shape":[1],"data_offsets":["0","4"]})"),
       {"[begin, end]"}},
      {"end past data",
       entry_file(R"({"dtype":"F32","shape":[8],"data_offsets":[0,32]})"),
       {"end 32", "beyond the data area (16 bytes)"}},
      {"size mismatch",
       entry_file(R"({"dtype":"F32","shape":[3],"data_offsets":[0,8]})"),
       {"hold 8 bytes", "F32 [3] needs 12 bytes"}},
      {"numel overflow",
       entry_file(R"({"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,16]})"),
       {"more than 2^64 bits"}},
      {"half a byte",
       entry_file(R"({"dtype":"F4","shape":[3],"data_offsets":[0,2]})"),
       {"12 bits, not a whole number of bytes"}},
      {"overlap",
       make_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                 R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                 std::string(12, '\0')),
       {"'a'", "'b'", "overlap"}},
      {"overlap inside a larger tensor",
       make_file(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
                 R"("b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]},)"
                 R"("c":{"dtype":"F32","shape":[1],"data_offsets":[12,16]}})",
                 std::string(16, '\0')),
       {"overlap"}},
      {"metadata a list",
       make_file(R"({"__metadata__":["a"]})"),
       {"__metadata__", "object of strings"}},
      {"metadata value a number",
       make_file(R"({"__metadata__":{"k":1}})"),
       {"__metadata__", "\"k\"", "must be a string"}},
      {"metadata null", make_file(R"({"__metadata__":null})"), {"__metadata__"}},
      {"duplicate name",
       make_file(R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                 R"("t":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                 std::string(8, '\0')),
       {"\"t\" twice"}},
      {"deep nesting", make_file(R"({"t":{"x":[[[[1]]]]}})"), {"nests deeper"}},
      {"nesting bomb",
       make_file(std::string(100000, '[') + std::string(100000, ']')),
       {"nests deeper"}},
  };
  for (const MalformedCase& c : cases) {
    SCOPED_TRACE(c.what);
    const std::string message = parse_error(c.file);
    expect_mentions(message, {"bad.safetensors"});
    for (std::string_view part : c.mentions) expect_mentions(message, {part});
  }
}

TEST(Safetensors, AcceptsGapsEmptyTensorsAndAnEmptyHeader) {
  EXPECT_TRUE(SafetensorsFile::parse(make_file("{}  "), "empty")->entries().empty());
  const auto file =
      SafetensorsFile::parse(make_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                                       R"("z":{"dtype":"F32","shape":[0,5],"data_offsets":[2,2]},)"
                                       R"("b":{"dtype":"I8","shape":[2],"data_offsets":[8,10]}})",
                                       std::string(10, '\0')),
                             "gaps");
  ASSERT_EQ(file->entries().size(), 3u);
  EXPECT_EQ(file->find("z")->shape, Shape({0, 5}));
  expect_mentions(error_of([&] { file->view(*file->find("a")); }), {"gaps", "without a mapping"});
}

TEST(Safetensors, ParseSurvivesEveryTruncationAndByteFlipOfARealFile) {
  const std::string real = [] {
    std::ifstream in(kData / "safetensors" / "mixed.safetensors", std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }();
  ASSERT_GT(real.size(), 100u);
  for (size_t n = 0; n < real.size(); n += 7) {
    try {
      SafetensorsFile::parse(std::string_view(real).substr(0, n), "cut");
    } catch (const Error&) {
    }
  }
  uint64_t header_bytes;
  std::memcpy(&header_bytes, real.data(), 8);
  for (size_t i = 0; i < 8 + header_bytes; ++i) {
    for (char flip : {'\x01', '\x20', '\x80'}) {
      std::string mutated = real;
      mutated[i] ^= flip;
      try {
        SafetensorsFile::parse(mutated, "flipped");
      } catch (const Error&) {
      }
    }
  }
}

TEST(Safetensors, OpenNamesTheFileWhenItCannotBeRead) {
  TempDir dir;
  expect_mentions(error_of([&] { SafetensorsFile::open(dir.path() / "absent.safetensors"); }),
                  {"absent.safetensors", "No such file"});
  expect_mentions(error_of([&] { SafetensorsFile::open(dir.path()); }), {"folder"});
  write_bytes(dir.path() / "short.safetensors", "abc");
  expect_mentions(error_of([&] { SafetensorsFile::open(dir.path() / "short.safetensors"); }),
                  {"short.safetensors", "too short"});
  write_bytes(dir.path() / "empty.safetensors", "");
  expect_mentions(error_of([&] { SafetensorsFile::open(dir.path() / "empty.safetensors"); }),
                  {"empty.safetensors", "0 bytes"});
}

// ---------------------------------------------------------------- writing

TEST(Safetensors, WriteThenOpenGivesBackEveryTensorAndTheMetadata) {
  const float f32_values[6] = {1, -2, 3.5f, 0, 1e-8f, -7};
  Tensor f32 = Tensor::from_floats({2, 3}, f32_values);
  Tensor half = Tensor::empty({3}, DType::F16), brain = Tensor::empty({1, 2}, DType::BF16);
  for (int i = 0; i < 3; ++i) half.data<f16>()[i].bits = float_to_f16(float(i) - 0.5f);
  for (int i = 0; i < 2; ++i) brain.data<bf16>()[i].bits = float_to_bf16(float(i) * 3.0f);
  Tensor i32 = Tensor::empty({2}, DType::I32), i64 = Tensor::empty({2}, DType::I64);
  i32.data<int32_t>()[0] = -5, i32.data<int32_t>()[1] = 1 << 30;
  i64.data<int64_t>()[0] = int64_t(1) << 50, i64.data<int64_t>()[1] = -1;
  const float one = 1.0f;
  const Tensor scalar = Tensor::from_floats({}, &one), empty = Tensor::empty({0, 4}, DType::F16);
  const std::vector<std::pair<std::string, Tensor>> tensors = {
      {"z.f16", half}, {"a.f32", f32},     {"b16", brain},  {"ids32", i32},
      {"ids64", i64},  {"scalar", scalar}, {"empty", empty}};

  TempDir dir;
  const fs::path path = dir.path() / "round_trip.safetensors";
  write_safetensors(path, tensors, {{"format", "pt"}, {"prompt", "a café ✓"}});
  const auto file = SafetensorsFile::open(path);
  EXPECT_EQ(file->metadata(),
            (std::map<std::string, std::string>{{"format", "pt"}, {"prompt", "a café ✓"}}));
  for (const auto& [name, tensor] : tensors) {
    SCOPED_TRACE(name);
    const TensorEntry* entry = file->find(name);
    ASSERT_NE(entry, nullptr);
    EXPECT_EQ(entry->dtype, tensor.dtype());
    EXPECT_EQ(entry->shape, tensor.shape());
    const Tensor view = file->view(*entry);
    if (tensor.nbytes()) {
      EXPECT_EQ(std::memcmp(view.raw(), tensor.raw(), tensor.nbytes()), 0);
    }
    EXPECT_EQ(reinterpret_cast<uintptr_t>(view.raw()) % dtype_size(tensor.dtype()), 0u);
  }
  // The reference layout: header padded to 8 bytes, widest elements first.
  std::ifstream in(path, std::ios::binary);
  const std::string bytes(std::istreambuf_iterator<char>(in), {});
  uint64_t header_bytes;
  std::memcpy(&header_bytes, bytes.data(), 8);
  EXPECT_EQ(header_bytes % 8, 0u);
  EXPECT_EQ(file->entries().front().name, "ids64");
  EXPECT_EQ(bytes.substr(8, 16), R"({"__metadata__":)");
}

TEST(Safetensors, WriteReproducesThePythonPackagesFileByteForByte) {
  const fs::path original = kData / "safetensors" / "written_by_python.safetensors";
  const auto file = SafetensorsFile::open(original);
  std::vector<std::pair<std::string, Tensor>> tensors;
  // In an order unlike the file's, so that the writer's own ordering is tested.
  for (auto it = file->entries().rbegin(); it != file->entries().rend(); ++it)
    tensors.emplace_back(it->name, file->view(*it));
  ASSERT_EQ(tensors.size(), 8u);
  TempDir dir;
  write_safetensors(dir.path() / "again.safetensors", tensors, file->metadata());
  auto contents = [](const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  EXPECT_EQ(contents(dir.path() / "again.safetensors"), contents(original));
}

TEST(Safetensors, WriteRefusesDuplicateAndReservedNames) {
  TempDir dir;
  const Tensor t = Tensor::zeros({1}, DType::F32);
  expect_mentions(error_of([&] {
                    write_safetensors(dir.path() / "x.safetensors", {{"a", t}, {"a", t}});
                  }),
                  {"'a'", "twice"});
  expect_mentions(error_of([&] {
                    write_safetensors(dir.path() / "x.safetensors", {{"__metadata__", t}});
                  }),
                  {"reserved"});
  expect_mentions(error_of([&] {
                    write_safetensors(dir.path() / "missing" / "x.safetensors", {{"a", t}});
                  }),
                  {"x.safetensors"});
  EXPECT_FALSE(fs::exists(dir.path() / "x.safetensors"));
}

// ---------------------------------------------------------------- memory

// This process's resident file-backed memory in KiB, or -1 where /proc does not say.
long resident_file_kib() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line))
    if (line.rfind("RssFile:", 0) == 0) return std::stol(line.substr(8));
  return -1;
}

TEST(Safetensors, ReleaseDropsTheEntrysPagesFromResidentMemory) {
  if (resident_file_kib() < 0) GTEST_SKIP() << "no RssFile in /proc/self/status";
  constexpr int64_t kFloats = 8 << 20;  // 32 MiB
  Tensor big = Tensor::empty({kFloats}, DType::F32);
  for (int64_t i = 0; i < kFloats; ++i) big.data<float>()[i] = float(i % 1000);
  TempDir dir;
  write_safetensors(dir.path() / "big.safetensors", {{"big", big}});
  big = Tensor();

  const auto file = SafetensorsFile::open(dir.path() / "big.safetensors");
  const TensorEntry& entry = *file->find("big");
  const Tensor view = file->view(entry);
  double sum = 0;
  for (int64_t i = 0; i < kFloats; i += 1024) sum += view.data<float>()[i];  // touches every page
  const long before = resident_file_kib();
  file->release(entry);
  const long after = resident_file_kib();
  EXPECT_GT(before - after, 24 * 1024)
      << "RssFile went from " << before << " to " << after << " KiB";
  // Released pages come back from the file when read again.
  double again = 0;
  for (int64_t i = 0; i < kFloats; i += 1024) again += view.data<float>()[i];
  EXPECT_EQ(sum, again);

  // WeightSet::load copies and releases, so the mapping does not stay resident.
  const WeightSet weights = WeightSet::open_file(dir.path() / "big.safetensors");
  const long before_load = resident_file_kib();
  const Tensor loaded = weights.load("big");
  EXPECT_LT(resident_file_kib() - before_load, 8 * 1024);
  EXPECT_EQ(loaded.data<float>()[kFloats - 1], float((kFloats - 1) % 1000));
}

// ---------------------------------------------------------------- WeightSet

const fs::path kModels = kData / "models";
constexpr std::string_view kStem = "diffusion_pytorch_model";

TEST(WeightSet, ShardedFolderHoldsTheSameTensorsAsTheSingleFile) {
  const WeightSet single = WeightSet::open(kModels / "single", kStem);
  const WeightSet sharded = WeightSet::open(kModels / "sharded", kStem);
  EXPECT_NE(single.describe().find("diffusion_pytorch_model.safetensors"), std::string::npos);
  EXPECT_NE(sharded.describe().find("index.json (2 shards)"), std::string::npos);
  const std::vector<std::string> names = {"norm.bias",      "norm.weight",   "proj_in.bias",
                                          "proj_in.weight", "proj_out.bias", "proj_out.weight"};
  EXPECT_EQ(single.names(), names);
  EXPECT_EQ(sharded.names(), names);
  for (const std::string& name : names) {
    SCOPED_TRACE(name);
    EXPECT_EQ(single.entry(name).shape, sharded.entry(name).shape);
    EXPECT_EQ(floats_of(single.load(name)), floats_of(sharded.load(name)));
  }
  EXPECT_EQ(single.entry("proj_in.weight").shape, Shape({4, 4}));
}

TEST(WeightSet, ALoneVariantIsUsedWhenNoPlainWeightsExist) {
  const WeightSet single = WeightSet::open(kModels / "single", kStem);
  for (const char* folder : {"variant_only", "sharded_fp16"}) {
    SCOPED_TRACE(folder);
    const WeightSet fp16 = WeightSet::open(kModels / folder, kStem);
    EXPECT_NE(fp16.describe().find("fp16"), std::string::npos) << fp16.describe();
    EXPECT_EQ(fp16.describe(), WeightSet::open(kModels / folder, kStem, "fp16").describe());
    EXPECT_EQ(fp16.entry("norm.weight").dtype, DType::F16);
    // diffusers rounded the f32 weights with torch; kiln's rounding gives the same bits.
    for (const std::string& name : single.names())
      EXPECT_EQ(half_bits_of(fp16.load(name, DType::F16)),
                half_bits_of(single.load(name, DType::F16)))
          << name;
  }
}

TEST(WeightSet, PlainWeightsArePreferredAndAVariantIsChosenByName) {
  const fs::path dir = kModels / "plain_and_fp16";
  EXPECT_EQ(WeightSet::open(dir, kStem).entry("norm.weight").dtype, DType::F32);
  EXPECT_EQ(WeightSet::open(dir, kStem, "fp16").entry("norm.weight").dtype, DType::F16);
  expect_mentions(error_of([&] { WeightSet::open(dir, kStem, "bf16"); }),
                  {"diffusion_pytorch_model.bf16.safetensors", "variant \"bf16\"",
                   "diffusion_pytorch_model.fp16.safetensors"});
}

TEST(WeightSet, PickleWeightsAreReportedAsUnsupported) {
  expect_mentions(error_of([&] { WeightSet::open(kModels / "pickle_only", kStem); }),
                  {"no weights", "pickle_only", "diffusion_pytorch_model.bin", "only safetensors"});
}

TEST(WeightSet, MissingFolderAndEmptyFolderAreClearErrors) {
  expect_mentions(error_of([&] { WeightSet::open(kModels / "no_such_folder", kStem); }),
                  {"no_such_folder", "does not exist"});
  TempDir dir;
  expect_mentions(error_of([&] { WeightSet::open(dir.path(), "model"); }),
                  {"model.safetensors", "holds no weight files"});
}

TEST(WeightSet, SeveralVariantsWithoutPlainWeightsMustBeChosen) {
  TempDir dir;
  const Tensor t = Tensor::zeros({1}, DType::F32);
  write_safetensors(dir.path() / "model.fp16.safetensors", {{"w", t}});
  write_safetensors(dir.path() / "model.bf16.safetensors", {{"w", t}});
  expect_mentions(error_of([&] { WeightSet::open(dir.path(), "model"); }),
                  {"several variants", "bf16, fp16"});
  EXPECT_TRUE(WeightSet::open(dir.path(), "model", "bf16").contains("w"));
}

TEST(WeightSet, TransformersStyleModelFileOpensWithItsStem) {
  TempDir dir;
  write_safetensors(dir.path() / "model.safetensors", {{"w", Tensor::zeros({2}, DType::F32)}});
  const WeightSet weights = WeightSet::open(dir.path(), "model");
  EXPECT_TRUE(weights.contains("w"));
  EXPECT_FALSE(weights.contains("v"));
  expect_mentions(error_of([&] { weights.entry("v"); }), {"'v'", "model.safetensors"});
  expect_mentions(error_of([&] { weights.load("v"); }), {"'v'", "model.safetensors"});
}

void write_index(const fs::path& path, std::string_view weight_map) {
  write_bytes(path, str(R"({"metadata": {"total_size": 8}, "weight_map": )", weight_map, "}"));
}

TEST(WeightSet, IndexProblemsNameTheShardAndTensor) {
  const Tensor t = Tensor::zeros({1}, DType::F32);
  {
    TempDir dir;
    write_safetensors(dir.path() / "model-00001-of-00002.safetensors", {{"a", t}});
    write_index(
        dir.path() / "model.safetensors.index.json",
        R"({"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"})");
    expect_mentions(error_of([&] { WeightSet::open(dir.path(), "model"); }),
                    {"model-00002-of-00002.safetensors", "'b'", "not in"});
  }
  {
    TempDir dir;
    write_safetensors(dir.path() / "one.safetensors", {{"a", t}, {"shared", t}});
    write_safetensors(dir.path() / "two.safetensors", {{"b", t}, {"shared", t}});
    write_index(dir.path() / "model.safetensors.index.json",
                R"({"a": "one.safetensors", "b": "two.safetensors", "shared": "one.safetensors"})");
    expect_mentions(error_of([&] { WeightSet::open(dir.path(), "model"); }),
                    {"'shared'", "one.safetensors", "two.safetensors", "both"});
  }
  {
    TempDir dir;
    write_safetensors(dir.path() / "one.safetensors", {{"a", t}});
    write_safetensors(dir.path() / "two.safetensors", {{"b", t}});
    write_index(dir.path() / "model.safetensors.index.json",
                R"({"a": "two.safetensors", "b": "two.safetensors"})");
    expect_mentions(error_of([&] { WeightSet::open(dir.path(), "model"); }),
                    {"'a'", "two.safetensors", "does not hold it"});
  }
  {
    TempDir dir;
    write_index(dir.path() / "model.safetensors.index.json",
                R"({"a": "../elsewhere.safetensors"})");
    expect_mentions(error_of([&] { WeightSet::open(dir.path(), "model"); }),
                    {"../elsewhere.safetensors", "not a file name in the index's folder"});
  }
  {
    TempDir dir;
    write_bytes(dir.path() / "model.safetensors.index.json", "{\"weight_map\": ");
    expect_mentions(error_of([&] { WeightSet::open(dir.path(), "model"); }),
                    {"model.safetensors.index.json", "not valid JSON"});
    write_bytes(dir.path() / "model.safetensors.index.json", "{\"metadata\": {}}");
    expect_mentions(error_of([&] { WeightSet::open(dir.path(), "model"); }), {"weight_map"});
    write_index(dir.path() / "model.safetensors.index.json", R"({"a": 3})");
    expect_mentions(error_of([&] { WeightSet::open(dir.path(), "model"); }),
                    {"'a'", "must be a file name"});
  }
}

}  // namespace
}  // namespace kiln::io
