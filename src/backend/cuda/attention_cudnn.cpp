// cuDNN's fused attention (the SDPA graph of cuDNN's frontend) beside our flash
// kernel. On a shape's first call both run on the call's own operands, a few
// times each, and the faster is kept: in memory, and in the plan cache on disk
// like the GEMM and convolution choices, so a later process builds only the
// cuDNN plan it will use (or none). cuDNN takes f16/bf16 without a causal mask,
// head dims that are multiples of 8 up to 256, 16-byte aligned operands and row
// strides; everything else, and builds without cuDNN's frontend headers
// (scripts/fetch-cudnn-frontend.sh), stays with our kernel.
//
// q, k and v are read in place from the models' packed projections: the graph's
// tensors are [batch, heads, tokens, D] with a token stride of the packed row.
#include <atomic>
#include <functional>

#include "backend/cuda/context.h"
#include "backend/cuda/ops.h"

#if defined(KILN_WITH_CUDNN_SDPA)
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <optional>
#include <unordered_map>
#include <vector>

#include <cudnn_frontend.h>

#include "backend/cuda/plan_cache.h"
#endif

namespace kiln::cuda {
namespace {
std::atomic<size_t> g_cudnn_calls{0};
}  // namespace

size_t cudnn_attention_calls() {
  return g_cudnn_calls.load();
}

#if defined(KILN_WITH_CUDNN_SDPA)
namespace {

namespace fe = cudnn_frontend;

struct Key {
  int64_t batch, heads, sq, sk, d;
  int64_t q_stride, kv_stride, o_stride;  // elements from one token to the next
  float scale;
  DType dtype;
  // Every field, for the plan cache.
  std::string name() const {
    char scale_text[32];
    std::snprintf(scale_text, sizeof scale_text, "%.9g", double(scale));
    // "ours" is what it was timed against: the flash kernel by default.
    const Options& o = options();
    const bool k128 = o.flash_wgmma_keys == 128;
    const char* producer = !k128                   ? " ours=wgmma-producer"
                           : !o.flash_wgmma_anchor ? " ours=wgmma-producer-k128"
                           : o.flash_wgmma_loader  ? " ours=wgmma-producer-k128-anchor-loader"
                                                   : " ours=wgmma-producer-k128-anchor";
    const char* shortkv = o.flash_short_kv_unrolled ? " ours=shortkv-unrolled" : " ours=shortkv";
    const char* ours = !o.use_flash_attention                    ? " ours=banded"
                       : flash_short_kv_takes(sk)                ? shortkv
                       : o.flash_wgmma && o.flash_wgmma_producer ? producer
                       : o.flash_wgmma                           ? " ours=wgmma"
                       : o.flash_two_tiles_per_warp              ? " ours=flash2"
                                                                 : "";
    return str("b", batch, " h", heads, " sq", sq, " sk", sk, " d", d, " q", q_stride, " kv",
               kv_stride, " o", o_stride, " s", scale_text, " ", dtype_name(dtype), ours);
  }
};

// Tensor ids in the graph and the variant pack.
constexpr int64_t kQ = 1, kK = 2, kV = 3, kO = 4;

struct Sdpa {
  fe::graph::Graph graph;
  std::vector<int64_t> plans;  // indices among the heuristics' plans that built
  int64_t chosen = -1;         // one of `plans`; -1: our kernel runs the shape
  int64_t workspace = 0;       // of `chosen`
};

std::mutex g_mu;
// By key: the choice made by timing (null: our kernel), and the forced cuDNN plans.
std::map<std::string, std::shared_ptr<const Sdpa>> g_chosen, g_forced;
constexpr int kCandidates = 4;  // cuDNN plans timed at most, in its heuristics' order
// Shapes kept at most in each map (those timed in favour of our kernel included).
// A plan is never dropped while the process serves: a captured CUDA graph may run
// its kernels (only forget_plans, for tests, drops them all). So a process
// that meets more shapes than this (a server asked for many image sizes) runs the
// further ones on our kernel, and the memory the graphs and plans hold stays bounded.
constexpr size_t kMaxShapes = 256;

std::string message(fe::error_t e) {
  return e.get_message();
}

// The graph with its plans not yet built; null when cuDNN cannot take the shape.
std::unique_ptr<Sdpa> describe(const Key& k) {
  auto s = std::make_unique<Sdpa>();
  auto& g = s->graph;
  const auto io = k.dtype == DType::F16 ? fe::DataType_t::HALF : fe::DataType_t::BFLOAT16;
  g.set_io_data_type(io)
      .set_intermediate_data_type(fe::DataType_t::FLOAT)
      .set_compute_data_type(fe::DataType_t::FLOAT);
  auto tensor = [&](const char* name, int64_t uid, int64_t tokens, int64_t stride) {
    return g.tensor(fe::graph::Tensor_attributes()
                        .set_name(name)
                        .set_uid(uid)
                        .set_dim({k.batch, k.heads, tokens, k.d})
                        .set_stride({tokens * stride, k.d, stride, 1}));
  };
  auto q = tensor("q", kQ, k.sq, k.q_stride);
  auto kk = tensor("k", kK, k.sk, k.kv_stride);
  auto v = tensor("v", kV, k.sk, k.kv_stride);
  const auto options = fe::graph::SDPA_attributes()
                           .set_name("attention")
                           .set_generate_stats(false)
                           .set_attn_scale(k.scale);
  try {
    auto [o, stats] = g.sdpa(q, kk, v, options);
    o->set_output(true)
        .set_uid(kO)
        .set_dim({k.batch, k.heads, k.sq, k.d})
        .set_stride({k.sq * k.o_stride, k.d, k.o_stride, 1});
  } catch (const std::exception&) {
    return nullptr;  // no implementation of this frontend takes the shape
  }
  if (!g.validate().is_good() || !g.build_operation_graph(context().cudnn).is_good() ||
      !g.create_execution_plans({fe::HeurMode_t::A}).is_good() || !g.check_support().is_good())
    return nullptr;
  return s;
}

// A candidate's device time per call: the median of three runs of `run` after one
// that warms it up. Waits for the stream.
float time_ms(const std::function<void()>& run) {
  EventTimer timer;
  run();
  std::vector<float> ms;
  for (int i = 0; i < 3; ++i) {
    timer.start();
    run();
    timer.stop();
    ms.push_back(timer.elapsed_ms());
  }
  std::sort(ms.begin(), ms.end());
  return ms[1];
}

struct Pointers {
  void* q;
  void* k;
  void* v;
  void* o;
};

void execute(const Sdpa& s, int64_t plan, int64_t workspace, const Pointers& p) {
  std::unordered_map<int64_t, void*> pack{{kQ, p.q}, {kK, p.k}, {kV, p.v}, {kO, p.o}};
  const auto ws = workspace > 0 ? scratch(size_t(workspace)) : nullptr;
  const fe::error_t e =
      s.graph.execute_plan_at_index(context().cudnn, pack, ws ? ws->data() : nullptr, plan);
  if (!e.is_good()) KILN_FAIL("cuDNN attention: ", message(e));
}

// Builds `s`'s plan `index`; its workspace, or nullopt when it does not build.
std::optional<int64_t> build_plan(Sdpa& s, int64_t index) {
  if (!s.graph.build_plan_at_index(index).is_good()) return std::nullopt;
  int64_t workspace = 0;
  if (!s.graph.get_workspace_size_plan_at_index(index, workspace).is_good()) return std::nullopt;
  return workspace;
}

// The shape's entry: a stored choice where it still builds, else a fresh timing
// of our kernel (`ours`) against cuDNN's first plans. Null: our kernel.
std::unique_ptr<Sdpa> choose(const Key& k, const Pointers& p, const std::function<void()>& ours) {
  const std::string name = k.name();
  const auto stored = stored_attention_plan(name);
  if (stored && !stored->cudnn) {
    count_reused_plan();
    return nullptr;
  }
  std::unique_ptr<Sdpa> s = describe(k);
  if (stored && s && stored->plan < s->graph.get_execution_plan_count()) {
    if (const auto workspace = build_plan(*s, stored->plan)) {
      s->chosen = stored->plan;
      s->workspace = *workspace;
      count_reused_plan();
      return s;
    }
  }
  if (!s) {
    record_attention_plan(name, {});
    return nullptr;
  }
  const int64_t count = std::min<int64_t>(s->graph.get_execution_plan_count(), kCandidates);
  float best = time_ms(ours);
  plans::AttentionChoice choice;
  for (int64_t i = 0; i < count; ++i) {
    const auto workspace = build_plan(*s, i);
    if (!workspace) continue;
    float t = 0.0f;
    try {
      t = time_ms([&] { execute(*s, i, *workspace, p); });
    } catch (const Error&) {
      continue;  // a plan that builds but does not run is not a candidate
    }
    if (t < best) {
      best = t;
      choice = {true, int(i)};
      s->chosen = i;
      s->workspace = *workspace;
    }
  }
  record_attention_plan(name, choice);
  if (!choice.cudnn) return nullptr;
  return s;
}

// options().attention_kernel == Cudnn: the first plan that builds, untimed and not
// kept on disk. Null when none does.
std::unique_ptr<Sdpa> first_plan(const Key& k) {
  std::unique_ptr<Sdpa> s = describe(k);
  if (!s) return nullptr;
  for (int64_t i = 0; i < s->graph.get_execution_plan_count(); ++i) {
    if (const auto workspace = build_plan(*s, i)) {
      s->chosen = i;
      s->workspace = *workspace;
      return s;
    }
  }
  return nullptr;
}

bool aligned(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

}  // namespace

bool cudnn_attention_enabled() {
  return cudnn_enabled();
}

bool attention_cudnn(const AttentionArgs& a, const std::function<void()>& ours) {
  const auto kernel = options().attention_kernel;
  if (kernel == Options::AttentionKernel::Kiln || !cudnn_enabled() || a.causal) return false;
  const DType dtype = a.q.dtype();
  if (dtype != DType::F16 && dtype != DType::BF16) return false;
  const int64_t d = a.features() / a.heads;
  const size_t elem = dtype_size(dtype);
  Pointers p{static_cast<char*>(a.q.raw()) + size_t(a.q_col) * elem,
             static_cast<char*>(a.k.raw()) + size_t(a.k_col) * elem,
             static_cast<char*>(a.v.raw()) + size_t(a.v_col) * elem, a.out.raw()};
  const Key k{a.q.dim(0), a.heads,   a.q.dim(1), a.k.dim(1), d, a.q.dim(2),
              a.k.dim(2), a.out.dim(2), a.scale, dtype};
  if (d % 8 != 0 || k.q_stride % 8 != 0 || k.kv_stride % 8 != 0 ||
      k.o_stride % 8 != 0 || !aligned(p.q) || !aligned(p.k) || !aligned(p.v) || !aligned(p.o))
    return false;

  const bool forced = kernel == Options::AttentionKernel::Cudnn;
  const std::string name = k.name();
  std::shared_ptr<const Sdpa> s;  // kept alive here even if forget_plans() runs meanwhile
  {
    std::lock_guard<std::mutex> lock(g_mu);
    auto& known = forced ? g_forced : g_chosen;
    auto it = known.find(name);
    if (it == known.end()) {
      if (context().capturing) return false;  // cannot build or time inside a capture
      if (known.size() >= kMaxShapes) {
        static std::once_flag warned;
        std::call_once(warned, [] {
          std::fprintf(stderr,
                       "kiln: note: cuDNN attention plans kept for %zu shapes; further shapes "
                       "run on kiln's attention kernel\n",
                       kMaxShapes);
        });
        return false;
      }
      it = known.emplace(name, forced ? first_plan(k) : choose(k, p, ours)).first;
    }
    s = it->second;
  }
  if (!s) return false;
  execute(*s, s->chosen, s->workspace, p);
  ++g_cudnn_calls;
  return true;
}

void forget_attention_plans() {
  std::lock_guard<std::mutex> lock(g_mu);
  g_chosen.clear();
  g_forced.clear();
}

#else  // without cuDNN's frontend: our kernel always

bool cudnn_attention_enabled() {
  return false;
}

bool attention_cudnn(const AttentionArgs&, const std::function<void()>&) {
  return false;
}

void forget_attention_plans() {}

#endif

}  // namespace kiln::cuda
