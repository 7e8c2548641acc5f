// PNDM: diffusers' PNDMScheduler, the pseudo numerical methods of Liu et al. ("Pseudo
// Numerical Methods for Diffusion Models on Manifolds"). Every update is the paper's
// transfer (its formula 9), the deterministic DDIM move of a sample from timestep t to
// t - delta along a noise estimate; the methods differ in the estimate. Linear multistep
// (PLMS) combines the model outputs of the last four steps (Adams-Bashforth); its warm-up
// is either three classical Runge-Kutta steps of four model calls each (PRK, the class's
// default) or, with skip_prk_steps (what Stable Diffusion's configs set), lower-order
// steps and one repeated timestep (crowsonkb's PLMS sampler, A1111's "PLMS").
//
// What diffusers 0.42.1 does that is easy to miss:
//   * With skip_prk_steps, n >= 2 steps have n + 1 timesteps: the second one occurs
//     twice. Step 0 is a plain DDIM step; step 1 evaluates the model at its result, then
//     redoes step 0 from the same start with the mean of the two outputs (a Heun step).
//     The multistep history keeps step 0's output but never step 1's.
//   * Without skip_prk_steps, the top four timesteps take 12 Runge-Kutta calls with
//     half steps of num_train_timesteps // n // 2, then one call per remaining timestep:
//     n + 9 calls. Fewer than 4 steps fail (numpy cannot broadcast the half steps).
//   * Every move goes from t to t - num_train_timesteps // n whatever the spacing. With
//     "linspace" and "trailing" that is not always the next timestep, and the next step
//     then treats the sample as if it were at its own timestep. The Heun step likewise
//     restarts from t + num_train_timesteps // n, not always the first timestep.
//   * Defaults differ from DDIM's: set_alpha_to_one false (the last move ends at
//     alphas_cumprod[0]) and skip_prk_steps false. The class has no clip_sample,
//     thresholding or rescale_betas_zero_snr: from_config ignores those keys.
//   * "trailing" with a step count for which numpy's arange overshoots (61, ...) has the
//     timestep -1, which torch indexing wraps to alphas_cumprod[-1].
#include <array>
#include <cmath>

#include "kiln/error.h"
#include "ops/ops.h"
#include "schedulers/scheduler_common.h"
#include "schedulers/sigmas.h"

namespace kiln::schedulers {
namespace {

constexpr std::string_view kClassName = "PNDMScheduler";

// Model calls per Runge-Kutta step, and the Runge-Kutta steps before the multistep ones.
constexpr int kStagesPerRungeKuttaStep = 4;
constexpr int kRungeKuttaSteps = 3;
// RK4's weights of its four stage outputs.
constexpr std::array<double, kStagesPerRungeKuttaStep> kRungeKuttaWeights = {1.0 / 6, 1.0 / 3,
                                                                             1.0 / 3, 1.0 / 6};
// Adams-Bashforth weights for a history of 1 to 4 model outputs, newest first.
constexpr int kMaxHistory = 4;
constexpr std::array<std::array<double, kMaxHistory>, kMaxHistory> kAdamsBashforthWeights = {{
    {1.0, 0.0, 0.0, 0.0},
    {3.0 / 2, -1.0 / 2, 0.0, 0.0},
    {23.0 / 12, -16.0 / 12, 5.0 / 12, 0.0},
    {55.0 / 24, -59.0 / 24, 37.0 / 24, -9.0 / 24},
}};

class PNDMScheduler final : public Scheduler {
 public:
  explicit PNDMScheduler(const SchedulerConfig& config)
      : training_(read_training_schedule(config, BetaDefaults{}, std::nullopt)),
        final_alpha_cumprod_(config.flag("set_alpha_to_one", false) ? 1.0f
                                                                    : training_.alphas_cumprod[0]),
        prediction_type_(read_prediction_type(config, {"epsilon", "v_prediction"})),
        spacing_(read_timestep_spacing(config, "leading")),
        steps_offset_(config.integer("steps_offset", 0)),
        skip_prk_steps_(config.flag("skip_prk_steps", false)) {}

