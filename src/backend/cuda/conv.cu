// 2-D convolution on NHWC activations and OHWI weights.
//
// Paths, in order of preference:
//  - 1×1, stride 1, no padding: a GEMM over the pixels (bias and residual fused).
//  - cuDNN, where the build has it and the library loads: symmetric padding, the
//    algorithm found by timing once per shape (the plan, also kept in the plan
//    cache for later processes), then one pass for bias and residual. The plan
//    also times our narrow kernels (3×3 with few input or output channels) and, for
//    small images, im2col and a GEMM, and keeps whichever path is fastest.
//  - Without cuDNN, a narrow kernel where one applies.
//  - im2col into a bounded column buffer, then a cuBLASLt GEMM with the bias and
//    residual fused; bands of output rows keep the buffer under 256 MiB.
#include <algorithm>
#include <atomic>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "backend/cuda/device.cuh"
#include "backend/cuda/ops.h"
#include "backend/cuda/plan_cache.h"

namespace kiln::cuda {
namespace {

struct Im2colParams {
  const void* x;
  void* col;
  int64_t row_begin, rows;  // output pixels (b, oy, ox) flattened
  int h, w, c, ho, wo, kh, kw, stride, pad_top, pad_left;
};

// col[r, (ky * kw + kx) * c + ch] = x[b, oy * stride - pad_top + ky, ox * stride - pad_left + kx,
// ch]
template <class T, int N>
__global__ void im2col_kernel(Im2colParams p) {
  const T* x = static_cast<const T*>(p.x);
  Pack<T, N>* col = static_cast<Pack<T, N>*>(p.col);
  const int cp = p.c / N;
  const int64_t patch = int64_t(p.kh) * p.kw * cp, total = p.rows * patch;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / patch;
    const int rem = int(i - r * patch);
    const int tap = rem / cp, ch = rem - tap * cp;
    const int64_t pixel = p.row_begin + r;
    const int ox = int(pixel % p.wo);
    const int64_t t = pixel / p.wo;
    const int oy = int(t % p.ho);
    const int64_t b = t / p.ho;
    const int iy = oy * p.stride - p.pad_top + tap / p.kw;
    const int ix = ox * p.stride - p.pad_left + tap % p.kw;
    Pack<T, N> v;
    if (iy >= 0 && iy < p.h && ix >= 0 && ix < p.w) {
      v = reinterpret_cast<const Pack<T, N>*>(x + ((b * p.h + iy) * p.w + ix) * p.c)[ch];
    } else {
#pragma unroll
      for (int j = 0; j < N; ++j) v.v[j] = from_float<T>(0.0f);
    }
    col[i] = v;
  }
}

// Counts the model's FLOPs where this convolution computes another form of its own
// (Conv2dArgs::model_flops), less `counted` that a GEMM counted already (im2col's).
void count_conv_flops(const Conv2dArgs& a, double counted = 0.0) {
  count_flops(conv2d_flops(a) - counted);
}

constexpr size_t kColumnBudget = size_t(256) << 20;

void conv_im2col(const Conv2dArgs& a) {
  const int64_t batch = a.x.dim(0);
  const int h = int(a.x.dim(1)), w = int(a.x.dim(2)), c = int(a.x.dim(3));
  const int o = int(a.weight.dim(0)), kh = int(a.weight.dim(1)), kw = int(a.weight.dim(2));
  const int ho = int(a.out.dim(1)), wo = int(a.out.dim(2));
  const int64_t rows = batch * ho * wo, patch = int64_t(kh) * kw * c;
  const size_t elem = dtype_size(a.x.dtype());
  const int64_t band =
      std::clamp<int64_t>(int64_t(kColumnBudget / (size_t(patch) * elem)), 1, rows);
  const auto col = scratch(size_t(band * patch) * elem);
  const bool has_bias = a.bias.defined(), has_residual = a.residual.defined();
  for (int64_t r0 = 0; r0 < rows; r0 += band) {
    const int64_t n = std::min(band, rows - r0);
    Im2colParams p{a.x.raw(), col->data(), r0, n,  h,        w,         c,
                   ho,        wo,          kh, kw, a.stride, a.pad_top, a.pad_left};
    dispatch_float(a.x.dtype(), [&](auto tag) {
      using T = decltype(tag);
      const bool vec = c % kVec<T> == 0 && aligned16(p.x) && aligned16(p.col);
      if (vec) {
        im2col_kernel<T, kVec<T>><<<grid_for(n * patch / kVec<T>, 256), 256, 0, stream()>>>(p);
      } else {
        im2col_kernel<T, 1><<<grid_for(n * patch, 256), 256, 0, stream()>>>(p);
      }
      CUDA_CHECK_LAUNCH();
    });
    GemmParams g;
    g.m = n;
    g.n = o;
    g.k = patch;
    g.a = col->data();
    g.lda = patch;
    g.b = a.weight.raw();
    g.ldb = patch;
    g.c = static_cast<char*>(a.out.raw()) + size_t(r0 * o) * elem;
    g.ldc = o;
    g.bias = has_bias ? a.bias.raw() : nullptr;
    g.residual =
        has_residual ? static_cast<const char*>(a.residual.raw()) + size_t(r0 * o) * elem : nullptr;
    g.dtype = a.x.dtype();
    gemm_nt(g);
  }
  // The GEMMs counted this convolution's own FLOPs.
  if (a.model_flops > 0.0) count_conv_flops(a, conv2d_own_flops(a));
}

#if defined(KILN_WITH_CUDNN)
cudnnDataType_t cudnn_type(DType t) {
  switch (t) {
    case DType::F32:
      return CUDNN_DATA_FLOAT;
    case DType::F16:
      return CUDNN_DATA_HALF;
    case DType::BF16:
      return CUDNN_DATA_BFLOAT16;
    default:
      KILN_FAIL("cuDNN convolution on ", dtype_name(t));
  }
}

struct ConvKey {
  int64_t n, h, w, c, o, kh, kw, stride, pad_h, pad_w;
  DType dtype;
  bool cudnn_only;  // Options::ConvKernel::Cudnn: the other paths are not timed
  int narrow_form;  // Options::narrow_conv_form: -1, or the one narrow form timed
  bool step_timed;  // Options::PlanTiming::Step
  auto tie() const {
    return std::tie(n, h, w, c, o, kh, kw, stride, pad_h, pad_w, dtype, cudnn_only, narrow_form,
                    step_timed);
  }
  bool operator<(const ConvKey& k) const { return tie() < k.tie(); }
  // Every field, for the plan cache.
  std::string name() const {
    return str("n", n, " h", h, " w", w, " c", c, " o", o, " k", kh, "x", kw, " stride", stride,
               " pad", pad_h, ",", pad_w, " ", dtype_name(dtype), cudnn_only ? " cudnn-only" : "",
               narrow_form >= 0 ? str(" narrow-form", narrow_form) : "",
               step_timed ? " step-timed" : "");
  }
};

// What a plan runs: cuDNN's convolution, a narrow kernel of ours, or im2col and a GEMM.
// The plan cache stores the last two as plans::kConvNarrowAlgo and kConvIm2colAlgo,
// algorithm numbers cuDNN's enumeration does not use (a narrow plan's form, 0-4, in
// its math type).
enum class ConvPath { Cudnn, Narrow, Im2col };

struct ConvPlan {
  cudnnTensorDescriptor_t x = nullptr, y = nullptr, bias = nullptr;
  cudnnFilterDescriptor_t w = nullptr;
  cudnnConvolutionDescriptor_t conv = nullptr;
  cudnnActivationDescriptor_t identity = nullptr;
  cudnnConvolutionFwdAlgo_t algo{};
  size_t workspace = 0;
  bool valid = false;
  bool fused = false;  // bias and residual inside cuDNN's call
  ConvPath path = ConvPath::Cudnn;
  int narrow_form = 0;  // with ConvPath::Narrow
};

// y = conv(x) + bias (+ z): cuDNN's fused call, which takes the identity
// activation only with the implicit-precomputed-GEMM algorithm.
cudnnStatus_t conv_bias_residual(const ConvPlan& plan, const Conv2dArgs& a, void* ws) {
  const float alpha1 = 1.0f, alpha2 = a.residual.defined() ? 1.0f : 0.0f;
  const void* z = a.residual.defined() ? a.residual.raw() : a.out.raw();
  return cudnnConvolutionBiasActivationForward(context().cudnn, &alpha1, plan.x, a.x.raw(), plan.w,
                                               a.weight.raw(), plan.conv, plan.algo, ws,
                                               plan.workspace, &alpha2, plan.y, z, plan.bias,
                                               a.bias.raw(), plan.identity, plan.y, a.out.raw());
}

std::mutex g_conv_mu;
std::map<ConvKey, ConvPlan> g_conv_plans;

// A workspace bigger than this is not worth its memory (Options::conv_workspace_mib).
size_t conv_workspace_limit() {
  return size_t(options().conv_workspace_mib) << 20;
}

// Makes the descriptors of `k`; false when cuDNN's output size differs from
// the one asked for.
bool describe(ConvPlan& plan, const ConvKey& k, const Conv2dArgs& a) {
  const cudnnDataType_t type = cudnn_type(k.dtype);
  CUDNN_CHECK(cudnnCreateTensorDescriptor(&plan.x));
  CUDNN_CHECK(cudnnCreateTensorDescriptor(&plan.y));
  CUDNN_CHECK(cudnnCreateFilterDescriptor(&plan.w));
  CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&plan.conv));
  CUDNN_CHECK(cudnnSetTensor4dDescriptor(plan.x, CUDNN_TENSOR_NHWC, type, int(k.n), int(k.c),
                                         int(k.h), int(k.w)));
  CUDNN_CHECK(cudnnSetFilter4dDescriptor(plan.w, type, CUDNN_TENSOR_NHWC, int(k.o), int(k.c),
                                         int(k.kh), int(k.kw)));
  CUDNN_CHECK(cudnnSetConvolution2dDescriptor(plan.conv, int(k.pad_h), int(k.pad_w), int(k.stride),
                                              int(k.stride), 1, 1, CUDNN_CROSS_CORRELATION,
                                              CUDNN_DATA_FLOAT));
  // f32 stays f32 (no TF32), as on the CPU.
  CUDNN_CHECK(cudnnSetConvolutionMathType(
      plan.conv, k.dtype == DType::F32 ? CUDNN_FMA_MATH : CUDNN_TENSOR_OP_MATH));
  int n = 0, c = 0, ho = 0, wo = 0;
  CUDNN_CHECK(cudnnGetConvolution2dForwardOutputDim(plan.conv, plan.x, plan.w, &n, &c, &ho, &wo));
  if (ho != a.out.dim(1) || wo != a.out.dim(2)) return false;
  CUDNN_CHECK(cudnnSetTensor4dDescriptor(plan.y, CUDNN_TENSOR_NHWC, type, n, c, ho, wo));
  return true;
}

