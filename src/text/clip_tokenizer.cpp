#include "text/clip_tokenizer.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <fstream>
#include <iterator>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>

#include "kiln/error.h"
#include "text/unicode.h"

namespace kiln::text {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr std::u32string_view kStartOfText = U"<|startoftext|>";
constexpr std::u32string_view kEndOfText = U"<|endoftext|>";
constexpr std::string_view kEndOfWordSuffix = "</w>";

// transformers' VERY_LARGE_INTEGER (1e30) and its like mean "no limit" in model_max_length.
constexpr double kUnlimitedModelMaxLength = 1e9;
constexpr int kClipContextLength = 77;  // the position embeddings of every CLIP text encoder

// GPT-2's byte-level alphabet: every byte stands for a printable code point, itself where
// printable (33-126, 161-172, 174-255), otherwise 256 onwards in byte order.
const std::array<std::string, 256>& byte_symbols() {
  static const std::array<std::string, 256> symbols = [] {
    std::array<std::string, 256> out;
    char32_t next_unprintable = 256;
    for (int byte = 0; byte < 256; ++byte) {
      const bool printable =
          (byte >= 33 && byte <= 126) || (byte >= 161 && byte <= 172) || (byte >= 174);
      append_utf8(out[size_t(byte)], printable ? char32_t(byte) : next_unprintable++);
    }
    return out;
  }();
  return symbols;
}

std::string read_file(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) KILN_FAIL("cannot read tokenizer file ", file.string());
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

json read_json(const fs::path& file) {
  try {
    return json::parse(read_file(file));
  } catch (const json::exception& e) {
    KILN_FAIL("tokenizer file ", file.string(), " is not valid JSON: ", e.what());
  }
}

// Runs `interpret` on a parsed file, turning a JSON type error into one naming the file.
template <class Interpret>
auto interpret_json(const fs::path& file, Interpret&& interpret) {
  try {
    return interpret();
  } catch (const json::exception& e) {
    KILN_FAIL("tokenizer file ", file.string(), " is not laid out as expected: ", e.what());
  }
}

std::unordered_map<std::string, int32_t> parse_vocab(const json& vocab, const fs::path& file) {
  if (!vocab.is_object())
    KILN_FAIL(file.string(), ": the vocabulary is a ", vocab.type_name(),
              ", expected an object of token: id");
  std::unordered_map<std::string, int32_t> out;
  out.reserve(vocab.size());
  for (const auto& [token, id] : vocab.items()) {
    const auto value = id.get<int64_t>();
    if (value < 0 || value > std::numeric_limits<int32_t>::max())
      KILN_FAIL(file.string(), ": token \"", token, "\" has id ", value, ", outside 0..2^31-1");
    out.emplace(token, static_cast<int32_t>(value));
  }
  return out;
}

// Lines of merges.txt as tokenizers reads them: "#version" lines skipped, "\r\n" accepted.
std::vector<std::pair<std::string, std::string>> parse_merges_txt(const fs::path& file) {
  std::vector<std::pair<std::string, std::string>> merges;
  std::istringstream in(read_file(file));
  std::string line;
  for (int line_number = 1; std::getline(in, line); ++line_number) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.starts_with("#version")) continue;
    const size_t space = line.find(' ');
    if (space == std::string::npos || line.find(' ', space + 1) != std::string::npos)
      KILN_FAIL(file.string(), " line ", line_number, ": expected two tokens separated by one ",
                "space, got \"", line, "\"");
    merges.emplace_back(line.substr(0, space), line.substr(space + 1));
  }
  return merges;
}

// tokenizer.json's model.merges: strings "a b" or pairs ["a", "b"].
std::vector<std::pair<std::string, std::string>> parse_json_merges(const json& merges,
                                                                   const fs::path& file) {
  std::vector<std::pair<std::string, std::string>> out;
  out.reserve(merges.size());
  for (const json& merge : merges) {
    if (merge.is_array() && merge.size() == 2) {
      out.emplace_back(merge[0].get<std::string>(), merge[1].get<std::string>());
      continue;
    }
    const auto text = merge.get<std::string>();
    const size_t space = text.find(' ');
    if (space == std::string::npos || text.find(' ', space + 1) != std::string::npos)
      KILN_FAIL(file.string(), ": merge \"", text, "\" is not two tokens separated by one space");
    out.emplace_back(text.substr(0, space), text.substr(space + 1));
  }
  return out;
}

// The BPE model: tokenizer.json's, which transformers prefers, else vocab.json + merges.txt.
struct ModelFiles {
  std::unordered_map<std::string, int32_t> vocab;
  std::vector<std::pair<std::string, std::string>> merges;  // in rank order
  fs::path merges_file;
  std::optional<json> tokenizer_json;
};