  void set_timesteps(int num_inference_steps) override {
    const int num_train = training_.num_train_timesteps;
    check_num_inference_steps(kClassName, num_inference_steps, num_train, "num_train_timesteps");
    step_ratio_ = num_train / num_inference_steps;
    const std::vector<int> spaced = spaced_timesteps(num_inference_steps);
    const size_t m = spaced.size();

    timesteps_.clear();
    if (skip_prk_steps_) {
      // Descending, with the second largest timestep twice (the Heun step's).
      num_runge_kutta_calls_ = 0;
      timesteps_.push_back(float(spaced[m - 1]));
      for (size_t i = m - 1; i-- > 0;) {
        timesteps_.push_back(float(spaced[i]));
        if (i == m - 2) timesteps_.push_back(float(spaced[i]));
      }
    } else {
      if (m < size_t(kRungeKuttaSteps + 1))
        KILN_FAIL(kClassName, ": without skip_prk_steps the Runge-Kutta warm-up needs at least ",
                  kRungeKuttaSteps + 1, " steps, got ", num_inference_steps,
                  " (diffusers fails too); use more steps or set \"skip_prk_steps\": true in "
                  "scheduler_config.json");
      num_runge_kutta_calls_ = kRungeKuttaSteps * kStagesPerRungeKuttaStep;
      const int half_step = step_ratio_ / 2;
      // Each Runge-Kutta step from `from` down to `to` calls the model at from, twice half
      // a step above to, and at to.
      for (int k = 0; k < kRungeKuttaSteps; ++k) {
        const int from = spaced[m - 1 - size_t(k)], to = spaced[m - 2 - size_t(k)];
        for (int t : {from, to + half_step, to + half_step, to}) timesteps_.push_back(float(t));
      }
      // The multistep steps start where the Runge-Kutta ones ended, so that timestep repeats.
      for (size_t i = m - size_t(kRungeKuttaSteps); i-- > 0;)
        timesteps_.push_back(float(spaced[i]));
    }

    history_.clear();
    stage_start_ = Tensor();
    stage_outputs_.clear();
    next_step_ = 0;
  }

  float init_noise_sigma() const override { return 1.0f; }

  Tensor step(const Tensor& model_output, int step, const Tensor& sample,
              TorchGenerator& generator) override {
    check_step_index(*this, step);
    KILN_CHECK(step == next_step_, kClassName, ": steps must run in order; expected step ",
               next_step_, ", got ", step);
    Tensor prev_sample = step < num_runge_kutta_calls_
                             ? runge_kutta_stage(model_output, step, sample)
                             : linear_multistep_step(model_output, step, sample);
    ++next_step_;
    return prev_sample;
  }

 private:
  // diffusers' _timesteps: the timesteps the schedule is built from, ascending.
  std::vector<int> spaced_timesteps(int num_inference_steps) const {
    const int num_train = training_.num_train_timesteps;
    std::vector<int> spaced;
    switch (spacing_) {
      case TimestepSpacing::Linspace:
        for (double t : numpy_linspace(0.0, num_train - 1, num_inference_steps))
          spaced.push_back(int(numpy_round(t)));
        break;
      case TimestepSpacing::Leading:
        for (int i = 0; i < num_inference_steps; ++i)
          spaced.push_back(i * step_ratio_ + steps_offset_);
        break;
      case TimestepSpacing::Trailing: {
        const std::vector<double> from_top =
            numpy_arange(num_train, 0.0, -double(num_train) / num_inference_steps);
        for (auto it = from_top.rbegin(); it != from_top.rend(); ++it)
          spaced.push_back(int(numpy_round(*it)) - 1);
        break;
      }
    }
    return spaced;
  }

