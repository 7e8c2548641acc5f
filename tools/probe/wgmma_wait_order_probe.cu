// Compile-only probe: where does ptxas put a warpgroup MMA's wait? The loop issues
// two groups (S = A·B1, then O += A·B2), waits for the first (`wait_group 1`), takes
// 32 exponentials of S, and only then waits for the second (`wait_group 0`) to
// rescale O: FA3's order, meant to run the exponentials under the second group. The
// PTX keeps that order; the SASS shows where ptxas put the waits:
//   nvcc -std=c++20 -O3 -arch=sm_90a -cubin -Isrc -Iinclude [-DANCHOR] \
//     tools/probe/wgmma_wait_order_probe.cu -o /tmp/wait_order.cubin
//   python3 tools/py/sass_loops.py /tmp/wait_order.cubin probe --min 20
// With nvcc 13.0 (v38, bench/cuda-notes.md item 19) the loop's order reads
//   HGMMA.64x64x16 | HGMMA.64x48x16 | DEPBAR.LE gsb0, 0x1 | [1 MUFU] |
//   DEPBAR.LE gsb0, 0x0 | [31 MUFU]
// and with -DANCHOR (the sum of the exponentials stored to shared memory before the
// second wait) every exponential sits between the waits:
//   ... | DEPBAR.LE gsb0, 0x1 | [32 MUFU] | DEPBAR.LE gsb0, 0x0
// Nothing runs: the descriptors are arbitrary.
#include <cstdint>

#include "backend/cuda/wgmma.cuh"
#include "backend/cuda/wgmma_sync.cuh"

using kiln::cuda::fence_registers;
using kiln::cuda::wgmma_commit;
using kiln::cuda::wgmma_fence;
using kiln::cuda::wgmma_rs;
using kiln::cuda::wgmma_rs_zero;
using kiln::cuda::wgmma_wait;

__global__ void wait_order_probe(float* out, uint64_t b1, uint64_t b2, int iterations) {
  const uint32_t a[4] = {threadIdx.x, 1, 2, 3};
  float s[32], o[24];
#pragma unroll
  for (int i = 0; i < 24; ++i) o[i] = 0.0f;
  for (int it = 0; it < iterations; ++it) {
    fence_registers(o);
    wgmma_fence();
    wgmma_rs_zero<64, half, 0>(s, a, b1);
    wgmma_commit();
    wgmma_rs<48, half, 1>(o, a, b2, 1);
    wgmma_commit();
    wgmma_wait<1>();
    fence_registers(s);
    float sum = 0.0f;
#pragma unroll
    for (int i = 0; i < 32; ++i) {
      float e;
      asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(e) : "f"(s[i]));
      sum += e;
    }
#if defined(ANCHOR)
    __shared__ float word;
    asm volatile("st.shared.f32 [%0], %1;\n" ::"r"(uint32_t(__cvta_generic_to_shared(&word))),
                 "f"(sum)
                 : "memory");
#endif
    wgmma_wait<0>();
    fence_registers(o);
#pragma unroll
    for (int i = 0; i < 24; ++i) o[i] *= sum;
  }
#pragma unroll
  for (int i = 0; i < 24; ++i) out[threadIdx.x * 24 + i] = o[i];
}
