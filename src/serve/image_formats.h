// The image formats the server returns (PNG always; JPEG and WebP when kiln was
// built with libjpeg and libwebp), base64, and the small previews.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "io/image.h"

namespace kiln::serve {

enum class ImageFormat { Png, Jpeg, Webp };

// "png", "jpeg" (or "jpg"), "webp".
std::optional<ImageFormat> parse_image_format(std::string_view name);
std::string_view format_name(ImageFormat format);   // "png", "jpeg", "webp"
std::string_view content_type(ImageFormat format);  // "image/png", ...
bool format_available(ImageFormat format);          // built in?

// Encoded bytes. `quality` (0-100) applies to JPEG and WebP (100 with WebP is lossless).
// `text` goes in PNG text chunks; JPEG gets the "parameters" value as a comment marker,
// WebP carries none. Throws kiln::Error for a format that is not built in.
std::string encode_image(const io::Image& image, ImageFormat format, int quality,
                         const std::vector<std::pair<std::string, std::string>>& text = {});

std::string base64_encode(std::string_view bytes);
// Standard alphabet; stops at the first character outside it (padding included).
std::string base64_decode(std::string_view text);

// Box-filtered copy whose longer side is at most `max_side` (the image itself if smaller).
io::Image downscale(const io::Image& image, int max_side);

}  // namespace kiln::serve
