// Probe, not part of the build: what fp8 (E4M3) GEMMs through cuBLASLt would save on
// the UNets' Linear layers, before kiln builds an fp8 path (PERF.md's target: SDXL's
// CFG step at most 14 ms in fp8, PSNR at least 30 dB against fp16; fp16 is 28.3 ms,
// of which the Linear GEMMs are 10.2 and the fused GEGLU GEMMs 6.4, v22).
//
// For each Linear shape of SDXL's and SD1.5's step (M×N×K and calls a step as v15's
// per-shape tables counted them), in kiln's layout (out[M, N] = x[M, K] · w[N, K]^T,
// which is the "TN" form cuBLASLt's fp8 kernels require):
//   - f16: cuBLASLt as kiln runs it (the best of the heuristic's top 8, timed);
//   - fp8 per tensor: one f32 scale for x and one for w (CUBLASLT_MATMUL_MATRIX_SCALE_
//     SCALAR_32F), with and without fast accumulation;
//   - fp8 per row: a scale for every row of x and every output channel of w
//     (OUTER_VEC_32F), which needs no calibration: quantize_rows below makes x's in one
//     pass, so a producer kernel could make them as it writes x;
//   - quantize_rows alone: the pass that turns an f16 x into fp8 and its row scales.
// Each call is timed as inside a step: the L2 is overwritten, x is read back in (it was
// just written by the op before), then one call between CUDA events; the median of 9.
// The accuracy of each fp8 form is its output's SNR against the f16 GEMM's, on random
// N(0, 1) data: trained models' activations have outlier channels, so real SNRs are
// lower; this says what the formats lose at best.
//
// scripts/gpu-fp8-probe.sh builds and runs it on the GPU machine (nothing to carry).
// Built here (nvcc 13.0), not yet run.
#include <cublasLt.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "check_cuda.h"
#define CHECK_BLAS(x) CHECK_STATUS(x, CUBLAS_STATUS_SUCCESS, cublasLtGetStatusString)

namespace {

constexpr float kE4M3Max = 448.0f;

struct Shape {
  const char* model;
  int m, n, k, calls;
};

// v15's per-shape tables (bench/results/2026-12-03-h200-v15/call3/auto-*-per-shape.md).
// The M×10240×1280 and 8192×5120×640 shapes are the GEGLU projections, now one CUTLASS
// GEMM with the gate in its epilogue; an fp8 form of that GEMM would run the same
// mainloop as these.
const Shape kShapes[] = {
    {"sdxl", 2048, 10240, 1280, 60}, {"sdxl", 2048, 1280, 1280, 192},
    {"sdxl", 2048, 1280, 5120, 60},  {"sdxl", 2048, 3840, 1280, 60},
    {"sdxl", 8192, 5120, 640, 10},   {"sdxl", 8192, 640, 640, 40},
    {"sdxl", 8192, 640, 2560, 10},   {"sdxl", 8192, 1920, 640, 10},
    {"sdxl", 154, 166400, 2048, 1},  {"sdxl", 32768, 320, 640, 2},
    {"sd15", 8192, 320, 320, 25},    {"sd15", 2048, 640, 640, 25},
    {"sd15", 512, 1280, 1280, 25},   {"sd15", 8192, 2560, 320, 5},
    {"sd15", 512, 10240, 1280, 5},   {"sd15", 2048, 5120, 640, 5},
    {"sd15", 8192, 320, 1280, 5},    {"sd15", 512, 1280, 5120, 5},
    {"sd15", 2048, 640, 2560, 5},    {"sd15", 8192, 960, 320, 5},
    {"sd15", 512, 3840, 1280, 5},    {"sd15", 2048, 1920, 640, 5},
};

// N(0, 1) from a counter: two hashed 32-bit uniforms through Box-Muller.
uint64_t mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}
std::vector<__half> random_half(size_t n, uint64_t seed) {
  std::vector<__half> v(n);
  for (size_t i = 0; i < n; i += 2) {
    const uint64_t r = mix64(seed * 0x9e3779b97f4a7c15ull + i);
    const double u1 = (double(r >> 40) + 1.0) / double(1ull << 24);
    const double u2 = double((r >> 8) & 0xffffff) / double(1ull << 24);
    const double rad = std::sqrt(-2.0 * std::log(u1));
    v[i] = __float2half(float(rad * std::cos(6.283185307179586 * u2)));
    if (i + 1 < n) v[i + 1] = __float2half(float(rad * std::sin(6.283185307179586 * u2)));
  }
  return v;
}

