// DPM++ 2M: diffusers' DPMSolverMultistepScheduler with algorithm_type "dpmsolver++"
// (Lu et al., "DPM-Solver++"), a multistep solver in log-SNR time lambda = log(alpha /
// sigma) that works on the model's x0 prediction and reuses the previous steps' x0
// predictions for its higher-order terms. solver_order (default 2) and solver_type
// (midpoint, heun) come from the config as from_config would take them.
//
// What diffusers 0.42.1 does that is easy to miss:
//   * Timesteps are integers and spaced over num_inference_steps + 1 points with the last
//     dropped ("linspace", "leading"), so they never reach 0.
//   * Karras sigmas span the whole training range (sigma at t = 0 to t = N - 1), unlike
//     EulerDiscreteScheduler's, and their timesteps are rounded, except for
//     squaredcos_cap_v2 where they are truncated by the int64 cast instead.
//   * sigma_min / sigma_max bound the Karras schedule although the class does not take
//     them: from_config keeps unknown keys in the config and the code looks them up there.
//   * The first step is first order; so is the last one when final_sigmas_type is "zero"
//     (the default: the result is then exactly the last x0 prediction), with
//     euler_at_final, or with lower_order_final and fewer than 15 steps.
//   * The Karras schedule can repeat its first timestep (squaredcos_cap_v2 with few
//     steps); diffusers then skips a step and fails at the end, kiln refuses it.
#include <algorithm>
#include <array>
#include <cmath>
#include <limits>

#include "kiln/error.h"
#include "ops/ops.h"
#include "schedulers/scheduler_common.h"
#include "schedulers/sigmas.h"

namespace kiln::schedulers {
namespace {

constexpr std::string_view kClassName = "DPMSolverMultistepScheduler";

enum class SolverType { Midpoint, Heun };

// alpha_t, sigma_t and lambda_t of a step from its sigma (the variance-exploding sigma).
struct NoiseLevel {
  double alpha, sigma, lambda;
  explicit NoiseLevel(double ve_sigma)
      : alpha(1.0 / std::sqrt(ve_sigma * ve_sigma + 1.0)),
        sigma(ve_sigma * alpha),
        lambda(std::log(alpha) - std::log(sigma)) {}  // +inf at sigma 0
};

class DPMSolverMultistepScheduler final : public Scheduler {
 public:
  DPMSolverMultistepScheduler(const SchedulerConfig& config, bool karras)
      : training_(read_training_schedule(config, BetaDefaults{}, ZeroSnrFloor::Raise)),
        training_sigmas_(sigmas_from_alphas_cumprod(training_.alphas_cumprod)),
        solver_order_(config.integer("solver_order", 2)),
        prediction_type_(read_prediction_type(config, {"epsilon", "v_prediction", "sample"})),
        spacing_(read_timestep_spacing(config, "linspace")),
        steps_offset_(config.integer("steps_offset", 0)),
        lower_order_final_(config.flag("lower_order_final", true)),
        euler_at_final_(config.flag("euler_at_final", false)),
        karras_(karras),
        sigma_min_(config.optional_number("sigma_min")),
        sigma_max_(config.optional_number("sigma_max")),
        final_sigma_is_min_(config.choice("final_sigmas_type", "zero", {"zero", "sigma_min"}) ==
                            "sigma_min"),
        lambda_min_clipped_(
            config.number("lambda_min_clipped", -std::numeric_limits<double>::infinity())) {
    // diffusers maps "deis" to dpmsolver++ and the UniPC solver types to midpoint.
    config.choice("algorithm_type", "dpmsolver++", {"dpmsolver++", "deis"});
    const std::string solver_type =
        config.choice("solver_type", "midpoint", {"midpoint", "heun", "logrho", "bh1", "bh2"});
    solver_type_ = solver_type == "heun" ? SolverType::Heun : SolverType::Midpoint;
    if (solver_order_ < 1 || solver_order_ > 3)
      config.fail("solver_order", str("is ", solver_order_, "; DPM-Solver++ has orders 1 to 3"));
    if (config.has("variance_type"))
      config.fail("variance_type", "is set; kiln supports models that predict the noise alone");
    config.reject_if_set("thresholding");
    config.reject_if_set("use_exponential_sigmas", "use use_karras_sigmas or the default");
    config.reject_if_set("use_beta_sigmas", "use use_karras_sigmas or the default");
    config.reject_if_set("use_lu_lambdas", "use use_karras_sigmas or the default");
    config.reject_if_set("use_flow_sigmas", "flow-matching models need a flow-match sampler");
    config.reject_if_set("use_dynamic_shifting", "flow-matching models need a flow-match sampler");
  }