// `plan` with bias and residual inside the convolution, run with `algo`: kept
// only if cuDNN accepts the call (which computes this call's output). On
// failure `plan`'s math type is left as it was.
std::optional<ConvPlan> try_fused(const ConvPlan& plan, const ConvKey& k, const Conv2dArgs& a,
                                  cudnnConvolutionFwdAlgo_t algo, cudnnMathType_t math,
                                  size_t workspace) {
  ConvPlan fused = plan;
  fused.algo = algo;
  fused.workspace = workspace;
  CUDNN_CHECK(cudnnCreateTensorDescriptor(&fused.bias));
  CUDNN_CHECK(cudnnSetTensor4dDescriptor(fused.bias, CUDNN_TENSOR_NHWC, cudnn_type(k.dtype), 1,
                                         int(k.o), 1, 1));
  CUDNN_CHECK(cudnnCreateActivationDescriptor(&fused.identity));
  CUDNN_CHECK(cudnnSetActivationDescriptor(fused.identity, CUDNN_ACTIVATION_IDENTITY,
                                           CUDNN_NOT_PROPAGATE_NAN, 0.0));
  // The descriptors are shared with `plan`: its math type is restored below.
  cudnnMathType_t previous{};
  CUDNN_CHECK(cudnnGetConvolutionMathType(plan.conv, &previous));
  CUDNN_CHECK(cudnnSetConvolutionMathType(fused.conv, math));
  const auto ws = workspace ? scratch(workspace) : nullptr;
  if (conv_bias_residual(fused, a, ws ? ws->data() : nullptr) == CUDNN_STATUS_SUCCESS) {
    fused.valid = fused.fused = true;
    return fused;
  }
  (void)cudaGetLastError();
  CUDNN_CHECK(cudnnDestroyTensorDescriptor(fused.bias));
  CUDNN_CHECK(cudnnDestroyActivationDescriptor(fused.identity));
  CUDNN_CHECK(cudnnSetConvolutionMathType(plan.conv, previous));
  return std::nullopt;
}

