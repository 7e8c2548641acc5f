// The CUDA backend: the fast path behind the op set. Activations in f16 or bf16
// with f32 accumulation and f32 softmax; the f32 ops the samplers run on latents;
// one stream per process, a caching allocator, and CUDA-graph capture of a whole
// forward pass over a private memory pool (the per-shape arena).
//
// This header is plain C++ (no CUDA headers), so that tools and tests can use
// the backend's controls without being compiled by nvcc.
#pragma once

#include <cstddef>
#include <functional>
#include <string>
#include <vector>

#include "backend/backend.h"

namespace kiln::cuda {

// True when a CUDA device is present and usable. The allocator for Device::CUDA is
// registered the first time this answers true (backend.cpp asks at start-up).
bool available();
Backend& backend();

struct DeviceInfo {
  std::string name;  // "NVIDIA H100 80GB HBM3"
  int compute_major = 0, compute_minor = 0;
  int multiprocessors = 0;
  size_t total_memory = 0;
  std::string cublaslt, cudnn;            // "13.0.0", "9.19.0"; cudnn empty when not loaded
  std::string cuda_runtime, cuda_driver;  // "13.0"
  std::string libraries;                  // all four in words: "cuBLASLt 13.0.0, cuDNN 9.19.0, ..."
};
DeviceInfo device_info();

// Waits for all work queued on the backend's stream.
void synchronize();

// Implementation choices, for tests that compare paths and for diagnosis.
struct Options {
  bool use_cudnn = true;            // 3×3 convolutions through cuDNN where it is built in
  bool use_flash_attention = true;  // our fused kernel for head dims up to 160
  // Head dims up to 64: 32 query rows a warp (four warps) instead of 16 (eight).
  // Measured on an H200 (SDXL 1024², 2026-11-21): 16 rows 9.27 ms of attention a
  // step, 32 rows 9.6 ms, so 16 is the default.
  bool flash_two_tiles_per_warp = false;
  // Head dims up to 64 with at most two key tiles (cross-attention on 77 text tokens):
  // blocks of four warps instead of eight, twice the blocks. Same-run A/B on an H200
  // (SDXL, --attention kiln; bench/results/2026-12-03-h200-v13): 1024x77 x 20 heads
  // 1.034 -> 0.927 ms a step (60 calls), 4096x77 0.254 -> 0.246.
  bool flash_short_kv_blocks = true;
  // Hopper (compute 9.0, in a build for sm_90a): the flash kernel on warpgroup MMAs
  // (wgmma) for padded head dims 48, 64 and 80 without a causal mask, in place of the
  // mma.sync kernel above. Correct, but off by default: on an H200 it is slower than
  // cuDNN's SDPA on every UNet shape (SD1.5 4096² × 8 heads, d40: 206 against 142 µs a
  // call; SDXL 1024² × 20 heads, d64: 59 against 36 µs) and no faster than the mma.sync
  // kernel on cross-attention (bench/results/2026-12-03-h200-v14).
  bool flash_wgmma = false;
  // Query rows a block of the wgmma kernel: 128 or 192; 0 picks by head dim.
  int flash_wgmma_rows = 0;
  // With flash_wgmma: the wgmma kernel with a producer warp, mbarrier stages and
  // ping-pong between its consumer warpgroups. Correct, off: 7–10% faster than the
  // plain wgmma kernel at head dims 64 and 80, 22% slower at 40, and cuDNN's SDPA
  // faster than both (bench/results/2026-12-03-h200-v15).
  bool flash_wgmma_producer = false;
  // With flash_wgmma_producer: keys a tile, 64 or 128. 128 takes a producer warpgroup
  // and setmaxnreg (attention_wgmma.cu): SD1.5's d40 calls 1.34 -> 0.93 ms a step on
  // an H100 (v39), still behind cuDNN's SDPA (bench/cuda-notes.md item 20).
  int flash_wgmma_keys = 64;
  // With 128 keys: the store that keeps ptxas from waiting for P·V before the softmax
  // (the producer kernel in attention_wgmma.cu): d40 0.93 -> 0.88 ms, d80 level (v39).
  bool flash_wgmma_anchor = false;
  // With the anchor: the producer's copies addressed from offsets worked out once (a
  // full tile's 16-byte copies about 25 instructions each before: 250-300 a tile for
  // every producer thread at d40), the fence for the tensor cores' reads made by the
  // producer before it publishes a stage, not by every consumer warp after its wait (a
  // MEMBAR.ALL.CTA ahead of each tile's MMAs), Q loaded while the first K and V tiles
  // are, and V's ones column at every head dim (at d48, d64 and d80 one chunk more of
  // V instead of 64 FADDs a tile for the row sums). Not yet run on a GPU
  // (bench/cuda-notes.md item 21).
  bool flash_wgmma_loader = false;
  // Attention over at most 128 keys, no causal mask (the text's 77 tokens), in a
  // kernel of its own: K and V loaded once, padded to 80 or 128 keys instead of two
  // 64-key tiles (77 keys: 37% fewer MMAs), 32 KB of shared memory at head dim 64
  // instead of 46. Same-run A/B on an H200 (--attention kiln, per op a step;
  // bench/results/2026-12-03-h200-v16): SDXL 1024x77 x 20 heads 0.980 -> 0.715 ms
  // (60 calls), 4096x77 0.257 -> 0.176; SD1.5 4096x77 0.099 -> 0.077. Under Auto it
  // is what cuDNN's SDPA is timed against (0.93 ms for SDXL's 1024x77).
  bool flash_short_kv_kernel = true;
  // The short-KV kernel's Q, K and V copies as straight-line code (attention.cuh's
  // load_tile UNROLL): about 25 instructions a copy in the loop (SASS), 14 copies a
  // thread at d64, where the kernel is bound by each warp's chain of instructions
  // (bench/cuda-notes.md item 16). Off until an A/B has run on a GPU.
  bool flash_short_kv_unrolled = false;
  // Bytes of shared memory a block may take; 0: the device's limit (227 KB on H100 and
  // H200, 163 KB on A100, 99 KB on sm_86/sm_89 GPUs such as the A10, L4 and RTX 30/40,
  // 64 KB on sm_75). Kernels that would need more are not launched: attention takes the
  // banded path where the flash kernels do not fit (head dim 160 needs 105 KB), the
  // few-output convolutions smaller blocks (their 16-row forms need 107 KB). Tests set
  // it to run those paths on a larger GPU.
  size_t shared_memory_limit = 0;
  // The fused attention kernel where both can run a call: Auto times ours against
  // cuDNN's SDPA on each shape's first call and keeps the faster (plan cache);
  // Kiln and Cudnn force one, for tests and diagnosis. cuDNN's takes f16/bf16 with
  // no causal mask and head dims that are multiples of 8 (it decides the largest).
  enum class AttentionKernel { Auto, Kiln, Cudnn };
  AttentionKernel attention_kernel = AttentionKernel::Auto;
  // GroupNorm: Auto takes the cluster kernel (sm_90) where a thread holds 2 to 4
  // accesses of the tensor (about 1 to 4 MB), else one block per group where the group
  // fits in one block, else two launches. Grid first tries the one-launch kernel spread over the
  // whole GPU (a cooperative launch; tensors up to about 16 MB in f16), measured slower than Auto
  // on an H200 (bench/cuda-notes.md, v11): kept for tests and for the work on its fixed cost.
  // TwoLaunch never takes the one-block kernel (for A/B runs). Cluster first tries the one-launch
  // kernel over thread block clusters (sm_90) wherever a thread holds at most 4 accesses, one
  // included (for A/B runs).
  enum class GroupNormKernel { Auto, Grid, TwoLaunch, Cluster };
  GroupNormKernel group_norm_kernel = GroupNormKernel::Auto;
  // The two-launch GroupNorm's apply with a grid of whole rows' packs, so that each
  // thread loads its channels' scale and shift once a batch row instead of once an
  // access (norm.cu, group_norm_apply). Off: as before, for A/B runs.
  bool group_norm_apply_reuse = true;
  // The two-launch GroupNorm's statistics with their shared-memory sums laid out so that
  // a warp's accesses fall into distinct banks (norm.cu, group_norm_stats): the same
  // sums in the same order. Off: the layout before, for A/B runs.
  bool group_norm_stats_spread = true;
  // The two-launch GroupNorm's apply launched as a programmatic dependent of its
  // statistics (sm_90): its blocks take their places, and load their first x, while
  // the statistics' last block folds the sums. Off: an ordinary launch (A/B runs).
  bool group_norm_pdl = false;
  // Loads in flight a thread in the two-launch GroupNorm's statistics on large tensors
  // (norm.cu, statistics): 8 (86 registers, one 512-thread block a multiprocessor) or
  // 4 (64 registers, two blocks: as many bytes in flight, twice the warps); 0 takes 4
  // from 16M values a batch row on, 8 below (measured). 4 or 8 for A/B runs and tests.
  int group_norm_stats_loads = 0;
  // Convolutions that cuDNN can take: Auto times cuDNN's best algorithm against our
  // narrow kernels (3×3 with 3, 4 or 8 input or output channels) and, on small images,
  // im2col and a GEMM, once per shape, and keeps the fastest (plan cache); Cudnn takes
  // cuDNN's alone (as before the narrow kernels, for A/B runs); Narrow forces a narrow
  // kernel wherever one applies (tests).
  enum class ConvKernel { Auto, Cudnn, Narrow };
  ConvKernel conv_kernel = ConvKernel::Auto;
  // Which narrow kernel: -1 times every form that applies (with a plan; without one,
  // the tensor-core kernel for f16/bf16 outputs, its tile by the image's size); 0 the
  // CUDA-core kernels; 1-4 the tensor-core few-output kernel (f16/bf16): 16, 4 or 2
  // output rows a block of four warps, or 16 of eight. Plans made with a form forced are
  // not kept on disk.
  int narrow_conv_form = -1;
  // The largest workspace a cuDNN convolution algorithm may take, in MiB: the timed
  // choice is the fastest within it (and within 3% of that, the smallest). Plans made
  // under another cap are not kept on disk.
  int conv_workspace_mib = 512;
  // The feed-forward's GEGLU in its projection's epilogue (ops::linear_geglu), one
  // CUTLASS GEMM instead of cuBLASLt's and a pass of its own; where the build has
  // CUTLASS and the GPU is compute 9.0 (linear_geglu_fused_available()).
  bool geglu_fused = true;
  // Its CUTLASS form: Auto times ping-pong 64x256 against cooperative 128x256 (clusters
  // of two) on each shape's first call outside a capture; the others force one.
  enum class GegluForm { Auto, PingPong, Cooperative };
  GegluForm geglu_form = GegluForm::Auto;
  // An upsampler's phase copy and the next resnet's first GroupNorm as one op
  // (ops::interleave_phases_group_norm): the statistics are summed as the copy writes,
  // so the GroupNorm reads the upsampled tensor once instead of twice. Off: the two
  // ops, for A/B runs.
  bool interleave_norm_fused = true;
  // A GroupNorm followed by a few-output convolution (ops::group_norm_conv2d: the
  // decoder's and the UNet's conv_out, the encoder's) as one op where the convolution
  // runs in a narrow kernel: the statistics' launch, then the convolution normalising
  // its input as it stages it, so the normalised tensor is neither written nor read
  // back. Off: the two ops, for A/B runs.
  bool norm_conv_fused = true;
  // How a plan times GEMM candidates and the convolution paths. Warm: back to back on
  // the same operands, so a weight stays in L2 from one run to the next. Step: as
  // inside a step, where every weight is read once and comes from DRAM while the
  // activation input was just written: before each timed run the L2 is overwritten
  // and the activation input read back in (PlanTimer). Warm is the default until
  // a same-run A/B says otherwise (bench/cuda-notes.md, v21: choices that won warm
  // have lost inside the model). Plans made under Step are kept under keys of their own.
  enum class PlanTiming { Warm, Step };
  PlanTiming plan_timing = PlanTiming::Warm;
  // Which GEMM algorithms a plan times: Heuristic, cuBLASLt's 16 best fits for the
  // shape. Wide also times the heuristic's best configurations of every algorithm id
  // and split-K, swizzle and cluster variants of the best fits (50–80 a shape, the six
  // best timed again). Timed warm, the wide search's winners lost inside the model
  // (v12: SD1.5 5.77 -> 6.05 ms); whether they win when timed as in a step is what
  // v22 measures. Plans made by the wide search are kept under keys of their own.
  enum class GemmSearch { Heuristic, Wide };
  GemmSearch gemm_search = GemmSearch::Heuristic;
};
Options& options();
// Whether this build can use cuDNN (and a library was found at run time).
bool cudnn_enabled();
// Whether cuDNN's attention can run: cuDNN enabled and the build had its frontend.
bool cudnn_attention_enabled();
// Attention calls cuDNN ran so far (tests: that a forced path was taken).
size_t cudnn_attention_calls();
// Whether the wgmma flash kernel can run here (an sm_90a build on a compute 9.0 GPU),
// and the attention calls it ran so far (tests: that it ran).
bool flash_wgmma_available();
size_t flash_wgmma_calls();
// Of those, the 128-key producer kernel's launches: plain, or anchored (tests).
size_t flash_wgmma_k128_calls(bool anchored);
// Launches of the anchored kernel with options().flash_wgmma_loader's producer.
size_t flash_wgmma_loader_calls();
size_t flash_short_kv_calls();  // launches of the short-KV kernel (flash_short_kv_kernel)
size_t flash_short_kv_unrolled_calls();  // of those, with flash_short_kv_unrolled
// GroupNorm calls the grid-wide one-launch kernel ran so far (tests: that it ran).
size_t group_norm_grid_calls();
// Launches of the cluster GroupNorm kernel so far (tests check which path ran).
size_t group_norm_cluster_calls();
// Convolutions a narrow 3×3 kernel ran so far, and those of them on the tensor cores
// (tests: that it ran).
size_t narrow_conv_calls();
size_t narrow_conv_mma_calls();
// Convolutions that ran with a GroupNorm folded into their reads (ops::group_norm_conv2d)
// so far (tests: that it ran).
size_t norm_conv_calls();
// Whether the fused GEGLU GEMM can run here (a build with CUTLASS for sm_90a on a
// compute 9.0 GPU), and the calls it ran so far (tests: that it ran).
bool linear_geglu_fused_available();
size_t linear_geglu_fused_calls();
// Calls of the fused phase copy and GroupNorm so far (tests: that it ran).
size_t interleave_group_norm_calls();
// Calls of the fused add and LayerNorm (ops::add_layer_norm) so far (tests: that it ran).
size_t add_layer_norm_calls();

// Plans: the algorithm each GEMM and cuDNN convolution shape runs with, chosen by
// timing on its first use and kept on disk, one file per GPU (backend/plan_file.h),
// so that later processes skip the timing. A file made on another GPU, by another
// kiln or with other libraries is rebuilt, not trusted.
//
// Where they are kept: `dir` as --plan-cache takes it: a folder, "off" (in memory
// only), or "" for the default (KILN_PLAN_CACHE, then $XDG_CACHE_HOME/kiln/plans,
// then ~/.cache/kiln/plans). Plans made so far are saved first; the new folder is
// read at the next GEMM or convolution.
void set_plan_cache(const std::string& dir);
// The file of this GPU's plans (reading it if not yet read); empty when off.
std::string plan_cache_file();
struct PlanStats {
  size_t reused = 0;  // shapes whose stored plan was taken
  size_t timed = 0;   // shapes timed (or found to have no plan) in this process
};
PlanStats plan_stats();
// Writes the plans made since the last save, merged with the file, atomically;
// writes nothing when none were made. Also runs when the process exits.
void save_plans();
// Tests: forgets every plan in memory (and the counts), so that the next GEMM or
// convolution reads the file again.
void forget_plans();

// Memory: what the caching allocator holds for live tensors and in all.
struct MemoryStats {
  size_t in_use = 0, peak_in_use = 0;      // bytes handed out to tensors
  size_t reserved = 0, peak_reserved = 0;  // bytes taken from cudaMalloc
  size_t device_mallocs = 0;               // cudaMalloc calls so far
};
MemoryStats memory_stats();
// Device memory kiln holds outside the caching allocator: the GEMM workspace (32 MiB)
// and the kernels' counters.
size_t fixed_device_bytes();
void reset_peak_memory();
// Returns every cached free block to the driver.
void release_cached_memory();
// Tests: fill each new allocation with 0xFF bytes (NaN in every float type) so
// that an element a kernel forgets to write shows up.
void set_poison_allocations(bool on);

// Device-side wall time of a region of stream work, by CUDA events.
class EventTimer {
 public:
  EventTimer();
  ~EventTimer();
  EventTimer(const EventTimer&) = delete;
  EventTimer& operator=(const EventTimer&) = delete;
  void start();
  void stop();
  float elapsed_ms();  // waits for the stop event

