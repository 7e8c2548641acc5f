// libFuzzer target: PNG decoding and text-chunk reading on arbitrary bytes.
// Chunk CRCs are re-sealed first so that mutations reach the decoder instead of
// stopping at the checksum.
#include <zlib.h>

#include <cstdint>
#include <string>

#include "io/image.h"
#include "kiln/error.h"

namespace {

uint32_t read_be32(const std::string& s, size_t at) {
  return uint32_t(uint8_t(s[at])) << 24 | uint32_t(uint8_t(s[at + 1])) << 16 |
         uint32_t(uint8_t(s[at + 2])) << 8 | uint32_t(uint8_t(s[at + 3]));
}

void reseal_crcs(std::string& png) {
  for (size_t at = 8; at + 12 <= png.size();) {
    const uint32_t length = read_be32(png, at);
    if (length > png.size() - at - 12) break;
    const uint32_t crc = crc32(0, reinterpret_cast<const Bytef*>(png.data() + at + 4), length + 4);
    for (int k = 0; k < 4; ++k) png[at + 8 + length + k] = char(crc >> (24 - 8 * k));
    at += 12 + length;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string bytes(reinterpret_cast<const char*>(data), size);
  reseal_crcs(bytes);
  try {
    kiln::io::decode_png(bytes);
  } catch (const kiln::Error&) {
  }
  try {
    kiln::io::png_text(bytes);
  } catch (const kiln::Error&) {
  }
  return 0;
}
