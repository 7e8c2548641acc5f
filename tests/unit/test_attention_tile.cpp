// The wgmma attention kernels' shared-memory tiles and the producer's copies
// (backend/cuda/attention_tile.h), checked on the CPU for every form the producer
// kernel is built in: a tile's copies cover each real chunk of each key once and no
// other place, land where the descriptors read that key's features, leave the padding
// and ones chunks alone, and split evenly over the producer's threads. A wrong index
// here would give wrong attention on the GPU, or a GPU run to find out why.
#include <gtest/gtest.h>

#include <cstdint>
#include <set>
#include <utility>
#include <vector>

#include "backend/cuda/attention_tile.h"

namespace kiln::cuda::attention_tile {
namespace {

constexpr int kKeys = 128;       // keys a tile (--flash-wgmma-keys 128)
constexpr int kProducers = 128;  // the producer warpgroup's threads

struct Form {
  int dp;       // padded head dim: K's width (Q·K^T's K, in steps of 16)
  bool ones;    // d = dp − 8: the padding chunk holds V's ones column
  bool loader;  // --flash-wgmma-loader
  int d() const { return ones ? dp - 8 : dp; }
};

std::vector<Form> forms() {
  std::vector<Form> all;
  for (int dp : {48, 64, 80})
    for (bool ones : {false, true})
      for (bool loader : {false, true}) all.push_back({dp, ones, loader});
  return all;
}

TEST(AttentionTile, CoreMatricesTileTheTile) {
  // Every (key, feature) of a tile has its own element, and the 8 × 8 core matrix of
  // a key group and chunk is 64 consecutive elements, keys 8 elements apart.
  for (int chunks : {5, 6, 7, 8, 9, 10, 11}) {
    std::set<int> seen;
    for (int row = 0; row < kKeys; ++row)
      for (int c = 0; c < chunks; ++c) {
        const int at = core_offset(row, c, chunks);
        EXPECT_EQ(at % 8, 0);
        EXPECT_TRUE(seen.insert(at / 8).second) << "row " << row << " chunk " << c;
        const int core = core_offset(row & ~7, c, chunks);
        EXPECT_EQ(core % 64, 0);
        EXPECT_EQ(at - core, (row & 7) * 8);
      }
    EXPECT_EQ(int(seen.size()), kKeys * chunks);
    EXPECT_EQ(*seen.rbegin(), kKeys * chunks - 1);  // dense: no gaps
  }
}

TEST(AttentionTile, DescriptorsStepAsTheLayout) {
  // The producer kernel's descriptors: K as B = K^T (K-major) moves 16 features (two
  // chunks) a k-step, and its key groups are chunks·128 bytes apart (the descriptor's
  // stride, DP·16); V as B (N-major) moves 16 keys (two groups) a k-step, and its
  // chunks are 128 bytes apart.
  for (int chunks : {6, 7, 8, 9, 10, 11}) {
    for (int kk = 0; 2 * kk < chunks; ++kk) EXPECT_EQ(core_offset(0, 2 * kk, chunks), kk * 128);
    for (int kk = 0; kk < kKeys / 16; ++kk)
      EXPECT_EQ(core_offset(16 * kk, 0, chunks), kk * 2 * chunks * 64);
    EXPECT_EQ(core_offset(8, 0, chunks) * 2, chunks * 8 * 16);  // key group stride, bytes
    EXPECT_EQ(core_offset(0, 1, chunks) * 2, 128);              // chunk stride, bytes
  }
}

TEST(AttentionTile, DescriptorFieldsAreTheLayoutsStrides) {
  // The descriptors the kernels give the MMAs, decoded: K's leading offset (the MMA's
  // K direction: features) is the distance from one chunk of a key to the next, its
  // stride offset (N: keys) from one key group to the next; V's the other way round.
  // Each in 16-byte units, within the 14-bit fields.
  auto field = [](uint64_t d, int at) { return int((d >> at) & 0x3FFF) * 16; };
  for (int chunks : {6, 7, 8, 9, 10, 11})
    for (uint32_t address : {0x400u, 0x1480u, 0x38000u}) {
      const int chunk_bytes = (core_offset(0, 1, chunks) - core_offset(0, 0, chunks)) * 2;
      const int group_bytes = (core_offset(8, 0, chunks) - core_offset(0, 0, chunks)) * 2;
      const uint64_t k = k_descriptor(address, chunks, 2), v = v_descriptor(address, chunks, 2);
      EXPECT_EQ(field(k, 0), int(address));
      EXPECT_EQ(field(k, 16), chunk_bytes);
      EXPECT_EQ(field(k, 32), group_bytes);
      EXPECT_EQ(field(v, 0), int(address));
      EXPECT_EQ(field(v, 16), group_bytes);
      EXPECT_EQ(field(v, 32), chunk_bytes);
      EXPECT_EQ(group_bytes, chunks * 8 * 16);  // the old kernels' DP·16
      EXPECT_EQ(chunk_bytes, 128);
    }
}

TEST(AttentionTile, VWidthHoldsTheOnesColumn) {
  for (const Form& f : forms()) {
    const int dv = v_width(f.dp, f.ones, f.loader);
    EXPECT_EQ(dv % 8, 0);
    EXPECT_GE(dv, f.d());
    if (f.ones || f.loader) {
      EXPECT_EQ(dv - 8, f.d()) << "dp " << f.dp << ": the ones column is column d";
    } else {
      EXPECT_EQ(dv, f.dp);  // the row sums in f32 instead
    }
    EXPECT_LE(dv, 88);  // wgmma wrappers generated for N = 48, 56, 64, 72, 80, 88, 128
  }
}

// The loader's copies of a full tile (attention_wgmma.cu, LOADER): thread pt makes
// items pt + k·128 of the tile's real chunks; each goes to K's layout and V's.
TEST(AttentionTile, LoaderCopiesEachRealChunkOnce) {
  for (const Form& f : forms()) {
    if (!f.loader) continue;
    const int k_chunks = f.dp / 8, v_chunks = v_width(f.dp, f.ones, f.loader) / 8;
    const int real = f.d() / 8;
    ASSERT_EQ(kKeys * real % kProducers, 0) << "dp " << f.dp;
    const int items = kKeys * real / kProducers;
    std::set<std::pair<int, int>> copied;
    std::set<int> k_at, v_at;
    for (int pt = 0; pt < kProducers; ++pt)
      for (int k = 0; k < items; ++k) {
        const Item it = item(pt + k * kProducers, real);
        ASSERT_GE(it.row, 0);
        ASSERT_LT(it.row, kKeys);
        ASSERT_GE(it.chunk, 0);
        ASSERT_LT(it.chunk, real) << "a copy past d would overwrite the constant chunk";
        EXPECT_TRUE(copied.insert({it.row, it.chunk}).second);
        EXPECT_TRUE(k_at.insert(core_offset(it.row, it.chunk, k_chunks)).second);
        EXPECT_TRUE(v_at.insert(core_offset(it.row, it.chunk, v_chunks)).second);
      }
    EXPECT_EQ(int(copied.size()), kKeys * real);
    // The chunks no copy writes are exactly the ones set once at the start: K's
    // padding (zeros, with ONES) and V's ones column.
    int k_const = 0, v_const = 0;
    for (int row = 0; row < kKeys; ++row) {
      for (int c = 0; c < k_chunks; ++c)
        if (!k_at.count(core_offset(row, c, k_chunks))) {
          EXPECT_TRUE(f.ones && c == k_chunks - 1) << "dp " << f.dp << " K chunk " << c;
          ++k_const;
        }
      for (int c = 0; c < v_chunks; ++c)
        if (!v_at.count(core_offset(row, c, v_chunks))) {
          EXPECT_EQ(c, v_chunks - 1) << "dp " << f.dp << " V chunk " << c;
          ++v_const;
        }
    }
    EXPECT_EQ(k_const, f.ones ? kKeys : 0);
    EXPECT_EQ(v_const, kKeys);
  }
}

TEST(AttentionTile, ProducerSmemFitsAndLinesUp) {
  // The producer kernel's layout for every form it is built in (two consumer
  // warpgroups, 128 rows; 64- and 128-key tiles, four stages, f16/bf16): the regions
  // follow each other without overlap, every tile starts on 128 bytes (the
  // descriptors' start field counts 16-byte units and a core matrix is 128), and the
  // whole fits an H100's or H200's 227 KB a block.
  constexpr int kMaxBlockBytes = 232448;
  for (const Form& f : forms())
    for (int keys : {64, 128}) {
      if (f.loader && keys != 128) continue;  // the loader is built for 128-key tiles
      const int dv = v_width(f.dp, f.ones, f.loader);
      const ProducerSmem m{f.dp, dv, 4, keys, 128, 2};
      EXPECT_EQ(m.k(), 128);
      EXPECT_EQ(m.v() - m.k(), 4 * keys * f.dp * 2);
      EXPECT_EQ(m.q() - m.v(), 4 * keys * dv * 2);
      EXPECT_EQ(m.end() - m.q(), 128 * (f.dp + 8) * 2);
      for (int stage = 0; stage < 4; ++stage) {
        EXPECT_EQ((m.k() + stage * m.k_stage()) % 128, 0);
        EXPECT_EQ((m.v() + stage * m.v_stage()) % 128, 0);
      }
      EXPECT_EQ(m.q() % 16, 0);  // Q's rows are copied 16 bytes at a time
      EXPECT_LE(m.end(), kMaxBlockBytes) << "dp " << f.dp << " keys " << keys;
      // The descriptors' start field: 14 bits of 16-byte units.
      EXPECT_LT(m.q() / 16, 1 << 14);
    }
}

TEST(AttentionTile, WarpsCopyWholeCoreMatricesAndRowRuns) {
  // Eight consecutive threads fill one core matrix (no bank conflicts), and a warp's
  // 32 copies are 64 contiguous bytes of each of 8 rows where the row has 4 chunks
  // left.
  for (int real : {5, 6, 7, 8, 9, 10}) {
    for (int i0 = 0; i0 < kKeys * real; i0 += 8) {
      const Item first = item(i0, real);
      EXPECT_EQ(first.row % 8, 0);
      for (int j = 1; j < 8; ++j) {
        const Item it = item(i0 + j, real);
        EXPECT_EQ(it.chunk, first.chunk);
        EXPECT_EQ(it.row, first.row + j);
      }
    }
    for (int i0 = 0; i0 < kKeys * real; i0 += 32) {
      const Item a = item(i0, real);
      if (a.chunk + 4 > real) continue;
      for (int q = 1; q < 4; ++q) {
        const Item b = item(i0 + 8 * q, real);
        EXPECT_EQ(b.row, a.row);
        EXPECT_EQ(b.chunk, a.chunk + q);
      }
    }
  }
}

}  // namespace
}  // namespace kiln::cuda::attention_tile