 private:
  void* begin_ = nullptr;
  void* end_ = nullptr;
};

// How a plan times its candidates. Warm: `reps` runs back to back. As in a step
// (Options::PlanTiming::Step): before each run the L2 is overwritten and the last
// `hot_bytes` of `hot` (at most half the L2) read back in, so that the activation input
// is where the op before left it and the weights are not; for that it holds a buffer
// twice the L2's size, straight from the driver, for its life, and times warm where
// there is no memory for it. Synchronises; not inside a capture.
class PlanTimer {
 public:
  explicit PlanTimer(bool as_in_step);
  ~PlanTimer();
  PlanTimer(const PlanTimer&) = delete;
  PlanTimer& operator=(const PlanTimer&) = delete;
  bool as_in_step() const { return buffer_ != nullptr; }
  // Mean milliseconds of one run of `run` over `reps`.
  float time(const std::function<void()>& run, const void* hot, size_t hot_bytes, int reps);

 private:
  EventTimer timer_;
  void* buffer_ = nullptr;
  size_t bytes_ = 0;
};
// Runs a PlanTimer has timed as in a step so far (tests: that the step timing ran).
size_t step_timed_runs();

// Back-pressure for a loop that queues work faster than the GPU runs it (a replayed
// graph costs the host microseconds): wait_and_mark() blocks until the GPU has done
// what was queued before the previous call, then marks what is queued now. Called
// once per denoising step it keeps at most one step in flight, so another thread's
// synchronisation (a decode copying its image back) waits for one step, not for all
// the steps the loop ran ahead.
class StreamFence {
 public:
  StreamFence();
  ~StreamFence();
  StreamFence(const StreamFence&) = delete;
  StreamFence& operator=(const StreamFence&) = delete;
  void wait_and_mark();

