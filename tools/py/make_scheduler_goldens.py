#!/usr/bin/env python3
"""Writes tests/data/schedulers/<config>.json: what diffusers' samplers do, for kiln's
scheduler tests (tests/unit/test_schedulers.cpp).

For each scheduler config below (the published scheduler_config.json of SD 1.5, SD 2.1,
SDXL base and an LCM model, plus configs that exercise one option each), each sampler
kiln implements (euler, euler_a, ddim, dpmpp_2m, lcm, pndm; a config may name the few it
is meant for), with and without karras sigmas where the class supports them, and several
step counts, a case records:

  * `XScheduler.from_config(config[, use_karras_sigmas=True])` then `set_timesteps(n)`:
    the timesteps, the sigmas (where the class has them) and init_noise_sigma;
  * for a few step counts, the denoising loop StableDiffusionPipeline runs, with seeded
    random tensors standing in for the UNet: latents = randn(shape, gen(LATENTS_SEED)) *
    init_noise_sigma; at each step model_input = scale_model_input(latents, t),
    model_output = randn(shape, gen(MODEL_OUTPUT_SEED)) (one draw per step, in order),
    latents = step(model_output, t, latents, generator=gen(NOISE_SEED)) (without the
    generator for classes whose step takes none: PNDM). It records the
    initial latents, each scaled model input (only where scale_model_input is not the
    identity), each step's output, and four values drawn from the noise generator after
    the loop, which show whether the sampler drew as many numbers as diffusers;
  * where diffusers raises instead, the phase (make, set_timesteps, step) and message
    (the loop runs for every step count to find out, but is recorded only for a few).

Tensors are NCHW, flattened in that order. float32 values are written as the shortest
decimal that reads back as the same float32 (non-finite ones as "nan", "inf", "-inf":
where diffusers' arithmetic degenerates, kiln must degenerate the same way).

Run with the project's Python environment:
    /work/pyenv/bin/python tools/py/make_scheduler_goldens.py
"""

import argparse
import inspect
import json
import platform
from pathlib import Path

import diffusers
import numpy as np
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LCMScheduler,
    PNDMScheduler,
)

SAMPLERS = {
    "euler": (EulerDiscreteScheduler, True),  # (class, supports karras sigmas)
    "euler_a": (EulerAncestralDiscreteScheduler, False),
    "ddim": (DDIMScheduler, False),
    "dpmpp_2m": (DPMSolverMultistepScheduler, True),
    "lcm": (LCMScheduler, False),
    "pndm": (PNDMScheduler, False),
}

# 61 is one of the step counts for which numpy's arange(1000, 0, -1000 / n) has n + 1
# elements, so "trailing" spacing gives 62 timesteps, the last one -1.
TABLE_STEPS = [1, 2, 4, 7, 20, 50, 61]
SEQUENCE_STEPS = [1, 2, 4, 7]
LONG_SEQUENCE_STEPS = 20  # also run for the configs in LONG_SEQUENCE_CONFIGS
LONG_SEQUENCE_CONFIGS = {"sd15", "sdxl_base", "pndm_prk"}
SHAPE = (2, 4, 3, 2)  # NCHW
LATENTS_SEED, MODEL_OUTPUT_SEED, NOISE_SEED = 0, 1, 2

SD15 = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}

