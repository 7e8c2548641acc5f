"""Reference outputs ("goldens") for kiln's golden tests, made by diffusers/transformers.

Builds three tiny random-weight models in diffusers layout (SD 1.x-like with the
real CLIP vocabulary, SD 2.x-like with v-prediction, SDXL-like), rounds every
weight to fp16 so the stored files hold exactly the weights the reference ran
with, runs diffusers/transformers in fp32 on the CPU, and writes for each model:

  tests/golden/data/<name>/model/                  the diffusers folder kiln loads
  tests/golden/data/<name>/components.safetensors  text encoder states, UNet and
                                                   VAE outputs on fixed inputs (NCHW,
                                                   as torch makes them)
  tests/golden/data/<name>/images/*.png            whole pipeline runs, one per case
  tests/golden/data/<name>/cases.json              the parameters of each case

Run: python tools/py/make_goldens.py  (needs torch, diffusers, transformers,
open_clip_torch; the versions used are written to tests/golden/data/VERSIONS.json).
Never edit the outputs by hand: change this script and run it again.
"""

import json
import os
import shutil
import sys

import numpy as np
import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
from clip_vocab import write_tokenizer  # noqa: E402

import diffusers  # noqa: E402
import transformers  # noqa: E402
from diffusers import (AutoencoderKL, DDIMScheduler, DPMSolverMultistepScheduler,  # noqa: E402
                       EulerAncestralDiscreteScheduler, EulerDiscreteScheduler, LCMScheduler,
                       PNDMScheduler,
                       StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer  # noqa: E402

ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "golden", "data")

SAMPLERS = {
    "euler": (EulerDiscreteScheduler, {}),
    "euler_karras": (EulerDiscreteScheduler, {"use_karras_sigmas": True}),
    "euler_a": (EulerAncestralDiscreteScheduler, {}),
    "ddim": (DDIMScheduler, {}),
    "dpmpp_2m": (DPMSolverMultistepScheduler, {}),
    "dpmpp_2m_karras": (DPMSolverMultistepScheduler, {"use_karras_sigmas": True}),
    "lcm": (LCMScheduler, {}),
    "pndm": (PNDMScheduler, {}),
}
# The sampler_case "default" keeps the folder's own scheduler (no from_config swap); its
# case names the sampler that scheduler is, for kiln to run.
DEFAULT_SAMPLER_CASE = "default"

SD15_SCHEDULER = {
    "_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "beta_start": 0.00085, "clip_sample": False, "num_train_timesteps": 1000,
    "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
    "timestep_spacing": "leading", "trained_betas": None,
}
SD2V_SCHEDULER = {
    "_class_name": "DDIMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "beta_start": 0.00085, "clip_sample": False, "num_train_timesteps": 1000,
    "prediction_type": "v_prediction", "set_alpha_to_one": False, "steps_offset": 1,
    "timestep_spacing": "leading", "trained_betas": None,
}
SDXL_SCHEDULER = {
    "_class_name": "EulerDiscreteScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "beta_start": 0.00085, "interpolation_type": "linear", "num_train_timesteps": 1000,
    "prediction_type": "epsilon", "sample_max_value": 1.0, "set_alpha_to_one": False,
    "skip_prk_steps": True, "steps_offset": 1, "timestep_spacing": "leading",
    "trained_betas": None, "use_karras_sigmas": False,
}

LONG_PROMPT = ("a highly detailed matte painting of a lighthouse on a rocky cliff above a stormy sea, "
               "dramatic clouds, crashing waves, seagulls, golden hour light, volumetric fog, "
               "artstation trending, octane render, 8k, ultra realistic, cinematic composition, "
               "by greg rutkowski and alphonse mucha, intricate, elegant, sharp focus, bokeh, "
               "wide angle lens, masterpiece, best quality")