// One block a row: the row's absolute maximum, then every value times 448 / max as
// E4M3 (round to nearest even, saturating); scale[row] = max / 448, what the GEMM
// multiplies back (1 for a row of zeros). k a multiple of 8.
__global__ void __launch_bounds__(256)
    quantize_rows(const __half* x, __nv_fp8_e4m3* q, float* scale, int k) {
  const __half* row = x + size_t(blockIdx.x) * k;
  float amax = 0.0f;
  for (int i = threadIdx.x * 8; i < k; i += blockDim.x * 8) {
    const uint4 u = *reinterpret_cast<const uint4*>(row + i);
    const __half2* h = reinterpret_cast<const __half2*>(&u);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const float2 f = __half22float2(h[j]);
      amax = fmaxf(amax, fmaxf(fabsf(f.x), fabsf(f.y)));
    }
  }
  for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
  __shared__ float warp_max[8];
  if (threadIdx.x % 32 == 0) warp_max[threadIdx.x / 32] = amax;
  __syncthreads();
  amax = 0.0f;
  for (int w = 0; w < int(blockDim.x / 32); ++w) amax = fmaxf(amax, warp_max[w]);
  const float inv = amax > 0.0f ? kE4M3Max / amax : 1.0f;
  if (threadIdx.x == 0) scale[blockIdx.x] = amax > 0.0f ? amax / kE4M3Max : 1.0f;
  __nv_fp8_e4m3* out = q + size_t(blockIdx.x) * k;
  for (int i = threadIdx.x * 8; i < k; i += blockDim.x * 8) {
    const uint4 u = *reinterpret_cast<const uint4*>(row + i);
    const __half2* h = reinterpret_cast<const __half2*>(&u);
    __nv_fp8x4_e4m3 packed[2];
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const float2 a = __half22float2(h[2 * j]), b = __half22float2(h[2 * j + 1]);
      packed[j] = __nv_fp8x4_e4m3(make_float4(a.x * inv, a.y * inv, b.x * inv, b.y * inv));
    }
    *reinterpret_cast<uint2*>(out + i) = *reinterpret_cast<const uint2*>(packed);
  }
}

// Every value times `inv` as E4M3: the per-tensor form (the scale from the host's max).
__global__ void quantize_all(const __half* x, __nv_fp8_e4m3* q, float inv, size_t n) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x)
    q[i] = __nv_fp8_e4m3(__half2float(x[i]) * inv);
}

// Reads x (so that it sits in the L2 as the op that wrote it would leave it).
__global__ void touch(const uint4* x, size_t n, uint32_t* sink) {
  uint32_t acc = 0;
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x)
    acc ^= x[i].x;
  if (acc == 0x12345678u) *sink = acc;
}

enum class Form { F16, Fp8Tensor, Fp8TensorFast, Fp8Rows };
struct Device {
  cublasLtHandle_t lt;
  void* workspace;
  size_t workspace_size = size_t(64) << 20;
  void* flush;
  size_t flush_size = size_t(256) << 20;  // past the H100's and H200's 50 MB of L2
  uint32_t* sink;
  cudaEvent_t e0, e1;
};

// Operands of one shape on the device.
struct Operands {
  const Shape* s = nullptr;
  __half *x16 = nullptr, *w16 = nullptr, *out = nullptr;
  __nv_fp8_e4m3 *x8t = nullptr, *w8t = nullptr, *x8r = nullptr, *w8r = nullptr;
  float *sxt = nullptr, *swt = nullptr, *sxr = nullptr, *swr = nullptr;  // per tensor, per row
};

// Time of `run` as inside a step (L2 overwritten, x read back in): median of 9, µs.
template <class F>
float step_time(Device& d, const Operands& o, F&& run) {
  std::vector<float> us;
  for (int r = 0; r < 10; ++r) {
    CHECK_CUDA(cudaMemsetAsync(d.flush, r, d.flush_size));
    touch<<<264, 256>>>(reinterpret_cast<const uint4*>(o.x16), size_t(o.s->m) * o.s->k / 8, d.sink);
    CHECK_CUDA(cudaEventRecord(d.e0));
    run();
    CHECK_CUDA(cudaEventRecord(d.e1));
    CHECK_CUDA(cudaEventSynchronize(d.e1));
    float ms = 0.0f;
    CHECK_CUDA(cudaEventElapsedTime(&ms, d.e0, d.e1));
    if (r > 0) us.push_back(ms * 1000.0f);  // the first is a warm-up
  }
  std::sort(us.begin(), us.end());
  return us[us.size() / 2];
}