// A stored choice applied to `plan`'s descriptors; nullopt when it no longer
// holds (its fused call is refused, or its workspace is over today's limit), so
// that the shape is timed again.
std::optional<ConvPlan> plan_from_store(ConvPlan plan, const ConvKey& k, const Conv2dArgs& a,
                                        const plans::ConvChoice& stored) {
  if (!stored.valid) return plan;
  if (stored.algo == plans::kConvNarrowAlgo || stored.algo == plans::kConvIm2colAlgo) {
    if (stored.algo == plans::kConvNarrowAlgo) {
      const int form = stored.math_type;
      if (!narrow_applies(a) || form < 0 || form >= kNarrowConvForms ||
          (form > 0 && !few_out_mma_applies(a)))
        return std::nullopt;
      plan.narrow_form = form;
    }
    plan.path = stored.algo == plans::kConvNarrowAlgo ? ConvPath::Narrow : ConvPath::Im2col;
    plan.valid = true;
    return plan;
  }
  if (stored.workspace > conv_workspace_limit()) return std::nullopt;
  const auto algo = cudnnConvolutionFwdAlgo_t(stored.algo);
  const auto math = cudnnMathType_t(stored.math_type);
  // As when it was timed: the fused variant holds only once a call with a bias
  // has been accepted.
  if (stored.fused && a.bias.defined()) return try_fused(plan, k, a, algo, math, stored.workspace);
  CUDNN_CHECK(cudnnSetConvolutionMathType(plan.conv, math));
  // cuDNN still takes this algorithm for these descriptors, in that workspace.
  size_t need = 0;
  if (cudnnGetConvolutionForwardWorkspaceSize(context().cudnn, plan.x, plan.w, plan.conv, plan.y,
                                              algo, &need) != CUDNN_STATUS_SUCCESS ||
      need > stored.workspace)
    return std::nullopt;
  plan.algo = algo;
  plan.workspace = stored.workspace;
  plan.valid = true;
  return plan;
}