ModelFiles read_model_files(const fs::path& dir) {
  ModelFiles out;
  if (const fs::path file = dir / "tokenizer.json"; fs::exists(file)) {
    out.tokenizer_json = read_json(file);
    out.merges_file = file;
    interpret_json(file, [&] {
      const json& model = out.tokenizer_json->at("model");
      out.vocab = parse_vocab(model.at("vocab"), file);
      out.merges = parse_json_merges(model.at("merges"), file);
    });
    return out;
  }
  const fs::path vocab_file = dir / "vocab.json";
  out.merges_file = dir / "merges.txt";
  for (const fs::path& needed : {vocab_file, out.merges_file})
    if (!fs::exists(needed))
      KILN_FAIL("tokenizer folder ", dir.string(), " has neither tokenizer.json nor ",
                needed.filename().string(), " (a CLIP tokenizer needs tokenizer.json, or ",
                "vocab.json and merges.txt)");
  const json vocab = read_json(vocab_file);
  out.vocab = interpret_json(vocab_file, [&] { return parse_vocab(vocab, vocab_file); });
  out.merges = parse_merges_txt(out.merges_file);
  return out;
}

// How a special or added token is matched, as transformers configures it.
struct TokenSpec {
  std::string content;
  bool normalized = false;  // matched in normalised text (so "<|STARTOFTEXT|>" matches too)
};

// A token written as {"content": ..., "normalized": ..., ...}; transformers' AddedToken
// defaults `normalized` to the opposite of `special`.
TokenSpec parse_token_object(const json& token, bool special_by_default, const fs::path& file) {
  TokenSpec spec{token.at("content").get<std::string>()};
  const bool special =
      token.contains("special") ? token["special"].get<bool>() : special_by_default;
  spec.normalized = token.contains("normalized") && !token["normalized"].is_null()
                        ? token["normalized"].get<bool>()
                        : !special;
  for (const char* option : {"lstrip", "rstrip", "single_word"}) {
    // transformers would strip whitespace around the token or match it only as a whole word;
    // no CLIP tokenizer asks for that, and kiln does not imitate it.
    if (token.contains(option) && token[option].is_boolean() && token[option].get<bool>())
      KILN_FAIL(file.string(), ": token \"", spec.content, "\" sets ", option,
                ", which kiln's CLIP tokenizer does not support");
  }
  return spec;
}

// The special tokens of a folder and how they are matched, following transformers 5's
// from_pretrained: tokens defined with their options (tokenizer_config.json's
// added_tokens_decoder, else tokenizer.json's added_tokens) are added first; then each named
// special token in the order bos, eos, unk, sep, pad, cls, mask, then the additional ones.
// A named token takes the options of the defined token with its content; failing that, its
// own when written as an object, and "not normalized" when written as a plain string. The
// last addition of a content decides how it is matched.
struct SpecialTokens {
  std::map<std::string, std::string> named;                         // "bos_token" → content
  std::vector<std::pair<TokenSpec, std::optional<int32_t>>> added;  // in order; id if defined
};

