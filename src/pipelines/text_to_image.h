// Text-to-image for the Stable Diffusion family: diffusers' StableDiffusionPipeline
// (SD 1.x, 2.x) and StableDiffusionXLPipeline semantics, prompt → denoise → decode.
#pragma once

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <shared_mutex>
#include <string>

#include "io/image.h"
#include "io/model_folder.h"
#include "models/autoencoder_kl.h"
#include "models/clip_text_model.h"
#include "models/unet_2d_condition.h"
#include "pipelines/denoiser_graphs.h"
#include "pipelines/graph_cache.h"
#include "schedulers/scheduler.h"
#include "text/clip_tokenizer.h"

namespace kiln {

struct TextToImageRequest {
  std::string prompt;
  std::optional<std::string> negative_prompt;  // absent ≠ empty for SDXL (zeroed embeddings)
  int width = 0, height = 0;                   // 0: the model's native size
  int num_inference_steps = 50;
  std::optional<float> guidance_scale;  // default: 7.5 (SD), 5.0 (SDXL)
  std::optional<SamplerKind> sampler;   // default: the model's own scheduler
  SigmaSchedule schedule = SigmaSchedule::Default;
  uint64_t seed = 0;
};

// What a request resolved to, for the image's metadata and the caller.
struct ResolvedRequest {
  TextToImageRequest request;  // with every default filled in
  SamplerKind sampler = SamplerKind::Euler;
  float guidance_scale = 7.5f;
};

struct Progress {
  int step = 0;  // steps finished
  int total = 0;
};
// Called after each denoising step; return false to cancel (generate then throws
// kiln::Cancelled).
using ProgressFn = std::function<bool(const Progress&)>;

class Cancelled : public Error {
 public:
  Cancelled() : Error("generation cancelled") {}
};

class TextToImagePipeline;

// One request on its way through the denoiser: its conditioning, sampler state,
// random generator and latents. Made by TextToImagePipeline::start, advanced by
// step() alone or batched with other generations of the same latent size, turned
// into an image by decode(). Not thread-safe: one worker drives it.
class Generation {
 public:
  const ResolvedRequest& request() const { return request_; }
  int steps_done() const { return step_; }
  int total_steps() const { return scheduler_->num_steps(); }
  bool done() const { return step_ >= scheduler_->num_steps(); }
  // Rows this generation adds to a denoiser batch: 2 with classifier-free guidance.
  int64_t rows() const { return cfg_ ? 2 : 1; }
  int64_t latent_height() const { return latents_.dim(1); }
  int64_t latent_width() const { return latents_.dim(2); }
  // The current latents. step() replaces them and never writes them in place, so
  // a copy of this handle stays valid for decode_latents() on another thread.
  const Tensor& latents() const { return latents_; }

 private:
  friend class TextToImagePipeline;
  Generation(const ResolvedRequest& r) : request_(r), generator_(r.request.seed) {}

  ResolvedRequest request_;
  bool cfg_ = false;
  Tensor context_;        // [rows, 77, D]: (negative, prompt) with CFG
  Tensor text_embeds_;    // [rows, P]      SDXL pooled embeddings
  Tensor time_ids_;       // [rows, 6]      SDXL size conditioning
  Tensor timestep_cond_;  // [rows, Dc]     guidance embedding of distilled UNets
  std::unique_ptr<Scheduler> scheduler_;
  TorchGenerator generator_;
  Tensor latents_;  // [1, h, w, C] f32 on the pipeline's device
  int step_ = 0;
};

class TextToImagePipeline {
 public:
  // Loads every component of a diffusers folder whose pipeline class is
  // StableDiffusionPipeline or StableDiffusionXLPipeline.
  static std::unique_ptr<TextToImagePipeline> load(const std::filesystem::path& dir,
                                                   const Placement& placement);

  // Fills in defaults and checks the request (size multiple of 8, steps ≥ 1...),
  // throwing kiln::Error with a message naming the bad field.
  ResolvedRequest resolve(const TextToImageRequest& request) const;

  // A whole image: start(), step() until done, decode(). Throws Cancelled when
  // `progress` returns false.
  io::Image generate(const ResolvedRequest& request, const ProgressFn& progress = {}) const;

