"""Full-size correctness reference: a random-weight UNet with the real SD1.5 or SDXL
architecture, and diffusers' fp32 output for one CFG step on it.

The weights are drawn from `--seed`, rounded to fp16 and saved as a diffusers UNet
folder (DIR/unet), so that kiln (fp16) and diffusers (fp32, the same rounded values
widened) compute on identical weights. The inputs (batch 2: a CFG pair with two
different timesteps, random text states, SDXL's pooled embeddings and size ids) and
diffusers' output go to DIR/io.safetensors, NCHW as torch has them. TF32 is off, so
the reference is true fp32. tests/backend/test_full_size.cpp holds kiln to
NMSE <= 1e-3 against it (scripts/gpu-check.sh, stage fullsize).

Runs on the GPU machine (an SDXL UNet is 10 GB in fp32; the CPU works, slowly):

  python tools/py/make_full_size_reference.py --arch sdxl --seed 7 --out /tmp/fullsize/sdxl
"""

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from make_full_size_model import SD15_UNET, SDXL_UNET  # noqa: E402


def main():
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", choices=["sd15", "sdxl"], required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    t0 = time.time()

    xl = a.arch == "sdxl"
    config = SDXL_UNET if xl else SD15_UNET
    # Drawn on the device (fast) from the seed; fp16-rounded, then widened back.
    torch.manual_seed(a.seed)
    with torch.device(a.device):
        unet = UNet2DConditionModel(**config)
    unet = unet.half().float().eval()
    os.makedirs(a.out, exist_ok=True)

    g = torch.Generator("cpu").manual_seed(a.seed + 1)
    side = config["sample_size"]
    ctx_dim = config["cross_attention_dim"]
    io = {
        "sample": torch.randn(2, 4, side, side, generator=g),
        # Each row its own timestep, as in kiln's step batching.
        "timesteps": torch.tensor([961.0, 421.0]),
        # CLIP's last states are of order 1 per element, with a few large ones.
        "encoder_hidden_states": torch.randn(2, 77, ctx_dim, generator=g),
    }
    added = None
    if xl:
        io["text_embeds"] = torch.randn(2, 1280, generator=g)
        io["time_ids"] = torch.tensor([[1024.0, 1024.0, 0.0, 0.0, 1024.0, 1024.0]] * 2)
        added = {"text_embeds": io["text_embeds"].to(a.device),
                 "time_ids": io["time_ids"].to(a.device)}
    with torch.no_grad():
        out = unet(io["sample"].to(a.device), io["timesteps"].to(a.device),
                   encoder_hidden_states=io["encoder_hidden_states"].to(a.device),
                   added_cond_kwargs=added).sample
    io["out"] = out.float().cpu()
    assert torch.isfinite(io["out"]).all(), "the reference has non-finite values"
    save_file({k: v.contiguous() for k, v in io.items()}, os.path.join(a.out, "io.safetensors"))

    import diffusers
    import transformers
    with open(os.path.join(a.out, "reference.json"), "w") as f:
        json.dump({"arch": a.arch, "seed": a.seed, "device": a.device,
                   "gpu": torch.cuda.get_device_name() if a.device == "cuda" else "",
                   "torch": torch.__version__, "diffusers": diffusers.__version__,
                   "transformers": transformers.__version__,
                   "out_rms": float(io["out"].pow(2).mean().sqrt())}, f, indent=1)
    unet.half().save_pretrained(os.path.join(a.out, "unet"), safe_serialization=True)
    print(f"{a.arch} seed {a.seed}: reference in {a.out} ({time.time() - t0:.1f} s, "
          f"output rms {float(io['out'].pow(2).mean().sqrt()):.4g})")


if __name__ == "__main__":
    main()
