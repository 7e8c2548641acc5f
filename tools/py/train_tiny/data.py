"""Procedural, seeded image-caption data for the embedded model.

A scene is a flat-coloured background with one or two flat-coloured shapes; its
caption is drawn from several phrasings. Scenes are sampled on the CPU (plain
Python + numpy Generator) and rendered with torch, on the GPU during training or
on the CPU for previews and tests, with analytic anti-aliasing (signed distance
-> pixel coverage).

Every object of every generated scene is checked against the held-out keys
(shape, colour, background, position) of heldout.json: a scene that contains
one is drawn again, so the held-out combinations never appear in training.

    python data.py --out /tmp/preview --n 64 --seed 0   # PNGs + captions.txt + grid.png
"""

import argparse
import json
import os
import re

import numpy as np

from shapes import (COLOURS, IMAGE_SIZE, PALETTE, POSITION_JITTER, POSITIONS, SHAPES, SIZE_JITTER, SIZES,
                    shape_polygon)

HERE = os.path.dirname(os.path.abspath(__file__))
HELDOUT_PATH = os.path.join(HERE, "heldout.json")

# ---------------------------------------------------------------- phrasing
SIZE_WORDS = {"small": ["small", "little", "tiny"], "medium": [""], "large": ["large", "big"]}
POSITION_PHRASES = {
    "centre": ["in the center", "in the centre", "in the middle", "at the center", "at the centre"],
    "left": ["on the left", "at the left", "on the left side", "at the left side"],
    "right": ["on the right", "at the right", "on the right side", "at the right side"],
    "top": ["at the top", "near the top", "at the top edge"],
    "bottom": ["at the bottom", "near the bottom", "at the bottom edge"],
    "top left": ["in the top left corner", "at the top left", "in the upper left corner", "at the top-left"],
    "top right": ["in the top right corner", "at the top right", "in the upper right corner", "at the top-right"],
    "bottom left": ["in the bottom left corner", "at the bottom left", "in the lower left corner", "at the bottom-left"],
    "bottom right": ["in the bottom right corner", "at the bottom right", "in the lower right corner",
                     "at the bottom-right"],
}
# relation -> (anchor of the first-named object, anchor of the second), phrasings
RELATIONS = {
    "left of": (("left", "right"), ["to the left of", "left of", "on the left of"]),
    "right of": (("right", "left"), ["to the right of", "right of", "on the right of"]),
    "above": (("top", "bottom"), ["above", "over"]),
    "below": (("bottom", "top"), ["below", "under", "beneath"]),
}
# "A and B" without a relation word: A on the left, B on the right (training only).
AND_ANCHORS = ("left", "right")

# {o}: object phrase with article; {p}: position phrase; {b}: background colour.
SINGLE_TEMPLATES = [
    "{o} {p} on a {b} background",
    "{o} on a {b} background {p}",
    "{b} background with {o} {p}",
    "a {b} background with {o} {p}",
    "{o} {p}, {b} background",
    "{p}, {o} on a {b} background",
    "{o} against a {b} background {p}",
    "{o} {p} against a {b} background",
    "{o} {p} with a {b} background",
    "{o} {p} on a background of {b}",
    "a background of {b} with {o} {p}",
    "a picture of {o} {p} on a {b} background",
    "an image of {o} {p} on a {b} background",
    "{o} {p} on {b}",
]
RELATION_TEMPLATES = [
    "{oa} {rel} {ob} on a {b} background",
    "{oa} {rel} {ob}, {b} background",
    "{b} background with {oa} {rel} {ob}",
    "a {b} background with {oa} {rel} {ob}",
    "on a {b} background, {oa} {rel} {ob}",
    "{oa} {rel} {ob} against a {b} background",
    "{oa} {rel} {ob} on a background of {b}",
    "a picture of {oa} {rel} {ob} on a {b} background",
]
AND_TEMPLATES = [
    "{oa} and {ob} on a {b} background",
    "{b} background with {oa} and {ob}",
    "{oa} and {ob}, {b} background",
]
PAIR_TEMPLATES = [
    "{oa} {pa} and {ob} {pb} on a {b} background",
    "{b} background with {oa} {pa} and {ob} {pb}",
    "{oa} {pa}, {ob} {pb}, {b} background",
    "on a {b} background, {oa} {pa} and {ob} {pb}",
    "{oa} {pa} and {ob} {pb} on a background of {b}",
]
# Without a background phrase (the background is then any colour).
NO_BACKGROUND_TEMPLATES = {
    "single": ["{o} {p}", "a picture of {o} {p}"],
    "relation": ["{oa} {rel} {ob}"],
    "and": ["{oa} and {ob}"],
    "pair": ["{oa} {pa} and {ob} {pb}", "{oa} {pa}, {ob} {pb}"],
}
# Phrasings that only the held-out set uses (heldout.py); never in training.
HELDOUT_SINGLE_TEMPLATES = [
    "there is {o} {p} and the background is {b}",
    "the background is {b} and {o} is {p}",
    "a simple drawing of {o} {p} on a plain {b} background",
]
HELDOUT_RELATION_TEMPLATES = [
    "there is {oa} {rel} {ob} and the background is {b}",
    "the background is {b}, with {oa} {rel} {ob}",
]
HELDOUT_PAIR_TEMPLATES = [
    "there is {oa} {pa} and {ob} {pb}; the background is {b}",
]

