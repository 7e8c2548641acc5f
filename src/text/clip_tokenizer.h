// CLIP's byte-level BPE tokenizer, giving the ids of transformers' CLIPTokenizer.
//
// Pipeline: special tokens typed in the text (such as "<|endoftext|>") become their
// ids, matched before or after normalisation as the folder's configs say; the rest
// is normalised (NFC, runs of whitespace to one space, Unicode lowercase) and split
// into words (contractions 's 't 're 've 'm 'll 'd, runs of letters, single digits,
// runs of other non-space characters; a "<|endoftext|>" left in normalised text
// becomes "<|", "endoftext", "|>"); bytes of each word are mapped to the byte-level
// alphabet and merged by BPE rank, "</w>" marking the end of a word.
#pragma once

#include <array>
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

  // Ids of `text` without added start/end tokens or truncation. Text that is not
  // valid UTF-8 is a kiln::Error.
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
  // A token matched in the text before BPE: typed special tokens such as "<|endoftext|>".
  struct AddedToken {
    std::u32string content;  // normalised already when it is matched in normalised text
    int32_t id;
  };
  struct Merge {
    int32_t rank;  // lower merges first
    int32_t merged_id;
  };

  // Splits `text` at the added tokens found in it (leftmost, then longest), appending their
  // ids; each stretch between them goes to `encode_stretch`.
  template <class EncodeStretch>
  static void split_at_added_tokens(std::u32string_view text,
                                    const std::vector<AddedToken>& added_tokens,
                                    std::vector<int32_t>& ids, EncodeStretch&& encode_stretch);
  void encode_raw_stretch(std::u32string_view text, std::vector<int32_t>& ids) const;
  void encode_normalized_stretch(std::u32string_view text, std::vector<int32_t>& ids) const;
  void append_bpe(std::string_view word_utf8, std::vector<int32_t>& ids) const;

  std::unordered_map<std::string, int32_t> vocab_;
  std::unordered_map<uint64_t, Merge> merges_;  // key: left id << 32 | right id
  // Id of each byte's byte-level symbol, alone and as the last of a word ("</w>" appended);
  // the unknown token's id where the vocabulary lacks it.
  std::array<int32_t, 256> byte_ids_{}, final_byte_ids_{};
  std::vector<AddedToken> raw_added_tokens_;         // matched in the text as typed
  std::vector<AddedToken> normalized_added_tokens_;  // matched after normalisation
  int32_t bos_id_ = 0, eos_id_ = 0, pad_id_ = 0;
  int max_length_ = 77;
};

}  // namespace kiln::text