CONFIGS = {
    "sd15": SD15,
    "sd21": {
        "_class_name": "DDIMScheduler",
        "_diffusers_version": "0.8.0",
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "clip_sample": False,
        "num_train_timesteps": 1000,
        "prediction_type": "v_prediction",
        "set_alpha_to_one": False,
        "skip_prk_steps": True,
        "steps_offset": 1,
        "trained_betas": None,
    },
    "sdxl_base": {
        "_class_name": "EulerDiscreteScheduler",
        "_diffusers_version": "0.19.0.dev0",
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "clip_sample": False,
        "interpolation_type": "linear",
        "num_train_timesteps": 1000,
        "prediction_type": "epsilon",
        "sample_max_value": 1.0,
        "set_alpha_to_one": False,
        "skip_prk_steps": True,
        "steps_offset": 1,
        "timestep_spacing": "leading",
        "trained_betas": None,
        "use_karras_sigmas": False,
    },
    "lcm_dreamshaper_v7": {
        "_class_name": "LCMScheduler",
        "_diffusers_version": "0.22.0.dev0",
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "clip_sample": False,
        "clip_sample_range": 1.0,
        "dynamic_thresholding_ratio": 0.995,
        "num_train_timesteps": 1000,
        "original_inference_steps": 50,
        "prediction_type": "epsilon",
        "rescale_betas_zero_snr": False,
        "sample_max_value": 1.0,
        "set_alpha_to_one": True,
        "steps_offset": 1,
        "thresholding": False,
        "timestep_scaling": 10.0,
        "timestep_spacing": "leading",
        "trained_betas": None,
    },
    "trailing": {**SD15, "timestep_spacing": "trailing"},
    "linspace": {**SD15, "timestep_spacing": "linspace"},
    # As the zero-terminal-SNR paper recommends: v-prediction, trailing spacing.
    "zero_snr": {
        **SD15,
        "rescale_betas_zero_snr": True,
        "prediction_type": "v_prediction",
        "timestep_spacing": "trailing",
    },
    # Every class's own defaults apply (linear betas 1e-4..0.02; DDIM clips x0 to [-1, 1]).
    "sparse": {"_class_name": "DDPMScheduler", "num_train_timesteps": 1000},
    # The options the SD configs do not use, for Euler and DPM-Solver++.
    "k_options": {
        **SD15,
        "prediction_type": "v_prediction",
        "timestep_type": "continuous",
        "interpolation_type": "log_linear",
        "final_sigmas_type": "sigma_min",
        "sigma_max": 10.0,
    },
    "dpm_options": {
        "beta_schedule": "squaredcos_cap_v2",
        "prediction_type": "sample",
        "solver_order": 3,
        "solver_type": "heun",
        "lower_order_final": False,
        "final_sigmas_type": "sigma_min",
        "lambda_min_clipped": -5.1,
        "clip_sample": True,
        "clip_sample_range": 1.5,
        "timestep_spacing": "leading",
        "steps_offset": 1,
    },
    "euler_at_final": {**SD15, "euler_at_final": True, "lower_order_final": False},
    # A short training schedule given as explicit betas.
    "trained_betas": {
        "num_train_timesteps": 100,
        "trained_betas": [float(b) for b in np.linspace(1e-3, 0.1, 100)],
        "timestep_spacing": "trailing",
        "original_inference_steps": 20,
    },
    # PNDM's Runge-Kutta warm-up (skip_prk_steps false) with v-prediction and "linspace",
    # where the moves miss the next timestep.
    "pndm_prk": {
        **SD15,
        "skip_prk_steps": False,
        "prediction_type": "v_prediction",
        "timestep_spacing": "linspace",
    },
}
# Configs that only the listed samplers run (the others ignore what the config varies).
CONFIG_SAMPLERS = {"pndm_prk": {"pndm"}}


def f32_list(values):
    """float32 values as Python floats whose repr is the shortest float32 round trip;
    NaN and infinities, which JSON lacks, as the strings "nan", "inf" and "-inf"."""
    array = np.asarray(values, dtype=np.float32).reshape(-1)
    return [float(str(v)) if np.isfinite(v) else str(v) for v in array]


def number_list(tensor):
    array = tensor.detach().cpu().numpy() if torch.is_tensor(tensor) else np.asarray(tensor)
    if np.issubdtype(array.dtype, np.integer):
        return [int(v) for v in array.reshape(-1)]
    return f32_list(array)


def error_text(error):
    return f"{type(error).__name__}: {error}"


