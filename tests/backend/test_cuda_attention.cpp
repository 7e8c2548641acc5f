// Attention on CUDA against the CPU reference, on every path (the banded cuBLAS path,
// the flash kernels, cuDNN's) over the UNets', text encoders' and VAE's shapes.
#include <cmath>
#include <string>
#include <tuple>
#include <vector>

#include "backend_test.h"

namespace kiln::backend_test {
namespace {

struct AttentionCase {
  int64_t b, sq, sk;
  int heads;
  int64_t d;
  bool causal;
};

// Paths: the banded cuBLAS path, the mma.sync flash kernel with one m-tile per warp,
// with two, the wgmma flash kernel in blocks of 128 and 192 rows (Hopper; the mma.sync
// one elsewhere and where it does not apply), its producer form over 64- and 128-key
// tiles, cuDNN's fused attention (where it takes the shape; ours otherwise).
enum class AttentionPath {
  Banded,
  FlashOneTile,
  FlashTwoTiles,
  FlashWgmma128,
  FlashWgmma192,
  FlashWgmmaProducer,
  FlashWgmmaProducer128,        // 128-key tiles: a producer warpgroup, setmaxnreg
  FlashWgmmaProducer128Anchor,  // and the softmax under its own P·V
  FlashWgmmaProducer128Loader,  // and the producer's offsets worked out once, its fence
  FlashShortKv,          // the kernel for at most 128 keys (the others where it does not apply)
  FlashShortKvUnrolled,  // the same with straight-line loads
  Cudnn
};

const char* path_name(AttentionPath path) {
  switch (path) {
    case AttentionPath::Banded:
      return " banded";
    case AttentionPath::FlashOneTile:
      return " flash 1 tile/warp";
    case AttentionPath::FlashTwoTiles:
      return " flash 2 tiles/warp";
    case AttentionPath::FlashWgmma128:
      return " flash wgmma 128 rows";
    case AttentionPath::FlashWgmma192:
      return " flash wgmma 192 rows";
    case AttentionPath::FlashWgmmaProducer:
      return " flash wgmma producer";
    case AttentionPath::FlashWgmmaProducer128:
      return " flash wgmma producer 128 keys";
    case AttentionPath::FlashWgmmaProducer128Anchor:
      return " flash wgmma producer 128 keys anchored";
    case AttentionPath::FlashWgmmaProducer128Loader:
      return " flash wgmma producer 128 keys anchored loader";
    case AttentionPath::FlashShortKv:
      return " flash short kv";
    case AttentionPath::FlashShortKvUnrolled:
      return " flash short kv unrolled";
    case AttentionPath::Cudnn:
      return " cudnn";
  }
  return "";
}

bool wgmma_path(AttentionPath path) {
  return path == AttentionPath::FlashWgmma128 || path == AttentionPath::FlashWgmma192 ||
         path == AttentionPath::FlashWgmmaProducer ||
         path == AttentionPath::FlashWgmmaProducer128 ||
         path == AttentionPath::FlashWgmmaProducer128Anchor ||
         path == AttentionPath::FlashWgmmaProducer128Loader;
}

// Sets the options for `path`; they go back to the defaults when it goes.
class UsePath {
 public:
  explicit UsePath(AttentionPath path) {
    cuda::options().use_flash_attention = path != AttentionPath::Banded;
    cuda::options().flash_two_tiles_per_warp = path == AttentionPath::FlashTwoTiles;
    cuda::options().flash_wgmma = wgmma_path(path);
    const bool loader = path == AttentionPath::FlashWgmmaProducer128Loader;
    const bool anchor = path == AttentionPath::FlashWgmmaProducer128Anchor || loader;
    const bool k128 = path == AttentionPath::FlashWgmmaProducer128 || anchor;
    cuda::options().flash_wgmma_producer = path == AttentionPath::FlashWgmmaProducer || k128;
    cuda::options().flash_wgmma_keys = k128 ? 128 : 64;
    cuda::options().flash_wgmma_anchor = anchor;
    cuda::options().flash_wgmma_loader = loader;
    cuda::options().flash_short_kv_kernel =
        path == AttentionPath::FlashShortKv || path == AttentionPath::FlashShortKvUnrolled;
    cuda::options().flash_short_kv_unrolled = path == AttentionPath::FlashShortKvUnrolled;
    cuda::options().flash_wgmma_rows = path == AttentionPath::FlashWgmma128   ? 128
                                       : path == AttentionPath::FlashWgmma192 ? 192
                                                                              : 0;
    cuda::options().attention_kernel = path == AttentionPath::Cudnn
                                           ? cuda::Options::AttentionKernel::Cudnn
                                           : cuda::Options::AttentionKernel::Kiln;
  }
  ~UsePath() {
    const cuda::Options defaults;
    cuda::options().use_flash_attention = defaults.use_flash_attention;
    cuda::options().flash_two_tiles_per_warp = defaults.flash_two_tiles_per_warp;
    cuda::options().flash_wgmma = defaults.flash_wgmma;
    cuda::options().flash_wgmma_producer = defaults.flash_wgmma_producer;
    cuda::options().flash_wgmma_keys = defaults.flash_wgmma_keys;
    cuda::options().flash_wgmma_anchor = defaults.flash_wgmma_anchor;
    cuda::options().flash_wgmma_loader = defaults.flash_wgmma_loader;
    cuda::options().flash_short_kv_kernel = defaults.flash_short_kv_kernel;
    cuda::options().flash_short_kv_unrolled = defaults.flash_short_kv_unrolled;
    cuda::options().flash_wgmma_rows = defaults.flash_wgmma_rows;
    cuda::options().attention_kernel = defaults.attention_kernel;
  }
};

// Whether cuDNN's attention must have taken a call of this case in `dt`.
bool cudnn_takes(const AttentionCase& c, DType dt) {
  return cuda::cudnn_attention_enabled() && dt != DType::F32 && !c.causal && c.d % 8 == 0 &&
         c.d <= 160;
}

// Whether the wgmma kernel applies to the case: f16/bf16, no causal mask, a head dim
// that is a multiple of 8 and pads to 48, 64 or 80.
bool wgmma_applies(const AttentionCase& c) {
  return !c.causal && c.d % 8 == 0 && c.d > 32 && c.d <= 80;
}

// Whether the wgmma flash kernel must have taken a call of this case in `dt` on `path`.
bool wgmma_takes(const AttentionCase& c, DType dt, AttentionPath path) {
  return wgmma_path(path) && cuda::flash_wgmma_available() && dt != DType::F32 && wgmma_applies(c);
}

// Whether the short-KV kernel must have taken a call of this case in `dt` on `path`.
bool short_kv_path(AttentionPath path) {
  return path == AttentionPath::FlashShortKv || path == AttentionPath::FlashShortKvUnrolled;
}
bool short_kv_takes(const AttentionCase& c, DType dt, AttentionPath path) {
  return short_kv_path(path) && dt != DType::F32 && !c.causal && c.sk <= 128 && c.d <= 160;
}

// The wgmma paths skip what would only run the mma.sync kernel again. Every path runs
// SD1.5's 4096 × 4096: its CPU references (about 33 s for one path's three dtypes and
// three ops in v14, when each path made its own) are shared by the paths
// (shared_reference).
bool skip_on_path(const AttentionCase& c, AttentionPath path) {
  if (short_kv_path(path)) return c.causal || c.sk > 128;
  return wgmma_path(path) && !wgmma_applies(c);
}

// The launch counters of the kernels a path asks for, taken before a case's calls:
// expect_taken fails where the path's kernel should have run and did not.
struct KernelCalls {
  size_t cudnn = cuda::cudnn_attention_calls(), wgmma = cuda::flash_wgmma_calls(),
         k128 = cuda::flash_wgmma_k128_calls(false), anchored = cuda::flash_wgmma_k128_calls(true),
         loader = cuda::flash_wgmma_loader_calls(), short_kv = cuda::flash_short_kv_calls(),
         unrolled = cuda::flash_short_kv_unrolled_calls();
  void expect_taken(const AttentionCase& c, DType dt, AttentionPath path) const {
    if (path == AttentionPath::Cudnn && cudnn_takes(c, dt)) {
      EXPECT_GT(cuda::cudnn_attention_calls(), cudnn) << "cuDNN did not run " << dtype_name(dt);
    }
    if (wgmma_takes(c, dt, path)) {
      EXPECT_GT(cuda::flash_wgmma_calls(), wgmma)
          << "the wgmma kernel did not run " << dtype_name(dt);
      if (path == AttentionPath::FlashWgmmaProducer128) {
        EXPECT_GT(cuda::flash_wgmma_k128_calls(false), k128)
            << "the 128-key producer kernel did not run " << dtype_name(dt);
      }
      if (path == AttentionPath::FlashWgmmaProducer128Anchor ||
          path == AttentionPath::FlashWgmmaProducer128Loader) {
        EXPECT_GT(cuda::flash_wgmma_k128_calls(true), anchored)
            << "the anchored 128-key producer kernel did not run " << dtype_name(dt);
      }
      if (path == AttentionPath::FlashWgmmaProducer128Loader) {
        EXPECT_GT(cuda::flash_wgmma_loader_calls(), loader)
            << "the anchored kernel with the hoisted loader did not run " << dtype_name(dt);
      }
    }
    if (short_kv_takes(c, dt, path)) {
      EXPECT_GT(cuda::flash_short_kv_calls(), short_kv)
          << "the short-KV kernel did not run " << dtype_name(dt);
      if (path == AttentionPath::FlashShortKvUnrolled) {
        EXPECT_GT(cuda::flash_short_kv_unrolled_calls(), unrolled)
            << "the short-KV kernel's unrolled loads did not run " << dtype_name(dt);
      }
    }
  }
};

class Attention : public CudaTest,
                  public ::testing::WithParamInterface<std::tuple<AttentionCase, AttentionPath>> {};

TEST_P(Attention, MatchesCpu) {
  const auto [c, path] = GetParam();
  if (skip_on_path(c, path)) GTEST_SKIP() << "covered on another path";
  const UsePath use(path);
  const float scale = float(1.0 / std::sqrt(double(c.d)));
  const std::string case_key =
      str("b", c.b, " sq", c.sq, " sk", c.sk, " h", c.heads, " d", c.d, c.causal ? " causal" : "");
  const Op op = [&](const std::vector<Tensor>& t) {
    return ops::attention(t[0], t[1], t[2], c.heads, scale, c.causal);
  };
  for (DType dt : kAllTypes) {
    const Reference& ref = shared_reference(
        case_key, "attention", dt,
        {{c.b, c.sq, c.heads * c.d}, {c.b, c.sk, c.heads * c.d}, {c.b, c.sk, c.heads * c.d}}, op);
    const KernelCalls calls;
    expect_close("attention " + case_key + path_name(path), dt, ref.inputs, op, ref.expected);
    calls.expect_taken(c, dt, path);
  }
}

// q, k and v side by side in one tensor (self-attention) or k and v in one (cross), as
// the models' fused projections make them.
TEST_P(Attention, PackedMatchesCpu) {
  const auto [c, path] = GetParam();
  if (c.causal || path == AttentionPath::FlashTwoTiles) GTEST_SKIP() << "covered by MatchesCpu";
  if (skip_on_path(c, path)) GTEST_SKIP() << "covered on another path";
  const UsePath use(path);
  const float scale = float(1.0 / std::sqrt(double(c.d)));
  const int64_t w = c.heads * c.d;
  const std::string case_key = str("b", c.b, " sq", c.sq, " sk", c.sk, " h", c.heads, " d", c.d);
  // k and v from a wider tensor, past its first column, as the UNet's one GEMM for
  // every cross-attention's k and v makes them.
  const int64_t col = 8;
  const Op qkv = [&](const std::vector<Tensor>& t) {
    return ops::attention_qkv(t[0], c.heads, scale);
  };
  const Op kv = [&](const std::vector<Tensor>& t) {
    return ops::attention_kv(t[0], t[1], c.heads, scale, col);
  };
  for (DType dt : kAllTypes) {
    const std::string label = case_key + path_name(path);
    const KernelCalls calls;
    if (c.sq == c.sk) {
      const Reference& ref =
          shared_reference(case_key, "attention_qkv", dt, {{c.b, c.sq, 3 * w}}, qkv);
      expect_close("attention_qkv " + label, dt, ref.inputs, qkv, ref.expected);
    }
    const Reference& ref = shared_reference(case_key, "attention_kv", dt,
                                            {{c.b, c.sq, w}, {c.b, c.sk, 2 * w + 2 * col}}, kv);
    expect_close("attention_kv " + label, dt, ref.inputs, kv, ref.expected);
    calls.expect_taken(c, dt, path);
  }
}

// The default: each shape timed once against cuDNN's, the faster kept; either way
// the result matches the CPU, and the second call of a shape reuses the choice.
class AttentionAuto : public CudaTest {};

TEST_F(AttentionAuto, MatchesCpu) {
  // Plans in memory only, none yet: the first call of each dtype times the kernels.
  cuda::set_plan_cache("off");
  cuda::forget_plans();
  for (const DType dt : {DType::F16, DType::BF16}) {
    std::vector<Tensor> in{random_tensor({2, 1024, 3 * 640}, dt, next_seed())};
    for (int call = 0; call < 2; ++call) {
      const size_t timed = cuda::plan_stats().timed;
      expect_match(
          str("attention_qkv auto, call ", call + 1), dt, in,
          [&](const std::vector<Tensor>& t) { return ops::attention_qkv(t[0], 10, 0.125f); });
      // expect_match also runs the CPU reference, which makes no plans.
      if (call == 0) {
        EXPECT_GT(cuda::plan_stats().timed, timed) << "no timing on the first call";
      } else {
        EXPECT_EQ(cuda::plan_stats().timed, timed) << "the choice was not reused";
      }
    }
  }
  cuda::set_plan_cache("");
}

// GPUs with 99 KB of shared memory a block (sm_86 and sm_89: the A10, L4, RTX 30 and
// 40 series) cannot launch the flash kernels at head dim 160 with more than 80 keys
// (105 KB: SD1.5's 16×16 self-attention, and 81 to 128 keys in the short-KV kernel).
// Under that limit such calls take the banded path and still match the CPU; at most
// 80 keys (75 KB: SD1.5's cross-attention and its 8×8 self-attention at d160) still
// run in the short-KV kernel.
class AttentionSharedMemoryLimit : public CudaTest {
 protected:
  void TearDown() override {
    const cuda::Options defaults;
    cuda::options().shared_memory_limit = defaults.shared_memory_limit;
    cuda::options().attention_kernel = defaults.attention_kernel;
    CudaTest::TearDown();
  }
};

TEST_F(AttentionSharedMemoryLimit, HeadDim160UnderNinetyNineKilobytes) {
  cuda::options().shared_memory_limit = 99 * 1024;
  cuda::options().attention_kernel = cuda::Options::AttentionKernel::Kiln;
  struct Case {
    int64_t b, sq, sk;
    bool short_kv;  // whether the short-KV kernel must still take it
  };
  for (const Case c : {Case{2, 256, 256, false}, Case{2, 64, 64, true}, Case{1, 100, 100, false},
                       Case{2, 256, 77, true}}) {
    for (const DType dt : {DType::F16, DType::BF16}) {
      const size_t short_kv = cuda::flash_short_kv_calls();
      const std::vector<Tensor> in{random_tensor({c.b, c.sq, 8 * 160}, dt, next_seed()),
                                   random_tensor({c.b, c.sk, 8 * 160}, dt, next_seed()),
                                   random_tensor({c.b, c.sk, 8 * 160}, dt, next_seed())};
      expect_match(str("attention b", c.b, " sq", c.sq, " sk", c.sk, " h8 d160 under 99 KB"), dt,
                   in, [&](const std::vector<Tensor>& t) {
                     return ops::attention(t[0], t[1], t[2], 8, 0.0790569f, false);
                   });
      if (c.short_kv) {
        EXPECT_GT(cuda::flash_short_kv_calls(), short_kv) << "the short-KV kernel did not run";
      } else {
        EXPECT_EQ(cuda::flash_short_kv_calls(), short_kv) << "a kernel over the limit ran";
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, Attention,
    ::testing::Combine(
        ::testing::Values(
            AttentionCase{2, 4096, 4096, 8, 40, false},   // SD1.5 self, 64×64
            AttentionCase{2, 4096, 77, 8, 40, false},     // SD1.5 cross
            AttentionCase{2, 1024, 1024, 8, 80, false},   // SD1.5 32×32
            AttentionCase{2, 256, 77, 8, 160, false},     // SD1.5 16×16 cross
            AttentionCase{2, 256, 256, 8, 160, false},    // SD1.5 16×16 self
            AttentionCase{2, 64, 64, 8, 160, false},      // SD1.5 8×8 self (mid block)
            AttentionCase{2, 1024, 1024, 10, 64, false},  // SDXL / SD2 self
            AttentionCase{2, 1024, 77, 20, 64, false},    // SDXL cross
            AttentionCase{1, 128, 128, 3, 48, true},      // causal, two key tiles
            AttentionCase{2, 77, 77, 12, 64, true},       // CLIP-L
            AttentionCase{1, 77, 77, 20, 64, true},       // OpenCLIP bigG
            AttentionCase{1, 1024, 1024, 1, 512, false},  // VAE mid-block (banded)
            AttentionCase{1, 37, 53, 3, 24, false},       // odd everything
            AttentionCase{2, 19, 19, 2, 4, true},         // tiny head, scalar loads
            AttentionCase{1, 100, 70, 2, 100, false},     // d not a multiple of 8
            AttentionCase{1, 130, 130, 4, 128, true},     // causal over 3 blocks
            AttentionCase{1, 300, 300, 3, 64, true},      // causal, two tiles/warp
            // Long rows: the banded path's softmax holds 2, 4 and 8 float4s
            // a thread (4096, 5000 causal and 16384 wide), partial last blocks.
            AttentionCase{1, 24, 4096, 2, 16, false}, AttentionCase{1, 5000, 5000, 1, 8, true},
            AttentionCase{1, 16, 16384, 1, 8, false},
            // The wgmma kernel's other cases: the ones column at head dims
            // 56 and 72, 48 without it, partial query blocks and key tiles.
            AttentionCase{1, 200, 300, 3, 56, false}, AttentionCase{2, 333, 130, 2, 72, false},
            AttentionCase{1, 250, 1000, 2, 48, false}, AttentionCase{1, 1000, 1000, 2, 40, false},
            // The short-KV kernel's 128-key variant (81 to 128 keys), a partial block.
            AttentionCase{1, 200, 113, 3, 80, false}),
        ::testing::Values(AttentionPath::Banded, AttentionPath::FlashOneTile,
                          AttentionPath::FlashTwoTiles, AttentionPath::FlashWgmma128,
                          AttentionPath::FlashWgmma192, AttentionPath::FlashWgmmaProducer,
                          AttentionPath::FlashWgmmaProducer128,
                          AttentionPath::FlashWgmmaProducer128Anchor,
                          AttentionPath::FlashWgmmaProducer128Loader, AttentionPath::FlashShortKv,
                          AttentionPath::FlashShortKvUnrolled, AttentionPath::Cudnn)));

}  // namespace
}  // namespace kiln::backend_test
