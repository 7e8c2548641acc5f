#include "text/unicode.h"

#include <algorithm>
#include <cstdint>
#include <iterator>
#include <span>
#include <vector>

#include "kiln/error.h"

namespace kiln::text {
namespace {

struct CodePointRange {
  char32_t first, last;
};

// Every stride-th code point from first to last lowercases to itself + delta.
struct LowercaseRun {
  char32_t first, last;
  int32_t delta;
  uint8_t stride;
};

struct LowercaseExpansion {
  char32_t upper;
  char32_t lower[3];  // unused trailing entries are 0
};

struct CombiningClassRange {
  char32_t first, last;
  uint8_t combining_class;
};

struct CanonicalDecomposition {
  char32_t composite, first, second;  // second is 0 for a singleton
  bool recomposes;                    // false for composition exclusions
};

#include "text/unicode_tables.inc"

// Hangul syllables decompose and compose arithmetically (Unicode §3.12).
constexpr char32_t kHangulSyllableFirst = 0xAC00, kLeadFirst = 0x1100, kVowelFirst = 0x1161,
                   kTrailFirst = 0x11A7;
constexpr char32_t kLeadCount = 19, kVowelCount = 21, kTrailCount = 28,
                   kSyllablesPerLead = kVowelCount * kTrailCount,
                   kSyllableCount = kLeadCount * kSyllablesPerLead;

bool in_ranges(std::span<const CodePointRange> ranges, char32_t cp) {
  auto after = std::upper_bound(ranges.begin(), ranges.end(), cp,
                                [](char32_t c, const CodePointRange& r) { return c < r.first; });
  return after != ranges.begin() && cp <= std::prev(after)->last;
}

uint8_t combining_class(char32_t cp) {
  if (cp < 0x300) return 0;  // the first combining mark
  auto ranges = std::span(kCombiningClassRanges);
  auto after =
      std::upper_bound(ranges.begin(), ranges.end(), cp,
                       [](char32_t c, const CombiningClassRange& r) { return c < r.first; });
  if (after == ranges.begin() || cp > std::prev(after)->last) return 0;
  return std::prev(after)->combining_class;
}

const CanonicalDecomposition* find_decomposition(char32_t cp) {
  auto table = std::span(kCanonicalDecompositions);
  auto it =
      std::lower_bound(table.begin(), table.end(), cp,
                       [](const CanonicalDecomposition& d, char32_t c) { return d.composite < c; });
  return it != table.end() && it->composite == cp ? &*it : nullptr;
}

void append_full_decomposition(std::u32string& out, char32_t cp) {
  if (cp >= kHangulSyllableFirst && cp < kHangulSyllableFirst + kSyllableCount) {
    const char32_t index = cp - kHangulSyllableFirst;
    out += kLeadFirst + index / kSyllablesPerLead;
    out += kVowelFirst + (index % kSyllablesPerLead) / kTrailCount;
    if (index % kTrailCount != 0) out += kTrailFirst + index % kTrailCount;
    return;
  }
  const CanonicalDecomposition* decomposition = find_decomposition(cp);
  if (decomposition == nullptr) {
    out += cp;
    return;
  }
  append_full_decomposition(out, decomposition->first);
  if (decomposition->second != 0) append_full_decomposition(out, decomposition->second);
}

// The recomposing pairs, ordered by (first, second) for lookup; derived once from the table.
const std::vector<CanonicalDecomposition>& compositions() {
  static const std::vector<CanonicalDecomposition> by_pair = [] {
    std::vector<CanonicalDecomposition> pairs;
    for (const CanonicalDecomposition& d : kCanonicalDecompositions)
      if (d.recomposes) pairs.push_back(d);
    std::sort(pairs.begin(), pairs.end(), [](const auto& a, const auto& b) {
      return a.first != b.first ? a.first < b.first : a.second < b.second;
    });
    return pairs;
  }();
  return by_pair;
}

// The primary composite of (first, second), or 0 when there is none.
char32_t compose_pair(char32_t first, char32_t second) {
  if (first >= kLeadFirst && first < kLeadFirst + kLeadCount && second >= kVowelFirst &&
      second < kVowelFirst + kVowelCount) {
    return kHangulSyllableFirst +
           ((first - kLeadFirst) * kVowelCount + (second - kVowelFirst)) * kTrailCount;
  }
  if (first >= kHangulSyllableFirst && first < kHangulSyllableFirst + kSyllableCount &&
      (first - kHangulSyllableFirst) % kTrailCount == 0 && second > kTrailFirst &&
      second < kTrailFirst + kTrailCount) {
    return first + (second - kTrailFirst);
  }
  const auto& pairs = compositions();
  auto it = std::lower_bound(pairs.begin(), pairs.end(), std::pair(first, second),
                             [](const CanonicalDecomposition& d, std::pair<char32_t, char32_t> p) {
                               return d.first != p.first ? d.first < p.first : d.second < p.second;
                             });
  return it != pairs.end() && it->first == first && it->second == second ? it->composite : 0;
}

void append_lowercase(std::u32string& out, char32_t cp) {
  if (cp < 0x80) {
    out += cp >= 'A' && cp <= 'Z' ? cp + ('a' - 'A') : cp;
    return;
  }
  for (const LowercaseExpansion& expansion : kLowercaseExpansions) {
    if (expansion.upper != cp) continue;
    for (char32_t lower : expansion.lower)
      if (lower != 0) out += lower;
    return;
  }
  auto runs = std::span(kLowercaseRuns);
  auto after = std::upper_bound(runs.begin(), runs.end(), cp,
                                [](char32_t c, const LowercaseRun& r) { return c < r.first; });
  if (after != runs.begin()) {
    const LowercaseRun& run = *std::prev(after);
    if (cp <= run.last && (cp - run.first) % run.stride == 0) {
      out += static_cast<char32_t>(static_cast<int32_t>(cp) + run.delta);
      return;
    }
  }
  out += cp;
}

[[noreturn]] void fail_invalid_utf8(std::string_view text, size_t offset, const char* problem) {
  KILN_FAIL("text is not valid UTF-8: ", problem, " at byte offset ", offset, " (byte 0x", std::hex,
            static_cast<unsigned>(static_cast<unsigned char>(text[offset])), std::dec,
            "); pass prompts as UTF-8");
}

}  // namespace

std::u32string decode_utf8(std::string_view text) {
  std::u32string out;
  out.reserve(text.size());
  size_t i = 0;
  while (i < text.size()) {
    const auto lead = static_cast<unsigned char>(text[i]);
    if (lead < 0x80) {
      out += lead;
      ++i;
      continue;
    }
    size_t length;
    char32_t cp;
    // The second byte's range excludes overlong forms, surrogates and values past U+10FFFF
    // (the well-formed sequences of Unicode §3.9, table 3-7).
    unsigned char second_min = 0x80, second_max = 0xBF;
    if (lead >= 0xC2 && lead <= 0xDF) {
      length = 2, cp = lead & 0x1F;
    } else if (lead >= 0xE0 && lead <= 0xEF) {
      length = 3, cp = lead & 0x0F;
      if (lead == 0xE0) second_min = 0xA0;
      if (lead == 0xED) second_max = 0x9F;
    } else if (lead >= 0xF0 && lead <= 0xF4) {
      length = 4, cp = lead & 0x07;
      if (lead == 0xF0) second_min = 0x90;
      if (lead == 0xF4) second_max = 0x8F;
    } else {
      fail_invalid_utf8(text, i,
                        lead < 0xC0 ? "a continuation byte without a lead byte"
                                    : "a byte that never occurs in UTF-8");
    }
    for (size_t k = 1; k < length; ++k) {
      if (i + k >= text.size()) fail_invalid_utf8(text, i, "a sequence cut short by the end");
      const auto byte = static_cast<unsigned char>(text[i + k]);
      const bool in_range =
          k == 1 ? byte >= second_min && byte <= second_max : byte >= 0x80 && byte <= 0xBF;
      if (!in_range)
        fail_invalid_utf8(text, i,
                          k == 1 && (byte & 0xC0) == 0x80
                              ? "an overlong form, surrogate or value past U+10FFFF"
                              : "a sequence cut short by a byte that does not continue it");
      cp = (cp << 6) | (byte & 0x3F);
    }
    out += cp;
    i += length;
  }
  return out;
}

void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

std::string encode_utf8(std::u32string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char32_t cp : text) append_utf8(out, cp);
  return out;
}