// Runs `plan` on `a`: y = conv(x) + bias (+ residual).
void run_plan(const ConvPlan& plan, const Conv2dArgs& a) {
  if (plan.path == ConvPath::Narrow) return conv_narrow(a, plan.narrow_form);
  if (plan.path == ConvPath::Im2col) return conv_im2col(a);
  Context& ctx = context();
  const auto ws = plan.workspace ? scratch(plan.workspace) : nullptr;
  if (plan.fused && a.bias.defined()) {
    CUDNN_CHECK(conv_bias_residual(plan, a, ws ? ws->data() : nullptr));
    return;
  }
  const float alpha = 1.0f, beta = 0.0f;
  CUDNN_CHECK(cudnnConvolutionForward(ctx.cudnn, &alpha, plan.x, a.x.raw(), plan.w, a.weight.raw(),
                                      plan.conv, plan.algo, ws ? ws->data() : nullptr,
                                      plan.workspace, &beta, plan.y, a.out.raw()));
  const int64_t rows = a.out.numel() / a.out.dim(3);
  bias_act_residual(a.out.raw(), a.bias.defined() ? a.bias.raw() : nullptr,
                    a.residual.defined() ? a.residual.raw() : nullptr, rows, a.out.dim(3),
                    Activation::None, a.x.dtype());
}