def run_case(scheduler_class, config, karras, num_steps, with_sequence):
    case = {}
    overrides = {"use_karras_sigmas": True} if karras else {}
    try:
        scheduler = scheduler_class.from_config(config, **overrides)
    except Exception as error:  # noqa: BLE001 - diffusers raises several types
        case["error"] = {"phase": "make", "message": error_text(error)}
        return case
    try:
        scheduler.set_timesteps(num_steps)
    except Exception as error:  # noqa: BLE001
        case["error"] = {"phase": "set_timesteps", "message": error_text(error)}
        return case

    case["timesteps"] = number_list(scheduler.timesteps)
    sigmas = getattr(scheduler, "sigmas", None)
    case["sigmas"] = number_list(sigmas) if sigmas is not None else None
    init_noise_sigma = scheduler.init_noise_sigma
    case["init_noise_sigma"] = float(np.float32(init_noise_sigma))
    case["init_noise_sigma_is_tensor"] = torch.is_tensor(init_noise_sigma)

    latents_gen = torch.Generator("cpu").manual_seed(LATENTS_SEED)
    model_gen = torch.Generator("cpu").manual_seed(MODEL_OUTPUT_SEED)
    noise_gen = torch.Generator("cpu").manual_seed(NOISE_SEED)
    latents = torch.randn(SHAPE, generator=latents_gen, dtype=torch.float32)
    latents = latents * init_noise_sigma
    sequence = {"initial_latents": number_list(latents), "model_inputs": [], "prev_samples": []}
    records_inputs = True
    try:
        for t in scheduler.timesteps:
            model_input = scheduler.scale_model_input(latents, t)
            if model_input is latents:
                records_inputs = False
            else:
                sequence["model_inputs"].append(number_list(model_input))
            model_output = torch.randn(SHAPE, generator=model_gen, dtype=torch.float32)
            extra = {"eta": 0.0} if isinstance(scheduler, DDIMScheduler) else {}
            if "generator" in inspect.signature(scheduler.step).parameters:
                extra["generator"] = noise_gen
            latents = scheduler.step(model_output, t, latents, return_dict=False, **extra)[0]
            sequence["prev_samples"].append(number_list(latents))
    except Exception as error:  # noqa: BLE001
        case["error"] = {"phase": "step", "message": error_text(error)}
        return case
    if not with_sequence:
        return case  # the loop ran only to find out whether diffusers fails in it
    if not records_inputs:
        sequence["model_inputs"] = None
    sequence["next_noise_draws"] = number_list(torch.randn(4, generator=noise_gen))
    case["sequence"] = sequence
    return case


def make_file(name, config):
    cases = []
    for sampler, (scheduler_class, supports_karras) in SAMPLERS.items():
        if sampler not in CONFIG_SAMPLERS.get(name, SAMPLERS):
            continue
        for karras in [False, True] if supports_karras else [False]:
            steps = list(TABLE_STEPS)
            if name in LONG_SEQUENCE_CONFIGS and LONG_SEQUENCE_STEPS not in steps:
                steps.append(LONG_SEQUENCE_STEPS)
            for num_steps in steps:
                with_sequence = num_steps in SEQUENCE_STEPS or (
                    name in LONG_SEQUENCE_CONFIGS and num_steps == LONG_SEQUENCE_STEPS
                )
                case = {"sampler": sampler, "karras": karras, "num_inference_steps": num_steps}
                case.update(run_case(scheduler_class, config, karras, num_steps, with_sequence))
                cases.append(case)
    return {
        "generator": "tools/py/make_scheduler_goldens.py",
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "numpy": np.__version__,
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        },
        "config_name": name,
        "scheduler_config": config,
        "shape_nchw": list(SHAPE),
        "seeds": {"latents": LATENTS_SEED, "model_output": MODEL_OUTPUT_SEED, "noise": NOISE_SEED},
        "cases": cases,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_out = Path(__file__).resolve().parents[2] / "tests" / "data" / "schedulers"
    parser.add_argument("--out", type=Path, default=default_out)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_default_dtype(torch.float32)
    total = 0
    for name, config in CONFIGS.items():
        path = args.out / f"{name}.json"
        text = json.dumps(make_file(name, config), separators=(",", ":"))
        path.write_text(text + "\n")
        total += len(text)
        print(f"{path}: {len(text) / 1024:.0f} KiB")
    print(f"total {total / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
