"""How far the reference itself drifts at low precision, per golden image case.

For each golden model (tests/golden/data/<name>/), runs every case of its cases.json
through diffusers on the CPU in fp32, bf16 and fp16, with the same pipeline class,
scheduler swap and seed as tools/py/make_goldens.py, and writes the PSNR of each
low-precision image against the fp32 golden image to
tests/golden/data/<name>/reference_precision.json. The fp32 run must reproduce the
golden image (it is printed; the script stops where it does not), so the numbers
describe the goldens' own setup.

The CUDA golden test holds kiln's fp16/bf16 images to DESIGN.md's 30 dB, except
where diffusers at that precision falls below it: a case whose classifier-free
guidance amplifies rounding (SDXL's ddim_empty_negative: 19.7 dB for diffusers in
bf16) cannot be held to a bound the reference does not reach.

Run: python tools/py/reference_precision.py [sd1 sd2v sdxl]  (torch, diffusers,
transformers; a CPU build of torch is enough). Never edit the outputs by hand.
"""

import json
import math
import os
import sys

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(__file__))
import diffusers  # noqa: E402
import transformers  # noqa: E402
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline  # noqa: E402

from make_goldens import ROOT, prepare_case  # noqa: E402

PIPELINES = {"sd1": StableDiffusionPipeline, "sd2v": StableDiffusionPipeline,
             "sdxl": StableDiffusionXLPipeline}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def psnr(a, b):
    """As tests/golden/golden.h computes it: 8-bit RGB, every channel."""
    se = np.sum((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return math.inf if se == 0 else 10 * math.log10(255.0 ** 2 * a.size / se)


def run(name):
    folder = os.path.join(ROOT, name)
    with open(os.path.join(folder, "cases.json"), encoding="utf-8") as f:
        cases = json.load(f)
    model = os.path.join(folder, "model")
    variant = "fp16" if any(n.endswith(".fp16.safetensors")
                            for _, _, files in os.walk(model) for n in files) else None
    table = {c["name"]: {} for c in cases}
    for label, dtype in DTYPES.items():
        pipe = PIPELINES[name].from_pretrained(model, torch_dtype=dtype, variant=variant)
        pipe.set_progress_bar_config(disable=True)
        own_scheduler = pipe.scheduler
        for case in cases:
            kwargs = prepare_case(pipe, own_scheduler, case)
            with torch.no_grad():
                image = np.asarray(pipe(**kwargs).images[0].convert("RGB"))
            golden = np.asarray(Image.open(os.path.join(folder, case["image"])).convert("RGB"))
            p = psnr(image, golden)
            if label == "fp32" and p < 60:
                sys.exit(f"{name}/{case['name']}: the fp32 run gives {p:.1f} dB against the golden "
                         "image; this setup does not reproduce make_goldens.py's")
            table[case["name"]][label] = None if math.isinf(p) else round(p, 1)
            print(f"{name:5s} {case['name']:24s} {label}: {p:.1f} dB", flush=True)
    out = {
        "what": "PSNR (dB) of diffusers' own image at each precision against the fp32 golden "
                "image (null: identical); made by tools/py/reference_precision.py",
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                     "transformers": transformers.__version__},
        "cases": table,
    }
    with open(os.path.join(folder, "reference_precision.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1)
        f.write("\n")


def main():
    for name in sys.argv[1:] or list(PIPELINES):
        run(name)


if __name__ == "__main__":
    main()