// The best time of `form` on this shape over the heuristic's top 8 (-1: no algorithm
// takes it); the output of the best one is left in o.out.
float time_form(Device& d, const Operands& o, Form form) {
  const Shape& s = *o.s;
  const bool fp8 = form != Form::F16;
  const cudaDataType_t in_type = fp8 ? CUDA_R_8F_E4M3 : CUDA_R_16F;
  cublasLtMatmulDesc_t op;
  CHECK_BLAS(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t t = CUBLAS_OP_T, n = CUBLAS_OP_N;
  CHECK_BLAS(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &t, sizeof(t)));
  CHECK_BLAS(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &n, sizeof(n)));
  const void* a = o.w16;
  const void* b = o.x16;
  if (fp8) {
    const bool rows = form == Form::Fp8Rows;
    a = rows ? o.w8r : o.w8t;
    b = rows ? o.x8r : o.x8t;
    const float* sa = rows ? o.swr : o.swt;
    const float* sb = rows ? o.sxr : o.sxt;
    CHECK_BLAS(
        cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &sa, sizeof(sa)));
    CHECK_BLAS(
        cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &sb, sizeof(sb)));
    if (rows) {
      const int32_t mode = CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F;
      CHECK_BLAS(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &mode,
                                                sizeof(mode)));
      CHECK_BLAS(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &mode,
                                                sizeof(mode)));
    }
    const int8_t fast = form == Form::Fp8TensorFast;
    CHECK_BLAS(
        cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_FAST_ACCUM, &fast, sizeof(fast)));
  }
  // Column-major view: out^T [N, M] = (w [N, K] as K×N, transposed) · (x as K×M).
  cublasLtMatrixLayout_t la, lb, lc;
  CHECK_BLAS(cublasLtMatrixLayoutCreate(&la, in_type, uint64_t(s.k), uint64_t(s.n), s.k));
  CHECK_BLAS(cublasLtMatrixLayoutCreate(&lb, in_type, uint64_t(s.k), uint64_t(s.m), s.k));
  CHECK_BLAS(cublasLtMatrixLayoutCreate(&lc, CUDA_R_16F, uint64_t(s.n), uint64_t(s.m), s.n));
  cublasLtMatmulPreference_t pref;
  CHECK_BLAS(cublasLtMatmulPreferenceCreate(&pref));
  CHECK_BLAS(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                  &d.workspace_size, sizeof(d.workspace_size)));
  cublasLtMatmulHeuristicResult_t results[8];
  int found = 0;
  const cublasStatus_t hs =
      cublasLtMatmulAlgoGetHeuristic(d.lt, op, la, lb, lc, lc, pref, 8, results, &found);
  const float alpha = 1.0f, beta = 0.0f;
  float best = -1.0f;
  int best_i = -1;
  for (int i = 0; hs == CUBLAS_STATUS_SUCCESS && i < found; ++i) {
    auto call = [&] {
      return cublasLtMatmul(d.lt, op, &alpha, a, la, b, lb, &beta, o.out, lc, o.out, lc,
                            &results[i].algo, d.workspace, d.workspace_size, nullptr);
    };
    if (call() != CUBLAS_STATUS_SUCCESS) continue;
    const float us = step_time(d, o, [&] { call(); });
    if (best < 0.0f || us < best) {
      best = us;
      best_i = i;
    }
  }
  if (best_i >= 0)  // leave the best one's output for the accuracy check
    CHECK_BLAS(cublasLtMatmul(d.lt, op, &alpha, a, la, b, lb, &beta, o.out, lc, o.out, lc,
                              &results[best_i].algo, d.workspace, d.workspace_size, nullptr));
  CHECK_CUDA(cudaDeviceSynchronize());
  cublasLtMatmulPreferenceDestroy(pref);
  cublasLtMatrixLayoutDestroy(la);
  cublasLtMatrixLayoutDestroy(lb);
  cublasLtMatrixLayoutDestroy(lc);
  cublasLtMatmulDescDestroy(op);
  return best;
}

std::vector<float> download(const __half* p, size_t n) {
  std::vector<__half> h(n);
  CHECK_CUDA(cudaMemcpy(h.data(), p, n * sizeof(__half), cudaMemcpyDeviceToHost));
  std::vector<float> f(n);
  for (size_t i = 0; i < n; ++i) f[i] = __half2float(h[i]);
  return f;
}

