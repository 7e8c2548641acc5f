// Division of 32-bit unsigned indices by a divisor fixed before a launch, as a
// multiply-high, an add and two shifts (Granlund and Montgomery, "Division by
// invariant integers using multiplication", 1994, figure 4.1). A kernel that
// splits a flat index into coordinates with `/` and `%` on 64-bit integers runs
// a library routine of about a hundred instructions per division; on the
// memory-bound elementwise kernels that, not DRAM, was what set their speed.
//
// Host and device: the host computes the magic numbers, and the unit tests
// check every result against `/` and `%` on the CPU.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define KILN_HD __host__ __device__ __forceinline__
#else
#define KILN_HD inline
#endif

namespace kiln::cuda {

class FastDiv {
 public:
  FastDiv() = default;
  // d >= 1.
  explicit FastDiv(uint32_t d) : d_(d) {
    uint32_t l = 0;
    while (l < 32 && (uint64_t(1) << l) < d) ++l;  // l = ceil(log2 d)
    // m = floor(2^32 * (2^l - d) / d) + 1, which fits in 32 bits for l <= 32.
    m_ = uint32_t((uint64_t(1) << 32) * ((uint64_t(1) << l) - d) / d + 1);
    s1_ = l < 1 ? l : 1;
    s2_ = l < 1 ? 0 : l - 1;
  }

  KILN_HD uint32_t divisor() const { return d_; }

  KILN_HD uint32_t div(uint32_t n) const {
    const uint32_t t = mulhi(n, m_);
    return (t + ((n - t) >> s1_)) >> s2_;
  }

  // q = n / d and r = n % d.
  KILN_HD void divmod(uint32_t n, uint32_t& q, uint32_t& r) const {
    q = div(n);
    r = n - q * d_;
  }

 private:
  static KILN_HD uint32_t mulhi(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__)
    return __umulhi(a, b);
#else
    return uint32_t((uint64_t(a) * b) >> 32);
#endif
  }

  uint32_t d_ = 1, m_ = 1, s1_ = 0, s2_ = 0;
};

}  // namespace kiln::cuda