// Milliseconds a call of `plan` takes: three runs after one untimed (which, for
// im2col, also times its GEMM's plan), warm or as in a step as `timer` does.
float time_plan(const ConvPlan& plan, const Conv2dArgs& a, PlanTimer& timer) {
  run_plan(plan, a);
  return timer.time([&] { run_plan(plan, a); }, a.x.raw(), a.x.nbytes(), 3);
}

// Convolutions with at most this many output pixels also time im2col and a cuBLASLt
// GEMM: with so few rows cuDNN's kernels leave most of the GPU idle (SD1.5's 8×8
// level: 26 µs a call at 143 TFLOP/s), where cuBLASLt's heuristic splits K. Measured
// on an H200 (bench/results/2026-12-03-h200-v12): at 128 pixels im2col won inside the
// model as it did alone (eleven 2x8x8x1280 calls 0.30 → 0.24 ms); at 512 and 2048 it
// won alone but lost inside the model (SDXL's ten 2x32x32x1280 0.95 → 1.10 ms), its
// column buffer no longer in L2 there.
constexpr int64_t kIm2colTimedPixels = 256;

// cuDNN's plan against our paths where they apply, on the real operands: the fastest
// is kept (in the plan cache too, through `keep`).
template <class Keep>
ConvPlan fastest_path(ConvPlan plan, const ConvKey& k, const Conv2dArgs& a, const Keep& keep,
                      plans::ConvChoice cudnn_choice) {
  if (k.cudnn_only) {
    keep(cudnn_choice);
    return plan;
  }
  PlanTimer timer(k.step_timed);
  float best_ms = time_plan(plan, a, timer);
  ConvPlan best = plan;
  auto time_other = [&](ConvPath path, int form) {
    ConvPlan other = plan;
    other.path = path;
    other.narrow_form = form;
    const float ms = time_plan(other, a, timer);
    if (ms < best_ms) {
      best_ms = ms;
      best = other;
    }
  };
  if (narrow_applies(a))
    for (int form : narrow_forms(a)) time_other(ConvPath::Narrow, form);
  if (a.out.numel() / k.o <= kIm2colTimedPixels && k.kh * k.kw > 1) time_other(ConvPath::Im2col, 0);
  if (best.path == ConvPath::Cudnn) {
    keep(cudnn_choice);
    return plan;
  }
  if (best.path == ConvPath::Narrow)
    keep({true, plans::kConvNarrowAlgo, best.narrow_form, 0, false});
  else
    keep({true, plans::kConvIm2colAlgo, 0, 0, false});
  return best;
}