KIND_WEIGHTS = {"single": 0.5, "relation": 0.2, "and": 0.05, "pair": 0.25}
P_NO_POSITION = 0.15  # single object captions without a position: object in the centre
P_SIZE = {"small": 0.25, "medium": 0.5, "large": 0.25}  # medium = no size word
P_NO_BACKGROUND = 0.08  # captions that do not name the background colour
P_EMPTY_CAPTION = 0.1  # classifier-free guidance: unconditional rows


def article(word):
    return "an" if word[0] in "aeiou" else "a"


def object_phrase(rng, colour, shape, size):
    size_word = SIZE_WORDS[size][rng.integers(len(SIZE_WORDS[size]))]
    words = " ".join(w for w in (size_word, colour, shape) if w)
    return f"{article(words)} {words}"


def tidy(caption):
    caption = re.sub(r"\s+", " ", caption).strip()
    caption = caption.replace(" ,", ",").replace(" ;", ";")
    caption = re.sub(r"\ba (?=[aeiou])", "an ", caption)  # "a orange background" -> "an orange ..."
    return caption.lstrip(", ").strip()


def pair_anchors():
    """Ordered anchor pairs far enough apart for two objects: two grid steps on one axis."""
    out = []
    for a, (ax, ay) in POSITIONS.items():
        for b, (bx, by) in POSITIONS.items():
            if max(abs(ax - bx), abs(ay - by)) >= 0.49:
                out.append((a, b))
    return out


PAIR_ANCHORS = pair_anchors()


def load_excluded(path=HELDOUT_PATH):
    """Held-out keys (shape, colour, background, position) that training must never show."""
    if not os.path.exists(path):
        return frozenset()
    with open(path) as f:
        return frozenset(tuple(k) for k in json.load(f)["excluded_keys"])


# ---------------------------------------------------------------- scenes
def choice(rng, seq):
    return seq[rng.integers(len(seq))]


def sample_size(rng):
    return ["small", "medium", "large"][rng.choice(3, p=[P_SIZE["small"], P_SIZE["medium"], P_SIZE["large"]])]


def place(rng, position, size):
    """Jittered centre and radius of an object at an anchor."""
    x, y = POSITIONS[position]
    j = POSITION_JITTER
    return (float(x + rng.uniform(-j, j)), float(y + rng.uniform(-j, j)),
            float(SIZES[size] * (1 + rng.uniform(-SIZE_JITTER, SIZE_JITTER))))


def make_object(rng, shape, colour, size, position):
    x, y, r = place(rng, position, size)
    return {"shape": shape, "colour": colour, "size": size, "position": position, "x": x, "y": y, "r": r}


def sample_scene(rng, excluded=frozenset()):
    """One random scene with its caption; rejects scenes with a held-out key."""
    while True:
        scene = _sample_scene_once(rng)
        bg = scene["background"]
        if not any((o["shape"], o["colour"], bg, o["position"]) in excluded for o in scene["objects"]):
            return scene