  void set_timesteps(int num_inference_steps) override {
    const int num_train = training_.num_train_timesteps;
    check_num_inference_steps(kClassName, num_inference_steps, num_train, "num_train_timesteps");
    const int last_timestep = num_train - clipped_steps();
    std::vector<double> timesteps;
    switch (spacing_) {
      case TimestepSpacing::Linspace: {
        const std::vector<double> spaced =
            numpy_linspace(0.0, last_timestep - 1, num_inference_steps + 1);
        for (int i = num_inference_steps; i >= 1; --i)
          timesteps.push_back(numpy_round(spaced[size_t(i)]));
        break;
      }
      case TimestepSpacing::Leading: {
        const int step_ratio = last_timestep / (num_inference_steps + 1);
        for (int i = num_inference_steps; i >= 1; --i)
          timesteps.push_back(double(i * step_ratio + steps_offset_));
        break;
      }
      case TimestepSpacing::Trailing: {
        const double step_ratio = double(num_train) / num_inference_steps;
        for (double t : numpy_arange(last_timestep, 0.0, -step_ratio))
          timesteps.push_back(numpy_round(t) - 1.0);
        break;
      }
    }

    std::vector<double> sigmas;
    if (karras_) {
      sigmas = karras_sigmas(sigma_min_.value_or(training_sigmas_.front()),
                             sigma_max_.value_or(training_sigmas_.back()), num_inference_steps);
      const std::vector<float> log_training_sigmas = log_float32(training_sigmas_);
      const bool round = training_.beta_schedule != "squaredcos_cap_v2";
      timesteps.clear();
      for (double sigma : sigmas) {
        const double t = sigma_to_timestep(sigma, log_training_sigmas);
        timesteps.push_back(round ? numpy_round(t) : std::trunc(t));
      }
    } else {
      for (double t : timesteps) sigmas.push_back(interp_by_timestep(t, training_sigmas_));
    }
    sigmas.push_back(final_sigma_is_min_ ? training_sigmas_.front() : 0.0);
    sigmas_ = to_float32(sigmas);
    timesteps_.assign(timesteps.begin(), timesteps.end());

    x0_history_.assign(size_t(solver_order_), Tensor());
    lower_order_nums_ = 0;
    next_step_ = 0;
  }

  float init_noise_sigma() const override { return 1.0f; }

  Tensor step(const Tensor& model_output, int step, const Tensor& sample,
              TorchGenerator& generator) override {
    check_step_index(*this, step);
    KILN_CHECK(step == next_step_, kClassName, ": steps must run in order; expected step ",
               next_step_, ", got ", step);
    if (step == 0) check_first_timestep_not_repeated(*this, kClassName);
    const int num_steps = this->num_steps();
    const bool final_zero = !final_sigma_is_min_;
    const bool lower_order_final =
        step == num_steps - 1 &&
        (euler_at_final_ || (lower_order_final_ && num_steps < 15) || final_zero);
    const bool lower_order_second = step == num_steps - 2 && lower_order_final_ && num_steps < 15;

    const NoiseLevel s0(sigmas_[size_t(step)]);
    std::rotate(x0_history_.begin(), x0_history_.begin() + 1, x0_history_.end());
    x0_history_.back() = predict_original_sample(model_output, sample, s0);

    Tensor prev_sample;
    if (solver_order_ == 1 || lower_order_nums_ < 1 || lower_order_final)
      prev_sample = first_order_update(sample, step);
    else if (solver_order_ == 2 || lower_order_nums_ < 2 || lower_order_second)
      prev_sample = second_order_update(sample, step);
    else
      prev_sample = third_order_update(sample, step);
    if (lower_order_nums_ < solver_order_) ++lower_order_nums_;
    ++next_step_;
    return prev_sample;
  }

 private:
  // Training steps cut from the top of the schedule by lambda_min_clipped: diffusers'
  // searchsorted(flip(lambda_t), lambda_min_clipped), with lambda_t in float32.
  int clipped_steps() const {
    int count = 0;
    for (auto it = training_.alphas_cumprod.rbegin(); it != training_.alphas_cumprod.rend(); ++it) {
      const float lambda = std::log(std::sqrt(*it)) - std::log(std::sqrt(1.0f - *it));
      if (!(double(lambda) < lambda_min_clipped_)) break;
      ++count;
    }
    return count;
  }

  Tensor predict_original_sample(const Tensor& model_output, const Tensor& sample,
                                 const NoiseLevel& level) const {
    switch (prediction_type_) {
      case PredictionType::Epsilon:
        return combine({{1.0 / level.alpha, sample}, {-level.sigma / level.alpha, model_output}});
      case PredictionType::VPrediction:
        return combine({{level.alpha, sample}, {-level.sigma, model_output}});
      case PredictionType::Sample:
        // Kept across steps, so it must not alias a buffer the caller reuses.
        return model_output.clone();
    }
    KILN_FAIL("unknown prediction type");
  }