 private:
  void* event_ = nullptr;
  bool marked_ = false;
};

// Per-op-kind timing (kiln bench --per-op): while on, every backend call is
// bracketed by events. FLOPs of GEMM-like ops (linear, conv2d, attention) are
// counted always, as torch's FlopCounterMode counts them.
struct OpTime {
  std::string op;
  int calls = 0;
  double ms = 0.0;
  double flops = 0.0;
};
// by_shape: one row per op kind and shapes ("linear 8192x320x2560") instead of per kind.
void set_op_profiling(bool on, bool by_shape = false);
std::vector<OpTime> op_profile();  // waits for the stream; sorted by time, largest first
void reset_op_profile();
double flop_count();
void reset_flop_count();

// A forward pass recorded once as a CUDA graph and replayed. The function must
// read only device tensors that stay alive (and at fixed addresses) for the
// object's life, must not copy from the host, and must return its output; its
// allocations come from a private pool that only it uses, so every replay runs
// over the same addresses with no allocation. The returned tensor is
// overwritten by the next replay.
// flop_count() counts the recorded ops' FLOPs at each replay, not at the capture.
class CapturedForward {
 public:
  // profile_ops: event nodes around every op in the graph, so that op_profile()
  // after a replay gives each op's time on the GPU alone (no launch gaps).
  explicit CapturedForward(std::function<Tensor()> forward, bool profile_ops = false);
  ~CapturedForward();
  CapturedForward(const CapturedForward&) = delete;
  CapturedForward& operator=(const CapturedForward&) = delete;

  const Tensor& replay();  // queued on the backend's stream
  const Tensor& output() const { return output_; }
  size_t pool_bytes() const;  // device memory the pool holds

 private:
  int pool_ = 0;
  double flops_ = 0.0;  // what one replay computes, as flop_count() counts it
  void* graph_ = nullptr;
  void* exec_ = nullptr;
  Tensor output_;
};

}  // namespace kiln::cuda