def _sample_scene_once(rng):
    kinds = list(KIND_WEIGHTS)
    kind = kinds[rng.choice(len(kinds), p=list(KIND_WEIGHTS.values()))]
    bg = choice(rng, COLOURS)
    no_bg = rng.random() < P_NO_BACKGROUND

    def template(templates):
        return choice(rng, NO_BACKGROUND_TEMPLATES[kind] if no_bg else templates)

    others = [c for c in COLOURS if c != bg]
    if kind == "single":
        colour, shape, size = choice(rng, others), choice(rng, SHAPES), sample_size(rng)
        if rng.random() < P_NO_POSITION:
            position, p = "centre", ""
        else:
            position = choice(rng, list(POSITIONS))
            p = choice(rng, POSITION_PHRASES[position])
        obj = make_object(rng, shape, colour, size, position)
        o = object_phrase(rng, colour, shape, size)
        caption = template(SINGLE_TEMPLATES).format(o=o, p=p, b=bg)
        return {"kind": kind, "background": bg, "objects": [obj], "caption": tidy(caption)}
    ca, cb = rng.choice(len(others), size=2, replace=False)
    ca, cb = others[ca], others[cb]
    sa, sb = choice(rng, SHAPES), choice(rng, SHAPES)
    za, zb = sample_size(rng), sample_size(rng)
    oa, ob = object_phrase(rng, ca, sa, za), object_phrase(rng, cb, sb, zb)
    if kind == "relation":
        rel = choice(rng, list(RELATIONS))
        (pa, pb), words = RELATIONS[rel]
        caption = template(RELATION_TEMPLATES).format(oa=oa, ob=ob, rel=choice(rng, words), b=bg)
    elif kind == "and":
        pa, pb = AND_ANCHORS
        caption = template(AND_TEMPLATES).format(oa=oa, ob=ob, b=bg)
    else:
        pa, pb = choice(rng, PAIR_ANCHORS)
        caption = template(PAIR_TEMPLATES).format(oa=oa, ob=ob, b=bg, pa=choice(rng, POSITION_PHRASES[pa]),
                                                  pb=choice(rng, POSITION_PHRASES[pb]))
    objects = [make_object(rng, sa, ca, za, pa), make_object(rng, sb, cb, zb, pb)]
    return {"kind": kind, "background": bg, "objects": objects, "caption": tidy(caption)}


def scenes_to_arrays(scenes, max_objects=2):
    """Pack scenes into the arrays render_batch takes (present=False pads)."""
    n = len(scenes)
    arr = {
        "background": np.zeros(n, np.int64),
        "shape": np.zeros((n, max_objects), np.int64),
        "colour": np.zeros((n, max_objects), np.int64),
        "xyr": np.zeros((n, max_objects, 3), np.float32),
        "present": np.zeros((n, max_objects), bool),
    }
    for i, s in enumerate(scenes):
        arr["background"][i] = COLOURS.index(s["background"])
        for k, o in enumerate(s["objects"]):
            arr["shape"][i, k] = SHAPES.index(o["shape"])
            arr["colour"][i, k] = COLOURS.index(o["colour"])
            arr["xyr"][i, k] = (o["x"], o["y"], o["r"])
            arr["present"][i, k] = True
    return arr


# ---------------------------------------------------------------- rendering
def _unit_polygons():
    """[len(SHAPES), V, 2] vertices at radius 1, padded by repeating the last vertex
    (zero-length edges change neither distance nor inside test); zeros for the circle."""
    polys = [shape_polygon(s, 0.0, 0.0, 1.0) or [(0.0, 0.0)] for s in SHAPES]
    v = max(len(p) for p in polys)
    return [p + [p[-1]] * (v - len(p)) for p in polys]


_UNIT_POLYGONS = _unit_polygons()


def _polygon_sdf(torch, px, py, verts):
    """Signed distance (negative inside) from pixel centres px, py [1, 1, P] to
    polygons verts [M, V, 2] (concave too): [M, P]."""
    ax, ay = verts[..., 0:1], verts[..., 1:2]  # [M, V, 1]
    bx, by = torch.roll(ax, -1, dims=1), torch.roll(ay, -1, dims=1)
    ex, ey = bx - ax, by - ay
    wx, wy = px - ax, py - ay  # [M, V, P]
    t = ((wx * ex + wy * ey) / (ex * ex + ey * ey).clamp_min(1e-12)).clamp(0, 1)
    dist2 = ((wx - t * ex) ** 2 + (wy - t * ey) ** 2).amin(dim=1)
    crosses = (ay > py) != (by > py)
    x_cross = ax + (py - ay) * ex / torch.where(ey == 0, torch.ones_like(ey), ey)
    inside = (crosses & (px < x_cross)).sum(dim=1) % 2 == 1
    dist = dist2.sqrt()
    return torch.where(inside, -dist, dist)


