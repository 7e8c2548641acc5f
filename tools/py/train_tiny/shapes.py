"""The visual vocabulary shared by the data generator (data.py) and the analyser
(analyse.py): palette, shapes, sizes and positions. Pure Python, no dependencies,
so the analyser stays free of torch.

Coordinates are fractions of the image side: x to the right, y downwards,
(0.5, 0.5) is the centre. A shape is placed by its area centroid and a "radius" r.
"""

import math

IMAGE_SIZE = 64  # native resolution of the embedded model (pixels)

# Eight colours far apart in RGB (closest pair: orange/yellow, 81 apart).
PALETTE = {
    "red": (220, 30, 40),
    "orange": (250, 140, 20),
    "yellow": (250, 220, 30),
    "green": (40, 170, 60),
    "blue": (30, 80, 220),
    "purple": (140, 50, 190),
    "white": (245, 245, 245),
    "black": (25, 25, 25),
}
COLOURS = list(PALETTE)

SHAPES = ["circle", "square", "triangle", "star"]

# Radius of each size class (fraction of the image side) and the relative jitter
# applied in training images.
SIZES = {"small": 0.11, "medium": 0.145, "large": 0.19}
SIZE_JITTER = 0.06

# Nine anchors on a 3x3 grid; an object is placed at its anchor plus a small jitter.
POSITIONS = {
    "centre": (0.5, 0.5),
    "left": (0.25, 0.5),
    "right": (0.75, 0.5),
    "top": (0.5, 0.25),
    "bottom": (0.5, 0.75),
    "top left": (0.25, 0.25),
    "top right": (0.75, 0.25),
    "bottom left": (0.25, 0.75),
    "bottom right": (0.75, 0.75),
}
POSITION_JITTER = 0.03  # uniform in [-j, j] on each axis

STAR_INNER_RATIO = 0.382  # regular five-pointed star


def shape_polygon(shape, cx, cy, r):
    """Vertices [(x, y), ...] of a polygonal shape centred (area centroid) at (cx, cy)
    with radius parameter r; None for the circle (radius r)."""
    if shape == "circle":
        return None
    if shape == "square":
        h = 0.84 * r  # half side: about the circle's area
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":
        R = 1.15 * r  # circumradius of an equilateral triangle pointing up
        return [(cx + R * math.sin(a), cy - R * math.cos(a)) for a in (0.0, 2 * math.pi / 3, 4 * math.pi / 3)]
    if shape == "star":
        R = 1.2 * r
        pts = []
        for k in range(10):
            rad = R if k % 2 == 0 else R * STAR_INNER_RATIO
            a = k * math.pi / 5
            pts.append((cx + rad * math.sin(a), cy - rad * math.cos(a)))
        return pts
    raise ValueError(f"unknown shape {shape!r}")


def nearest_position(x, y):
    """Name of the anchor nearest to (x, y) (fractions of the image side)."""
    return min(POSITIONS, key=lambda p: (POSITIONS[p][0] - x) ** 2 + (POSITIONS[p][1] - y) ** 2)