  // One model call of a Runge-Kutta step: every stage moves the step's starting sample;
  // the first three give the samples the next calls evaluate the model at, the fourth
  // (with all four outputs) the step's result.
  Tensor runge_kutta_stage(const Tensor& model_output, int step, const Tensor& sample) {
    const int stage = step % kStagesPerRungeKuttaStep;
    const int timestep = int(timesteps_[size_t(step)]);
    const int from = int(timesteps_[size_t(step - stage)]);
    // Even stages aim half a step below the timestep they were called at.
    const int to = stage % 2 == 0 ? timestep - step_ratio_ / 2 : timestep;
    if (stage == 0) {
      stage_start_ = sample.clone();
      stage_outputs_.clear();
      push_history(model_output);
    }
    if (stage < kStagesPerRungeKuttaStep - 1) {
      stage_outputs_.push_back(stage == 0 ? history_.back() : model_output.clone());
      return transfer(stage_start_, from, to, {{1.0, model_output}});
    }
    std::vector<std::pair<double, Tensor>> outputs;
    for (size_t i = 0; i < stage_outputs_.size(); ++i)
      outputs.emplace_back(kRungeKuttaWeights[i], stage_outputs_[i]);
    outputs.emplace_back(kRungeKuttaWeights.back(), model_output);
    return transfer(stage_start_, from, to, outputs);
  }

  Tensor linear_multistep_step(const Tensor& model_output, int step, const Tensor& sample) {
    const int timestep = int(timesteps_[size_t(step)]);
    // Without Runge-Kutta warm-up, step 1 is the Heun correction of step 0 (see the top).
    if (skip_prk_steps_ && step == 1) {
      const Tensor start = stage_start_;
      stage_start_ = Tensor();
      return transfer(start, timestep + step_ratio_, timestep,
                      {{0.5, model_output}, {0.5, history_.back()}});
    }
    if (skip_prk_steps_ && step == 0) stage_start_ = sample.clone();
    push_history(model_output);
    const std::array<double, kMaxHistory>& weights = kAdamsBashforthWeights[history_.size() - 1];
    std::vector<std::pair<double, Tensor>> outputs;
    for (size_t i = 0; i < history_.size(); ++i)
      outputs.emplace_back(weights[i], history_[history_.size() - 1 - i]);
    return transfer(sample, timestep, timestep - step_ratio_, outputs);
  }

  void push_history(const Tensor& model_output) {
    if (history_.size() == size_t(kMaxHistory)) history_.erase(history_.begin());
    history_.push_back(model_output.clone());  // kept across steps: must not alias the caller's
  }

  // The paper's formula (9): `sample` at timestep `from` moved to `to` along the noise
  // estimate Σ weight · output (outputs of the model's prediction type); `to` below 0 is
  // the end of the chain, at final_alpha_cumprod.
  Tensor transfer(const Tensor& sample, int from, int to,
                  const std::vector<std::pair<double, Tensor>>& outputs) const {
    const double alpha = training_.alpha_cumprod_at(from, kClassName);
    const double alpha_prev =
        to >= 0 ? training_.alpha_cumprod_at(to, kClassName) : double(final_alpha_cumprod_);
    const double sample_weight = std::sqrt(alpha_prev / alpha);
    const double epsilon_weight =
        -(alpha_prev - alpha) /
        (alpha * std::sqrt(1.0 - alpha_prev) + std::sqrt(alpha * (1.0 - alpha) * alpha_prev));
    // v-prediction outputs become noise with the starting sample's share.
    const LinearForm epsilon = epsilon_from_alpha(prediction_type_, alpha);
    std::vector<std::pair<float, Tensor>> terms;
    terms.emplace_back(float(sample_weight + epsilon_weight * epsilon.sample), sample);
    for (const auto& [weight, output] : outputs)
      terms.emplace_back(float(epsilon_weight * epsilon.model_output * weight), output);
    return ops::linear_combination(terms);
  }

  TrainingSchedule training_;
  float final_alpha_cumprod_;
  PredictionType prediction_type_;
  TimestepSpacing spacing_;
  int steps_offset_;
  bool skip_prk_steps_;
  int step_ratio_ = 0;  // num_train_timesteps // num_inference_steps: every move's length
  int num_runge_kutta_calls_ = 0;

  // The model outputs the multistep combines, oldest first (with Runge-Kutta warm-up, the
  // first stage's output of each Runge-Kutta step).
  std::vector<Tensor> history_;
  // Where the current Runge-Kutta step (or the Heun step) starts, and its stage outputs.
  Tensor stage_start_;
  std::vector<Tensor> stage_outputs_;
  int next_step_ = 0;
};

}  // namespace

std::unique_ptr<Scheduler> make_pndm(const SchedulerConfig& config) {
  return std::make_unique<PNDMScheduler>(config);
}

}  // namespace kiln::schedulers