ConvPlan make_conv_plan(const ConvKey& k, const Conv2dArgs& a) {
  Context& ctx = context();
  ConvPlan plan;
  if (!describe(plan, k, a)) return plan;
  const std::string name = k.name();
  if (const auto stored = stored_conv_plan(name)) {
    if (auto from_store = plan_from_store(plan, k, a, *stored)) {
      count_reused_plan();
      return *from_store;
    }
  }

  // Time the algorithms once on the real operands (the output is about to be
  // overwritten anyway) and keep the fastest that needs a workspace we accept.
  size_t free_bytes = 0, total = 0;
  CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total));
  const size_t limit = std::min(conv_workspace_limit(), free_bytes / 4);
  // A search that free memory or a cap below the default constrained is used now but
  // not kept on disk: a later process with the memory to spare times the shape again.
  auto keep = [&](const plans::ConvChoice& choice) {
    if (limit == conv_workspace_limit() &&
        options().conv_workspace_mib == Options{}.conv_workspace_mib && k.narrow_form < 0)
      record_conv_plan(name, choice);
  };
  // Straight from the driver and back, so that the search's workspace does not
  // linger in the cache.
  void* ws = nullptr;
  CUDA_CHECK(cudaMalloc(&ws, limit));
  constexpr int kAlgos = 8;
  cudnnConvolutionFwdAlgoPerf_t perf[kAlgos];
  int returned = 0;
  const cudnnStatus_t found = cudnnFindConvolutionForwardAlgorithmEx(
      ctx.cudnn, plan.x, a.x.raw(), plan.w, a.weight.raw(), plan.conv, plan.y, a.out.raw(), kAlgos,
      &returned, perf, ws, limit);
  CUDA_CHECK(cudaStreamSynchronize(ctx.stream));
  CUDA_CHECK(cudaFree(ws));
  CUDNN_CHECK(found);
  // The fastest deterministic algorithm (results come sorted by time), so that a
  // replayed graph reproduces the eager pass; any algorithm if none is.
  int chosen = -1;
  for (bool deterministic : {true, false}) {
    for (int i = 0; i < returned && chosen < 0; ++i)
      if (perf[i].status == CUDNN_STATUS_SUCCESS && perf[i].memory <= limit &&
          (!deterministic || perf[i].determinism == CUDNN_DETERMINISTIC))
        chosen = i;
    if (chosen >= 0) break;
  }
  if (chosen < 0) {
    keep({});
    return plan;
  }
  // Within 3% of that time, the one with the smallest workspace: a few percent of one
  // convolution is not worth hundreds of MiB at the peak (the workspace comes from the
  // caching allocator and is live while the convolution runs).
  const float fastest = perf[chosen].time;
  for (int i = 0; i < returned; ++i)
    if (perf[i].status == CUDNN_STATUS_SUCCESS && perf[i].memory < perf[chosen].memory &&
        perf[i].time <= 1.03f * fastest && perf[i].determinism == perf[chosen].determinism)
      chosen = i;
  plan.algo = perf[chosen].algo;
  plan.workspace = perf[chosen].memory;
  CUDNN_CHECK(cudnnSetConvolutionMathType(plan.conv, perf[chosen].mathType));
  plan.valid = true;

  // Bias and residual inside the convolution save a pass over the output, worth
  // a slightly slower algorithm; kept only if cuDNN accepts the call.
  for (int i = 0; i < returned; ++i) {
    if (perf[i].algo != CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM ||
        perf[i].status != CUDNN_STATUS_SUCCESS || perf[i].memory > limit ||
        perf[i].time > 1.15f * perf[chosen].time || !a.bias.defined())
      continue;
    if (auto fused = try_fused(plan, k, a, perf[i].algo, perf[i].mathType, perf[i].memory))
      return fastest_path(*fused, k, a, keep,
                          {true, int(perf[i].algo), int(perf[i].mathType), perf[i].memory, true});
  }
  return fastest_path(
      plan, k, a, keep,
      {true, int(perf[chosen].algo), int(perf[chosen].mathType), perf[chosen].memory, false});
}

// The shape's plan, made (timed) on its first call; null where cuDNN cannot take this
// convolution or no plan can be made now (inside a capture), or where its plan is not
// valid.
const ConvPlan* conv_plan(const Conv2dArgs& a) {
  Context& ctx = context();
  if (!ctx.cudnn || !options().use_cudnn) return nullptr;
  if (a.pad_top != a.pad_bottom || a.pad_left != a.pad_right) return nullptr;
  const ConvKey key{a.x.dim(0),
                    a.x.dim(1),
                    a.x.dim(2),
                    a.x.dim(3),
                    a.weight.dim(0),
                    a.weight.dim(1),
                    a.weight.dim(2),
                    a.stride,
                    a.pad_top,
                    a.pad_left,
                    a.x.dtype(),
                    options().conv_kernel == Options::ConvKernel::Cudnn,
                    options().narrow_conv_form,
                    options().plan_timing == Options::PlanTiming::Step};
  const ConvPlan* plan = nullptr;
  {
    std::lock_guard<std::mutex> lock(g_conv_mu);
    auto it = g_conv_plans.find(key);
    if (it == g_conv_plans.end()) {
      if (ctx.capturing) return nullptr;  // cannot time inside a capture
      it = g_conv_plans.emplace(key, make_conv_plan(key, a)).first;
    }
    plan = &it->second;
  }
  return plan->valid ? plan : nullptr;
}

