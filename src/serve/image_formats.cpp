#include "serve/image_formats.h"

#include <algorithm>
#include <csetjmp>
#include <cstdio>
#include <cstdlib>

#include "kiln/error.h"

#if KILN_WITH_JPEG
#include <jpeglib.h>
#endif
#if KILN_WITH_WEBP
#include <webp/encode.h>
#endif

namespace kiln::serve {
namespace {

// RGB rows of any 1-, 3- or 4-channel image (alpha dropped).
std::vector<uint8_t> to_rgb(const io::Image& image) {
  if (image.channels == 3) return image.pixels;
  std::vector<uint8_t> rgb(size_t(image.width) * image.height * 3);
  for (size_t i = 0, n = size_t(image.width) * image.height; i < n; ++i)
    for (int c = 0; c < 3; ++c)
      rgb[i * 3 + c] = image.pixels[i * image.channels + (image.channels == 1 ? 0 : c)];
  return rgb;
}

#if KILN_WITH_JPEG
struct JpegError {
  jpeg_error_mgr manager;
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

void jpeg_fail(j_common_ptr info) {
  auto* err = reinterpret_cast<JpegError*>(info->err);
  (*info->err->format_message)(info, err->message);
  std::longjmp(err->jump, 1);
}

// Locals that must survive the longjmp live in this struct, not on the frame setjmp saw.
struct JpegJob {
  jpeg_compress_struct info{};
  JpegError error{};
  unsigned char* out = nullptr;
  unsigned long size = 0;
};

std::string encode_jpeg(const io::Image& image, int quality, const std::string& comment) {
  const std::vector<uint8_t> rgb = to_rgb(image);
  JpegJob job;
  job.info.err = jpeg_std_error(&job.error.manager);
  job.error.manager.error_exit = jpeg_fail;
  if (setjmp(job.error.jump)) {
    jpeg_destroy_compress(&job.info);
    std::free(job.out);
    KILN_FAIL("JPEG encoding failed: ", job.error.message);
  }
  jpeg_create_compress(&job.info);
  jpeg_mem_dest(&job.info, &job.out, &job.size);
  job.info.image_width = JDIMENSION(image.width);
  job.info.image_height = JDIMENSION(image.height);
  job.info.input_components = 3;
  job.info.in_color_space = JCS_RGB;
  jpeg_set_defaults(&job.info);
  jpeg_set_quality(&job.info, std::clamp(quality, 1, 100), TRUE);
  jpeg_start_compress(&job.info, TRUE);
  if (!comment.empty())
    jpeg_write_marker(&job.info, JPEG_COM, reinterpret_cast<const JOCTET*>(comment.data()),
                      unsigned(std::min<size_t>(comment.size(), 65533)));
  while (job.info.next_scanline < job.info.image_height) {
    JSAMPROW row =
        const_cast<JSAMPROW>(rgb.data() + size_t(job.info.next_scanline) * image.width * 3);
    jpeg_write_scanlines(&job.info, &row, 1);
  }
  jpeg_finish_compress(&job.info);
  std::string bytes(reinterpret_cast<const char*>(job.out), job.size);
  jpeg_destroy_compress(&job.info);
  std::free(job.out);
  return bytes;
}
#endif

#if KILN_WITH_WEBP
std::string encode_webp(const io::Image& image, int quality) {
  const std::vector<uint8_t> rgb = to_rgb(image);
  uint8_t* out = nullptr;
  const size_t size =
      quality >= 100
          ? WebPEncodeLosslessRGB(rgb.data(), image.width, image.height, image.width * 3, &out)
          : WebPEncodeRGB(rgb.data(), image.width, image.height, image.width * 3,
                          float(std::clamp(quality, 0, 100)), &out);
  if (size == 0 || !out)
    KILN_FAIL("WebP encoding of a ", image.width, "x", image.height, " image failed");
  std::string bytes(reinterpret_cast<const char*>(out), size);
  WebPFree(out);
  return bytes;
}
#endif

}  // namespace

std::optional<ImageFormat> parse_image_format(std::string_view name) {
  if (name == "png") return ImageFormat::Png;
  if (name == "jpeg" || name == "jpg") return ImageFormat::Jpeg;
  if (name == "webp") return ImageFormat::Webp;
  return std::nullopt;
}

std::string_view format_name(ImageFormat format) {
  switch (format) {
    case ImageFormat::Png:
      return "png";
    case ImageFormat::Jpeg:
      return "jpeg";
    case ImageFormat::Webp:
      return "webp";
  }
  return "?";
}

std::string_view content_type(ImageFormat format) {
  switch (format) {
    case ImageFormat::Png:
      return "image/png";
    case ImageFormat::Jpeg:
      return "image/jpeg";
    case ImageFormat::Webp:
      return "image/webp";
  }
  return "application/octet-stream";
}

bool format_available(ImageFormat format) {
  switch (format) {
    case ImageFormat::Png:
      return true;
    case ImageFormat::Jpeg:
      return KILN_WITH_JPEG != 0;
    case ImageFormat::Webp:
      return KILN_WITH_WEBP != 0;
  }
  return false;
}

std::string encode_image(const io::Image& image, ImageFormat format, int quality,
                         const std::vector<std::pair<std::string, std::string>>& text) {
  switch (format) {
    case ImageFormat::Png:
      return io::encode_png(image, text);
    case ImageFormat::Jpeg: {
#if KILN_WITH_JPEG
      std::string comment;
      for (const auto& [key, value] : text)
        if (key == "parameters") comment = value;
      return encode_jpeg(image, quality, comment);
#else
      break;
#endif
    }
    case ImageFormat::Webp:
#if KILN_WITH_WEBP
      return encode_webp(image, quality);
#else
      break;
#endif
  }
  KILN_FAIL("this build of kiln cannot write ", format_name(format), " images");
}

std::string base64_encode(std::string_view bytes) {
  static constexpr char kAlphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 2 < bytes.size(); i += 3) {
    const uint32_t v = uint32_t(uint8_t(bytes[i])) << 16 | uint32_t(uint8_t(bytes[i + 1])) << 8 |
                       uint8_t(bytes[i + 2]);
    for (int s = 18; s >= 0; s -= 6) out.push_back(kAlphabet[(v >> s) & 63]);
  }
  if (i < bytes.size()) {
    uint32_t v = uint32_t(uint8_t(bytes[i])) << 16;
    if (i + 1 < bytes.size()) v |= uint32_t(uint8_t(bytes[i + 1])) << 8;
    out.push_back(kAlphabet[(v >> 18) & 63]);
    out.push_back(kAlphabet[(v >> 12) & 63]);
    out.push_back(i + 1 < bytes.size() ? kAlphabet[(v >> 6) & 63] : '=');
    out.push_back('=');
  }
  return out;
}

std::string base64_decode(std::string_view text) {
  std::string out;
  uint32_t acc = 0;
  int bits = 0;
  for (char c : text) {
    int v;
    if (c >= 'A' && c <= 'Z')
      v = c - 'A';
    else if (c >= 'a' && c <= 'z')
      v = c - 'a' + 26;
    else if (c >= '0' && c <= '9')
      v = c - '0' + 52;
    else if (c == '+')
      v = 62;
    else if (c == '/')
      v = 63;
    else
      break;
    acc = (acc << 6) | uint32_t(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(char((acc >> bits) & 0xFF));
    }
  }
  return out;
}

io::Image downscale(const io::Image& image, int max_side) {
  const int longer = std::max(image.width, image.height);
  if (longer <= max_side || max_side <= 0) return image;
  const int factor = (longer + max_side - 1) / max_side;
  io::Image out;
  out.width = std::max(1, image.width / factor);
  out.height = std::max(1, image.height / factor);
  out.channels = image.channels;
  out.pixels.resize(size_t(out.width) * out.height * out.channels);
  for (int y = 0; y < out.height; ++y)
    for (int x = 0; x < out.width; ++x)
      for (int c = 0; c < image.channels; ++c) {
        int sum = 0;
        for (int dy = 0; dy < factor; ++dy)
          for (int dx = 0; dx < factor; ++dx)
            sum += image.pixels[(size_t(y * factor + dy) * image.width + x * factor + dx) *
                                    image.channels +
                                c];
        out.pixels[(size_t(y) * out.width + x) * out.channels + c] =
            uint8_t((sum + factor * factor / 2) / (factor * factor));
      }
  return out;
}

}  // namespace kiln::serve