std::u32string nfc(std::u32string_view text) {
  // Most prompts are all ASCII, which is in NFC already.
  if (std::all_of(text.begin(), text.end(), [](char32_t c) { return c < 0x80; }))
    return std::u32string(text);

  std::u32string decomposed;
  decomposed.reserve(text.size());
  for (char32_t cp : text) append_full_decomposition(decomposed, cp);

  // Canonical ordering: a stable sort of each run of non-starters by combining class.
  for (size_t i = 0; i < decomposed.size();) {
    if (combining_class(decomposed[i]) == 0) {
      ++i;
      continue;
    }
    size_t end = i;
    while (end < decomposed.size() && combining_class(decomposed[end]) != 0) ++end;
    std::stable_sort(decomposed.begin() + i, decomposed.begin() + end, [](char32_t a, char32_t b) {
      return combining_class(a) < combining_class(b);
    });
    i = end;
  }

  // Canonical composition: a character joins the last starter unless something between them
  // blocks it (a starter, or a mark of the same or higher class).
  std::u32string composed;
  composed.reserve(decomposed.size());
  size_t starter = std::u32string::npos;
  int last_class = -1;  // class of the last character kept after the starter; -1: none yet
  for (char32_t cp : decomposed) {
    const int cls = combining_class(cp);
    if (starter != std::u32string::npos && (last_class == -1 || last_class < cls)) {
      if (char32_t composite = compose_pair(composed[starter], cp)) {
        composed[starter] = composite;
        continue;
      }
    }
    if (cls == 0) {
      starter = composed.size();
      last_class = -1;
    } else {
      last_class = cls;
    }
    composed += cp;
  }
  return composed;
}

std::u32string to_lower(std::u32string_view text) {
  std::u32string out;
  out.reserve(text.size());
  for (char32_t cp : text) append_lowercase(out, cp);
  return out;
}

bool is_letter(char32_t cp) {
  if (cp < 0x80) return (cp | 0x20) >= 'a' && (cp | 0x20) <= 'z';
  return in_ranges(kLetterRanges, cp);
}

bool is_number(char32_t cp) {
  if (cp < 0x80) return cp >= '0' && cp <= '9';
  return in_ranges(kNumberRanges, cp);
}

bool is_space(char32_t cp) {
  return in_ranges(kSpaceRanges, cp);
}

}  // namespace kiln::text
