// DDIM: diffusers' DDIMScheduler with eta = 0 (what the pipelines pass), the deterministic
// sampler of Song et al.: predict x0, then move to the previous timestep's noise level
// along the predicted noise. Timesteps are integers; there are no sigmas.
//
// What diffusers 0.42.1 does that is easy to miss:
//   * The previous timestep is always t - num_train_timesteps // num_inference_steps, even
//     for "linspace" and "trailing" spacing, where that is not the next timestep of the
//     schedule. Below 0 it uses final_alpha_cumprod: 1 with set_alpha_to_one, else
//     alphas_cumprod[0].
//   * clip_sample defaults to true (clamping predicted x0 to [-clip_sample_range,
//     clip_sample_range]); SD configs set it false, a sparse config gets the clamp.
//   * The predicted noise comes from the unclipped x0 (use_clipped_model_output=False).
//   * "trailing" with a step count for which numpy's arange overshoots (61, 103, ...)
//     ends at timestep -1, which torch indexing wraps to alphas_cumprod[-1].
//   * With rescale_betas_zero_snr the last alphas_cumprod stays 0 (Euler and DPM-Solver
//     raise it to 2^-24), so an epsilon model at t = 999 divides by zero.
#include <cmath>

#include "kiln/error.h"
#include "ops/ops.h"
#include "schedulers/scheduler_common.h"
#include "schedulers/sigmas.h"

namespace kiln::schedulers {
namespace {

constexpr std::string_view kClassName = "DDIMScheduler";

class DDIMScheduler final : public Scheduler {
 public:
  explicit DDIMScheduler(const SchedulerConfig& config)
      : training_(read_training_schedule(config, BetaDefaults{}, ZeroSnrFloor::Keep)),
        final_alpha_cumprod_(config.flag("set_alpha_to_one", true) ? 1.0f
                                                                   : training_.alphas_cumprod[0]),
        prediction_type_(read_prediction_type(config, {"epsilon", "v_prediction", "sample"})),
        spacing_(read_timestep_spacing(config, "leading")),
        steps_offset_(config.integer("steps_offset", 0)),
        clip_sample_(config.flag("clip_sample", true)),
        clip_sample_range_(config.number("clip_sample_range", 1.0)) {
    config.reject_if_set("thresholding", "set clip_sample to clamp the predicted sample instead");
  }

  void set_timesteps(int num_inference_steps) override {
    const int num_train = training_.num_train_timesteps;
    check_num_inference_steps(kClassName, num_inference_steps, num_train, "num_train_timesteps");
    num_inference_steps_ = num_inference_steps;
    timesteps_.clear();
    switch (spacing_) {
      case TimestepSpacing::Linspace: {
        const std::vector<double> spaced = numpy_linspace(0.0, num_train - 1, num_inference_steps);
        for (auto it = spaced.rbegin(); it != spaced.rend(); ++it)
          timesteps_.push_back(float(numpy_round(*it)));
        break;
      }
      case TimestepSpacing::Leading: {
        const int step_ratio = num_train / num_inference_steps;
        for (int i = num_inference_steps - 1; i >= 0; --i)
          timesteps_.push_back(float(i * step_ratio + steps_offset_));
        break;
      }
      case TimestepSpacing::Trailing: {
        const double step_ratio = double(num_train) / num_inference_steps;
        for (double t : numpy_arange(num_train, 0.0, -step_ratio))
          timesteps_.push_back(float(numpy_round(t) - 1.0));
        break;
      }
    }
  }

  float init_noise_sigma() const override { return 1.0f; }

  Tensor step(const Tensor& model_output, int step, const Tensor& sample,
              TorchGenerator& generator) override {
    check_step_index(*this, step);
    const int timestep = int(timesteps_[size_t(step)]);
    const int prev_timestep = timestep - training_.num_train_timesteps / num_inference_steps_;
    const double alpha_prod_t = training_.alpha_cumprod_at(timestep, kClassName);
    const double alpha_prod_t_prev = prev_timestep >= 0
                                         ? training_.alpha_cumprod_at(prev_timestep, kClassName)
                                         : double(final_alpha_cumprod_);

    const LinearForm x0 = original_sample_from_alpha(prediction_type_, alpha_prod_t);
    const LinearForm epsilon = epsilon_from_alpha(prediction_type_, alpha_prod_t);
    // prev_sample = sqrt(alpha_prev) * x0 + sqrt(1 - alpha_prev) * epsilon (eta = 0).
    const double x0_weight = std::sqrt(alpha_prod_t_prev);
    const double epsilon_weight = std::sqrt(1.0 - alpha_prod_t_prev);
    if (!clip_sample_)
      return combine(
          {{x0_weight * x0.sample + epsilon_weight * epsilon.sample, sample},
           {x0_weight * x0.model_output + epsilon_weight * epsilon.model_output, model_output}});
    const float range = float(clip_sample_range_);
    const Tensor clipped_x0 =
        ops::clamp(combine({{x0.sample, sample}, {x0.model_output, model_output}}), -range, range);
    return combine({{x0_weight, clipped_x0},
                    {epsilon_weight * epsilon.sample, sample},
                    {epsilon_weight * epsilon.model_output, model_output}});
  }

 private:
  TrainingSchedule training_;
  float final_alpha_cumprod_;
  PredictionType prediction_type_;
  TimestepSpacing spacing_;
  int steps_offset_;
  bool clip_sample_;
  double clip_sample_range_;
  int num_inference_steps_ = 0;
};

}  // namespace

std::unique_ptr<Scheduler> make_ddim(const SchedulerConfig& config) {
  return std::make_unique<DDIMScheduler>(config);
}

}  // namespace kiln::schedulers
