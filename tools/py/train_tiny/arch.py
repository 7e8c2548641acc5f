"""The embedded model's architecture: Stable Diffusion 1.x classes with small sizes.

64x64 RGB images; the VAE has three levels (two downsamplings: latents are
4 x 16 x 16); the UNet works on those latents with three levels (16, 8, 4) and
cross-attention on the two finest and in the middle block; the text encoder is a
4-layer CLIP text transformer, width 64, on the real CLIP vocabulary (49408). The
width is set by size: the 49408-row token embedding dominates the folder, and the
whole repository must stay small enough to travel to the GPU machine with its tests.
See README.md for the size and speed arithmetic.
"""

import torch

from shapes import IMAGE_SIZE

VAE_FACTOR = 4
LATENT_SIZE = IMAGE_SIZE // VAE_FACTOR
MAX_LENGTH = 77

TEXT_ENCODER_CONFIG = dict(
    vocab_size=49408,
    hidden_size=64,
    intermediate_size=256,
    num_hidden_layers=4,
    num_attention_heads=4,
    max_position_embeddings=MAX_LENGTH,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
    projection_dim=64,
    bos_token_id=49406,
    eos_token_id=49407,
    pad_token_id=49407,
)

UNET_CONFIG = dict(
    sample_size=LATENT_SIZE,
    in_channels=4,
    out_channels=4,
    center_input_sample=False,
    flip_sin_to_cos=True,
    freq_shift=0,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(64, 128, 128),
    layers_per_block=1,
    downsample_padding=1,
    mid_block_scale_factor=1,
    act_fn="silu",
    norm_num_groups=16,
    norm_eps=1e-5,
    cross_attention_dim=64,
    attention_head_dim=4,  # SD 1.x naming: this is the number of heads (head size 16, then 32)
    use_linear_projection=False,
    upcast_attention=False,
)

VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(32, 64, 64),
    layers_per_block=1,
    act_fn="silu",
    latent_channels=4,
    norm_num_groups=8,
    sample_size=IMAGE_SIZE,
    scaling_factor=1.0,  # replaced by 1 / std of the trained VAE's latents
    force_upcast=False,  # fp16 is safe here (checked on CUDA after training)
)

# Stable Diffusion 1.5's noise schedule.
SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
SCHEDULER_CLASSES = {
    "euler": ("EulerDiscreteScheduler", dict(timestep_spacing="leading", steps_offset=1)),
    "pndm": ("PNDMScheduler", dict(skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1)),
    "ddim": ("DDIMScheduler", dict(clip_sample=False, set_alpha_to_one=False, steps_offset=1)),
    "dpmpp": ("DPMSolverMultistepScheduler", dict(steps_offset=1)),
}


def embedding_init(seed):
    """The text encoder's token embedding at initialisation, from its own generator:
    rows that training never touches stay exactly this, so a checkpoint stores only
    the touched rows."""
    g = torch.Generator().manual_seed(seed + 1)
    return torch.randn(TEXT_ENCODER_CONFIG["vocab_size"], TEXT_ENCODER_CONFIG["hidden_size"], generator=g) * 0.02


def build_models(seed=0):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    vae = AutoencoderKL(**VAE_CONFIG)
    unet = UNet2DConditionModel(**UNET_CONFIG)
    text_encoder = CLIPTextModel(CLIPTextConfig(**TEXT_ENCODER_CONFIG))
    with torch.no_grad():
        text_encoder.get_input_embeddings().weight.copy_(embedding_init(seed))
    return vae, unet, text_encoder


def make_scheduler(name="euler"):
    import diffusers

    cls_name, extra = SCHEDULER_CLASSES[name]
    return getattr(diffusers, cls_name)(prediction_type="epsilon", **SCHEDULE, **extra)


def count_params(module):
    return sum(p.numel() for p in module.parameters())
