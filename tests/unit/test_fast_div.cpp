// FastDiv (backend/cuda/fast_div.h), the multiply-high division the CUDA
// elementwise kernels split indices with, checked on the CPU against `/` and `%`:
// every small divisor against many dividends, the edges of 32 bits, powers of two
// and their neighbours, and a random sweep.
#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <vector>

#include "backend/cuda/fast_div.h"

namespace kiln::cuda {
namespace {

std::vector<uint32_t> dividends(std::mt19937& rng) {
  std::vector<uint32_t> n = {0u,          1u,          2u,          3u,         0x7fffffffu,
                             0x80000000u, 0x80000001u, 0xfffffffeu, 0xffffffffu};
  for (uint32_t i = 0; i < 4096; ++i) n.push_back(i);
  for (int b = 1; b < 32; ++b)
    for (int64_t delta : {-1, 0, 1}) n.push_back(uint32_t((int64_t(1) << b) + delta));
  std::uniform_int_distribution<uint32_t> any;
  for (int i = 0; i < 2000; ++i) n.push_back(any(rng));
  return n;
}

void check(uint32_t d, const std::vector<uint32_t>& ns) {
  const FastDiv f(d);
  ASSERT_EQ(f.divisor(), d);
  for (uint32_t n : ns) {
    uint32_t q = 0, r = 0;
    f.divmod(n, q, r);
    ASSERT_EQ(q, n / d) << n << " / " << d;
    ASSERT_EQ(r, n % d) << n << " % " << d;
  }
}

TEST(FastDiv, SmallDivisors) {
  std::mt19937 rng(1);
  const auto ns = dividends(rng);
  for (uint32_t d = 1; d <= 1100; ++d) check(d, ns);
}

TEST(FastDiv, PowersOfTwoAndNeighbours) {
  std::mt19937 rng(2);
  const auto ns = dividends(rng);
  for (int b = 0; b < 32; ++b)
    for (int64_t delta : {-1, 0, 1}) {
      const int64_t d = (int64_t(1) << b) + delta;
      if (d >= 1 && d <= 0xffffffffLL) check(uint32_t(d), ns);
    }
  check(0xffffffffu, ns);
  check(0xfffffffeu, ns);
}

TEST(FastDiv, RandomDivisors) {
  std::mt19937 rng(3);
  const auto ns = dividends(rng);
  std::uniform_int_distribution<uint32_t> any(1, 0xffffffffu);
  std::uniform_int_distribution<uint32_t> shape(1, 1u << 20);
  for (int i = 0; i < 300; ++i) {
    check(any(rng), ns);
    check(shape(rng), ns);
  }
}

}  // namespace
}  // namespace kiln::cuda