def fp16_round(module):
    """Rounds weights to fp16 values, so the fp16 files hold what the reference ran."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(p.half().float())
    return module


def text_encoder(vocab_size, hidden_act, eos, projection=None, seed=0, layers=3):
    torch.manual_seed(seed)
    cfg = CLIPTextConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=48,
                         num_hidden_layers=layers, num_attention_heads=4,
                         max_position_embeddings=77, hidden_act=hidden_act, bos_token_id=vocab_size - 2,
                         eos_token_id=eos, pad_token_id=1, projection_dim=projection or 32)
    model = CLIPTextModelWithProjection(cfg) if projection else CLIPTextModel(cfg)
    return fp16_round(model.eval())


def vae(seed, force_upcast=True):
    torch.manual_seed(seed)
    model = AutoencoderKL(in_channels=3, out_channels=3,
                          down_block_types=["DownEncoderBlock2D"] * 3,
                          up_block_types=["UpDecoderBlock2D"] * 3,
                          block_out_channels=[16, 32, 32], layers_per_block=1, latent_channels=4,
                          norm_num_groups=8, sample_size=64, force_upcast=force_upcast)
    return fp16_round(model.eval())


def sd1_unet(seed):
    torch.manual_seed(seed)
    model = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=[32, 64], down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
        up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"], cross_attention_dim=32,
        attention_head_dim=8, norm_num_groups=16)
    return fp16_round(model.eval())


def sd2_unet(seed):
    torch.manual_seed(seed)
    model = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=[32, 64, 64],
        down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        cross_attention_dim=32, attention_head_dim=[2, 4, 4], use_linear_projection=True,
        upcast_attention=True, norm_num_groups=16)
    return fp16_round(model.eval())


def sdxl_unet(seed):
    torch.manual_seed(seed)
    model = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=[32, 64, 64],
        down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        transformer_layers_per_block=[1, 1, 2], attention_head_dim=[2, 4, 8],
        use_linear_projection=True, cross_attention_dim=64, norm_num_groups=16,
        addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=8 * 6 + 32)
    return fp16_round(model.eval())


def nchw(t):
    return t.detach().float().contiguous()


def component_goldens(name, pipe, xl):
    """Each component on fixed inputs; every tensor NCHW / as torch returns it."""
    out = {}
    gen = torch.Generator("cpu").manual_seed(1234)
    prompts = ["a photo of an astronaut riding a horse on mars", "Ünïcödé ✨ 東京 (masterpiece:1.2)"]
    encoders = [("text_encoder", pipe.tokenizer, pipe.text_encoder)]
    if xl:
        encoders.append(("text_encoder_2", pipe.tokenizer_2, pipe.text_encoder_2))
    with torch.no_grad():
        for label, tok, enc in encoders:
            ids = tok(prompts, padding="max_length", max_length=tok.model_max_length,
                      truncation=True, return_tensors="pt").input_ids
            res = enc(ids, output_hidden_states=True)
            out[f"{label}.input_ids"] = ids.to(torch.int32)
            out[f"{label}.last_hidden_state"] = nchw(res.last_hidden_state) if hasattr(
                res, "last_hidden_state") else nchw(res[0])
            out[f"{label}.penultimate"] = nchw(res.hidden_states[-2])
            if hasattr(res, "text_embeds"):
                out[f"{label}.text_embeds"] = nchw(res.text_embeds)
            else:
                out[f"{label}.pooled"] = nchw(res.pooler_output)

        unet = pipe.unet
        ctx_dim = unet.config.cross_attention_dim
        # Two rows at different timesteps; a second case with a latent size the
        # UNet's levels do not divide (upsampling to the skip's size).
        for case, (h, w) in {"unet": (16, 12), "unet_odd": (9, 13)}.items():
            sample = torch.randn((2, 4, h, w), generator=gen)
            timesteps = torch.tensor([999.0, 421.5])
            context = torch.randn((2, 77, ctx_dim), generator=gen)
            kwargs = {}
            if xl:
                text_embeds = torch.randn((2, 32), generator=gen)
                time_ids = torch.tensor([[h * 4.0, w * 4.0, 0, 0, h * 4.0, w * 4.0]] * 2)
                kwargs["added_cond_kwargs"] = {"text_embeds": text_embeds, "time_ids": time_ids}
                out[f"{case}.text_embeds"] = text_embeds
                out[f"{case}.time_ids"] = time_ids
            result = unet(sample, timesteps, encoder_hidden_states=context, **kwargs).sample
            out[f"{case}.sample"] = sample
            out[f"{case}.timesteps"] = timesteps
            out[f"{case}.encoder_hidden_states"] = context
            out[f"{case}.out"] = nchw(result)

        latents = torch.randn((1, 4, 12, 10), generator=gen)
        out["vae.decode.latents"] = latents
        out["vae.decode.out"] = nchw(pipe.vae.decode(latents).sample)
        image = torch.rand((1, 3, 40, 56), generator=gen) * 2 - 1
        dist = pipe.vae.encode(image).latent_dist
        out["vae.encode.image"] = image
        out["vae.encode.mean"] = nchw(dist.mean)
        out["vae.encode.logvar"] = nchw(dist.logvar)
    save_file({k: v.contiguous() for k, v in out.items()},
              os.path.join(ROOT, name, "components.safetensors"))


def prepare_case(pipe, own_scheduler, case):
    """Sets the case's scheduler on the pipeline and returns the call's arguments."""
    if case["sampler_case"] == DEFAULT_SAMPLER_CASE:
        pipe.scheduler = own_scheduler
    else:
        cls, extra = SAMPLERS[case["sampler_case"]]
        pipe.scheduler = cls.from_config(own_scheduler.config, **extra)
    kwargs = dict(prompt=case["prompt"], num_inference_steps=case["steps"],
                  guidance_scale=case["guidance_scale"],
                  generator=torch.Generator("cpu").manual_seed(case["seed"]))
    if case.get("negative_prompt") is not None:
        kwargs["negative_prompt"] = case["negative_prompt"]
    if case.get("width"):
        kwargs["width"] = case["width"]
        kwargs["height"] = case["height"]
    return kwargs


def image_goldens(name, pipe_cls, cases, variant=None):
    folder = os.path.join(ROOT, name)
    pipe = pipe_cls.from_pretrained(os.path.join(folder, "model"), torch_dtype=torch.float32,
                                    variant=variant)
    pipe.set_progress_bar_config(disable=True)
    own_scheduler = pipe.scheduler
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    for case in cases:
        kwargs = prepare_case(pipe, own_scheduler, case)
        with torch.no_grad():
            image = pipe(**kwargs).images[0]
        image.save(os.path.join(folder, "images", case["name"] + ".png"))
        case["image"] = "images/" + case["name"] + ".png"
        case["size"] = list(image.size)
    with open(os.path.join(folder, "cases.json"), "w", encoding="utf-8") as f:
        json.dump(cases, f, indent=1, ensure_ascii=False)


def case(name, sampler_case, prompt, seed, steps, guidance_scale, negative_prompt=None, width=0,
         height=0, sampler=None):
    """sampler: kiln's name for it, when sampler_case (a SAMPLERS key) does not say it."""
    if sampler is None:
        sampler = sampler_case.partition("_karras")[0]
    return dict(name=name, sampler_case=sampler_case, sampler=sampler,
                scheduler="karras" if sampler_case.endswith("_karras") else "default",
                prompt=prompt, seed=seed, steps=steps, guidance_scale=guidance_scale,
                negative_prompt=negative_prompt, width=width, height=height)


