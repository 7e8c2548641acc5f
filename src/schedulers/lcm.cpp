// LCM: diffusers' LCMScheduler, the multistep sampler of latent consistency models (Luo et
// al.). Each step maps the sample to the consistency model's estimate of x0 ("denoised",
// with the c_skip / c_out boundary scalings) and, except at the last step, noises that
// estimate afresh to the next timestep's level.
//
// What diffusers 0.42.1 does that is easy to miss:
//   * The timesteps are a subset of the distillation schedule (original_inference_steps
//     timesteps k - 1, 2k - 1, ..., with k = num_train_timesteps // original_inference_steps),
//     so num_inference_steps may not exceed original_inference_steps; timestep_spacing and
//     steps_offset are accepted but not used.
//   * Its defaults are Stable Diffusion's betas (scaled_linear, 0.00085 to 0.012), unlike
//     the other classes.
//   * Noise is drawn at every step but the last; the last step returns "denoised".
#include <cmath>

#include "kiln/error.h"
#include "ops/ops.h"
#include "schedulers/scheduler_common.h"
#include "schedulers/sigmas.h"

namespace kiln::schedulers {
namespace {

constexpr std::string_view kClassName = "LCMScheduler";

class LCMScheduler final : public Scheduler {
 public:
  explicit LCMScheduler(const SchedulerConfig& config)
      : training_(
            read_training_schedule(config, {0.00085, 0.012, "scaled_linear"}, ZeroSnrFloor::Keep)),
        final_alpha_cumprod_(config.flag("set_alpha_to_one", true) ? 1.0f
                                                                   : training_.alphas_cumprod[0]),
        original_inference_steps_(config.integer("original_inference_steps", 50)),
        prediction_type_(read_prediction_type(config, {"epsilon", "v_prediction", "sample"})),
        clip_sample_(config.flag("clip_sample", false)),
        clip_sample_range_(config.number("clip_sample_range", 1.0)),
        timestep_scaling_(config.number("timestep_scaling", 10.0)) {
    config.reject_if_set("thresholding", "set clip_sample to clamp the predicted sample instead");
    if (original_inference_steps_ < 1 || original_inference_steps_ > training_.num_train_timesteps)
      config.fail("original_inference_steps",
                  str("is ", original_inference_steps_, "; it must be in [1, ",
                      training_.num_train_timesteps, "] (num_train_timesteps)"));
  }

  void set_timesteps(int num_inference_steps) override {
    // LCM's steps are a subset of its distillation schedule.
    check_num_inference_steps(kClassName, num_inference_steps, original_inference_steps_,
                              "original_inference_steps");
    const int k = training_.num_train_timesteps / original_inference_steps_;
    // The distillation schedule, from the noisiest timestep down.
    std::vector<int> origin_timesteps;
    for (int i = original_inference_steps_; i >= 1; --i) origin_timesteps.push_back(i * k - 1);
    const std::vector<double> positions =
        numpy_linspace(0.0, double(origin_timesteps.size()), num_inference_steps, false);
    timesteps_.clear();
    for (double position : positions)
      timesteps_.push_back(float(origin_timesteps[size_t(std::floor(position))]));
  }

  float init_noise_sigma() const override { return 1.0f; }

  Tensor step(const Tensor& model_output, int step, const Tensor& sample,
              TorchGenerator& generator) override {
    check_step_index(*this, step);
    if (step == 0) check_first_timestep_not_repeated(*this, kClassName);
    const int timestep = int(timesteps_[size_t(step)]);
    const bool last = step == num_steps() - 1;
    const double alpha_prod_t = training_.alphas_cumprod[size_t(timestep)];

    // Consistency-model boundary conditions: c_skip -> 1, c_out -> 0 as t -> 0.
    constexpr double sigma_data = 0.5;
    const double scaled_timestep = float(timestep * timestep_scaling_);  // float32 in torch
    const double denominator = scaled_timestep * scaled_timestep + sigma_data * sigma_data;
    const double c_skip = sigma_data * sigma_data / denominator;
    const double c_out = scaled_timestep / std::sqrt(denominator);

    // denoised = c_out * x0 + c_skip * sample; then, but for the last step,
    // prev_sample = sqrt(alpha_prev) * denoised + sqrt(1 - alpha_prev) * noise.
    double denoised_weight = 1.0, noise_weight = 0.0;
    Tensor noise;
    if (!last) {
      const int prev_timestep = int(timesteps_[size_t(step) + 1]);
      const double alpha_prod_t_prev = prev_timestep >= 0
                                           ? double(training_.alphas_cumprod[size_t(prev_timestep)])
                                           : double(final_alpha_cumprod_);
      denoised_weight = std::sqrt(alpha_prod_t_prev);
      noise_weight = std::sqrt(1.0 - alpha_prod_t_prev);
      noise = draw_noise_like(model_output, generator);
    }
    const LinearForm x0 = original_sample_from_alpha(prediction_type_, alpha_prod_t);
    if (clip_sample_) {
      const float range = float(clip_sample_range_);
      const Tensor clipped_x0 = ops::clamp(
          combine({{x0.sample, sample}, {x0.model_output, model_output}}), -range, range);
      if (last) return combine({{c_out, clipped_x0}, {c_skip, sample}});
      return combine({{denoised_weight * c_out, clipped_x0},
                      {denoised_weight * c_skip, sample},
                      {noise_weight, noise}});
    }
    const double sample_weight = denoised_weight * (c_out * x0.sample + c_skip);
    const double output_weight = denoised_weight * c_out * x0.model_output;
    if (last) return combine({{sample_weight, sample}, {output_weight, model_output}});
    return combine({{sample_weight, sample}, {output_weight, model_output}, {noise_weight, noise}});
  }

 private:
  TrainingSchedule training_;
  float final_alpha_cumprod_;
  int original_inference_steps_;
  PredictionType prediction_type_;
  bool clip_sample_;
  double clip_sample_range_;
  double timestep_scaling_;
};

}  // namespace

std::unique_ptr<Scheduler> make_lcm(const SchedulerConfig& config) {
  return std::make_unique<LCMScheduler>(config);
}

}  // namespace kiln::schedulers