  // The same in parts, for a scheduler that batches many requests step by step.
  // start() encodes the prompts and draws the initial latents (diffusers' order
  // of draws). step() advances every generation in `batch` by one step with a
  // single denoiser call; all must share a latent size, each row keeps its own
  // timestep, guidance and sampler, so a generation's image does not depend on
  // what it was batched with. decode() works at any step (a preview mid-way).
  std::unique_ptr<Generation> start(const ResolvedRequest& request) const;
  void step(const std::vector<Generation*>& batch) const;
  io::Image decode(const Generation& generation) const;
  io::Image decode_latents(const Tensor& latents) const;

  // One denoising step of `batch` generations at width×height (0: native), with
  // classifier-free guidance or without, and one decode: what makes the plans and
  // CUDA graphs of that shape before a real request needs them (kiln build, kiln
  // serve's warm-up). The pipeline decodes image by image whatever the batch, so one
  // decode makes every VAE plan.
  // `calls` denoiser calls (steps) of the batch: the pipeline's CUDA graphs capture
  // a shape on its second call.
  void warm_up(int width, int height, int batch, bool cfg, int calls = 1) const;
  // For a server: warm_up() at the native size with guidance, two calls each, for the
  // generation counts up to `max_generations` that reach a new row bucket of the
  // denoiser's graphs (1, 2, 3, 4, 6, 8, 12, 16...: 2 rows each). `done` hears of
  // each count once it is warmed. Throws what warm_up() throws.
  void warm_up_buckets(int max_generations, const std::function<void(int)>& done = {}) const;

  // The A1111 "parameters" text for an image made from `request`.
  std::string a1111_parameters(const ResolvedRequest& request) const;

  // Human-readable summary of what was detected (kiln info).
  std::string describe() const;

  bool is_xl() const { return xl_; }
  // How the denoiser ran: eagerly, captured, replayed (all eager off CUDA).
  DenoiserGraphs::Stats graph_stats() const {
    return graphs_ ? graphs_->stats() : DenoiserGraphs::Stats{};
  }
  // How the VAE's decode ran (graph_cache.h).
  GraphCache::Stats decoder_graph_stats() const {
    return decoder_graphs_ ? decoder_graphs_->stats() : GraphCache::Stats{};
  }
  int native_width() const { return native_size_; }
  int native_height() const { return native_size_; }
  const std::string& name() const { return name_; }

 private:
  void encode_prompts(Generation& g) const;

  std::string name_;
  std::filesystem::path dir_;
  Placement placement_;
  bool xl_ = false;
  bool force_zeros_for_empty_prompt_ = true;
  int native_size_ = 512;
  std::string scheduler_class_;
  nlohmann::json scheduler_config_;
  std::unique_ptr<text::ClipTokenizer> tokenizer_, tokenizer_2_;
  std::unique_ptr<ClipTextModel> text_encoder_, text_encoder_2_;
  std::unique_ptr<UNet2DConditionModel> unet_;
  std::unique_ptr<AutoencoderKL> vae_;
  // On CUDA: the denoiser replayed from graphs. A capture records everything queued on
  // the one stream, so the lock that keeps other threads' device work (encoding,
  // decoding) out of it is one for the process, shared by every pipeline (a server with
  // several models), not one per pipeline (denoiser_graphs.h).
  static std::shared_mutex& device_mutex();
  std::unique_ptr<DenoiserGraphs> graphs_;
  // On CUDA: the VAE's decode replayed from graphs, for latents of at most
  // kGraphedDecodeLatentPixels (768² images in SD): there the decode's launches bound it
  // (512² on an H100: 6.12 ms eager, 4.71 replayed), where at 1024² it is as fast
  // eagerly (19.56 against 19.68 ms) and a graph's arena would hold about 2.9 GB.
  // KILN_CUDA_DECODE_GRAPHS=0 decodes eagerly (the arenas' memory back: about 0.7 GB
  // a 512² key).
  static constexpr int64_t kGraphedDecodeLatentPixels = 96 * 96;
  std::unique_ptr<GraphCache> decoder_graphs_;
  // On CUDA: step() lets the GPU run at most one step behind the host.
  std::shared_ptr<void> step_fence_;
};

// The sampler kiln uses for a diffusers scheduler class, if it has one.
std::optional<SamplerKind> sampler_for_scheduler_class(const std::string& class_name);

}  // namespace kiln