SpecialTokens read_special_tokens(const fs::path& dir, const json& config,
                                  const std::optional<json>& tokenizer_json) {
  SpecialTokens out;
  std::map<std::string, TokenSpec> defined;
  const fs::path config_file = dir / "tokenizer_config.json";
  const bool config_defines_tokens = config.contains("added_tokens_decoder");
  if (config_defines_tokens) {
    interpret_json(config_file, [&] {
      std::vector<std::pair<int32_t, TokenSpec>> by_id;
      for (const auto& [key, token] : config["added_tokens_decoder"].items()) {
        int32_t id = -1;
        const auto [end, error] = std::from_chars(key.data(), key.data() + key.size(), id);
        if (error != std::errc() || end != key.data() + key.size() || id < 0)
          KILN_FAIL(config_file.string(), ": added_tokens_decoder key \"", key,
                    "\" is not a token id");
        by_id.emplace_back(id, parse_token_object(token, false, config_file));
      }
      std::sort(by_id.begin(), by_id.end(), [](auto& a, auto& b) { return a.first < b.first; });
      for (auto& [id, spec] : by_id) {
        defined[spec.content] = spec;
        out.added.emplace_back(spec, id);
      }
    });
  } else if (tokenizer_json) {
    interpret_json(dir / "tokenizer.json", [&] {
      for (const json& token : tokenizer_json->value("added_tokens", json::array())) {
        TokenSpec spec = parse_token_object(token, false, dir / "tokenizer.json");
        defined[spec.content] = spec;
        out.added.emplace_back(spec, token.at("id").get<int32_t>());
      }
    });
  }

  auto resolve = [&](const json& value, bool from_special_map,
                     const fs::path& file) -> std::optional<TokenSpec> {
    if (value.is_null()) return std::nullopt;
    TokenSpec spec = value.is_string() ? TokenSpec{value.get<std::string>(), false}
                                       : parse_token_object(value, from_special_map, file);
    if (auto it = defined.find(spec.content); it != defined.end()) return it->second;
    return spec;
  };

  // Named tokens: CLIPTokenizer's defaults, overridden by tokenizer_config.json, overridden in
  // turn by special_tokens_map.json when the config defines no tokens itself.
  static constexpr const char* kNamed[] = {"bos_token", "eos_token", "unk_token", "sep_token",
                                           "pad_token", "cls_token", "mask_token"};
  std::map<std::string, std::optional<TokenSpec>> named = {
      {"bos_token", TokenSpec{"<|startoftext|>"}},
      {"eos_token", TokenSpec{"<|endoftext|>"}},
      {"unk_token", TokenSpec{"<|endoftext|>"}},
      {"pad_token", TokenSpec{"<|endoftext|>"}},
  };
  std::vector<TokenSpec> additional;
  auto take_named = [&](const json& source, const fs::path& file, bool from_special_map) {
    interpret_json(file, [&] {
      for (const char* key : kNamed)
        if (source.contains(key)) named[key] = resolve(source[key], from_special_map, file);
      for (const char* key : {"additional_special_tokens", "extra_special_tokens"}) {
        if (!source.contains(key) || !source[key].is_array()) continue;
        additional.clear();
        for (const json& value : source[key])
          if (auto spec = resolve(value, from_special_map, file)) additional.push_back(*spec);
      }
    });
  };
  take_named(config, config_file, false);
  const fs::path special_map_file = dir / "special_tokens_map.json";
  if (!config_defines_tokens && fs::exists(special_map_file))
    take_named(read_json(special_map_file), special_map_file, true);

  for (const char* key : kNamed) {
    auto it = named.find(key);
    if (it == named.end() || !it->second) continue;
    out.named[key] = it->second->content;
    out.added.emplace_back(*it->second, std::nullopt);
  }
  for (const TokenSpec& spec : additional) out.added.emplace_back(spec, std::nullopt);
  return out;
}

int read_max_length(const json& config, const fs::path& config_file) {
  if (!config.contains("model_max_length")) return kClipContextLength;
  const json& value = config["model_max_length"];
  if (!value.is_number())
    KILN_FAIL(config_file.string(), ": model_max_length is a ", value.type_name(),
              ", expected a number");
  const double length = value.get<double>();
  // Folders saved without a limit carry a huge placeholder; the text encoder still has 77
  // positions, which is what the pipelines use with real checkpoints.
  if (length >= kUnlimitedModelMaxLength) return kClipContextLength;
  if (length < 2 || length != std::floor(length))
    KILN_FAIL(config_file.string(), ": model_max_length is ", length,
              "; it must be a whole number of at least 2 (room for the start and end tokens)");
  return static_cast<int>(length);
}

// Runs of white space become one space, as the normaliser's Replace(\s+, " ").
std::u32string collapse_white_space(std::u32string_view text) {
  std::u32string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    if (!is_space(text[i])) {
      out += text[i++];
      continue;
    }
    out += U' ';
    while (i < text.size() && is_space(text[i])) ++i;
  }
  return out;
}

// The normaliser's sequence: NFC, runs of white space to one space, lowercase.
std::u32string normalize(std::u32string_view text) {
  return to_lower(collapse_white_space(nfc(text)));
}

// Length of the contraction ('s 't 're 've 'm 'll 'd) at the start of `text`, or 0.
size_t contraction_length(std::u32string_view text) {
  for (std::u32string_view contraction : {U"'s", U"'t", U"'re", U"'ve", U"'m", U"'ll", U"'d"})
    if (text.starts_with(contraction)) return contraction.size();
  return 0;
}

enum class CharClass { kLetter, kNumber, kSpace, kOther };

CharClass classify(char32_t cp) {
  if (is_letter(cp)) return CharClass::kLetter;
  if (is_number(cp)) return CharClass::kNumber;
  if (is_space(cp)) return CharClass::kSpace;
  return CharClass::kOther;
}

