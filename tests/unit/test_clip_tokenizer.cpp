// The CLIP tokenizer against the ids transformers' CLIPTokenizer gave for the same prompts
// (tests/data/clip_tokenizer/cases.json, made by tools/py/make_tokenizer_goldens.py), its
// Unicode layer against the tokenizers library, and the loader's errors.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "kiln/error.h"
#include "text/clip_tokenizer.h"
#include "text/unicode.h"

namespace kiln::text {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

const fs::path kData = KILN_TEST_DATA;
const fs::path kClipFolder = kData / "clip_tokenizer";

json read_json(const fs::path& file) {
  std::ifstream in(file);
  EXPECT_TRUE(in) << "cannot open " << file;
  return json::parse(in);
}

const json& golden_cases() {
  static const json cases = read_json(kClipFolder / "cases.json");
  return cases;
}

void write_file(const fs::path& file, const std::string& text) {
  std::ofstream out(file, std::ios::binary);
  out << text;
}

// A folder under the system's temporary directory, removed with its contents at the end.
class TempDir {
 public:
  TempDir() {
    static std::atomic<int> counter = 0;
    path_ = fs::temp_directory_path() /
            ("kiln_tokenizer_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::create_directories(path_);
  }
  ~TempDir() { fs::remove_all(path_); }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

// The folder of a golden tokenizer; those holding only configs get vocab.json and merges.txt
// copied in beside a copy of their configs.
fs::path assemble_folder(const json& info, const TempDir& scratch) {
  const fs::path folder = kData / info["folder"].get<std::string>();
  if (info["vocab_from"].is_null()) return folder;
  const fs::path vocab_from = kData / info["vocab_from"].get<std::string>();
  for (const fs::path& file : {folder / "tokenizer_config.json", folder / "special_tokens_map.json",
                               vocab_from / "vocab.json", vocab_from / "merges.txt"})
    fs::copy_file(file, scratch.path() / file.filename());
  return scratch.path();
}

std::string show(const std::vector<int32_t>& ids) {
  return json(ids).dump();
}
std::string show_prompt(const std::string& prompt) {
  return json(prompt).dump(-1, ' ', true);
}

std::string show_bytes(const std::string& bytes) {
  std::string out;
  for (unsigned char byte : bytes) out += str(out.empty() ? "" : " ", std::hex, unsigned(byte));
  return out;
}

class ClipTokenizerGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(ClipTokenizerGolden, IdsMatchTransformersForEveryPrompt) {
  const json& info = golden_cases()["tokenizers"][GetParam()];
  TempDir scratch;
  const ClipTokenizer tokenizer = ClipTokenizer::load(assemble_folder(info, scratch));
  EXPECT_EQ(tokenizer.bos_id(), info["bos_id"].get<int32_t>());
  EXPECT_EQ(tokenizer.eos_id(), info["eos_id"].get<int32_t>());
  EXPECT_EQ(tokenizer.pad_id(), info["pad_id"].get<int32_t>());
  EXPECT_EQ(tokenizer.max_length(), info["max_length"].get<int>());
  EXPECT_EQ(tokenizer.vocab_size(), info["vocab_size"].get<size_t>());

  int matched = 0;
  for (const json& c : golden_cases()["cases"]) {
    const auto prompt = c["prompt"].get<std::string>();
    const auto expected_ids = c["ids"][GetParam()].get<std::vector<int32_t>>();
    const auto expected_input_ids = c["input_ids"][GetParam()].get<std::vector<int32_t>>();
    const std::vector<int32_t> ids = tokenizer.encode(prompt);
    const std::vector<int32_t> input_ids = tokenizer.encode_for_model(prompt);
    if (ids != expected_ids)
      ADD_FAILURE() << "encode(" << show_prompt(prompt) << ")\n  expected " << show(expected_ids)
                    << "\n  actual   " << show(ids);
    if (input_ids != expected_input_ids)
      ADD_FAILURE() << "encode_for_model(" << show_prompt(prompt) << ")\n  expected "
                    << show(expected_input_ids) << "\n  actual   " << show(input_ids);
    matched += ids == expected_ids && input_ids == expected_input_ids;
  }
  EXPECT_GT(matched, 400) << "the goldens hold fewer prompts than they should";
}

INSTANTIATE_TEST_SUITE_P(Folders, ClipTokenizerGolden,
                         ::testing::Values("clip_tokenizer", "clip_tokenizer_json",
                                           "clip_tokenizer_sd2", "clip_tokenizer_decoder"),
                         [](const auto& info) { return info.param; });

TEST(ClipTokenizer, TokenizerJsonWithMergesWrittenAsStringsLoadsTheSame) {
  json tokenizer_json = read_json(kData / "clip_tokenizer_json" / "tokenizer.json");
  json& merges = tokenizer_json["model"]["merges"];
  ASSERT_TRUE(merges.at(0).is_array()) << "the golden should hold merges as pairs";
  for (json& merge : merges)
    merge = merge[0].get<std::string>() + " " + merge[1].get<std::string>();
  TempDir dir;
  write_file(dir.path() / "tokenizer.json", tokenizer_json.dump());
  fs::copy_file(kData / "clip_tokenizer_json" / "tokenizer_config.json",
                dir.path() / "tokenizer_config.json");
  const ClipTokenizer tokenizer = ClipTokenizer::load(dir.path());
  for (const json& c : golden_cases()["cases"]) {
    const auto prompt = c["prompt"].get<std::string>();
    const auto expected = c["input_ids"]["clip_tokenizer_json"].get<std::vector<int32_t>>();
    const std::vector<int32_t> actual = tokenizer.encode_for_model(prompt);
    EXPECT_EQ(actual, expected) << "prompt " << show_prompt(prompt) << "\n  expected "
                                << show(expected) << "\n  actual   " << show(actual);
  }
}

TEST(ClipTokenizer, InvalidUtf8IsAnErrorNamingTheOffset) {
  const ClipTokenizer tokenizer = ClipTokenizer::load(kClipFolder);
  try {
    tokenizer.encode_for_model(std::string("a photo \xC3\x28 of a cat"));
    FAIL() << "expected a kiln::Error for invalid UTF-8";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("UTF-8"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("offset 8"), std::string::npos) << e.what();
  }
}

// Copies the SD 1.5-style golden folder, lets `change` edit the copy, and returns the error
// message that loading it gives ("" when it loads).
template <class Change>
std::string load_error_after(Change&& change) {
  TempDir dir;
  for (const char* name :
       {"vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"})
    fs::copy_file(kClipFolder / name, dir.path() / name);
  change(dir.path());
  try {
    ClipTokenizer::load(dir.path());
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

void expect_mentions(const std::string& message, const std::string& part) {
  EXPECT_NE(message.find(part), std::string::npos)
      << "expected an error mentioning \"" << part << "\", got \"" << message << "\"";
}

TEST(ClipTokenizerLoad, MissingFolderIsAnError) {
  try {
    ClipTokenizer::load(kData / "no_such_tokenizer");
    FAIL() << "expected a kiln::Error";
  } catch (const Error& e) {
    expect_mentions(e.what(), "no_such_tokenizer");
  }
}

TEST(ClipTokenizerLoad, MissingFilesAreNamed) {
  expect_mentions(load_error_after([](const fs::path& d) { fs::remove(d / "merges.txt"); }),
                  "merges.txt");
  expect_mentions(load_error_after([](const fs::path& d) { fs::remove(d / "vocab.json"); }),
                  "vocab.json");
  expect_mentions(load_error_after([](const fs::path& d) {
                    fs::remove(d / "vocab.json"), fs::remove(d / "merges.txt");
                  }),
                  "tokenizer.json");
}

TEST(ClipTokenizerLoad, CorruptFilesAreNamed) {
  const std::pair<const char*, const char*> corruptions[] = {
      {"vocab.json", "{\"a\": 1,"},
      {"vocab.json", "[1, 2]"},
      {"vocab.json", "{\"a\": \"x\"}"},
      {"tokenizer_config.json", "{"},
      {"tokenizer_config.json", "{\"added_tokens_decoder\": {\"x\": {\"content\": \"a\"}}}"},
      {"special_tokens_map.json", "{\"pad_token\": 7}"},
      {"tokenizer.json", "not json"},
      {"tokenizer.json", "{\"model\": 3}"},
      {"tokenizer.json", "{\"model\": {\"vocab\": {}, \"merges\": [\"a\"]}}"},
  };
  for (const auto& [file, contents] : corruptions) {
    SCOPED_TRACE(str(file, " holding ", contents));
    expect_mentions(load_error_after([&](const fs::path& d) { write_file(d / file, contents); }),
                    file);
  }
}

TEST(ClipTokenizerLoad, TokenOptionsKilnDoesNotImitateAreRefused) {
  const std::string message = load_error_after([](const fs::path& d) {
    json config = read_json(d / "tokenizer_config.json");
    config["bos_token"]["lstrip"] = true;
    write_file(d / "tokenizer_config.json", config.dump());
  });
  expect_mentions(message, "tokenizer_config.json");
  expect_mentions(message, "lstrip");
}

TEST(ClipTokenizerLoad, BadMergesAreNamedWithTheirLine) {
  const std::string malformed = load_error_after(
      [](const fs::path& d) { write_file(d / "merges.txt", "#version: 0.2\ni n\nt h e\n"); });
  expect_mentions(malformed, "merges.txt line 3");
  const std::string unknown = load_error_after(
      [](const fs::path& d) { write_file(d / "merges.txt", "#version: 0.2\ni n\nqqq zzz\n"); });
  expect_mentions(unknown, "merges.txt");
  expect_mentions(unknown, "qqq zzz");
}

TEST(ClipTokenizerLoad, SpecialTokenOutsideTheVocabularyIsAnError) {
  const std::string message = load_error_after([](const fs::path& d) {
    json config = read_json(d / "tokenizer_config.json");
    config["pad_token"] = "<pad>";
    write_file(d / "tokenizer_config.json", config.dump());
    fs::remove(d / "special_tokens_map.json");
  });
  expect_mentions(message, "<pad>");
}

TEST(ClipTokenizerLoad, ModelMaxLength) {
  auto load_with = [](const json& length) {
    TempDir dir;
    for (const char* name : {"vocab.json", "merges.txt"})
      fs::copy_file(kClipFolder / name, dir.path() / name);
    json config = read_json(kClipFolder / "tokenizer_config.json");
    if (length.is_null())
      config.erase("model_max_length");
    else
      config["model_max_length"] = length;
    write_file(dir.path() / "tokenizer_config.json", config.dump());
    return ClipTokenizer::load(dir.path());
  };
  EXPECT_EQ(load_with(nullptr).max_length(), 77) << "CLIP's context length when unset";
  EXPECT_EQ(load_with(1e30).max_length(), 77) << "transformers' 'no limit' placeholder";
  const ClipTokenizer short_context = load_with(8);
  EXPECT_EQ(short_context.max_length(), 8);
  const std::vector<int32_t> ids = short_context.encode_for_model("a b c d e f g h i j");
  EXPECT_EQ(ids, (std::vector<int32_t>{49406, 320, 321, 322, 323, 324, 325, 49407}))
      << "actual " << show(ids);
  EXPECT_THROW(load_with(1), Error);
  EXPECT_THROW(load_with("77"), Error);
}

TEST(Unicode, Utf8DecodesAndEncodesEveryLength) {
  const std::string text = "a\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80\xF4\x8F\xBF\xBF\xED\x9F\xBF";
  const std::u32string code_points = decode_utf8(text);
  EXPECT_EQ(code_points, (std::u32string{U'a', 0xE9, 0x20AC, 0x1F600, 0x10FFFF, 0xD7FF}));
  EXPECT_EQ(encode_utf8(code_points), text);
}

TEST(Unicode, InvalidUtf8IsRejected) {
  for (const std::string bad : {
           "\x80",              // continuation byte without a lead
           "\xC0\xAF",          // overlong '/'
           "\xC1\xBF",          // overlong
           "\xE0\x80\xAF",      // overlong
           "\xF0\x80\x80\xAF",  // overlong
           "\xED\xA0\x80",      // surrogate U+D800
           "\xED\xBF\xBF",      // surrogate U+DFFF
           "\xF4\x90\x80\x80",  // U+110000
           "\xF5\x80\x80\x80",  // lead byte past U+10FFFF
           "\xFF",              // never in UTF-8
           "abc\xE2\x82",       // cut short by the end
           "\xC3",              // cut short by the end
           "\xC3\x28",          // cut short by a byte that does not continue it
           "\xE2\x28\xA1",      // likewise in the middle
       }) {
    EXPECT_THROW(decode_utf8(bad), Error) << "bytes " << show_bytes(bad);
  }
}

TEST(Unicode, ClassesAndLowercaseMatchTheTokenizersLibrary) {
  const json cases = read_json(kClipFolder / "unicode_cases.json");
  ASSERT_GT(cases["code_points"].size(), 1000u);
  for (const json& c : cases["code_points"]) {
    const auto cp = c[0].get<char32_t>();
    const auto classes = c[1].get<std::string>();  // some of "l", "n", "s"
    const std::string actual = std::string(is_letter(cp) ? "l" : "") + (is_number(cp) ? "n" : "") +
                               (is_space(cp) ? "s" : "");
    EXPECT_EQ(actual, classes) << "classes of U+" << std::hex << uint32_t(cp);
    const auto lower = c[2].get<std::vector<char32_t>>();
    EXPECT_EQ(to_lower(std::u32string(1, cp)), std::u32string(lower.begin(), lower.end()))
        << "lowercase of U+" << std::hex << uint32_t(cp);
  }
}

TEST(Unicode, NfcMatchesTheTokenizersLibrary) {
  const json cases = read_json(kClipFolder / "unicode_cases.json");
  ASSERT_GT(cases["nfc"].size(), 400u);
  for (const json& c : cases["nfc"]) {
    const auto input = c[0].get<std::vector<char32_t>>();
    const auto expected = c[1].get<std::vector<char32_t>>();
    const std::u32string actual = nfc(std::u32string(input.begin(), input.end()));
    EXPECT_EQ(actual, std::u32string(expected.begin(), expected.end()))
        << "nfc of " << json(input).dump() << ": expected " << json(expected).dump() << ", got "
        << json(std::vector<char32_t>(actual.begin(), actual.end())).dump();
  }
}

}  // namespace
}  // namespace kiln::text
