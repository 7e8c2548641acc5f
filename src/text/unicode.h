// The Unicode the CLIP tokenizer needs: UTF-8, NFC, lowercase, and the character classes
// `\s`, `\p{L}` and `\p{N}`, all as the Hugging Face `tokenizers` library sees them (its
// Unicode versions differ per feature; tools/py/gen_unicode_tables.py explains).
#pragma once

#include <string>
#include <string_view>

namespace kiln::text {

// Code points of UTF-8 text. Invalid UTF-8 (a stray or missing continuation byte, an
// overlong form, a surrogate, a value past U+10FFFF) is a kiln::Error naming the byte offset.
std::u32string decode_utf8(std::string_view text);

void append_utf8(std::string& out, char32_t code_point);
std::string encode_utf8(std::u32string_view text);

// Canonical composition (Unicode normalisation form C).
std::u32string nfc(std::u32string_view text);

// Each code point replaced by its full lowercase mapping, one at a time, without context
// (so a final capital sigma becomes σ, not ς), like Rust's char::to_lowercase.
std::u32string to_lower(std::u32string_view text);

bool is_letter(char32_t code_point);  // general category L*
bool is_number(char32_t code_point);  // general category N*
bool is_space(char32_t code_point);   // the White_Space property

}  // namespace kiln::text