  // x_t = (sigma_t / sigma_s) x - alpha_t (e^-h - 1) D0, the exponential-integrator step.
  Tensor first_order_update(const Tensor& sample, int step) const {
    const NoiseLevel t(sigmas_[size_t(step) + 1]), s0(sigmas_[size_t(step)]);
    const double h = t.lambda - s0.lambda;
    return combine({{t.sigma / s0.sigma, sample},
                    {-t.alpha * std::expm1(-h), x0_history_[size_t(solver_order_) - 1]}});
  }

  Tensor second_order_update(const Tensor& sample, int step) const {
    const NoiseLevel t(sigmas_[size_t(step) + 1]), s0(sigmas_[size_t(step)]),
        s1(sigmas_[size_t(step) - 1]);
    const double h = t.lambda - s0.lambda, h0 = s0.lambda - s1.lambda;
    const double r0 = h0 / h;
    const double phi = t.alpha * std::expm1(-h);  // alpha_t (e^-h - 1)
    // D0 = m0, D1 = (m0 - m1) / r0; midpoint adds -phi/2 D1, heun alpha_t((e^-h - 1)/h + 1) D1.
    const double d1_weight =
        solver_type_ == SolverType::Midpoint ? -0.5 * phi : t.alpha * (std::expm1(-h) / h + 1.0);
    const size_t last = size_t(solver_order_) - 1;
    return combine({{t.sigma / s0.sigma, sample},
                    {-phi + d1_weight / r0, x0_history_[last]},
                    {-d1_weight / r0, x0_history_[last - 1]}});
  }

  Tensor third_order_update(const Tensor& sample, int step) const {
    const NoiseLevel t(sigmas_[size_t(step) + 1]), s0(sigmas_[size_t(step)]),
        s1(sigmas_[size_t(step) - 1]), s2(sigmas_[size_t(step) - 2]);
    const double h = t.lambda - s0.lambda, h0 = s0.lambda - s1.lambda, h1 = s1.lambda - s2.lambda;
    const double r0 = h0 / h, r1 = h1 / h;
    const double em1 = std::expm1(-h);  // e^-h - 1
    const double d0_weight = -t.alpha * em1;
    const double d1_weight = t.alpha * (em1 / h + 1.0);
    const double d2_weight = -t.alpha * ((em1 + h) / (h * h) - 0.5);
    // Over the x0 predictions (m0, m1, m2), newest first:
    // D1_0 = (m0 - m1) / r0, D1_1 = (m1 - m2) / r1, E = D1_0 - D1_1,
    // D1 = D1_0 + r0 / (r0 + r1) E, D2 = E / (r0 + r1).
    const std::array<double, 3> d1_0 = {1.0 / r0, -1.0 / r0, 0.0};
    const std::array<double, 3> e = {1.0 / r0, -1.0 / r0 - 1.0 / r1, 1.0 / r1};
    std::array<double, 3> weights{};
    for (size_t k = 0; k < 3; ++k)
      weights[k] = (k == 0 ? d0_weight : 0.0) + d1_weight * (d1_0[k] + r0 / (r0 + r1) * e[k]) +
                   d2_weight * e[k] / (r0 + r1);
    const size_t last = size_t(solver_order_) - 1;
    return combine({{t.sigma / s0.sigma, sample},
                    {weights[0], x0_history_[last]},
                    {weights[1], x0_history_[last - 1]},
                    {weights[2], x0_history_[last - 2]}});
  }

  TrainingSchedule training_;
  std::vector<float> training_sigmas_;  // index = training timestep
  int solver_order_;
  SolverType solver_type_ = SolverType::Midpoint;
  PredictionType prediction_type_;
  TimestepSpacing spacing_;
  int steps_offset_;
  bool lower_order_final_;
  bool euler_at_final_;
  bool karras_;
  std::optional<double> sigma_min_, sigma_max_;  // bounds of the Karras schedule
  bool final_sigma_is_min_;
  double lambda_min_clipped_;

  // The x0 predictions of the last solver_order steps, oldest first.
  std::vector<Tensor> x0_history_;
  int lower_order_nums_ = 0;
  int next_step_ = 0;
};

}  // namespace

std::unique_ptr<Scheduler> make_dpm_solver_multistep(const SchedulerConfig& config, bool karras) {
  return std::make_unique<DPMSolverMultistepScheduler>(config, karras);
}

}  // namespace kiln::schedulers
