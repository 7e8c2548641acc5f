// Samplers ("schedulers" in diffusers): the timestep/sigma tables and the update
// that turns the denoiser's output into the next sample.
//
// A sampler named X behaves as diffusers' XScheduler.from_config(<the model's
// scheduler_config.json>): keys present in the config override, absent keys take
// that scheduler class's own defaults (which differ between classes).
//
// One Scheduler object serves one request: multistep samplers keep history.
// Tensors are NHWC latents [B, H, W, C] on any device; all arithmetic goes
// through ops/, so the updates run where the latents live.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "core/random.h"
#include "core/tensor.h"

namespace kiln {

enum class SamplerKind { Euler, EulerAncestral, DDIM, DPMPP2M, LCM, PNDM };
enum class SigmaSchedule { Default, Karras };

// "euler", "euler_a", "ddim", "dpmpp_2m", "lcm", "pndm".
std::optional<SamplerKind> parse_sampler(std::string_view name);
std::string_view sampler_name(SamplerKind kind);
// The name A1111 shows for it ("Euler a", "DPM++ 2M Karras", ...).
std::string a1111_sampler_name(SamplerKind kind, SigmaSchedule schedule);
// The inverse of a1111_sampler_name: "DPM++ 2M Karras" -> {DPMPP2M, Karras}.
std::optional<std::pair<SamplerKind, SigmaSchedule>> parse_a1111_sampler(std::string_view name);

class Scheduler {
 public:
  virtual ~Scheduler() = default;

  // diffusers' set_timesteps(num_inference_steps). Must be called before use.
  virtual void set_timesteps(int num_inference_steps) = 0;

  // The timestep value fed to the denoiser at each step, in order (exactly the
  // float32 values of diffusers' scheduler.timesteps).
  const std::vector<float>& timesteps() const { return timesteps_; }
  int num_steps() const { return int(timesteps_.size()); }

  // The noise level of each step and, last, of the result (diffusers' scheduler.sigmas,
  // float32); empty for samplers that have none (DDIM, LCM).
  const std::vector<float>& sigmas() const { return sigmas_; }

  // Factor the initial N(0, 1) latents are multiplied by.
  virtual float init_noise_sigma() const = 0;

  // The denoiser's input at step `step` (diffusers' scale_model_input).
  virtual Tensor scale_model_input(const Tensor& sample, int step) const { return sample; }

  // The sample for step + 1 from the denoiser's (guided) output at `step`.
  // Samplers that add noise draw it from `generator` in diffusers' order. Steps run in
  // order, 0 to num_steps() - 1: multistep samplers keep the outputs of earlier steps.
  virtual Tensor step(const Tensor& model_output, int step, const Tensor& sample,
                      TorchGenerator& generator) = 0;

 protected:
  std::vector<float> timesteps_;
  std::vector<float> sigmas_;
};

// SigmaSchedule::Karras is from_config(..., use_karras_sigmas=True); a config that sets
// use_karras_sigmas itself gets Karras sigmas with SigmaSchedule::Default too, as from_config
// keeps it. Throws kiln::Error when the config asks for something this sampler cannot do
// (an unknown beta_schedule or prediction_type, karras sigmas on DDIM or PNDM, ...).
std::unique_ptr<Scheduler> make_scheduler(SamplerKind kind, SigmaSchedule schedule,
                                          const nlohmann::json& scheduler_config);

}  // namespace kiln
