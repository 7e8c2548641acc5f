// The PNG codec: round trips, images and text written by Pillow (tests/data/io/png,
// made by tools/py/make_io_test_files.py), damaged and hostile files; and the
// file helpers beside it.
#include <gtest/gtest.h>
#include <unistd.h>
#include <zlib.h>

#include <fstream>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "io/image.h"
#include "kiln/error.h"

namespace kiln::io {
namespace {

namespace fs = std::filesystem;

const fs::path kPngData = fs::path(KILN_TEST_DATA) / "io" / "png";

template <class Action>
std::string error_of(Action&& action) {
  try {
    action();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error thrown)";
}

void expect_mentions(const std::string& message, std::string_view part) {
  EXPECT_NE(message.find(part), std::string::npos)
      << "expected the message to mention \"" << part << "\"; it was: " << message;
}

std::string decode_error(std::string_view png) {
  return error_of([&] { decode_png(png); });
}

std::string read_test_file(const std::string& name) {
  std::ifstream in(kPngData / name, std::ios::binary);
  EXPECT_TRUE(in.good()) << "missing test file " << name;
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// The pixels Pillow decoded: "width height channels\n" then the bytes.
Image read_expected(const std::string& name) {
  const std::string file = read_test_file(name + ".pixels");
  std::istringstream header(file.substr(0, file.find('\n')));
  Image image;
  header >> image.width >> image.height >> image.channels;
  const std::string pixels = file.substr(file.find('\n') + 1);
  image.pixels.assign(pixels.begin(), pixels.end());
  return image;
}

Image random_image(int width, int height, int channels, uint32_t seed) {
  std::mt19937 gen(seed);
  Image image{width, height, channels, {}};
  image.pixels.resize(size_t(width) * size_t(height) * size_t(channels));
  for (size_t i = 0; i < image.pixels.size(); ++i)
    // Half noise, half smooth, so that every filter gets chosen somewhere.
    image.pixels[i] = (i / size_t(width * channels)) % 2 ? uint8_t(gen()) : uint8_t(i % 251);
  return image;
}

void expect_same_image(const Image& got, const Image& want) {
  EXPECT_EQ(got.width, want.width);
  EXPECT_EQ(got.height, want.height);
  ASSERT_EQ(got.channels, want.channels);
  ASSERT_EQ(got.pixels.size(), want.pixels.size());
  size_t differing = 0;
  for (size_t i = 0; i < got.pixels.size(); ++i) differing += got.pixels[i] != want.pixels[i];
  EXPECT_EQ(differing, 0u) << "bytes that differ out of " << got.pixels.size();
}

// ---------------------------------------------------------------- building PNGs by hand

std::string be32(uint32_t v) {
  return {char(v >> 24), char(v >> 16), char(v >> 8), char(v)};
}

std::string chunk(std::string_view type, std::string_view data) {
  uLong crc = crc32(0, reinterpret_cast<const Bytef*>(type.data()), 4);
  crc = crc32(crc, reinterpret_cast<const Bytef*>(data.data()), uInt(data.size()));
  return be32(uint32_t(data.size())) + std::string(type) + std::string(data) + be32(uint32_t(crc));
}

std::string zlib_compress(std::string_view raw) {
  uLongf size = compressBound(uLong(raw.size()));
  std::string out(size, '\0');
  compress(reinterpret_cast<Bytef*>(out.data()), &size, reinterpret_cast<const Bytef*>(raw.data()),
           uLong(raw.size()));
  out.resize(size);
  return out;
}

std::string ihdr(uint32_t width, uint32_t height, int bit_depth, int color_type,
                 int interlace = 0) {
  return chunk("IHDR", be32(width) + be32(height) +
                           std::string{char(bit_depth), char(color_type), 0, 0, char(interlace)});
}

const std::string kSignature("\x89PNG\r\n\x1a\n", 8);

// A PNG from its chunks between the signature and IEND.
std::string png_of(const std::string& chunks) {
  return kSignature + chunks + chunk("IEND", "");
}

struct RawChunk {
  std::string type;
  std::string data;
};

std::vector<RawChunk> split_chunks(const std::string& png) {
  std::vector<RawChunk> chunks;
  for (size_t at = 8; at + 12 <= png.size();) {
    const uint32_t length = uint32_t(uint8_t(png[at])) << 24 |
                            uint32_t(uint8_t(png[at + 1])) << 16 |
                            uint32_t(uint8_t(png[at + 2])) << 8 | uint32_t(uint8_t(png[at + 3]));
    chunks.push_back({png.substr(at + 4, 4), png.substr(at + 8, length)});
    at += 12 + length;
  }
  return chunks;
}

std::string join_chunks(const std::vector<RawChunk>& chunks) {
  std::string png = kSignature;
  for (const RawChunk& c : chunks) png += chunk(c.type, c.data);
  return png;
}

// ---------------------------------------------------------------- round trips

TEST(Png, EncodeThenDecodeGivesBackEveryChannelCountAndOddSize) {
  uint32_t seed = 0;
  for (int channels : {1, 3, 4}) {
    for (auto [width, height] : {std::pair{1, 1}, {7, 3}, {33, 17}, {1, 40}, {40, 1}, {129, 65}}) {
      SCOPED_TRACE(testing::Message() << width << "x" << height << "x" << channels);
      const Image image = random_image(width, height, channels, ++seed);
      const std::string png = encode_png(image);
      expect_same_image(decode_png(png), image);
    }
  }
}

TEST(Png, EncodedImagesUseSeveralFilterTypes) {
  const Image image = random_image(64, 64, 3, 7);
  std::string idat;
  for (const RawChunk& c : split_chunks(encode_png(image)))
    if (c.type == "IDAT") idat += c.data;
  std::string raw(64 * (64 * 3 + 1), '\0');
  uLongf size = uLongf(raw.size());
  ASSERT_EQ(uncompress(reinterpret_cast<Bytef*>(raw.data()), &size,
                       reinterpret_cast<const Bytef*>(idat.data()), uLong(idat.size())),
            Z_OK);
  std::set<int> filters;
  for (int y = 0; y < 64; ++y) filters.insert(raw[size_t(y) * (64 * 3 + 1)]);
  EXPECT_GE(filters.size(), 2u) << "the encoder should choose a filter per row";
}

TEST(Png, EncodeRejectsImagesItCannotWrite) {
  Image two_channels{4, 4, 2, std::vector<uint8_t>(32)};
  expect_mentions(error_of([&] { encode_png(two_channels); }), "1, 3 or 4 channels");
  Image short_pixels{4, 4, 3, std::vector<uint8_t>(47)};
  expect_mentions(error_of([&] { encode_png(short_pixels); }), "holds 47 bytes instead of 48");
  Image empty{0, 4, 3, {}};
  expect_mentions(error_of([&] { encode_png(empty); }), "0x4");
}

// ---------------------------------------------------------------- files from Pillow

TEST(Png, DecodesWhatPillowWrites) {
  // Gray, RGB, RGBA and gray+alpha with Pillow's adaptive filters (all five
  // types, checked by the generator), palettes of 8, 4 and 1 bits, tRNS on
  // palette, gray and RGB images, and 1-bit gray.
  for (const char* name :
       {"gray", "rgb", "rgba", "gray_alpha", "rgb_optimized", "palette256", "palette16_trns",
        "palette2", "bilevel", "rgb_trns", "gray_trns", "text"}) {
    SCOPED_TRACE(name);
    expect_same_image(decode_png(read_test_file(std::string(name) + ".png")), read_expected(name));
  }
}

TEST(Png, SixteenBitAndInterlacedImagesAreRefusedClearly) {
  expect_mentions(decode_error(read_test_file("gray16.png")), "16-bit PNGs are not supported");
  std::vector<RawChunk> chunks = split_chunks(read_test_file("gray.png"));
  ASSERT_EQ(chunks[0].type, "IHDR");
  chunks[0].data[12] = 1;
  expect_mentions(decode_error(join_chunks(chunks)), "interlaced PNGs are not supported");
}

const char* const kParameters = "a café, Steps: 20, Sampler: Euler a, CFG scale: 7";
const char* const kComment = "日本語のプロンプト ✓";

TEST(Png, ReadsTextChunksPillowWrote) {
  const std::map<std::string, std::string> text = png_text(read_test_file("text.png"));
  std::string zipped;
  for (int i = 0; i < 8; ++i) zipped += "compressed text ";
  EXPECT_EQ(text, (std::map<std::string, std::string>{
                      {"parameters", kParameters}, {"Comment", kComment}, {"zipped", zipped}}));
}

TEST(Png, WritesTextChunksByteForByteAsPillowDoes) {
  // Pillow's PngInfo.add_text: tEXt for a Latin-1 value, iTXt for any other.
  std::vector<RawChunk> pillow_text;
  for (const RawChunk& c : split_chunks(read_test_file("text.png")))
    if (c.type == "tEXt" || c.type == "iTXt") pillow_text.push_back(c);
  ASSERT_EQ(pillow_text.size(), 2u);

  const std::string ours =
      encode_png(read_expected("text"), {{"parameters", kParameters}, {"Comment", kComment}});
  const std::vector<RawChunk> chunks = split_chunks(ours);
  ASSERT_GE(chunks.size(), 5u);
  EXPECT_EQ(chunks[0].type, "IHDR");
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(chunks[1 + i].type, pillow_text[i].type);
    EXPECT_EQ(chunks[1 + i].data, pillow_text[i].data);
  }
  EXPECT_EQ(png_text(ours), (std::map<std::string, std::string>{{"parameters", kParameters},
                                                                {"Comment", kComment}}));
  expect_same_image(decode_png(ours), read_expected("text"));
}

TEST(Png, TextKeysMustFitTheFormat) {
  const Image image = random_image(2, 2, 3, 1);
  expect_mentions(error_of([&] { encode_png(image, {{"ключ", "v"}}); }), "Latin-1 cannot hold");
  expect_mentions(error_of([&] { encode_png(image, {{"", "v"}}); }), "1 to 79");
  expect_mentions(error_of([&] { encode_png(image, {{std::string(80, 'k'), "v"}}); }), "1 to 79");
  expect_mentions(error_of([&] { encode_png(image, {{"k", "\xff\xfe"}}); }), "not valid UTF-8");
  // A Latin-1 key outside ASCII is allowed and read back as UTF-8.
  EXPECT_EQ(png_text(encode_png(image, {{"clé", "été"}})).at("clé"), "été");
}

TEST(Png, LaterTextChunkWithTheSameKeyWins) {
  const Image image = random_image(2, 2, 1, 2);
  EXPECT_EQ(png_text(encode_png(image, {{"k", "first"}, {"k", "second"}})).at("k"), "second");
}

// ---------------------------------------------------------------- damaged files

TEST(Png, WrongSignatureIsNotAPng) {
  expect_mentions(decode_error(""), "not a PNG");
  expect_mentions(decode_error("GIF89a.........."), "not a PNG");
  expect_mentions(error_of([&] { png_text("\x89PNG"); }), "not a PNG");
}

TEST(Png, EveryTruncationIsAnError) {
  const std::string png = read_test_file("rgb.png");
  for (size_t n = 0; n < png.size(); ++n) {
    const std::string message = decode_error(std::string_view(png).substr(0, n));
    if (n >= 8) expect_mentions(message, "truncated");
    if (n < 8) expect_mentions(message, "not a PNG");
  }
}

TEST(Png, BadCrcIsAnError) {
  std::string png = read_test_file("rgb.png");
  png[png.size() / 2] ^= 0x10;  // inside the image data
  expect_mentions(decode_error(png), "CRC mismatch in chunk IDAT");
}

TEST(Png, BadZlibStreamIsAnError) {
  std::vector<RawChunk> chunks = split_chunks(read_test_file("rgb.png"));
  for (RawChunk& c : chunks)
    if (c.type == "IDAT") {
      c.data[0] = 0;  // a zlib header that names no valid method
      break;
    }
  expect_mentions(decode_error(join_chunks(chunks)), "not a valid zlib stream");
}

TEST(Png, AbsurdSizesAreRefusedBeforeAllocating) {
  const std::string tiny = chunk("IDAT", zlib_compress(std::string(2, '\0')));
  expect_mentions(decode_error(png_of(ihdr(100000, 1, 8, 2) + tiny)), "too large");
  expect_mentions(decode_error(png_of(ihdr(1, 4000000000u, 8, 2) + tiny)), "too large");
  expect_mentions(decode_error(png_of(ihdr(0, 1, 8, 2) + tiny)), "0x1");
  // The largest allowed size with almost no data fails for lack of rows, quickly.
  expect_mentions(decode_error(png_of(ihdr(16384, 16384, 8, 6) + tiny)), "after 0 of 16384 rows");
}

TEST(Png, HeaderFieldsAreChecked) {
  const std::string idat = chunk("IDAT", zlib_compress(std::string(4, '\0')));
  expect_mentions(decode_error(png_of(ihdr(1, 1, 8, 5) + idat)), "unknown color type 5");
  expect_mentions(decode_error(png_of(ihdr(1, 1, 4, 2) + idat)), "bit depth 4 is invalid");
  expect_mentions(decode_error(png_of(chunk("IHDR", "short") + idat)), "IHDR holds 5 bytes");
  expect_mentions(decode_error(png_of(chunk("tEXt", std::string("a\0b", 3)) + idat)),
                  "first chunk is tEXt");
}

TEST(Png, RowAndPaletteProblemsAreErrors) {
  // 2x1 RGB with filter type 7.
  const std::string bad_filter = zlib_compress(std::string("\x07\1\2\3\4\5\6", 7));
  expect_mentions(decode_error(png_of(ihdr(2, 1, 8, 2) + chunk("IDAT", bad_filter))),
                  "unknown filter type 7");
  // Palette of two entries, pixel using entry 5.
  const std::string palette = chunk("PLTE", std::string(6, '\x10'));
  const std::string pixels = chunk("IDAT", zlib_compress(std::string("\0\0\5", 3)));
  expect_mentions(decode_error(png_of(ihdr(2, 1, 8, 3) + palette + pixels)),
                  "uses palette entry 5 of 2");
  expect_mentions(decode_error(png_of(ihdr(2, 1, 8, 3) + pixels)), "no PLTE");
  expect_mentions(decode_error(png_of(ihdr(2, 1, 8, 3) + chunk("PLTE", "12345") + pixels)),
                  "PLTE holds 5 bytes");
  // Two rows promised, one delivered.
  const std::string one_row = chunk("IDAT", zlib_compress(std::string(7, '\0')));
  expect_mentions(decode_error(png_of(ihdr(2, 2, 8, 2) + one_row)), "ends after 1 of 2 rows");
  // Unknown critical chunk refused, unknown ancillary chunk skipped.
  const std::string two_rows = chunk("IDAT", zlib_compress(std::string(14, '\0')));
  expect_mentions(decode_error(png_of(ihdr(2, 2, 8, 2) + chunk("ABCD", "") + two_rows)),
                  "critical chunk ABCD");
  EXPECT_EQ(decode_png(png_of(ihdr(2, 2, 8, 2) + chunk("abCd", "xyz") + two_rows)).pixels.size(),
            12u);
  expect_mentions(decode_error(png_of(ihdr(2, 2, 8, 2) + two_rows +
                                      chunk("tEXt", std::string("k\0v", 3)) + two_rows)),
                  "not consecutive");
  // IDAT split across several chunks is one stream.
  const std::string stream = zlib_compress(std::string(14, '\0'));
  EXPECT_EQ(decode_png(png_of(ihdr(2, 2, 8, 2) + chunk("IDAT", stream.substr(0, 3)) +
                              chunk("IDAT", stream.substr(3))))
                .pixels,
            std::vector<uint8_t>(12, 0));
}

TEST(Png, RandomDamageBehindValidCrcsNeverCrashes) {
  // Each mutation re-seals the chunk's CRC, so the damage reaches the parser
  // and the decompressor rather than stopping at the checksum.
  std::mt19937 gen(42);
  for (const char* name : {"rgb.png", "palette16_trns.png", "gray_alpha.png", "text.png"}) {
    const std::vector<RawChunk> original = split_chunks(read_test_file(name));
    for (int trial = 0; trial < 400; ++trial) {
      std::vector<RawChunk> chunks = original;
      RawChunk& target = chunks[gen() % chunks.size()];
      if (target.data.empty()) continue;
      for (int flips = 1 + int(gen() % 3); flips > 0; --flips)
        target.data[gen() % target.data.size()] ^= char(1 << (gen() % 8));
      const std::string png = join_chunks(chunks);
      try {
        const Image image = decode_png(png);
        EXPECT_EQ(image.pixels.size(),
                  size_t(image.width) * size_t(image.height) * size_t(image.channels));
      } catch (const Error&) {
      }
      try {
        png_text(png);
      } catch (const Error&) {
      }
    }
  }
}

TEST(Png, TextBombsAreRefused) {
  const std::string huge = zlib_compress(std::string(20u << 20, 'a'));
  const std::string png = png_of(ihdr(1, 1, 8, 0) + chunk("zTXt", std::string("k\0\0", 3) + huge) +
                                 chunk("IDAT", zlib_compress(std::string(2, '\0'))));
  expect_mentions(error_of([&] { png_text(png); }), "inflates to more than");
  EXPECT_EQ(decode_png(png).pixels.size(), 1u) << "text does not stop the image from decoding";
}

// ---------------------------------------------------------------- reading and writing files

class PngFileHelpers : public testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("kiln_png_test_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
};

TEST_F(PngFileHelpers, AtomicWriteReplacesTheFileAndLeavesNoTemporary) {
  const fs::path path = dir_ / "out.png";
  write_file_atomic(path, "first version");
  write_file_atomic(path, std::string("second\0version", 14));
  EXPECT_EQ(read_file(path), std::string("second\0version", 14));
  const std::string_view pieces[] = {"a", "", "bc"};
  write_file_atomic(dir_ / "pieces.bin", pieces);
  EXPECT_EQ(read_file(dir_ / "pieces.bin"), "abc");
  size_t files = 0;
  for ([[maybe_unused]] const auto& entry : fs::directory_iterator(dir_)) ++files;
  EXPECT_EQ(files, 2u) << "a temporary file was left behind";
}

TEST_F(PngFileHelpers, ErrorsNameThePathAndTheCause) {
  const std::string missing = error_of([&] { read_file(dir_ / "absent.png"); });
  expect_mentions(missing, "absent.png");
  expect_mentions(missing, "No such file");
  expect_mentions(error_of([&] { read_file(dir_); }), "is a folder");
  const std::string unwritable = error_of([&] { write_file_atomic(dir_ / "no" / "x.png", "x"); });
  expect_mentions(unwritable, "x.png");
  expect_mentions(unwritable, "No such file");
}

}  // namespace
}  // namespace kiln::io
