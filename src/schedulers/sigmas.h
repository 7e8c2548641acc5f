// The arithmetic diffusers builds its timestep and sigma tables with, reproduced step by
// step: numpy's linspace, arange, round and interp, torch's float32 linspace, the Karras
// schedule and diffusers' sigma -> timestep interpolation. Timesteps are compared for
// equality (diffusers looks steps up by value), so these follow numpy's order of
// operations and roundings rather than the plainest formula.
#pragma once

#include <vector>

#include "schedulers/scheduler_common.h"

namespace kiln::schedulers {

// np.linspace(start, stop, num, endpoint) in float64.
std::vector<double> numpy_linspace(double start, double stop, int num, bool endpoint = true);
// np.arange(start, stop, step) in float64, including its length, which can be one more than
// the arithmetic suggests: np.arange(1000, 0, -1000 / 61) has 62 elements.
std::vector<double> numpy_arange(double start, double stop, double step);
// np.round: half to even.
double numpy_round(double x);
// torch.linspace(start, end, steps, dtype=torch.float32) as torch's CPU kernel computes it.
std::vector<float> torch_linspace_float32(float start, float end, int steps);

// np.interp(x, np.arange(len(table)), table) for one x.
double interp_by_timestep(double x, const std::vector<float>& table);

// Karras et al.'s schedule with rho = 7, from sigma_max down to sigma_min in n steps.
std::vector<double> karras_sigmas(double sigma_min, double sigma_max, int n);

// np.log on a float32 array. (numpy's vectorised float32 log is not always correctly
// rounded; this is, so a value can be one float32 ulp away from numpy's.)
std::vector<float> log_float32(const std::vector<float>& values);

// diffusers' _sigma_to_t: the fractional timestep whose (log-interpolated) training sigma
// is `sigma`. log_sigmas is the float32 log of the training sigmas, index = timestep.
double sigma_to_timestep(double sigma, const std::vector<float>& log_sigmas);

// The timesteps EulerDiscreteScheduler and EulerAncestralDiscreteScheduler space out, in
// float32 (they are not rounded for "linspace").
std::vector<float> euler_timesteps(TimestepSpacing spacing, int num_train_timesteps,
                                   int num_inference_steps, int steps_offset);

std::vector<float> to_float32(const std::vector<double>& values);

}  // namespace kiln::schedulers
