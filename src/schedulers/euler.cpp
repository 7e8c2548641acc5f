// Euler: diffusers' EulerDiscreteScheduler, the first-order ODE step of Karras et al.
// (k-diffusion's sample_euler) on sigma = sqrt((1 - alphas_cumprod) / alphas_cumprod).
//
// What diffusers 0.42.1 does that is easy to miss:
//   * "linspace" timesteps are not rounded, so the denoiser sees fractional timesteps;
//     with one step, np.linspace(0, 999, 1) is [0], so the only step is at timestep 0.
//   * The first sigma is the training sigma interpolated at the first timestep, and
//     init_noise_sigma is sqrt(sigma_max^2 + 1) for "leading" but sigma_max otherwise.
//   * Karras sigmas span the interpolated sigmas of the first and last spaced timesteps
//     (not the training range, as DPM-Solver's do); their timesteps are interpolated back
//     from the float32 log sigmas and are fractional.
//   * "log_linear" interpolation makes num_inference_steps + 1 sigmas log-spaced over the
//     whole training range while the timesteps keep their spacing, so the last step ends
//     at sigma_min rather than at the final sigma.
//   * timestep_type "continuous" with v-prediction gives timesteps 0.25 * log(sigma), one
//     per sigma but the last (so log_linear gets num_inference_steps + 1 of them).
//   * With s_churn = 0 (what the pipelines pass) step() draws no noise at all, so the
//     generator is not advanced (earlier diffusers versions drew and discarded noise).
#include <algorithm>
#include <cmath>

#include "kiln/error.h"
#include "ops/ops.h"
#include "schedulers/scheduler_common.h"
#include "schedulers/sigmas.h"

namespace kiln::schedulers {
namespace {

constexpr std::string_view kClassName = "EulerDiscreteScheduler";

class EulerDiscreteScheduler final : public SigmaScaledScheduler {
 public:
  EulerDiscreteScheduler(const SchedulerConfig& config, bool karras)
      : SigmaScaledScheduler(kClassName, read_timestep_spacing(config, "linspace")),
        training_(read_training_schedule(config, BetaDefaults{}, ZeroSnrFloor::Raise)),
        training_sigmas_(sigmas_from_alphas_cumprod(training_.alphas_cumprod)),
        prediction_type_(
            read_prediction_type(config, {"epsilon", "v_prediction", "sample", "original_sample"})),
        steps_offset_(config.integer("steps_offset", 0)),
        log_linear_(config.choice("interpolation_type", "linear", {"linear", "log_linear"}) ==
                    "log_linear"),
        karras_(karras),
        sigma_min_(config.optional_number("sigma_min")),
        sigma_max_(config.optional_number("sigma_max")),
        continuous_timesteps_(config.choice("timestep_type", "discrete",
                                            {"discrete", "continuous"}) == "continuous" &&
                              prediction_type_ == PredictionType::VPrediction),
        final_sigma_is_min_(config.choice("final_sigmas_type", "zero", {"zero", "sigma_min"}) ==
                            "sigma_min") {
    config.reject_if_set("use_exponential_sigmas", "use use_karras_sigmas or the default");
    config.reject_if_set("use_beta_sigmas", "use use_karras_sigmas or the default");
  }

  void set_timesteps(int num_inference_steps) override {
    check_num_inference_steps(kClassName, num_inference_steps, training_.num_train_timesteps,
                              "num_train_timesteps");
    const std::vector<float> spaced = euler_timesteps(spacing_, training_.num_train_timesteps,
                                                      num_inference_steps, steps_offset_);
    std::vector<double> timesteps(spaced.begin(), spaced.end());

    std::vector<double> sigmas;
    if (log_linear_) {
      const std::vector<float> log_sigmas = torch_linspace_float32(
          float(std::log(double(training_sigmas_.back()))),
          float(std::log(double(training_sigmas_.front()))), num_inference_steps + 1);
      for (float log_sigma : log_sigmas) sigmas.push_back(float(std::exp(double(log_sigma))));
    } else {
      for (double t : timesteps) sigmas.push_back(interp_by_timestep(t, training_sigmas_));
    }
    if (karras_) {
      sigmas = karras_sigmas(sigma_min_.value_or(sigmas.back()),
                             sigma_max_.value_or(sigmas.front()), num_inference_steps);
      const std::vector<float> log_training_sigmas = log_float32(training_sigmas_);
      timesteps.clear();
      for (double sigma : sigmas)
        timesteps.push_back(sigma_to_timestep(sigma, log_training_sigmas));
    }
    sigmas.push_back(final_sigma_is_min_ ? training_sigmas_.front() : 0.0);
    sigmas_ = to_float32(sigmas);

    if (continuous_timesteps_) {
      timesteps_.clear();
      for (size_t i = 0; i + 1 < sigmas_.size(); ++i)
        timesteps_.push_back(0.25f * float(std::log(double(sigmas_[i]))));
    } else {
      timesteps_ = to_float32(timesteps);
    }
    KILN_CHECK(sigmas_.size() > timesteps_.size(), kClassName, ": ", sigmas_.size(), " sigmas for ",
               timesteps_.size(), " timesteps");
  }

  Tensor step(const Tensor& model_output, int step, const Tensor& sample,
              TorchGenerator& generator) override {
    check_step_index(*this, step);
    if (step == 0) check_first_timestep_not_repeated(*this, kClassName);
    const double sigma = sigmas_[size_t(step)];
    const double dt = double(sigmas_[size_t(step) + 1]) - sigma;
    // pred_original_sample = a * sample + b * model_output; the ODE derivative is
    // (sample - pred_original_sample) / sigma, and the step is sample + derivative * dt.
    double a = 0.0, b = 0.0;
    switch (prediction_type_) {
      case PredictionType::Epsilon:
        a = 1.0, b = -sigma;
        break;
      case PredictionType::VPrediction:
        a = 1.0 / (sigma * sigma + 1.0), b = -sigma / std::sqrt(sigma * sigma + 1.0);
        break;
      case PredictionType::Sample:
        a = 0.0, b = 1.0;
        break;
    }
    return combine({{1.0 + dt * (1.0 - a) / sigma, sample}, {-dt * b / sigma, model_output}});
  }

 private:
  TrainingSchedule training_;
  std::vector<float> training_sigmas_;  // index = training timestep
  PredictionType prediction_type_;
  int steps_offset_;
  bool log_linear_;
  bool karras_;
  std::optional<double> sigma_min_, sigma_max_;  // bounds of the Karras schedule
  bool continuous_timesteps_;
  bool final_sigma_is_min_;
};

}  // namespace

std::unique_ptr<Scheduler> make_euler_discrete(const SchedulerConfig& config, bool karras) {
  return std::make_unique<EulerDiscreteScheduler>(config, karras);
}

}  // namespace kiln::schedulers
