// Text-to-image for the Stable Diffusion family: diffusers' StableDiffusionPipeline
// (SD 1.x, 2.x) and StableDiffusionXLPipeline semantics, prompt → denoise → decode.
#pragma once

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "io/image.h"
#include "io/model_folder.h"
#include "models/autoencoder_kl.h"
#include "models/clip_text_model.h"
#include "models/unet_2d_condition.h"
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

class TextToImagePipeline {
 public:
  // Loads every component of a diffusers folder whose pipeline class is
  // StableDiffusionPipeline or StableDiffusionXLPipeline.
  static std::unique_ptr<TextToImagePipeline> load(const std::filesystem::path& dir,
                                                   const Placement& placement);

  // Fills in defaults and checks the request (size multiple of 8, steps ≥ 1...),
  // throwing kiln::Error with a message naming the bad field.
  ResolvedRequest resolve(const TextToImageRequest& request) const;

  io::Image generate(const ResolvedRequest& request, const ProgressFn& progress = {}) const;

  // The A1111 "parameters" text for an image made from `request`.
  std::string a1111_parameters(const ResolvedRequest& request) const;

  // Human-readable summary of what was detected (kiln info).
  std::string describe() const;

  bool is_xl() const { return xl_; }
  int native_width() const { return native_size_; }
  int native_height() const { return native_size_; }
  const std::string& name() const { return name_; }

 private:
  struct Conditioning {
    Tensor context;      // [rows, 77, D]: (uncond, cond) with CFG
    Tensor text_embeds;  // [rows, P]      SDXL pooled
  };
  Conditioning encode_prompts(const ResolvedRequest& r, bool cfg) const;
  Tensor sd_embeddings(const std::string& text) const;

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
};

// The sampler kiln uses for a diffusers scheduler class, if it has one.
std::optional<SamplerKind> sampler_for_scheduler_class(const std::string& class_name);

}  // namespace kiln
