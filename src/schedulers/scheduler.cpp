// Sampler names, make_scheduler, and what the sampler files share: the config reader and
// the training noise schedule.
#include "schedulers/scheduler.h"

#include <algorithm>
#include <array>
#include <cmath>

#include "kiln/error.h"
#include "ops/ops.h"
#include "schedulers/scheduler_common.h"
#include "schedulers/sigmas.h"

namespace kiln {

namespace {

struct SamplerNames {
  SamplerKind kind;
  std::string_view name;
  std::string_view a1111_name;
  std::string_view diffusers_class;
};

constexpr std::array<SamplerNames, 6> kSamplers = {{
    {SamplerKind::Euler, "euler", "Euler", "EulerDiscreteScheduler"},
    {SamplerKind::EulerAncestral, "euler_a", "Euler a", "EulerAncestralDiscreteScheduler"},
    {SamplerKind::DDIM, "ddim", "DDIM", "DDIMScheduler"},
    {SamplerKind::DPMPP2M, "dpmpp_2m", "DPM++ 2M", "DPMSolverMultistepScheduler"},
    {SamplerKind::LCM, "lcm", "LCM", "LCMScheduler"},
    // A1111 calls the PLMS update that SD's configs select (skip_prk_steps) "PLMS".
    {SamplerKind::PNDM, "pndm", "PLMS", "PNDMScheduler"},
}};

const SamplerNames& names_of(SamplerKind kind) {
  for (const SamplerNames& names : kSamplers)
    if (names.kind == kind) return names;
  KILN_FAIL("unknown sampler kind ", int(kind));
}

bool supports_karras(SamplerKind kind) {
  return kind == SamplerKind::Euler || kind == SamplerKind::DPMPP2M;
}

}  // namespace

std::optional<SamplerKind> parse_sampler(std::string_view name) {
  for (const SamplerNames& names : kSamplers)
    if (names.name == name) return names.kind;
  return std::nullopt;
}

std::string_view sampler_name(SamplerKind kind) {
  return names_of(kind).name;
}

std::string a1111_sampler_name(SamplerKind kind, SigmaSchedule schedule) {
  std::string name(names_of(kind).a1111_name);
  if (schedule == SigmaSchedule::Karras) name += " Karras";
  return name;
}

std::optional<std::pair<SamplerKind, SigmaSchedule>> parse_a1111_sampler(std::string_view name) {
  for (const SamplerNames& names : kSamplers) {
    if (name == names.a1111_name) return std::pair{names.kind, SigmaSchedule::Default};
    if (supports_karras(names.kind) && name.size() == names.a1111_name.size() + 7 &&
        name.starts_with(names.a1111_name) && name.ends_with(" Karras"))
      return std::pair{names.kind, SigmaSchedule::Karras};
  }
  return std::nullopt;
}

std::unique_ptr<Scheduler> make_scheduler(SamplerKind kind, SigmaSchedule schedule,
                                          const nlohmann::json& scheduler_config) {
  const SamplerNames& names = names_of(kind);
  if (!scheduler_config.is_object())
    KILN_FAIL("scheduler_config.json must hold a JSON object, not ", scheduler_config.type_name());
  const schedulers::SchedulerConfig config(scheduler_config, std::string(names.diffusers_class));
  if (schedule == SigmaSchedule::Karras && !supports_karras(kind))
    KILN_FAIL("sampler \"", names.name, "\" has no Karras variant: diffusers' ",
              names.diffusers_class, " does not support use_karras_sigmas");
  // A config that already asks for Karras sigmas keeps them, as from_config would.
  const bool karras = schedule == SigmaSchedule::Karras ||
                      (supports_karras(kind) && config.flag("use_karras_sigmas", false));
  switch (kind) {
    case SamplerKind::Euler:
      return schedulers::make_euler_discrete(config, karras);
    case SamplerKind::EulerAncestral:
      return schedulers::make_euler_ancestral_discrete(config);
    case SamplerKind::DDIM:
      return schedulers::make_ddim(config);
    case SamplerKind::DPMPP2M:
      return schedulers::make_dpm_solver_multistep(config, karras);
    case SamplerKind::LCM:
      return schedulers::make_lcm(config);
    case SamplerKind::PNDM:
      return schedulers::make_pndm(config);
  }
  KILN_FAIL("unknown sampler kind ", int(kind));
}

namespace schedulers {

// ---- SchedulerConfig ----

SchedulerConfig::SchedulerConfig(const nlohmann::json& json, std::string class_name)
    : json_(json), class_name_(std::move(class_name)) {}

const nlohmann::json* SchedulerConfig::find(std::string_view key) const {
  const auto it = json_.find(key);
  if (it == json_.end() || it->is_null()) return nullptr;
  const auto defaulted = json_.find("_use_default_values");
  if (defaulted != json_.end() && defaulted->is_array())
    for (const nlohmann::json& name : *defaulted)
      if (name.is_string() && name.get_ref<const std::string&>() == key) return nullptr;
  return &*it;
}

void SchedulerConfig::fail(std::string_view key, const std::string& problem) const {
  KILN_FAIL("scheduler config for ", class_name_, ": \"", key, "\" ", problem);
}

int SchedulerConfig::integer(std::string_view key, int fallback) const {
  const nlohmann::json* value = find(key);
  if (!value) return fallback;
  if (value->is_number_integer()) return value->get<int>();
  if (value->is_number_float()) {
    const double d = value->get<double>();
    if (d == std::floor(d) && std::abs(d) < 1e9) return int(d);
  }
  fail(key, str("must be an integer, got ", value->dump()));
}

double SchedulerConfig::number(std::string_view key, double fallback) const {
  return optional_number(key).value_or(fallback);
}

std::optional<double> SchedulerConfig::optional_number(std::string_view key) const {
  const nlohmann::json* value = find(key);
  if (!value) return std::nullopt;
  if (!value->is_number()) fail(key, str("must be a number, got ", value->dump()));
  return value->get<double>();
}

std::optional<std::vector<double>> SchedulerConfig::number_list(std::string_view key) const {
  const nlohmann::json* value = find(key);
  if (!value) return std::nullopt;
  if (!value->is_array()) fail(key, str("must be a list of numbers, got ", value->type_name()));
  std::vector<double> numbers;
  for (const nlohmann::json& element : *value) {
    if (!element.is_number()) fail(key, str("must hold numbers only, got ", element.dump()));
    numbers.push_back(element.get<double>());
  }
  return numbers;
}

bool SchedulerConfig::flag(std::string_view key, bool fallback) const {
  const auto it = json_.find(key);
  if (it != json_.end() && it->is_null()) return false;  // None is falsy
  const nlohmann::json* value = find(key);
  if (!value) return fallback;
  if (!value->is_boolean()) fail(key, str("must be true or false, got ", value->dump()));
  return value->get<bool>();
}

std::string SchedulerConfig::choice(std::string_view key, std::string_view fallback,
                                    std::initializer_list<std::string_view> accepted) const {
  const nlohmann::json* value = find(key);
  if (!value) return std::string(fallback);
  if (value->is_string()) {
    const std::string& text = value->get_ref<const std::string&>();
    if (std::find(accepted.begin(), accepted.end(), text) != accepted.end()) return text;
  }
  std::string choices;
  for (std::string_view option : accepted) choices += str(choices.empty() ? "" : ", ", option);
  fail(key, str("is ", value->dump(), "; kiln supports ", choices));
}

void SchedulerConfig::reject_if_set(std::string_view key, std::string_view what_instead) const {
  if (flag(key, false))
    fail(key, str("is true, which kiln does not implement",
                  what_instead.empty() ? "" : str("; ", what_instead)));
}

PredictionType read_prediction_type(const SchedulerConfig& config,
                                    std::initializer_list<std::string_view> accepted) {
  const std::string type = config.choice("prediction_type", "epsilon", accepted);
  if (type == "v_prediction") return PredictionType::VPrediction;
  if (type == "sample" || type == "original_sample") return PredictionType::Sample;
  return PredictionType::Epsilon;
}

TimestepSpacing read_timestep_spacing(const SchedulerConfig& config, std::string_view fallback) {
  const std::string spacing =
      config.choice("timestep_spacing", fallback, {"linspace", "leading", "trailing"});
  if (spacing == "linspace") return TimestepSpacing::Linspace;
  if (spacing == "leading") return TimestepSpacing::Leading;
  return TimestepSpacing::Trailing;
}

// ---- training noise schedule ----

namespace {

// diffusers' betas_for_alpha_bar with the cosine alpha_bar of Nichol & Dhariwal, in
// Python floats, stored as float32.
std::vector<float> squaredcos_cap_v2_betas(int num_train_timesteps) {
  auto alpha_bar = [](double t) {
    const double c = std::cos((t + 0.008) / 1.008 * M_PI / 2);
    return c * c;
  };
  std::vector<float> betas(static_cast<size_t>(num_train_timesteps));
  for (int i = 0; i < num_train_timesteps; ++i) {
    const double t1 = double(i) / num_train_timesteps;
    const double t2 = double(i + 1) / num_train_timesteps;
    betas[size_t(i)] = float(std::min(1.0 - alpha_bar(t2) / alpha_bar(t1), 0.999));
  }
  return betas;
}

// torch.cumprod on float32 accumulates in double and stores each partial product in float32.
std::vector<float> cumulative_product(const std::vector<float>& values) {
  std::vector<float> products(values.size());
  double product = 1.0;
  for (size_t i = 0; i < values.size(); ++i) {
    product *= double(values[i]);
    products[i] = float(product);
  }
  return products;
}

std::vector<float> one_minus(const std::vector<float>& values) {
  std::vector<float> out(values.size());
  for (size_t i = 0; i < values.size(); ++i) out[i] = 1.0f - values[i];
  return out;
}

// Lin et al., "Common Diffusion Noise Schedules and Sample Steps are Flawed", Algorithm 1:
// shift and scale sqrt(alphas_cumprod) so that the last step is pure noise. float32
// throughout, as diffusers' rescale_zero_terminal_snr.
std::vector<float> rescale_zero_terminal_snr(const std::vector<float>& betas) {
  std::vector<float> sqrt_alphas_cumprod = cumulative_product(one_minus(betas));
  for (float& a : sqrt_alphas_cumprod) a = std::sqrt(a);
  const float first = sqrt_alphas_cumprod.front(), last = sqrt_alphas_cumprod.back();
  const float scale = first / (first - last);
  std::vector<float> alphas_cumprod(betas.size());
  for (size_t i = 0; i < betas.size(); ++i) {
    const float shifted = (sqrt_alphas_cumprod[i] - last) * scale;
    alphas_cumprod[i] = shifted * shifted;
  }
  std::vector<float> alphas(betas.size());
  alphas[0] = alphas_cumprod[0];
  for (size_t i = 1; i < betas.size(); ++i) alphas[i] = alphas_cumprod[i] / alphas_cumprod[i - 1];
  return one_minus(alphas);
}

}  // namespace

TrainingSchedule read_training_schedule(const SchedulerConfig& config, const BetaDefaults& defaults,
                                        std::optional<ZeroSnrFloor> floor) {
  TrainingSchedule schedule;
  schedule.num_train_timesteps = config.integer("num_train_timesteps", 1000);
  if (schedule.num_train_timesteps < 2)
    config.fail("num_train_timesteps",
                str("is ", schedule.num_train_timesteps, "; need at least 2"));
  const int n = schedule.num_train_timesteps;
  schedule.beta_schedule = config.choice("beta_schedule", defaults.beta_schedule,
                                         {"linear", "scaled_linear", "squaredcos_cap_v2"});
  const double beta_start = config.number("beta_start", defaults.beta_start);
  const double beta_end = config.number("beta_end", defaults.beta_end);

  std::vector<float> betas;
  if (const auto trained = config.number_list("trained_betas")) {
    if (int(trained->size()) != n)
      config.fail("trained_betas",
                  str("has ", trained->size(), " values but num_train_timesteps is ", n,
                      "; they must agree"));
    betas = to_float32(*trained);
  } else if (schedule.beta_schedule == "linear") {
    betas = torch_linspace_float32(float(beta_start), float(beta_end), n);
  } else if (schedule.beta_schedule == "scaled_linear") {
    // Linear in sqrt(beta), the schedule Stable Diffusion was trained with.
    betas =
        torch_linspace_float32(float(std::pow(beta_start, 0.5)), float(std::pow(beta_end, 0.5)), n);
    for (float& b : betas) b = b * b;
  } else {
    betas = squaredcos_cap_v2_betas(n);
  }
  const bool zero_snr = floor && config.flag("rescale_betas_zero_snr", false);
  if (zero_snr) betas = rescale_zero_terminal_snr(betas);

  schedule.alphas_cumprod = cumulative_product(one_minus(betas));
  if (zero_snr && floor == ZeroSnrFloor::Raise) schedule.alphas_cumprod.back() = 0x1p-24f;
  return schedule;
}

std::vector<float> sigmas_from_alphas_cumprod(const std::vector<float>& alphas_cumprod) {
  std::vector<float> sigmas(alphas_cumprod.size());
  for (size_t i = 0; i < sigmas.size(); ++i)
    sigmas[i] = std::sqrt((1.0f - alphas_cumprod[i]) / alphas_cumprod[i]);
  return sigmas;
}

float sqrt_sigma_squared_plus_one(float sigma) {
  // Stored so that the compiler cannot fuse the square into the addition: torch rounds
  // sigma**2 to float32 first.
  volatile float squared = sigma * sigma;
  return std::sqrt(squared + 1.0f);
}

// ---- helpers for the updates ----

void check_num_inference_steps(std::string_view class_name, int num_inference_steps, int max_steps,
                               std::string_view limit) {
  if (num_inference_steps < 1 || num_inference_steps > max_steps)
    KILN_FAIL(class_name, ": the number of steps must be between 1 and ", max_steps, " (", limit,
              "), got ", num_inference_steps);
}

void check_step_index(const Scheduler& scheduler, int step) {
  KILN_CHECK(scheduler.num_steps() > 0, "call set_timesteps before stepping the sampler");
  KILN_CHECK(step >= 0 && step < scheduler.num_steps(), "step ", step, " is outside the ",
             scheduler.num_steps(), "-step schedule");
}

void check_first_timestep_not_repeated(const Scheduler& scheduler, std::string_view class_name) {
  const std::vector<float>& timesteps = scheduler.timesteps();
  if (timesteps.size() > 1 && std::count(timesteps.begin(), timesteps.end(), timesteps.front()) > 1)
    KILN_FAIL(class_name, ": the first timestep (", timesteps.front(), ") of this ",
              timesteps.size(),
              "-step schedule occurs twice; diffusers would start at its "
              "second occurrence and fail on the last step. Use fewer steps or another sigma "
              "schedule.");
}

Tensor combine(std::initializer_list<std::pair<double, Tensor>> terms) {
  std::vector<std::pair<float, Tensor>> float_terms;
  float_terms.reserve(terms.size());
  for (const auto& [coefficient, tensor] : terms)
    float_terms.emplace_back(float(coefficient), tensor);
  return ops::linear_combination(float_terms);
}

Tensor draw_noise_like(const Tensor& like, TorchGenerator& generator) {
  KILN_CHECK(like.ndim() == 4, "sampler noise for NHWC latents, got ", like.describe());
  const Tensor noise = generator.randn_nhwc(like.dim(0), like.dim(3), like.dim(1), like.dim(2));
  return ops::to(noise, like.device(), like.dtype());
}

LinearForm original_sample_from_alpha(PredictionType type, double alpha_prod_t) {
  const double sqrt_alpha = std::sqrt(alpha_prod_t), sqrt_beta = std::sqrt(1.0 - alpha_prod_t);
  switch (type) {
    case PredictionType::Epsilon:
      return {1.0 / sqrt_alpha, -sqrt_beta / sqrt_alpha};
    case PredictionType::VPrediction:
      return {sqrt_alpha, -sqrt_beta};
    case PredictionType::Sample:
      return {0.0, 1.0};
  }
  KILN_FAIL("unknown prediction type");
}

LinearForm epsilon_from_alpha(PredictionType type, double alpha_prod_t) {
  const double sqrt_alpha = std::sqrt(alpha_prod_t), sqrt_beta = std::sqrt(1.0 - alpha_prod_t);
  switch (type) {
    case PredictionType::Epsilon:
      return {0.0, 1.0};
    case PredictionType::VPrediction:
      return {sqrt_beta, sqrt_alpha};
    case PredictionType::Sample:
      return {1.0 / sqrt_beta, -sqrt_alpha / sqrt_beta};
  }
  KILN_FAIL("unknown prediction type");
}

float SigmaScaledScheduler::init_noise_sigma() const {
  KILN_CHECK(!sigmas_.empty(), class_name_, ": call set_timesteps first");
  const float sigma_max = *std::max_element(sigmas_.begin(), sigmas_.end());
  return spacing_ == TimestepSpacing::Leading ? sqrt_sigma_squared_plus_one(sigma_max) : sigma_max;
}

// Scales the input to unit variance: the sample holds signal plus sigma-scaled noise.
Tensor SigmaScaledScheduler::scale_model_input(const Tensor& sample, int step) const {
  check_step_index(*this, step);
  return ops::scale(sample, 1.0f / sqrt_sigma_squared_plus_one(sigmas_[size_t(step)]));
}

}  // namespace schedulers
}  // namespace kiln
