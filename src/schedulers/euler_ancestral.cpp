// Euler a: diffusers' EulerAncestralDiscreteScheduler (k-diffusion's sample_euler_ancestral
// with eta = 1). Each step goes deterministically down to sigma_down and adds fresh noise
// of size sigma_up, where sigma_down^2 + sigma_up^2 = sigma_next^2.
//
// It shares EulerDiscreteScheduler's timesteps and sigmas (without Karras, log-linear or
// final-sigma options), and draws one noise tensor every step, the last one included
// (where sigma_up is 0): the draws must still happen for the generator to stay in step.
// prediction_type "sample" is accepted by diffusers' constructor but fails in step(); kiln
// rejects it up front.
#include <algorithm>
#include <cmath>

#include "kiln/error.h"
#include "ops/ops.h"
#include "schedulers/scheduler_common.h"
#include "schedulers/sigmas.h"

namespace kiln::schedulers {
namespace {

constexpr std::string_view kClassName = "EulerAncestralDiscreteScheduler";

class EulerAncestralDiscreteScheduler final : public SigmaScaledScheduler {
 public:
  explicit EulerAncestralDiscreteScheduler(const SchedulerConfig& config)
      : SigmaScaledScheduler(kClassName, read_timestep_spacing(config, "linspace")),
        training_(read_training_schedule(config, BetaDefaults{}, ZeroSnrFloor::Raise)),
        training_sigmas_(sigmas_from_alphas_cumprod(training_.alphas_cumprod)),
        prediction_type_(read_prediction_type(config, {"epsilon", "v_prediction"})),
        steps_offset_(config.integer("steps_offset", 0)) {}

  void set_timesteps(int num_inference_steps) override {
    check_num_inference_steps(kClassName, num_inference_steps, training_.num_train_timesteps,
                              "num_train_timesteps");
    timesteps_ = euler_timesteps(spacing_, training_.num_train_timesteps, num_inference_steps,
                                 steps_offset_);
    sigmas_.clear();
    for (float t : timesteps_) sigmas_.push_back(float(interp_by_timestep(t, training_sigmas_)));
    sigmas_.push_back(0.0f);
  }

  Tensor step(const Tensor& model_output, int step, const Tensor& sample,
              TorchGenerator& generator) override {
    check_step_index(*this, step);
    if (step == 0) check_first_timestep_not_repeated(*this, kClassName);
    const double sigma = sigmas_[size_t(step)];
    const double sigma_next = sigmas_[size_t(step) + 1];
    const double sigma_up = std::sqrt(sigma_next * sigma_next *
                                      (sigma * sigma - sigma_next * sigma_next) / (sigma * sigma));
    const double sigma_down = std::sqrt(sigma_next * sigma_next - sigma_up * sigma_up);
    const double dt = sigma_down - sigma;
    // pred_original_sample = a * sample + b * model_output, derivative as in Euler.
    double a = 1.0, b = -sigma;
    if (prediction_type_ == PredictionType::VPrediction)
      a = 1.0 / (sigma * sigma + 1.0), b = -sigma / std::sqrt(sigma * sigma + 1.0);
    const Tensor noise = draw_noise_like(model_output, generator);
    return combine({{1.0 + dt * (1.0 - a) / sigma, sample},
                    {-dt * b / sigma, model_output},
                    {sigma_up, noise}});
  }

 private:
  TrainingSchedule training_;
  std::vector<float> training_sigmas_;  // index = training timestep
  PredictionType prediction_type_;
  int steps_offset_;
};

}  // namespace

std::unique_ptr<Scheduler> make_euler_ancestral_discrete(const SchedulerConfig& config) {
  return std::make_unique<EulerAncestralDiscreteScheduler>(config);
}

}  // namespace kiln::schedulers
