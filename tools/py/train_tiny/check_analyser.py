"""Validate the analyser on images whose truth is known: data.py renders.

 1. The held-out prompts rendered exactly (jittered like training data) and
    scored by evaluate.py: must be 100% (or very near) on all three accuracies.
 2. N random training scenes: every object's colour, shape and named position,
    and the background, compared with the scene's truth.
 3. The same scenes degraded the way a generator's output may be (blur, noise,
    both), to see how much margin the rules have.

    python check_analyser.py [--n 2000] [--out DIR]
"""

import argparse
import json
import os
import tempfile

import numpy as np
from PIL import Image, ImageFilter

from analyse import analyse_array
from data import load_excluded, make_object, render_batch, sample_scene, scenes_to_arrays, to_uint8
from evaluate import evaluate, match

HERE = os.path.dirname(os.path.abspath(__file__))


def render_heldout(out_dir, seed=0):
    with open(os.path.join(HERE, "heldout.json")) as f:
        prompts = json.load(f)["prompts"]
    rng = np.random.default_rng(seed)
    scenes = [{"background": p["background"],
               "objects": [make_object(rng, o["shape"], o["colour"], o["size"], o["anchor"]) for o in p["objects"]]}
              for p in prompts]
    images = to_uint8(render_batch(scenes_to_arrays(scenes)))
    for p, im in zip(prompts, images):
        Image.fromarray(im).save(os.path.join(out_dir, f"{p['index']:03d}.png"))


def degrade(im, kind, rng):
    if kind == "clean":
        return im
    out = Image.fromarray(im)
    if kind in ("blur", "blur+noise"):
        out = out.filter(ImageFilter.GaussianBlur(0.8))
    arr = np.array(out).astype(np.float32)
    if kind in ("noise", "blur+noise"):
        arr += rng.normal(0, 12, arr.shape)
    return np.clip(arr, 0, 255).astype(np.uint8)


def check_scenes(n, seed=1):
    rng = np.random.default_rng(seed)
    scenes = [sample_scene(rng, load_excluded()) for _ in range(n)]
    images = to_uint8(render_batch(scenes_to_arrays(scenes)))
    results = {}
    for kind in ("clean", "blur", "noise", "blur+noise"):
        stats = {"background": 0, "colour": 0, "shape": 0, "position": 0, "count": 0, "objects": 0}
        confusions = {}
        for scene, im in zip(scenes, images):
            a = analyse_array(degrade(im, kind, rng))
            stats["background"] += a["background"] == scene["background"]
            stats["count"] += len(a["objects"]) == len(scene["objects"])
            for o in scene["objects"]:
                stats["objects"] += 1
                m = match(o, a["objects"])
                stats["colour"] += m is not None
                stats["shape"] += m is not None and m["shape"] == o["shape"]
                stats["position"] += m is not None and m["position"] == o["position"]
                if m is not None and m["shape"] != o["shape"]:
                    key = f"{o['size']} {o['shape']}->{m['shape']}"
                    confusions[key] = confusions.get(key, 0) + 1
        n_obj = stats.pop("objects")
        results[kind] = {k: round(v / (n if k in ("background", "count") else n_obj), 4) for k, v in stats.items()}
        results[kind]["shape_confusions"] = confusions
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--out", help="keep the rendered held-out images here")
    args = ap.parse_args()
    out = args.out or tempfile.mkdtemp(prefix="heldout_render_")
    os.makedirs(out, exist_ok=True)
    render_heldout(out)
    res = evaluate(out)
    print("held-out prompts rendered by data.py:", json.dumps(res["all"]))
    for f in res["failures"]:
        print("  failure:", json.dumps(f))
    for kind, r in check_scenes(args.n).items():
        print(f"{args.n} training scenes, {kind:10s}:", json.dumps(r))


if __name__ == "__main__":
    main()
