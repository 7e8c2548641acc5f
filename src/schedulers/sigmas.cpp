#include "schedulers/sigmas.h"

#include <algorithm>
#include <cmath>

#include "kiln/error.h"

namespace kiln::schedulers {
namespace {

// Rounds to double here. numpy and torch compute a * b + c with two roundings; with
// -march=native the compiler would otherwise fuse a product into a later addition (FMA,
// one rounding) and shift a timestep by an ulp.
double rounded(double x) {
  volatile double stored = x;
  return stored;
}

}  // namespace

std::vector<double> numpy_linspace(double start, double stop, int num, bool endpoint) {
  KILN_CHECK(num >= 0, "linspace of ", num, " values");
  std::vector<double> values(static_cast<size_t>(num));
  const int divisions = endpoint ? num - 1 : num;
  const double delta = stop - start;
  // numpy multiplies each index by the step, then adds start, then pins the endpoint.
  const double step = divisions > 0 ? delta / divisions : 0.0;
  for (int i = 0; i < num; ++i) values[size_t(i)] = rounded(i * step) + start;
  if (endpoint && num > 1) values.back() = stop;
  return values;
}

std::vector<double> numpy_arange(double start, double stop, double step) {
  KILN_CHECK(step != 0.0, "arange with step 0");
  const double length = std::ceil((stop - start) / step);
  if (!(length > 0)) return {};
  std::vector<double> values(static_cast<size_t>(length));
  values[0] = start;
  // numpy stores start and start + step, then fills the rest as start + i * delta with
  // delta re-derived from those two stored values.
  if (values.size() > 1) {
    const double delta = (start + step) - start;
    for (size_t i = 1; i < values.size(); ++i) values[i] = rounded(double(i) * delta) + start;
  }
  return values;
}

double numpy_round(double x) {
  return std::nearbyint(x);
}

std::vector<float> torch_linspace_float32(float start, float end, int steps) {
  KILN_CHECK(steps >= 1, "linspace of ", steps, " values");
  if (steps == 1) return {start};
  // torch walks forward from start for the first half and back from end for the second,
  // each value one fused multiply-add in float32.
  const float step = (end - start) / float(steps - 1);
  const int halfway = steps / 2;
  std::vector<float> values(static_cast<size_t>(steps));
  for (int i = 0; i < steps; ++i)
    values[size_t(i)] =
        i < halfway ? std::fma(step, float(i), start) : std::fma(-step, float(steps - i - 1), end);
  return values;
}

double interp_by_timestep(double x, const std::vector<float>& table) {
  KILN_CHECK(!table.empty(), "interpolation in an empty table");
  const double last = double(table.size() - 1);
  if (!(x > 0.0)) return table.front();  // also numpy's left value for x < 0
  if (x >= last) return table.back();
  const double below = std::floor(x);
  const size_t j = size_t(below);
  if (below == x) return table[j];
  const double slope = double(table[j + 1]) - double(table[j]);  // xp spacing is 1
  return rounded(slope * (x - below)) + double(table[j]);
}

std::vector<double> karras_sigmas(double sigma_min, double sigma_max, int n) {
  constexpr double rho = 7.0;  // the paper's value
  const std::vector<double> ramp = numpy_linspace(0.0, 1.0, n);
  const double min_inv_rho = std::pow(sigma_min, 1.0 / rho);
  const double max_inv_rho = std::pow(sigma_max, 1.0 / rho);
  std::vector<double> sigmas(ramp.size());
  for (size_t i = 0; i < ramp.size(); ++i)
    sigmas[i] = std::pow(max_inv_rho + rounded(ramp[i] * (min_inv_rho - max_inv_rho)), rho);
  return sigmas;
}

std::vector<float> log_float32(const std::vector<float>& values) {
  std::vector<float> logs(values.size());
  for (size_t i = 0; i < values.size(); ++i) logs[i] = float(std::log(double(values[i])));
  return logs;
}

double sigma_to_timestep(double sigma, const std::vector<float>& log_sigmas) {
  KILN_CHECK(log_sigmas.size() >= 2, "sigma lookup in a table of ", log_sigmas.size());
  const double log_sigma = std::log(std::max(sigma, 1e-10));
  // The last training step whose log sigma is at or below log_sigma (0 if none), kept one
  // short of the end so that there is a step above it to interpolate towards.
  size_t low = 0;
  for (size_t i = 0; i < log_sigmas.size(); ++i)
    if (log_sigma - double(log_sigmas[i]) >= 0.0) low = i;
  low = std::min(low, log_sigmas.size() - 2);
  const size_t high = low + 1;
  const float low_log = log_sigmas[low], high_log = log_sigmas[high];
  // low - high is a float32 subtraction in numpy (both are float32 scalars).
  const float gap = low_log - high_log;
  const double w = std::clamp((double(low_log) - log_sigma) / double(gap), 0.0, 1.0);
  return rounded((1.0 - w) * double(low)) + rounded(w * double(high));
}

std::vector<float> euler_timesteps(TimestepSpacing spacing, int num_train_timesteps,
                                   int num_inference_steps, int steps_offset) {
  std::vector<float> timesteps;
  switch (spacing) {
    case TimestepSpacing::Linspace: {
      const std::vector<double> spaced =
          numpy_linspace(0.0, num_train_timesteps - 1, num_inference_steps);
      for (auto it = spaced.rbegin(); it != spaced.rend(); ++it) timesteps.push_back(float(*it));
      break;
    }
    case TimestepSpacing::Leading: {
      const int step_ratio = num_train_timesteps / num_inference_steps;
      for (int i = num_inference_steps - 1; i >= 0; --i)
        timesteps.push_back(float(i * step_ratio) + float(steps_offset));
      break;
    }
    case TimestepSpacing::Trailing: {
      const double step_ratio = double(num_train_timesteps) / num_inference_steps;
      for (double t : numpy_arange(num_train_timesteps, 0.0, -step_ratio))
        timesteps.push_back(float(numpy_round(t)) - 1.0f);
      break;
    }
  }
  return timesteps;
}

std::vector<float> to_float32(const std::vector<double>& values) {
  return std::vector<float>(values.begin(), values.end());
}

}  // namespace kiln::schedulers
