// Can cuDNN's graph API take a GroupNorm's apply (x · scale + shift, then SiLU) as the
// prologue of the 3×3 convolution after it, and run that faster than the apply pass
// plus the legacy convolution kiln runs now? bench/cuda-notes.md ("Researched, not
// tried") left this at "a check_support on the GPU is the first step"; this probe is
// that step, on the SD VAE decoder's shapes (batch 1, NHWC, f16):
//
//   legacy    cudnnFindConvolutionForwardAlgorithmEx's fastest algorithm, as kiln's
//             plan takes it (bias not included: in the comparison's favour);
//   apply     a separate scale, shift and SiLU pass (kiln's apply is near the same
//             bandwidth), so that legacy + apply is what the fusion has to beat;
//   graph     the graph API's conv + bias alone (the control: v10 found these
//             slower than the legacy path in the decode);
//   fused     the graph API's scale · shift · SiLU → conv → + bias, the first 12 plans
//             that heuristics A and the fallback list give, each that builds timed.
//
// The fused output is compared with apply → legacy conv → + bias (max |diff| over max
// |ref|). Medians of 20 runs after 3 warm-ups, CUDA events, one stream.
//
//   (device) scripts/gpu-cudnn-norm-conv-probe.sh
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <cudnn.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <unordered_map>
#include <vector>

#include <cudnn_frontend.h>

#include "check_cuda.h"

namespace fe = cudnn_frontend;

#define CHECK_CUDNN(x) CHECK_STATUS(x, CUDNN_STATUS_SUCCESS, cudnnGetErrorString)

__global__ void apply_silu(const __half* x, const float* scale, const float* shift, __half* y,
                           long n, int c) {
  for (long i = (long(blockIdx.x) * blockDim.x + threadIdx.x) * 8; i < n;
       i += long(gridDim.x) * blockDim.x * 8) {
    const uint4 raw = *reinterpret_cast<const uint4*>(x + i);
    const __half* h = reinterpret_cast<const __half*>(&raw);
    uint4 o;
    __half* oh = reinterpret_cast<__half*>(&o);
    const int ch = int(i % c);
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const float v = __half2float(h[j]) * scale[ch + j] + shift[ch + j];
      oh[j] = __float2half(__fdividef(v, 1.0f + __expf(-v)));
    }
    *reinterpret_cast<uint4*>(y + i) = o;
  }
}

