// CLIP's byte-level BPE tokenizer, giving the ids of transformers' CLIPTokenizer.
//
// Pipeline: NFC normalisation, runs of whitespace to one space, Unicode
// lowercase; split into words (<|startoftext|>, <|endoftext|>, contractions 's 't
// 're 've 'm 'll 'd, runs of letters, single digits, runs of other non-space
// characters); bytes of each word mapped to the byte-level alphabet; BPE merges
// by rank with "</w>" marking the end of a word.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace kiln::text {

class ClipTokenizer {
 public:
  // A transformers tokenizer folder: vocab.json + merges.txt, or tokenizer.json.
  // Special tokens (and the pad token, "!" for SD 2.x and SDXL's second
  // tokenizer) come from tokenizer_config.json / special_tokens_map.json when
  // present; model_max_length likewise (77 otherwise).
  static ClipTokenizer load(const std::filesystem::path& dir);

  // Ids of `text` without special tokens or truncation. Text that is not valid
  // UTF-8 is a kiln::Error.
  std::vector<int32_t> encode(std::string_view text) const;

  // What the Stable Diffusion pipelines feed the text encoder:
  // tokenizer(text, padding="max_length", max_length=model_max_length,
  //           truncation=True).input_ids, i.e. [bos] + ids[:max-2] + [eos] + pads.
  std::vector<int32_t> encode_for_model(std::string_view text) const;

  int32_t bos_id() const { return bos_id_; }
  int32_t eos_id() const { return eos_id_; }
  int32_t pad_id() const { return pad_id_; }
  int max_length() const { return max_length_; }
  size_t vocab_size() const { return vocab_.size(); }

 private:
  std::vector<int32_t> bpe(const std::string& word) const;  // word in byte-level alphabet

  std::unordered_map<std::string, int32_t> vocab_;
  std::unordered_map<std::string, int32_t> merge_rank_;  // "left right" → rank
  int32_t bos_id_ = 0, eos_id_ = 0, pad_id_ = 0;
  int max_length_ = 77;
};

}  // namespace kiln::text
