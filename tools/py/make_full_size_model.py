"""A Stable Diffusion folder with the real architecture and random weights.

For measurements that depend on size, not on weight values: load time and peak
memory on the CPU, speed on the GPU. Not committed (gigabytes); made on demand:

  python tools/py/make_full_size_model.py --arch sd15 --out /tmp/sd15-random [--dtype fp16]
"""

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from clip_vocab import write_tokenizer  # noqa: E402

SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=[320, 640, 1280, 1280],
                 down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
                 up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
                 cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32)
SDXL_UNET = dict(sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=[320, 640, 1280],
                 down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                 up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
                 transformer_layers_per_block=[1, 2, 10], cross_attention_dim=2048,
                 attention_head_dim=[5, 10, 20], use_linear_projection=True,
                 addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816, norm_num_groups=32)
SD_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=[128, 256, 512, 512],
              layers_per_block=2, down_block_types=["DownEncoderBlock2D"] * 4,
              up_block_types=["UpDecoderBlock2D"] * 4, norm_num_groups=32, sample_size=512)
CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
              num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
              bos_token_id=49406, eos_token_id=49407, projection_dim=768)
CLIP_BIG_G = dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                  num_attention_heads=20, max_position_embeddings=77, hidden_act="gelu",
                  bos_token_id=49406, eos_token_id=49407, projection_dim=1280)
SCHEDULER = dict(beta_end=0.012, beta_schedule="scaled_linear", beta_start=0.00085,
                 num_train_timesteps=1000, steps_offset=1, timestep_spacing="leading")


def main():
    from diffusers import (AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline,
                           StableDiffusionXLPipeline, UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--arch", choices=["sd15", "sdxl"], default="sd15")
    p.add_argument("--out", required=True)
    p.add_argument("--dtype", choices=["fp16", "fp32"], default="fp16")
    a = p.parse_args()
    torch.manual_seed(0)
    dtype = torch.float16 if a.dtype == "fp16" else torch.float32
    tok_dir = os.path.join(a.out, "_tokenizer")
    write_tokenizer(tok_dir)
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
    scheduler = EulerDiscreteScheduler(**SCHEDULER)
    vae = AutoencoderKL(**SD_VAE)
    if a.arch == "sd15":
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=CLIPTextModel(CLIPTextConfig(**CLIP_L)),
                                       tokenizer=tokenizer, unet=UNet2DConditionModel(**SD15_UNET),
                                       scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    else:
        write_tokenizer(tok_dir + "2", pad_token="!")
        pipe = StableDiffusionXLPipeline(
            vae=vae, text_encoder=CLIPTextModel(CLIPTextConfig(**CLIP_L)),
            text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_BIG_G)),
            tokenizer=tokenizer, tokenizer_2=CLIPTokenizer.from_pretrained(tok_dir + "2"),
            unet=UNet2DConditionModel(**SDXL_UNET), scheduler=scheduler)
    pipe.to(dtype).save_pretrained(a.out, safe_serialization=True)
    print(a.out)


if __name__ == "__main__":
    main()
