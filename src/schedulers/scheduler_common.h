// What the sampler files share: reading a scheduler_config.json the way diffusers'
// from_config reads it, the training noise schedule (betas -> alphas_cumprod), the
// option enums, and small helpers for the updates. Internal to src/schedulers/.
#pragma once

#include <initializer_list>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "schedulers/scheduler.h"

namespace kiln::schedulers {

// A scheduler_config.json as XScheduler.from_config(config) sees it for one class: each
// accessor takes that class's default for the key, used when the key is absent. Keys a
// class does not read are never asked for, so they are ignored, as from_config ignores
// them. A key set to null is Python's None: false for a flag, the default otherwise.
// Keys listed in "_use_default_values" (diffusers writes it into in-memory configs) count
// as absent, as they do for from_config.
class SchedulerConfig {
 public:
  SchedulerConfig(const nlohmann::json& json, std::string class_name);

  const std::string& class_name() const { return class_name_; }
  bool has(std::string_view key) const { return find(key) != nullptr; }

  int integer(std::string_view key, int fallback) const;
  double number(std::string_view key, double fallback) const;
  std::optional<double> optional_number(std::string_view key) const;
  std::optional<std::vector<double>> number_list(std::string_view key) const;
  bool flag(std::string_view key, bool fallback) const;
  // A string option that must be one of `accepted`; anything else throws, naming the key,
  // the value and the accepted values.
  std::string choice(std::string_view key, std::string_view fallback,
                     std::initializer_list<std::string_view> accepted) const;
  // Throws when the config turns on an option kiln does not implement.
  void reject_if_set(std::string_view key, std::string_view what_instead = {}) const;

  [[noreturn]] void fail(std::string_view key, const std::string& problem) const;

 private:
  const nlohmann::json* find(std::string_view key) const;

  const nlohmann::json& json_;
  std::string class_name_;
};

enum class PredictionType { Epsilon, VPrediction, Sample };
// "prediction_type" (default "epsilon"), restricted to what the class accepts.
PredictionType read_prediction_type(const SchedulerConfig& config,
                                    std::initializer_list<std::string_view> accepted);

enum class TimestepSpacing { Linspace, Leading, Trailing };
// "timestep_spacing"; the default differs between classes.
TimestepSpacing read_timestep_spacing(const SchedulerConfig& config, std::string_view fallback);

// The defaults of the beta keys, which differ between classes (LCMScheduler's are SD's).
struct BetaDefaults {
  double beta_start = 0.0001;
  double beta_end = 0.02;
  std::string_view beta_schedule = "linear";
};

// The noise schedule the model was trained with, as the class's __init__ builds it.
struct TrainingSchedule {
  int num_train_timesteps = 0;
  std::string beta_schedule;
  std::vector<float> alphas_cumprod;  // float32, as diffusers keeps it; index = timestep

  // alphas_cumprod[timestep] with Python indexing (-1 is the last entry), as
  // diffusers indexes it; a timestep off the table names the scheduler class.
  double alpha_cumprod_at(int timestep, std::string_view scheduler) const {
    const int n = int(alphas_cumprod.size());
    const int index = timestep < 0 ? timestep + n : timestep;
    if (index < 0 || index >= n)
      KILN_FAIL(scheduler, ": timestep ", timestep, " is outside the training schedule (0 to ",
                n - 1, "); use fewer steps or a smaller steps_offset");
    return alphas_cumprod[size_t(index)];
  }
};

// Euler, Euler a and DPM-Solver raise alphas_cumprod's last entry from 0 to 2^-24 after a
// zero-terminal-SNR rescale, so that their sigmas stay finite; DDIM and LCM keep the 0.
enum class ZeroSnrFloor { Raise, Keep };

// Reads num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas and, for
// the classes that have the option (floor given), rescale_betas_zero_snr. Without a floor
// the key is ignored, as from_config ignores keys a class does not take (PNDM).
TrainingSchedule read_training_schedule(const SchedulerConfig& config, const BetaDefaults& defaults,
                                        std::optional<ZeroSnrFloor> floor);

// sqrt((1 - alphas_cumprod) / alphas_cumprod) in float32, as torch computes it; index = timestep.
std::vector<float> sigmas_from_alphas_cumprod(const std::vector<float>& alphas_cumprod);

// torch's (sigma**2 + 1) ** 0.5 on a float32 sigma.
float sqrt_sigma_squared_plus_one(float sigma);

// Throws unless 1 <= num_inference_steps <= max_steps; `limit` says what sets the maximum.
void check_num_inference_steps(std::string_view class_name, int num_inference_steps, int max_steps,
                               std::string_view limit);

// Throws unless 0 <= step < scheduler.num_steps().
void check_step_index(const Scheduler& scheduler, int step);

// Base of the samplers whose sample is signal plus sigma-scaled noise (diffusers'
// Euler family): the model input is scaled to unit variance, and the initial
// noise is sigma_max wide, or sqrt(sigma_max² + 1) with "leading" spacing, as
// diffusers computes it. Subclasses fill sigmas_ in set_timesteps.
class SigmaScaledScheduler : public Scheduler {
 public:
  float init_noise_sigma() const override;
  Tensor scale_model_input(const Tensor& sample, int step) const override;

 protected:
  SigmaScaledScheduler(std::string_view class_name, TimestepSpacing spacing)
      : class_name_(class_name), spacing_(spacing) {}

  std::string_view class_name_;
  TimestepSpacing spacing_;
};

// diffusers finds the first step's place in the schedule by looking its timestep up and,
// when the value occurs twice, takes the second occurrence (meant for img2img, which starts
// mid-schedule). Where the first timestep repeats, diffusers thus skips a step and runs
// off the end of its sigma table on the last one (IndexError); kiln refuses that schedule.
void check_first_timestep_not_repeated(const Scheduler& scheduler, std::string_view class_name);

// Σ coefficient · tensor over same-shaped tensors, coefficients computed in double and
// applied in the tensors' precision.
Tensor combine(std::initializer_list<std::pair<double, Tensor>> terms);

// randn_tensor(like.shape, generator): NCHW draws on torch's CPU generator, as diffusers
// makes them, laid out NHWC on like's device in like's dtype.
Tensor draw_noise_like(const Tensor& like, TorchGenerator& generator);

// A quantity the update needs, as coefficients of the sample and the model output:
// value = sample_coefficient * sample + output_coefficient * model_output.
struct LinearForm {
  double sample = 0.0;
  double model_output = 0.0;
};
// pred_original_sample and pred_epsilon at a timestep with cumulative alpha alpha_prod_t,
// for the samplers that work with alphas_cumprod (DDIM, LCM).
LinearForm original_sample_from_alpha(PredictionType type, double alpha_prod_t);
LinearForm epsilon_from_alpha(PredictionType type, double alpha_prod_t);

// One per sampler file.
std::unique_ptr<Scheduler> make_euler_discrete(const SchedulerConfig& config, bool karras);
std::unique_ptr<Scheduler> make_euler_ancestral_discrete(const SchedulerConfig& config);
std::unique_ptr<Scheduler> make_ddim(const SchedulerConfig& config);
std::unique_ptr<Scheduler> make_dpm_solver_multistep(const SchedulerConfig& config, bool karras);
std::unique_ptr<Scheduler> make_lcm(const SchedulerConfig& config);
std::unique_ptr<Scheduler> make_pndm(const SchedulerConfig& config);

}  // namespace kiln::schedulers