// The words of normalised text: CLIP's split pattern
//   <\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
// keeping the matches (first alternative that matches wins) and dropping what lies between,
// followed by the byte-level pre-tokenizer's GPT-2 pattern, which on text without white
// space splits only the special-token words, into "<|", "endoftext", "|>".
template <class OnWord>
void for_each_word(std::u32string_view text, OnWord&& on_word) {
  auto gpt2_split = [&](std::u32string_view word) {
    for (size_t i = 0; i < word.size();) {
      size_t length = contraction_length(word.substr(i));
      if (length == 0) {
        const CharClass run_class = classify(word[i]);
        for (length = 1; i + length < word.size() && classify(word[i + length]) == run_class;)
          ++length;
      }
      on_word(word.substr(i, length));
      i += length;
    }
  };
  for (size_t i = 0; i < text.size();) {
    const std::u32string_view rest = text.substr(i);
    size_t length = rest.starts_with(kStartOfText) ? kStartOfText.size()
                    : rest.starts_with(kEndOfText) ? kEndOfText.size()
                                                   : contraction_length(rest);
    if (length == 0) {
      const CharClass first = classify(rest[0]);
      if (first == CharClass::kSpace) {
        ++i;
        continue;
      }
      length = 1;
      if (first != CharClass::kNumber)  // digits are words of one
        while (length < rest.size() && classify(rest[length]) == first) ++length;
    }
    gpt2_split(rest.substr(0, length));
    i += length;
  }
}

}  // namespace

ClipTokenizer ClipTokenizer::load(const fs::path& dir) {
  if (!fs::is_directory(dir)) KILN_FAIL("tokenizer folder ", dir.string(), " does not exist");
  ClipTokenizer tokenizer;

  const fs::path config_file = dir / "tokenizer_config.json";
  const json config = fs::exists(config_file) ? read_json(config_file) : json::object();
  if (!config.is_object()) KILN_FAIL(config_file.string(), " does not hold a JSON object");
  for (const char* side : {"padding_side", "truncation_side"})
    if (config.contains(side) && config[side] != "right")
      KILN_FAIL(config_file.string(), ": ", side, " ", config[side].dump(),
                " is not supported; CLIP tokenizers pad and truncate on the right");
  tokenizer.max_length_ = read_max_length(config, config_file);

  ModelFiles model = read_model_files(dir);
  tokenizer.vocab_ = std::move(model.vocab);

  auto id_of = [&](const std::string& token) -> std::optional<int32_t> {
    auto it = tokenizer.vocab_.find(token);
    return it == tokenizer.vocab_.end() ? std::nullopt : std::optional(it->second);
  };
  for (size_t rank = 0; rank < model.merges.size(); ++rank) {
    const auto& [left, right] = model.merges[rank];
    const auto left_id = id_of(left), right_id = id_of(right), merged_id = id_of(left + right);
    if (!left_id || !right_id || !merged_id)
      KILN_FAIL(model.merges_file.string(), ": merge \"", left, " ", right, "\" (number ", rank + 1,
                ") uses or makes a token that is not in the vocabulary");
    // A repeated pair keeps its last rank, as tokenizers does.
    tokenizer.merges_[uint64_t(uint32_t(*left_id)) << 32 | uint32_t(*right_id)] =
        Merge{static_cast<int32_t>(rank), *merged_id};
  }

  const SpecialTokens special = read_special_tokens(dir, config, model.tokenizer_json);
  std::map<std::string, std::pair<bool, int32_t>> added;  // content → (normalized, id)
  for (const auto& [spec, defined_id] : special.added) {
    // A named token repeating a defined one keeps the defined id.
    std::optional<int32_t> id = defined_id;
    if (auto it = added.find(spec.content); !id && it != added.end()) id = it->second.second;
    if (!id) id = id_of(spec.content);
    if (!id)
      KILN_FAIL("special token \"", spec.content, "\" of ", dir.string(),
                " is not in the vocabulary");
    added[spec.content] = {spec.normalized, *id};
  }
  auto named_id = [&](const char* key) -> std::optional<int32_t> {
    auto it = special.named.find(key);
    if (it == special.named.end()) return std::nullopt;
    return added.at(it->second).second;
  };
  for (auto [key, id] : {std::pair{"bos_token", &tokenizer.bos_id_},
                         {"eos_token", &tokenizer.eos_id_},
                         {"pad_token", &tokenizer.pad_id_}}) {
    const auto found = named_id(key);
    if (!found) KILN_FAIL(config_file.string(), " sets no ", key, "; a CLIP tokenizer needs one");
    *id = *found;
  }
  const std::optional<int32_t> unk_id = named_id("unk_token");

  for (const auto& [content, how] : added) {
    const auto [normalized, id] = how;
    std::u32string text = decode_utf8(content);
    if (normalized) text = normalize(text);
    if (text.empty()) continue;
    (normalized ? tokenizer.normalized_added_tokens_ : tokenizer.raw_added_tokens_)
        .push_back({std::move(text), id});
  }

  const auto& symbols = byte_symbols();
  for (size_t byte = 0; byte < 256; ++byte) {
    const std::string& symbol = symbols[byte];
    for (auto [token, id] :
         {std::pair{symbol, &tokenizer.byte_ids_[byte]},
          {symbol + std::string(kEndOfWordSuffix), &tokenizer.final_byte_ids_[byte]}}) {
      const std::optional<int32_t> found = id_of(token);
      if (!found && !unk_id)
        KILN_FAIL("the vocabulary of ", dir.string(), " lacks the byte-level token \"", token,
                  "\" and has no unknown token to stand for it");
      *id = found ? *found : *unk_id;
    }
  }
  return tokenizer;
}