// 10·log10(Σ ref² / Σ (out − ref)²).
double snr_db(const std::vector<float>& out, const std::vector<float>& ref) {
  double s = 0.0, e = 0.0;
  for (size_t i = 0; i < ref.size(); ++i) {
    s += double(ref[i]) * ref[i];
    e += (double(out[i]) - ref[i]) * (double(out[i]) - ref[i]);
  }
  return e > 0.0 ? 10.0 * std::log10(s / e) : 999.0;
}

float amax(const std::vector<__half>& v) {
  float m = 0.0f;
  for (const __half& h : v) m = std::max(m, std::fabs(__half2float(h)));
  return m;
}

// quantize_rows on the device against the same arithmetic on the host, first rows:
// the number of bytes that differ (0 expected; the kernel is a candidate for kiln).
int check_rows(const std::vector<__half>& x, const __nv_fp8_e4m3* q, const float* scale, int k,
               int rows) {
  std::vector<__nv_fp8_e4m3> dq(size_t(rows) * k);
  std::vector<float> ds(rows);
  CHECK_CUDA(cudaMemcpy(dq.data(), q, dq.size(), cudaMemcpyDeviceToHost));
  CHECK_CUDA(cudaMemcpy(ds.data(), scale, rows * sizeof(float), cudaMemcpyDeviceToHost));
  int bad = 0;
  for (int r = 0; r < rows; ++r) {
    float m = 0.0f;
    for (int i = 0; i < k; ++i) m = std::max(m, std::fabs(__half2float(x[size_t(r) * k + i])));
    const float inv = m > 0.0f ? kE4M3Max / m : 1.0f;
    if (ds[r] != (m > 0.0f ? m / kE4M3Max : 1.0f)) ++bad;
    for (int i = 0; i < k; ++i) {
      const __nv_fp8_e4m3 h(__half2float(x[size_t(r) * k + i]) * inv);
      if (std::memcmp(&h, &dq[size_t(r) * k + i], 1) != 0) ++bad;
    }
  }
  return bad;
}

// A table cell: `value` in `format`, or "–" where it is negative (nothing ran).
std::string cell(float value, const char* format) {
  if (value < 0.0f) return "–";
  char buf[32];
  std::snprintf(buf, sizeof(buf), format, double(value));
  return buf;
}

}  // namespace

