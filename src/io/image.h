// 8-bit images and the PNG codec.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace kiln::io {

struct Image {
  int width = 0;
  int height = 0;
  int channels = 3;             // 1 (gray), 3 (RGB) or 4 (RGBA)
  std::vector<uint8_t> pixels;  // row-major, channels interleaved
};

// PNG bytes of `image`, with text chunks (key → value). A value that Latin-1
// can hold goes in a tEXt chunk, any other in an iTXt chunk (UTF-8), as PIL and
// A1111 write them; A1111 and the tools that read its images look for the key
// "parameters".
std::string encode_png(const Image& image,
                       const std::vector<std::pair<std::string, std::string>>& text = {});

// Decodes 8-bit gray, gray+alpha, RGB, RGBA and palette PNGs (non-interlaced;
// gray and palette also at 1, 2 and 4 bits, as PIL writes small palettes).
// Gray stays 1 channel, RGB and palette become 3; gray+alpha, RGBA and any
// image with a tRNS chunk become RGBA. Anything else (16-bit, interlaced,
// larger than kMaxPngDimension on a side), or a damaged file, is a kiln::Error
// saying what is wrong.
inline constexpr int kMaxPngDimension = 16384;
Image decode_png(std::string_view bytes);

// tEXt/iTXt/zTXt chunks of a PNG, as UTF-8.
std::map<std::string, std::string> png_text(std::string_view bytes);

// Writes `bytes` to `path` through a temporary file and a rename, so a reader
// never sees half a file.
void write_file_atomic(const std::filesystem::path& path, std::string_view bytes);
// The same for a file written in pieces (a header, then tensors' bytes) that
// need not be joined in memory first.
void write_file_atomic(const std::filesystem::path& path, std::span<const std::string_view> pieces);
std::string read_file(const std::filesystem::path& path);

}  // namespace kiln::io
