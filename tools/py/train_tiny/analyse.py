"""Rule-based analyser of an embedded-model image: background colour, and each
object's colour, shape and position. No learned parts (numpy + Pillow only).

Method, on an RGB image of any size (positions are fractions of the side):
 1. Every pixel gets the nearest palette colour (shapes.PALETTE, Euclidean RGB).
 2. Background = the palette colour with the most pixels.
 3. Foreground = pixels whose label is not the background; objects are its
    4-connected components with an area of at least MIN_AREA of the image
    (smaller ones are noise and are dropped).
 4. Object colour = the most frequent label among the object's core pixels: the
    half of its pixels farthest (RGB) from the background colour. Anti-aliased or
    blurred edges, whose blends can be nearest to a third colour (red + yellow
    edge -> orange), do not vote.
 5. Object position = its pixel centroid (x, y); its named position is the
    nearest of the nine anchors (shapes.POSITIONS), i.e. the 3x3 grid cell with
    boundaries at 3/8 and 5/8 of the side.
 6. Object shape = the shape template (circle, square, triangle, star; the
    geometry of shapes.shape_polygon) with the highest intersection-over-union
    with the object's mask, each template centred on the object's centroid and
    scaled so that its area matches the object's (x0.9, x1, x1.1 tried).

    python analyse.py image.png [...]    # prints one JSON line per image
"""

import json
import math
import sys

import numpy as np
from PIL import Image

from shapes import COLOURS, PALETTE, SHAPES, nearest_position, shape_polygon

MIN_AREA = 0.004  # of the image area: 16 pixels at 64x64
SUPERSAMPLE = 4
SCALES = (0.9, 1.0, 1.1)

_PALETTE = np.array([PALETTE[c] for c in COLOURS], dtype=np.float32)


def _polygon_area(pts):
    return 0.5 * abs(sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(pts, pts[1:] + pts[:1])))


# Area of each shape at radius 1, to scale a template to an object's area.
_UNIT_AREA = {s: (math.pi if s == "circle" else _polygon_area(shape_polygon(s, 0, 0, 1))) for s in SHAPES}


def label_pixels(rgb):
    """Nearest palette index of each pixel [H, W]."""
    return ((rgb[:, :, None, :].astype(np.float32) - _PALETTE) ** 2).sum(-1).argmin(-1)


def connected_components(mask):
    """4-connected components of a boolean mask: a list of (ys, xs) index arrays."""
    h, w = mask.shape
    seen = np.zeros_like(mask)
    comps = []
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        seen[y0, x0] = True
        stack, ys, xs = [(y0, x0)], [], []
        while stack:
            y, x = stack.pop()
            ys.append(y)
            xs.append(x)
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        comps.append((np.array(ys), np.array(xs)))
    return comps


def _inside_polygon(px, py, pts):
    inside = np.zeros(px.shape, bool)
    for (ax, ay), (bx, by) in zip(pts, pts[1:] + pts[:1]):
        crosses = (ay > py) != (by > py)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_cross = ax + (py - ay) * (bx - ax) / (by - ay)
        inside ^= crosses & (px < x_cross)
    return inside


def template_coverage(shape, cx, cy, r, y0, y1, x0, x1):
    """Fraction of each pixel of the window [y0:y1, x0:x1] covered by the shape
    (pixel units, supersampled)."""
    s = SUPERSAMPLE
    ys = y0 + (np.arange((y1 - y0) * s) + 0.5) / s
    xs = x0 + (np.arange((x1 - x0) * s) + 0.5) / s
    px, py = np.meshgrid(xs, ys)
    if shape == "circle":
        inside = (px - cx) ** 2 + (py - cy) ** 2 <= r * r
    else:
        inside = _inside_polygon(px, py, shape_polygon(shape, cx, cy, r))
    return inside.reshape(y1 - y0, s, x1 - x0, s).mean(axis=(1, 3))


def classify_shape(mask, cx, cy, area):
    """Best-IoU shape for a boolean mask; returns (shape, iou, {shape: iou})."""
    h, w = mask.shape
    scores = {}
    for shape in SHAPES:
        best = 0.0
        for scale in SCALES:
            r = math.sqrt(area / _UNIT_AREA[shape]) * scale
            m = int(math.ceil(1.3 * r)) + 2
            y0, y1 = max(0, int(cy) - m), min(h, int(cy) + m + 1)
            x0, x1 = max(0, int(cx) - m), min(w, int(cx) + m + 1)
            cov = template_coverage(shape, cx, cy, r, y0, y1, x0, x1)
            win = mask[y0:y1, x0:x1].astype(np.float32)
            inter = np.minimum(win, cov).sum()
            union = np.maximum(win, cov).sum() + (mask.sum() - win.sum())  # mask pixels outside the window
            best = max(best, float(inter / union))
        scores[shape] = round(best, 3)
    shape = max(scores, key=scores.get)
    return shape, scores[shape], scores


def analyse_array(rgb):
    """Analyse an RGB uint8 array [H, W, 3]; returns a JSON-able dict."""
    rgb = np.asarray(rgb)[:, :, :3]
    h, w = rgb.shape[:2]
    label = label_pixels(rgb)
    counts = np.bincount(label.ravel(), minlength=len(COLOURS))
    bg = int(counts.argmax())
    objects = []
    for ys, xs in connected_components(label != bg):
        area = len(ys)
        if area < MIN_AREA * h * w:
            continue
        from_bg = np.sqrt(((rgb[ys, xs].astype(np.float32) - _PALETTE[bg]) ** 2).sum(-1))
        core = from_bg >= np.median(from_bg)
        votes = np.bincount(label[ys, xs][core], minlength=len(COLOURS))
        votes[bg] = 0
        cx, cy = xs.mean() + 0.5, ys.mean() + 0.5  # pixel centres
        mask = np.zeros((h, w), bool)
        mask[ys, xs] = True
        shape, iou, scores = classify_shape(mask, cx, cy, area)
        x, y = cx / w, cy / h
        objects.append({"colour": COLOURS[int(votes.argmax())], "shape": shape, "x": round(float(x), 4),
                        "y": round(float(y), 4), "position": nearest_position(x, y), "area": round(area / (h * w), 4),
                        "iou": iou, "shape_scores": scores})
    objects.sort(key=lambda o: -o["area"])
    return {"background": COLOURS[bg], "background_fraction": round(float(counts[bg] / (h * w)), 4),
            "objects": objects}


def analyse_file(path):
    return analyse_array(np.array(Image.open(path).convert("RGB")))


def main():
    for path in sys.argv[1:]:
        print(json.dumps(dict(file=path, **analyse_file(path))))


if __name__ == "__main__":
    main()