def render_batch(arrays, size=IMAGE_SIZE, device="cpu"):
    """Render packed scenes to float images [N, 3, size, size] in [0, 1] on `device`.
    Every object is evaluated as every shape and the right one selected, so the
    GPU never waits on the host (no data-dependent indexing)."""
    import torch

    palette = torch.tensor([PALETTE[c] for c in COLOURS], dtype=torch.float32, device=device) / 255
    bg = torch.as_tensor(arrays["background"], device=device)
    shape = torch.as_tensor(arrays["shape"], device=device)
    colour = torch.as_tensor(arrays["colour"], device=device)
    xyr = torch.as_tensor(arrays["xyr"], device=device) * size  # pixel units
    present = torch.as_tensor(arrays["present"], device=device)
    unit = torch.tensor(_UNIT_POLYGONS, dtype=torch.float32, device=device)  # [S, V, 2]
    n, k_max = shape.shape
    coords = torch.arange(size, device=device, dtype=torch.float32) + 0.5
    py, px = torch.meshgrid(coords, coords, indexing="ij")
    px, py = px.reshape(1, 1, -1), py.reshape(1, 1, -1)  # [1, 1, P]
    img = palette[bg][:, :, None].expand(n, 3, size * size).clone()  # [N, 3, P]
    circle = SHAPES.index("circle")
    for k in range(k_max):
        cx, cy, r = xyr[:, k, 0:1], xyr[:, k, 1:2], xyr[:, k, 2:3]  # [N, 1]
        verts = torch.stack([cx, cy], -1) + r[..., None] * unit[shape[:, k]]  # [N, V, 2]
        sdf_polygon = _polygon_sdf(torch, px, py, verts)  # [N, P]
        sdf_circle = ((px[0] - cx) ** 2 + (py[0] - cy) ** 2).sqrt() - r
        sdf = torch.where((shape[:, k] == circle)[:, None], sdf_circle, sdf_polygon)
        alpha = (0.5 - sdf).clamp(0, 1) * present[:, k, None]  # pixel coverage: [N, P]
        img = img * (1 - alpha[:, None]) + palette[colour[:, k]][:, :, None] * alpha[:, None]
    return img.reshape(n, 3, size, size)


def to_uint8(images):
    """[N, 3, H, W] floats in [0, 1] -> numpy uint8 [N, H, W, 3]."""
    return (images.clamp(0, 1) * 255 + 0.5).to("cpu").byte().permute(0, 2, 3, 1).numpy()


def save_grid(images_u8, path, cols=8, scale=2):
    from PIL import Image

    n, h, w, _ = images_u8.shape
    rows = (n + cols - 1) // cols
    grid = np.full((rows * (h + 2), cols * (w + 2), 3), 255, np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        grid[r * (h + 2):r * (h + 2) + h, c * (w + 2):c * (w + 2) + w] = images_u8[i]
    img = Image.fromarray(grid)
    img.resize((img.width * scale, img.height * scale), Image.NEAREST).save(path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    from PIL import Image

    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    excluded = load_excluded()
    scenes = [sample_scene(rng, excluded) for _ in range(args.n)]
    images = to_uint8(render_batch(scenes_to_arrays(scenes)))
    with open(os.path.join(args.out, "scenes.json"), "w") as f:
        json.dump(scenes, f, indent=1)
    with open(os.path.join(args.out, "captions.txt"), "w") as f:
        for i, (s, im) in enumerate(zip(scenes, images)):
            Image.fromarray(im).save(os.path.join(args.out, f"{i:03d}.png"))
            f.write(f"{i:03d}\t{s['caption']}\n")
    save_grid(images, os.path.join(args.out, "grid.png"))
    print(f"wrote {args.n} images to {args.out}")


if __name__ == "__main__":
    main()
