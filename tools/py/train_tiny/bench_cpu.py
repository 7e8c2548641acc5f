"""Time one 64x64 text-to-image generation of the embedded model with diffusers on
the CPU (20 steps, classifier-free guidance, so the UNet runs at batch 2), the
budget kiln must meet on 2 cores.

    python bench_cpu.py [MODEL_DIR] [--threads 2] [--steps 20] [--repeat 5]

Without MODEL_DIR it builds the architecture of arch.py with random weights and
saves it to a temporary folder first (speed does not depend on the weights).
"""

import argparse
import os
import sys
import tempfile
import time

T0 = time.time()
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--prompt", default="a red circle on a blue background")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from diffusers import StableDiffusionPipeline

    t_import = time.time() - T0
    model = args.model
    if model is None:
        import arch
        from train import ensure_tokenizer
        from transformers import CLIPTokenizer

        model = tempfile.mkdtemp(prefix="kiln_tiny_bench_")
        vae, unet, te = arch.build_models()
        tok = CLIPTokenizer.from_pretrained(ensure_tokenizer(os.path.join(os.path.dirname(__file__), "tokenizer")))
        StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=arch.make_scheduler(),
                                safety_checker=None, feature_extractor=None,
                                requires_safety_checker=False).to(torch.float16).save_pretrained(model)
    t = time.time()
    pipe = StableDiffusionPipeline.from_pretrained(model, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    t_load = time.time() - t

    # Component timings (what the pipeline does, piece by piece).
    with torch.no_grad():
        ids = pipe.tokenizer([args.prompt, ""], padding="max_length", max_length=77, return_tensors="pt").input_ids
        size = pipe.unet.config.sample_size
        x = torch.randn(2, 4, size, size)

        def best(f, n=args.repeat):
            f()
            times = []
            for _ in range(n):
                t = time.perf_counter()
                f()
                times.append(time.perf_counter() - t)
            return min(times)

        emb = pipe.text_encoder(ids)[0]
        t_te = best(lambda: pipe.text_encoder(ids)[0])
        t_unet = best(lambda: pipe.unet(x, 500, encoder_hidden_states=emb).sample)
        t_vae = best(lambda: pipe.vae.decode(x[:1]).sample)

    times = []
    for i in range(args.repeat):
        t = time.perf_counter()
        image = pipe(args.prompt, num_inference_steps=args.steps, guidance_scale=7.5,
                     generator=torch.Generator("cpu").manual_seed(i)).images[0]
        times.append(time.perf_counter() - t)
    image.save(os.path.join(tempfile.gettempdir(), "kiln_tiny_bench.png"))
    print(f"threads {args.threads}, {size * pipe.vae_scale_factor}px, {args.steps} steps with CFG (UNet batch 2)")
    print(f"  text encoder {t_te * 1e3:.1f} ms | UNet step (batch 2) {t_unet * 1e3:.1f} ms | VAE decode "
          f"{t_vae * 1e3:.1f} ms | sum {1e3 * (t_te + args.steps * t_unet + t_vae):.0f} ms")
    print(f"  pipeline call: best {min(times) * 1e3:.0f} ms, median {sorted(times)[len(times) // 2] * 1e3:.0f} ms")
    print(f"  python + torch + diffusers import {t_import:.2f} s, from_pretrained {t_load:.2f} s")


if __name__ == "__main__":
    main()