int main() {
  Device d;
  CHECK_BLAS(cublasLtCreate(&d.lt));
  CHECK_CUDA(cudaMalloc(&d.workspace, d.workspace_size));
  CHECK_CUDA(cudaMalloc(&d.flush, d.flush_size));
  CHECK_CUDA(cudaMalloc(&d.sink, sizeof(uint32_t)));
  CHECK_CUDA(cudaEventCreate(&d.e0));
  CHECK_CUDA(cudaEventCreate(&d.e1));
  cudaDeviceProp prop;
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  std::printf("fp8 GEMM probe: %s, cuBLASLt %zu; µs a call as inside a step (median of 9)\n\n",
              prop.name, cublasLtGetVersion());
  std::printf(
      "| model | M×N×K | calls | f16 | fp8 tensor | fp8 tensor fast | fp8 rows | "
      "quantize rows | rows + quantize vs f16 | SNR tensor | SNR fast | SNR rows | "
      "quantize check |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  struct Sum {
    double f16 = 0, rows = 0, tensor = 0;
  };
  Sum sums[2];
  uint64_t seed = 1;
  for (const Shape& s : kShapes) {
    const size_t xn = size_t(s.m) * s.k, wn = size_t(s.n) * s.k, on = size_t(s.m) * s.n;
    const std::vector<__half> hx = random_half(xn, seed++), hw = random_half(wn, seed++);
    Operands o;
    o.s = &s;
    CHECK_CUDA(cudaMalloc(&o.x16, xn * 2));
    CHECK_CUDA(cudaMalloc(&o.w16, wn * 2));
    CHECK_CUDA(cudaMalloc(&o.out, on * 2));
    CHECK_CUDA(cudaMalloc(&o.x8t, xn));
    CHECK_CUDA(cudaMalloc(&o.w8t, wn));
    CHECK_CUDA(cudaMalloc(&o.x8r, xn));
    CHECK_CUDA(cudaMalloc(&o.w8r, wn));
    CHECK_CUDA(cudaMalloc(&o.sxt, sizeof(float)));
    CHECK_CUDA(cudaMalloc(&o.swt, sizeof(float)));
    CHECK_CUDA(cudaMalloc(&o.sxr, s.m * sizeof(float)));
    CHECK_CUDA(cudaMalloc(&o.swr, s.n * sizeof(float)));
    CHECK_CUDA(cudaMemcpy(o.x16, hx.data(), xn * 2, cudaMemcpyHostToDevice));
    CHECK_CUDA(cudaMemcpy(o.w16, hw.data(), wn * 2, cudaMemcpyHostToDevice));
    // Per tensor: the scale from the host's maximum.
    const float ax = amax(hx), aw = amax(hw);
    const float sx = ax / kE4M3Max, sw = aw / kE4M3Max;
    CHECK_CUDA(cudaMemcpy(o.sxt, &sx, sizeof(float), cudaMemcpyHostToDevice));
    CHECK_CUDA(cudaMemcpy(o.swt, &sw, sizeof(float), cudaMemcpyHostToDevice));
    quantize_all<<<1024, 256>>>(o.x16, o.x8t, kE4M3Max / ax, xn);
    quantize_all<<<1024, 256>>>(o.w16, o.w8t, kE4M3Max / aw, wn);
    // Per row: the kernel kiln would run on x (and, once, on the weights).
    quantize_rows<<<s.n, 256>>>(o.w16, o.w8r, o.swr, s.k);
    CHECK_CUDA(cudaGetLastError());
    const float quant =
        step_time(d, o, [&] { quantize_rows<<<s.m, 256>>>(o.x16, o.x8r, o.sxr, s.k); });
    CHECK_CUDA(cudaDeviceSynchronize());
    const int bad = check_rows(hx, o.x8r, o.sxr, s.k, std::min(s.m, 8));

    const float t16 = time_form(d, o, Form::F16);
    const std::vector<float> ref = download(o.out, on);
    float t[4] = {t16, -1, -1, -1};
    double snr[4] = {0, 0, 0, 0};
    for (Form f : {Form::Fp8Tensor, Form::Fp8TensorFast, Form::Fp8Rows}) {
      t[int(f)] = time_form(d, o, f);
      if (t[int(f)] >= 0.0f) snr[int(f)] = snr_db(download(o.out, on), ref);
    }
    const float rows_total = t[3] >= 0.0f ? t[3] + quant : -1.0f;
    std::printf("| %s | %d×%d×%d | %d | %.1f | %s | %s | %s | %.1f | %s |", s.model, s.m, s.n, s.k,
                s.calls, t16, cell(t[1], "%.1f").c_str(), cell(t[2], "%.1f").c_str(),
                cell(t[3], "%.1f").c_str(), quant,
                cell(rows_total >= 0.0f ? t16 / rows_total : -1.0f, "%.2fx").c_str());
    for (int i = 1; i < 4; ++i)
      std::printf(" %s |", cell(t[i] >= 0.0f ? float(snr[i]) : -1.0f, "%.1f dB").c_str());
    std::printf(" %s |\n", bad == 0 ? "same bytes" : (std::to_string(bad) + " differ").c_str());
    std::fflush(stdout);
    Sum& sum = sums[std::strcmp(s.model, "sdxl") == 0 ? 0 : 1];
    sum.f16 += double(s.calls) * t16;
    sum.rows += double(s.calls) * (rows_total >= 0.0f ? rows_total : t16);
    sum.tensor += double(s.calls) * (t[1] >= 0.0f ? t[1] : t16);
    for (void* p : {static_cast<void*>(o.x16), static_cast<void*>(o.w16), static_cast<void*>(o.out),
                    static_cast<void*>(o.x8t), static_cast<void*>(o.w8t), static_cast<void*>(o.x8r),
                    static_cast<void*>(o.w8r), static_cast<void*>(o.sxt), static_cast<void*>(o.swt),
                    static_cast<void*>(o.sxr), static_cast<void*>(o.swr)})
      CHECK_CUDA(cudaFree(p));
  }
  const char* names[2] = {"sdxl", "sd15"};
  std::printf(
      "\nA step's Linear GEMMs (calls × µs; a shape no fp8 algorithm took counts at f16):\n");
  for (int i = 0; i < 2; ++i)
    std::printf(
        "  %s: f16 %.2f ms; fp8 per row with its quantize pass %.2f ms; fp8 per tensor, "
        "x already fp8, %.2f ms\n",
        names[i], sums[i].f16 / 1000.0, sums[i].rows / 1000.0, sums[i].tensor / 1000.0);
  return 0;
}