template <class EncodeStretch>
void ClipTokenizer::split_at_added_tokens(std::u32string_view text,
                                          const std::vector<AddedToken>& added_tokens,
                                          std::vector<int32_t>& ids,
                                          EncodeStretch&& encode_stretch) {
  size_t stretch_begin = 0;
  for (size_t i = 0; i < text.size();) {
    const AddedToken* longest = nullptr;
    for (const AddedToken& token : added_tokens)
      if (text.substr(i).starts_with(token.content) &&
          (longest == nullptr || token.content.size() > longest->content.size()))
        longest = &token;
    if (longest == nullptr) {
      ++i;
      continue;
    }
    if (i > stretch_begin) encode_stretch(text.substr(stretch_begin, i - stretch_begin), ids);
    ids.push_back(longest->id);
    i += longest->content.size();
    stretch_begin = i;
  }
  if (stretch_begin < text.size()) encode_stretch(text.substr(stretch_begin), ids);
}

void ClipTokenizer::encode_raw_stretch(std::u32string_view text, std::vector<int32_t>& ids) const {
  const std::u32string normalized = normalize(text);
  split_at_added_tokens(normalized, normalized_added_tokens_, ids,
                        [this](std::u32string_view stretch, std::vector<int32_t>& out) {
                          encode_normalized_stretch(stretch, out);
                        });
}

void ClipTokenizer::encode_normalized_stretch(std::u32string_view text,
                                              std::vector<int32_t>& ids) const {
  std::string word_utf8;
  for_each_word(text, [&](std::u32string_view word) {
    word_utf8.clear();
    for (char32_t cp : word) append_utf8(word_utf8, cp);
    append_bpe(word_utf8, ids);
  });
}

void ClipTokenizer::append_bpe(std::string_view word_utf8, std::vector<int32_t>& ids) const {
  // One symbol per byte, the last marked as ending the word; then, while some neighbours
  // form a known merge, merge the pair of lowest rank (the leftmost of equals).
  std::vector<int32_t> symbols(word_utf8.size());
  for (size_t i = 0; i < word_utf8.size(); ++i) {
    const auto byte = static_cast<unsigned char>(word_utf8[i]);
    symbols[i] = i + 1 == word_utf8.size() ? final_byte_ids_[byte] : byte_ids_[byte];
  }
  while (symbols.size() > 1) {
    const Merge* best = nullptr;
    size_t best_position = 0;
    for (size_t i = 0; i + 1 < symbols.size(); ++i) {
      auto it = merges_.find(uint64_t(uint32_t(symbols[i])) << 32 | uint32_t(symbols[i + 1]));
      if (it != merges_.end() && (best == nullptr || it->second.rank < best->rank)) {
        best = &it->second;
        best_position = i;
      }
    }
    if (best == nullptr) break;
    symbols[best_position] = best->merged_id;
    symbols.erase(symbols.begin() + static_cast<std::ptrdiff_t>(best_position) + 1);
  }
  ids.insert(ids.end(), symbols.begin(), symbols.end());
}

std::vector<int32_t> ClipTokenizer::encode(std::string_view text) const {
  std::vector<int32_t> ids;
  split_at_added_tokens(decode_utf8(text), raw_added_tokens_, ids,
                        [this](std::u32string_view stretch, std::vector<int32_t>& out) {
                          encode_raw_stretch(stretch, out);
                        });
  return ids;
}

std::vector<int32_t> ClipTokenizer::encode_for_model(std::string_view text) const {
  std::vector<int32_t> ids = encode(text);
  ids.resize(std::min(ids.size(), static_cast<size_t>(max_length_ - 2)));
  ids.insert(ids.begin(), bos_id_);
  ids.push_back(eos_id_);
  ids.resize(static_cast<size_t>(max_length_), pad_id_);
  return ids;
}

}  // namespace kiln::text