def build_sd1():
    folder = os.path.join(ROOT, "sd1", "model")
    shutil.rmtree(folder, ignore_errors=True)
    vocab = write_tokenizer(os.path.join(folder, "tokenizer"))  # the real CLIP vocabulary
    tokenizer = CLIPTokenizer.from_pretrained(os.path.join(folder, "tokenizer"))
    pipe = StableDiffusionPipeline(
        vae=vae(1), text_encoder=text_encoder(vocab, "quick_gelu", eos=2, seed=2), tokenizer=tokenizer,
        unet=sd1_unet(3), scheduler=PNDMScheduler.from_config(SD15_SCHEDULER), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipe.to(torch.float16).save_pretrained(folder, safe_serialization=True)  # weights as fp16
    # SD 1.5's published tokenizer folder has vocab.json + merges.txt only.
    os.remove(os.path.join(folder, "tokenizer", "tokenizer.json"))
    pipe = StableDiffusionPipeline.from_pretrained(folder, torch_dtype=torch.float32)
    component_goldens("sd1", pipe, xl=False)
    image_goldens("sd1", StableDiffusionPipeline, [
        case("euler", "euler", "a red circle on a blue background", 42, 8, 7.5),
        case("euler_karras", "euler_karras", "a lighthouse at dusk", 5, 6, 6.0),
        case("euler_a", "euler_a", "a cat wearing a hat, oil painting", 7, 8, 7.5,
             negative_prompt="blurry, low quality"),
        case("ddim", "ddim", "a bowl of ramen, Ünïcödé ✨ 東京 café", 123, 7, 5.0, width=96, height=64),
        case("dpmpp_2m", "dpmpp_2m", LONG_PROMPT, 2024, 10, 7.5, width=48, height=80),
        case("dpmpp_2m_karras", "dpmpp_2m_karras", "portrait of a knight, dramatic lighting", 99, 9,
             4.0, negative_prompt=""),
        case("lcm", "lcm", "a small green square at the top", 11, 4, 1.0),
        case("euler_no_cfg", "euler", "a star", 3, 5, 1.0, width=64, height=40),
        case("pndm", "pndm", "a yellow triangle on a grey floor", 21, 8, 7.5, width=56, height=72),
        # The folder's own PNDMScheduler, as `kiln generate` without --sampler runs it.
        case("pndm_default", DEFAULT_SAMPLER_CASE, "a watercolor of a harbor", 13, 6, 6.5,
             negative_prompt="text", sampler="pndm"),
    ])


def build_sd2v():
    folder = os.path.join(ROOT, "sd2v", "model")
    shutil.rmtree(folder, ignore_errors=True)
    vocab = write_tokenizer(os.path.join(folder, "tokenizer"), merges_limit=486, pad_token="!")
    tokenizer = CLIPTokenizer.from_pretrained(os.path.join(folder, "tokenizer"))
    pipe = StableDiffusionPipeline(
        vae=vae(11), text_encoder=text_encoder(vocab, "gelu", eos=vocab - 1, seed=12), tokenizer=tokenizer,
        unet=sd2_unet(13), scheduler=DDIMScheduler.from_config(SD2V_SCHEDULER), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipe.to(torch.float16).save_pretrained(folder, safe_serialization=True)
    pipe = StableDiffusionPipeline.from_pretrained(folder, torch_dtype=torch.float32)
    component_goldens("sd2v", pipe, xl=False)
    image_goldens("sd2v", StableDiffusionPipeline, [
        case("ddim", "ddim", "a mountain lake at sunrise", 8, 8, 7.5),
        case("euler", "euler", "a castle, digital art", 17, 6, 9.0, negative_prompt="ugly", width=80,
             height=64),
        case("euler_a", "euler_a", "Ein Hund im Schnee, ÄÖÜ ß", 31, 7, 7.5),
        case("dpmpp_2m_karras", "dpmpp_2m_karras", "a spaceship", 64, 8, 7.5, width=64, height=96),
        # The DDIM config sets no skip_prk_steps, so PNDM warms up with Runge-Kutta steps.
        case("pndm", "pndm", "a field of sunflowers", 40, 5, 7.5),
    ])


def build_sdxl():
    folder = os.path.join(ROOT, "sdxl", "model")
    shutil.rmtree(folder, ignore_errors=True)
    vocab = write_tokenizer(os.path.join(folder, "tokenizer"), merges_limit=486)
    write_tokenizer(os.path.join(folder, "tokenizer_2"), merges_limit=486, pad_token="!")
    pipe = StableDiffusionXLPipeline(
        vae=vae(21), text_encoder=text_encoder(vocab, "quick_gelu", eos=vocab - 1, seed=22),
        text_encoder_2=text_encoder(vocab, "gelu", eos=vocab - 1, projection=32, seed=23),
        tokenizer=CLIPTokenizer.from_pretrained(os.path.join(folder, "tokenizer")),
        tokenizer_2=CLIPTokenizer.from_pretrained(os.path.join(folder, "tokenizer_2")),
        unet=sdxl_unet(24), scheduler=EulerDiscreteScheduler.from_config(SDXL_SCHEDULER))
    # Only the fp16 variant files, as many published SDXL folders ship them.
    pipe.to(torch.float16).save_pretrained(folder, safe_serialization=True, variant="fp16")
    # The second tokenizer as tokenizer.json alone, the form some published folders use.
    for f in ("vocab.json", "merges.txt"):
        os.remove(os.path.join(folder, "tokenizer_2", f))
    pipe = StableDiffusionXLPipeline.from_pretrained(folder, torch_dtype=torch.float32, variant="fp16")
    component_goldens("sdxl", pipe, xl=True)
    image_goldens("sdxl", StableDiffusionXLPipeline, [
        case("euler", "euler", "a red fox in a snowy forest", 1, 8, 5.0),
        case("euler_a_negative", "euler_a", "a vase of flowers", 2, 7, 6.0, negative_prompt="wilted"),
        case("dpmpp_2m", "dpmpp_2m", "an isometric city, 東京", 3, 8, 5.0, width=96, height=64),
        case("ddim_empty_negative", "ddim", "a robot", 4, 6, 7.0, negative_prompt=""),
    ], variant="fp16")


def main():
    torch.set_num_threads(2)
    os.makedirs(ROOT, exist_ok=True)
    build_sd1()
    build_sd2v()
    build_sdxl()
    with open(os.path.join(ROOT, "VERSIONS.json"), "w") as f:
        json.dump({"torch": torch.__version__, "diffusers": diffusers.__version__,
                   "transformers": transformers.__version__, "numpy": np.__version__,
                   "python": sys.version.split()[0]}, f, indent=2)


if __name__ == "__main__":
    main()