// False when cuDNN cannot take this convolution (the caller uses im2col).
bool conv_cudnn(const Conv2dArgs& a) {
  const ConvPlan* plan = conv_plan(a);
  if (plan == nullptr) return false;
  run_plan(*plan, a);
  // im2col's GEMM counts its own FLOPs.
  if (plan->path != ConvPath::Im2col) count_conv_flops(a);
  return true;
}
#endif

}  // namespace

void forget_conv_plans() {
#if defined(KILN_WITH_CUDNN)
  std::lock_guard<std::mutex> lock(g_conv_mu);
  for (auto& [key, plan] : g_conv_plans) {
    CUDNN_CHECK(cudnnDestroyTensorDescriptor(plan.x));
    CUDNN_CHECK(cudnnDestroyTensorDescriptor(plan.y));
    CUDNN_CHECK(cudnnDestroyFilterDescriptor(plan.w));
    CUDNN_CHECK(cudnnDestroyConvolutionDescriptor(plan.conv));
    if (plan.bias) CUDNN_CHECK(cudnnDestroyTensorDescriptor(plan.bias));
    if (plan.identity) CUDNN_CHECK(cudnnDestroyActivationDescriptor(plan.identity));
  }
  g_conv_plans.clear();
#endif
}

namespace {
std::atomic<size_t> norm_conv_count{0};
}  // namespace

int narrow_route(const Conv2dArgs& a) {
  if (!narrow_applies(a)) return -1;
  // Without a timed plan: the forced narrow form, or the one for this image's size.
  const int untimed =
      options().narrow_conv_form >= 0 ? options().narrow_conv_form : default_narrow_form(a);
  if (options().conv_kernel == Options::ConvKernel::Narrow) return untimed;
#if defined(KILN_WITH_CUDNN)
  if (const ConvPlan* plan = conv_plan(a))
    return plan->path == ConvPath::Narrow ? plan->narrow_form : -1;
#endif
  // Without cuDNN (or while a graph is captured before the shape's plan was made) a
  // narrow kernel.
  return options().conv_kernel != Options::ConvKernel::Cudnn && options().use_cudnn ? untimed : -1;
}

int folded_norm_form(const GroupNormConv2dArgs& a) {
  if (a.conv.out.numel() == 0 || !narrow_folds_norm(a.conv) ||
      !group_norm_scale_shift_applies(a.norm))
    return -1;
  return narrow_route(a.conv);
}

void group_norm_conv2d(const GroupNormConv2dArgs& a, int form) {
  // Held until the convolution is queued: the stream orders whatever reuses it after.
  const NormScaleShift st = group_norm_scale_shift(a.norm);
  count_conv_flops(a.conv);
  conv_narrow(a.conv, form, {st.scale, st.shift, a.norm.act});
  norm_conv_count.fetch_add(1, std::memory_order_relaxed);
}

size_t norm_conv_calls() {
  return norm_conv_count.load(std::memory_order_relaxed);
}

void conv2d(const Conv2dArgs& a) {
  if (a.out.numel() == 0) return;
  const int64_t kh = a.weight.dim(1), kw = a.weight.dim(2), c = a.x.dim(3), o = a.weight.dim(0);
  const bool pointwise = kh == 1 && kw == 1 && a.stride == 1 && a.pad_top == 0 && a.pad_left == 0 &&
                         a.pad_bottom == 0 && a.pad_right == 0;
  if (pointwise) {
    GemmParams g;
    g.m = a.x.numel() / c;
    g.n = o;
    g.k = c;
    g.a = a.x.raw();
    g.lda = c;
    g.b = a.weight.raw();
    g.ldb = c;
    g.c = a.out.raw();
    g.ldc = o;
    g.bias = a.bias.defined() ? a.bias.raw() : nullptr;
    g.residual = a.residual.defined() ? a.residual.raw() : nullptr;
    g.dtype = a.x.dtype();
    gemm_nt(g);
    return;
  }
  if (const int form = narrow_route(a); form >= 0) {
    count_conv_flops(a);
    conv_narrow(a, form);
    return;
  }
#if defined(KILN_WITH_CUDNN)
  if (conv_cudnn(a)) return;  // FLOPs counted there
#endif
  conv_im2col(a);
}

}  // namespace kiln::cuda
