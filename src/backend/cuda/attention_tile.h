// Where the wgmma attention kernels (attention_wgmma.cu) put K and V in shared memory,
// and which 16-byte copies of a tile each producer thread makes. Host and device: the
// kernels index with these, and the unit tests check on the CPU that a tile's copies
// cover its real chunks once each and land where the MMAs' descriptors read.
//
// A tile of `rows` keys with `chunks` chunks of 8 features a key (16 bytes) is in
// wgmma's unswizzled layout: 8 keys × 8 features make a 128-byte core matrix, and core
// (key group g, chunk c) is at element (g·chunks + c)·64. For S = Q·K^T the tile is B
// = K^T, K-major: consecutive chunks 128 bytes apart, key groups chunks·128. For
// O = P·V it is B = V, N-major: key groups chunks·128 bytes apart, chunks 128.
#pragma once

#include <cstdint>

#include "backend/cuda/fast_div.h"  // KILN_HD

namespace kiln::cuda::attention_tile {

// The element offset of (key row, chunk) in a tile with `chunks` chunks a key.
KILN_HD constexpr int core_offset(int row, int chunk, int chunks) {
  return ((row >> 3) * chunks + chunk) * 64 + (row & 7) * 8;
}

// A tile's 16-byte copies as items: item i is key row `row` and chunk `chunk` of the
// first `per_row` chunks of each row. Eight consecutive items fill one core matrix
// (eight rows of one chunk: no bank conflicts on the stores), and the next eight the
// next chunk of the same rows (a warp reads 64 bytes a row).
struct Item {
  int row, chunk;
};
KILN_HD constexpr Item item(int i, int per_row) {
  return Item{(i >> 3) / per_row * 8 + (i & 7), (i >> 3) % per_row};
}

// The producer kernel's V (and O) width for padded head dim DP: with `ones` (d is
// DP − 8) V's last chunk is the ones column already; with `loader` every head dim has
// one, so at d = DP V is a chunk wider than K.
KILN_HD constexpr int v_width(int dp, bool ones, bool loader) {
  return ones || !loader ? dp : dp + 8;
}

// An unswizzled wgmma shared-memory matrix descriptor: the start address in bits 0–13,
// the leading dimension byte offset in 16–29 and the stride byte offset in 32–45, each
// in 16-byte units. For B in the no-swizzle mode the leading offset is the distance
// between core matrices along the MMA's K direction, the stride offset along N.
KILN_HD constexpr uint64_t descriptor(uint32_t address, uint32_t leading_bytes,
                                      uint32_t stride_bytes) {
  return uint64_t((address & 0x3FFFF) >> 4) | uint64_t(leading_bytes >> 4) << 16 |
         uint64_t(stride_bytes >> 4) << 32;
}
// K (`chunks` chunks a key, `elem` bytes an element) as B = K^T for S = Q·K^T: the MMA's
// K direction is the features (from one chunk to the next), N the keys (from one key
// group to the next).
KILN_HD constexpr uint64_t k_descriptor(uint32_t address, int chunks, int elem) {
  return descriptor(address, uint32_t(core_offset(0, 1, chunks) * elem),
                    uint32_t(core_offset(8, 0, chunks) * elem));
}
// V as B for O = P·V (N-major): the MMA's K direction is the keys, N the features.
KILN_HD constexpr uint64_t v_descriptor(uint32_t address, int chunks, int elem) {
  return descriptor(address, uint32_t(core_offset(8, 0, chunks) * elem),
                    uint32_t(core_offset(0, 1, chunks) * elem));
}

// The producer kernel's shared memory, in bytes from the block's start: its barriers
// and the anchor word in the first 128, then `stages` K tiles of `keys` × dp, `stages`
// V tiles of `keys` × dv, and Q, `rows` × (dp + 8) (padded against bank conflicts).
struct ProducerSmem {
  int dp, dv, stages, keys, rows, elem;
  KILN_HD constexpr int k() const { return 128; }
  KILN_HD constexpr int k_stage() const { return keys * dp * elem; }
  KILN_HD constexpr int v() const { return k() + stages * k_stage(); }
  KILN_HD constexpr int v_stage() const { return keys * dv * elem; }
  KILN_HD constexpr int q() const { return v() + stages * v_stage(); }
  KILN_HD constexpr int end() const { return q() + rows * (dp + 8) * elem; }
};

}  // namespace kiln::cuda::attention_tile