float median_us(const std::function<void()>& run) {
  cudaEvent_t a, b;
  CHECK_CUDA(cudaEventCreate(&a));
  CHECK_CUDA(cudaEventCreate(&b));
  for (int i = 0; i < 3; ++i) run();
  std::vector<float> t;
  for (int i = 0; i < 20; ++i) {
    CHECK_CUDA(cudaEventRecord(a));
    run();
    CHECK_CUDA(cudaEventRecord(b));
    CHECK_CUDA(cudaEventSynchronize(b));
    float ms = 0;
    CHECK_CUDA(cudaEventElapsedTime(&ms, a, b));
    t.push_back(ms * 1000.0f);
  }
  CHECK_CUDA(cudaEventDestroy(a));
  CHECK_CUDA(cudaEventDestroy(b));
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

void fill(std::vector<__half>& v, unsigned seed, float amp) {
  for (auto& e : v) {
    seed = seed * 1664525u + 1013904223u;
    e = __float2half(amp * (float((seed >> 8) & 0xffff) / 65536.0f - 0.5f) * 2.0f);
  }
}

// Ways of writing the prologue: scale and shift in f16 or f32, the graph's
// intermediate tensors in f16 or f32, SiLU (swish, beta 1) or ReLU (the BatchNorm
// pattern cuDNN documents, as a control of whether any prologue takes).
struct Variant {
  const char* name;
  bool ss_half, mid_half, relu;
};
const Variant variants[] = {{"f32 scale, f32 mid, silu", false, false, false},
                            {"f16 scale, f32 mid, silu", true, false, false},
                            {"f16 scale, f16 mid, silu", true, true, false},
                            {"f32 scale, f16 mid, silu", false, true, false},
                            {"f16 scale, f16 mid, relu", true, true, true},
                            {"f32 scale, f32 mid, relu", false, false, true}};

struct Best {
  float us = 1e30f;
  int64_t index = -1;
  int built = 0, count = 0;
  std::string name;
};

// Builds and times every plan of `g` that builds; leaves the best plan's output in the
// output tensor.
Best time_plans(fe::graph::Graph& g, cudnnHandle_t h, std::unordered_map<int64_t, void*>& pack,
                void* ws, int64_t ws_bytes) {
  Best best;
  best.count = int(g.get_execution_plan_count());
  // The first 12 in the heuristics' order: runtime-fusion plans compile (NVRTC) as they build.
  for (int64_t i = 0; i < std::min(best.count, 12); ++i) {
    if (!g.build_plan_at_index(i).is_good()) continue;
    int64_t need = 0;
    if (!g.get_workspace_size_plan_at_index(i, need).is_good() || need > ws_bytes) continue;
    if (!g.execute_plan_at_index(h, pack, ws, i).is_good()) continue;
    CHECK_CUDA(cudaDeviceSynchronize());
    ++best.built;
    const float us = median_us([&] { (void)g.execute_plan_at_index(h, pack, ws, i); });
    if (us < best.us) {
      best.us = us;
      best.index = i;
      (void)g.get_plan_name_at_index(i, best.name);
    }
  }
  if (best.index >= 0) {
    (void)g.execute_plan_at_index(h, pack, ws, best.index);
    CHECK_CUDA(cudaDeviceSynchronize());
  }
  return best;
}

int main() {
  struct Shape {
    int h, w, c, k;
  } shapes[] = {{64, 64, 512, 512},   {128, 128, 512, 512}, {256, 256, 512, 256},
                {256, 256, 256, 256}, {512, 512, 256, 128}, {512, 512, 128, 128}};
  cudnnHandle_t h;
  CHECK_CUDNN(cudnnCreate(&h));
  int dev = 0;
  cudaDeviceProp prop{};
  CHECK_CUDA(cudaGetDeviceProperties(&prop, dev));
  std::printf("%s, cuDNN %zu, frontend %d\n\n", prop.name, cudnnGetVersion(),
              CUDNN_FRONTEND_VERSION);
  std::printf(
      "| shape (1xHxWxC->K) | legacy µs, again after the graph's (algo) | apply µs | legacy + "
      "apply | graph conv+bias µs (plans built/listed) and plan | fused µs (built/listed) | "
      "fused variant and plan | fused err |\n"
      "|---|---|---|---|---|---|---|---|\n");
  const int64_t ws_bytes = int64_t(512) << 20;
  void* ws = nullptr;
  CHECK_CUDA(cudaMalloc(&ws, ws_bytes));
  for (const Shape& s : shapes) {
    const long nx = long(s.h) * s.w * s.c, ny = long(s.h) * s.w * s.k, nw = long(s.k) * 9 * s.c;
    std::vector<__half> hx(nx), hw(nw), hb(s.k);
    fill(hx, 1, 2.0f);
    fill(hw, 2, 1.0f / std::sqrt(9.0f * s.c));
    fill(hb, 3, 0.5f);
    std::vector<float> hs(s.c), hsh(s.c);
    for (int i = 0; i < s.c; ++i) hs[i] = 0.5f + float(i % 7) / 7.0f, hsh[i] = float(i % 5) / 5.0f - 0.4f;
    __half *x, *xn, *w, *b, *y_ref, *y, *sc16, *sh16;
    float *sc, *sh;
    float legacy_again = NAN;
    CHECK_CUDA(cudaMalloc(&x, nx * 2));
    CHECK_CUDA(cudaMalloc(&xn, nx * 2));
    CHECK_CUDA(cudaMalloc(&w, nw * 2));
    CHECK_CUDA(cudaMalloc(&b, s.k * 2));
    CHECK_CUDA(cudaMalloc(&y_ref, ny * 2));
    CHECK_CUDA(cudaMalloc(&y, ny * 2));
    CHECK_CUDA(cudaMalloc(&sc, s.c * 4));
    CHECK_CUDA(cudaMalloc(&sh, s.c * 4));
    CHECK_CUDA(cudaMemcpy(x, hx.data(), nx * 2, cudaMemcpyHostToDevice));
    CHECK_CUDA(cudaMemcpy(w, hw.data(), nw * 2, cudaMemcpyHostToDevice));
    CHECK_CUDA(cudaMemcpy(b, hb.data(), s.k * 2, cudaMemcpyHostToDevice));
    CHECK_CUDA(cudaMemcpy(sc, hs.data(), s.c * 4, cudaMemcpyHostToDevice));
    CHECK_CUDA(cudaMemcpy(sh, hsh.data(), s.c * 4, cudaMemcpyHostToDevice));
    {
      std::vector<__half> a(s.c), d(s.c);
      for (int i = 0; i < s.c; ++i) a[i] = __float2half(hs[i]), d[i] = __float2half(hsh[i]);
      CHECK_CUDA(cudaMalloc(&sc16, s.c * 2));
      CHECK_CUDA(cudaMalloc(&sh16, s.c * 2));
      CHECK_CUDA(cudaMemcpy(sc16, a.data(), s.c * 2, cudaMemcpyHostToDevice));
      CHECK_CUDA(cudaMemcpy(sh16, d.data(), s.c * 2, cudaMemcpyHostToDevice));
    }

    // apply, then the legacy convolution and the bias: the reference and the baseline.
    auto apply = [&] { apply_silu<<<prop.multiProcessorCount * 8, 256>>>(x, sc, sh, xn, nx, s.c); };
    const float apply_us = median_us(apply);
    cudnnTensorDescriptor_t xd, yd, bd;
    cudnnFilterDescriptor_t wd;
    cudnnConvolutionDescriptor_t cd;
    CHECK_CUDNN(cudnnCreateTensorDescriptor(&xd));
    CHECK_CUDNN(cudnnCreateTensorDescriptor(&yd));
    CHECK_CUDNN(cudnnCreateTensorDescriptor(&bd));
    CHECK_CUDNN(cudnnCreateFilterDescriptor(&wd));
    CHECK_CUDNN(cudnnCreateConvolutionDescriptor(&cd));
    CHECK_CUDNN(cudnnSetTensor4dDescriptor(xd, CUDNN_TENSOR_NHWC, CUDNN_DATA_HALF, 1, s.c, s.h, s.w));
    CHECK_CUDNN(cudnnSetTensor4dDescriptor(yd, CUDNN_TENSOR_NHWC, CUDNN_DATA_HALF, 1, s.k, s.h, s.w));
    CHECK_CUDNN(cudnnSetTensor4dDescriptor(bd, CUDNN_TENSOR_NHWC, CUDNN_DATA_HALF, 1, s.k, 1, 1));
    CHECK_CUDNN(cudnnSetFilter4dDescriptor(wd, CUDNN_DATA_HALF, CUDNN_TENSOR_NHWC, s.k, s.c, 3, 3));
    CHECK_CUDNN(cudnnSetConvolution2dDescriptor(cd, 1, 1, 1, 1, 1, 1, CUDNN_CROSS_CORRELATION,
                                       CUDNN_DATA_FLOAT));
    CHECK_CUDNN(cudnnSetConvolutionMathType(cd, CUDNN_TENSOR_OP_MATH));
    apply();
    cudnnConvolutionFwdAlgoPerf_t perf[8];
    int found = 0;
    CHECK_CUDNN(cudnnFindConvolutionForwardAlgorithmEx(h, xd, xn, wd, w, cd, yd, y_ref, 8, &found, perf,
                                              ws, ws_bytes));
    int chosen = 0;
    while (chosen < found && perf[chosen].status != CUDNN_STATUS_SUCCESS) ++chosen;
    const cudnnConvolutionFwdAlgo_t algo = perf[chosen].algo;
    const float one = 1.0f, zero = 0.0f;
    auto legacy = [&] {
      CHECK_CUDNN(cudnnConvolutionForward(h, &one, xd, xn, wd, w, cd, algo, ws, ws_bytes, &zero, yd, y_ref));
    };
    const float legacy_us = median_us(legacy);
    apply();
    legacy();
    CHECK_CUDNN(cudnnAddTensor(h, &one, bd, b, &one, yd, y_ref));
    CHECK_CUDA(cudaDeviceSynchronize());
    std::vector<__half> ref(ny);
    CHECK_CUDA(cudaMemcpy(ref.data(), y_ref, ny * 2, cudaMemcpyDeviceToHost));

    // A graph: conv + bias alone (variant null), or with the prologue built as `v` says.
    auto make = [&](const Variant* v) {
      const bool prologue = v != nullptr;
      auto g = std::make_unique<fe::graph::Graph>();
      g->set_io_data_type(fe::DataType_t::HALF)
          .set_intermediate_data_type(v && v->mid_half ? fe::DataType_t::HALF
                                                       : fe::DataType_t::FLOAT)
          .set_compute_data_type(fe::DataType_t::FLOAT);
      auto X = g->tensor(fe::graph::Tensor_attributes()
                             .set_name("x")
                             .set_uid(1)
                             .set_dim({1, s.c, s.h, s.w})
                             .set_stride({long(s.h) * s.w * s.c, 1, long(s.w) * s.c, s.c}));
      auto in = X;
      if (prologue) {
        auto S = g->tensor(
            fe::graph::Tensor_attributes()
                .set_name("scale")
                .set_uid(2)
                .set_dim({1, s.c, 1, 1})
                .set_stride({s.c, 1, s.c, s.c})
                .set_data_type(v->ss_half ? fe::DataType_t::HALF : fe::DataType_t::FLOAT));
        auto B = g->tensor(
            fe::graph::Tensor_attributes()
                .set_name("shift")
                .set_uid(3)
                .set_dim({1, s.c, 1, 1})
                .set_stride({s.c, 1, s.c, s.c})
                .set_data_type(v->ss_half ? fe::DataType_t::HALF : fe::DataType_t::FLOAT));
        auto m = g->pointwise(X, S,
                              fe::graph::Pointwise_attributes().set_mode(fe::PointwiseMode_t::MUL));
        auto a = g->pointwise(m, B,
                              fe::graph::Pointwise_attributes().set_mode(fe::PointwiseMode_t::ADD));
        in = v->relu
                 ? g->pointwise(
                       a, fe::graph::Pointwise_attributes().set_mode(fe::PointwiseMode_t::RELU_FWD))
                 : g->pointwise(a, fe::graph::Pointwise_attributes()
                                       .set_mode(fe::PointwiseMode_t::SWISH_FWD)
                                       .set_swish_beta(1.0f));
      }
      auto W = g->tensor(fe::graph::Tensor_attributes()
                             .set_name("w")
                             .set_uid(4)
                             .set_dim({s.k, s.c, 3, 3})
                             .set_stride({9L * s.c, 1, 3L * s.c, s.c}));
      auto conv = g->conv_fprop(in, W,
                                fe::graph::Conv_fprop_attributes()
                                    .set_padding({1, 1})
                                    .set_stride({1, 1})
                                    .set_dilation({1, 1}));
      auto Bias = g->tensor(fe::graph::Tensor_attributes()
                                .set_name("bias")
                                .set_uid(5)
                                .set_dim({1, s.k, 1, 1})
                                .set_stride({s.k, 1, s.k, s.k}));
      auto out = g->pointwise(conv, Bias,
                              fe::graph::Pointwise_attributes().set_mode(fe::PointwiseMode_t::ADD));
      out->set_output(true)
          .set_uid(6)
          .set_dim({1, s.k, s.h, s.w})
          .set_stride({long(s.h) * s.w * s.k, 1, long(s.w) * s.k, s.k})
          .set_data_type(fe::DataType_t::HALF);
      std::string why;
      fe::error_t e = g->validate();
      if (e.is_good()) e = g->build_operation_graph(h);
      if (e.is_good()) e = g->create_execution_plans({fe::HeurMode_t::A, fe::HeurMode_t::FALLBACK});
      if (e.is_good()) e = g->check_support();
      if (!e.is_good()) {
        std::fprintf(stderr, "  %dx%dx%d->%d %s: %s\n", s.h, s.w, s.c, s.k,
                     prologue ? v->name : "graph", e.get_message().c_str());
        return std::unique_ptr<fe::graph::Graph>();
      }
      return g;
    };

    Best control, fused;
    const Variant* fused_variant = nullptr;
    float err = NAN;
    if (auto g = make(nullptr)) {
      std::unordered_map<int64_t, void*> pack{{1, xn}, {4, w}, {5, b}, {6, y}};
      control = time_plans(*g, h, pack, ws, ws_bytes);
      // The legacy path once more, right after (the machine's clocks drift).
      legacy_again = median_us(legacy);
    }
    // Each way of writing the prologue: its plans (listed, built) on stderr; the
    // fastest SiLU variant is the table's.
    for (const Variant& v : variants) {
      auto g = make(&v);
      if (!g) continue;
      std::unordered_map<int64_t, void*> pack{{1, x},
                                              {2, v.ss_half ? (void*)sc16 : (void*)sc},
                                              {3, v.ss_half ? (void*)sh16 : (void*)sh},
                                              {4, w},
                                              {5, b},
                                              {6, y}};
      CHECK_CUDA(cudaMemset(y, 0, ny * 2));
      const Best got = time_plans(*g, h, pack, ws, ws_bytes);
      std::fprintf(stderr, "  %dx%dx%d->%d %s: %d plans listed, %d built, best %.1f us (%s)\n", s.h,
                   s.w, s.c, s.k, v.name, got.count, got.built, got.us, got.name.c_str());
      if (got.index < 0 || v.relu || got.us >= fused.us) continue;
      fused = got;
      fused_variant = &v;
      std::vector<__half> out(ny);
      CHECK_CUDA(cudaMemcpy(out.data(), y, ny * 2, cudaMemcpyDeviceToHost));
      float diff = 0, mag = 0;
      for (long i = 0; i < ny; ++i) {
        diff = std::max(diff, std::fabs(__half2float(out[i]) - __half2float(ref[i])));
        mag = std::max(mag, std::fabs(__half2float(ref[i])));
      }
      err = diff / mag;
    }
    auto cell = [](const Best& b) {
      char buf[64];
      if (b.index < 0)
        std::snprintf(buf, sizeof buf, "– (%d/%d)", b.built, b.count);
      else
        std::snprintf(buf, sizeof buf, "%.1f (%d/%d)", b.us, b.built, b.count);
      return std::string(buf);
    };
    std::printf("| 1x%dx%dx%d->%d | %.1f, %.1f (%d) | %.1f | %.1f | %s %s | %s | %s %s | %.2e |\n",
                s.h, s.w, s.c, s.k, legacy_us, legacy_again, int(algo), apply_us,
                legacy_us + apply_us, cell(control).c_str(), control.name.c_str(),
                cell(fused).c_str(), fused_variant ? fused_variant->name : "", fused.name.c_str(),
                err);
    std::fflush(stdout);
    cudnnDestroyTensorDescriptor(xd);
    cudnnDestroyTensorDescriptor(yd);
    cudnnDestroyTensorDescriptor(bd);
    cudnnDestroyFilterDescriptor(wd);
    cudnnDestroyConvolutionDescriptor(cd);
    for (void* p : {(void*)x, (void*)xn, (void*)w, (void*)b, (void*)y_ref, (void*)y, (void*)sc,
                    (void*)sh, (void*)sc16, (void*)sh16})
      cudaFree(p);
  }
  cudaFree(ws);
  cudnnDestroy(h);
  return 0;
}
