#!/usr/bin/env python3
"""Writes the files under tests/data/io/ that the safetensors and PNG unit tests read.

Every file here is made by the reference writers (the `safetensors` package,
diffusers' save_pretrained, Pillow), never by kiln, so the C++ tests check kiln
against them. Run with the project's Python environment:

    /work/pyenv/bin/python tools/py/make_io_test_files.py

It rewrites tests/data/io/ completely and records the package versions in
tests/data/io/VERSIONS.txt.
"""

import shutil
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import PIL
import safetensors
import torch
from PIL import Image, PngImagePlugin
from safetensors.torch import save_file

import diffusers
from diffusers import ModelMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config

OUT = Path(__file__).resolve().parents[2] / "tests" / "data" / "io"


# --------------------------------------------------------------------- safetensors


def write_mixed(path: Path) -> None:
    """One tensor of each dtype kiln computes with, plus rounding references."""
    grid = torch.arange(12, dtype=torch.float32) * 0.25 - 1.5  # exact in f16 and bf16
    generator = torch.Generator().manual_seed(1234)
    # Values that round differently in f16 and bf16: ordinary, near ties, beyond
    # f16's range, in f16's subnormal range, and specials.
    rounding = torch.cat(
        [
            torch.randn(64, generator=generator) * 3.0,
            torch.tensor([1.0 + 2.0**-11, 1.0 + 3 * 2.0**-11, 65504.0, 65520.0, 1e5, -1e5]),
            torch.tensor([1e-5, 3e-7, 6e-8, 2.0**-25, -2.0**-24, 0.0, -0.0]),
            torch.tensor([float("inf"), float("-inf"), float("nan")]),
            torch.tensor([1.0 + 2.0**-8, 1.0 + 3 * 2.0**-8, 3.4e38, 1e-40]),
        ]
    )
    tensors = {
        "f32.weight": grid.reshape(3, 4),
        "f16.weight": grid.reshape(2, 3, 2).half(),
        "bf16.weight": grid[:4].bfloat16(),
        "i32.ids": torch.tensor([0, -1, 2147483647, -2147483648], dtype=torch.int32),
        "i64.ids": torch.tensor([[5, -7], [49407, 0]], dtype=torch.int64),
        "i64.too_big": torch.tensor([1, 2**40], dtype=torch.int64),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),
        "rounding.f32": rounding,
        "rounding.as_f16": rounding.half(),
        "rounding.as_bf16": rounding.bfloat16(),
    }
    # One metadata key: the reference writer orders several at random.
    save_file(tensors, path, metadata={"format": "pt"})


def write_for_writer_comparison(path: Path) -> None:
    """A file kiln's writer must reproduce byte for byte from the same tensors.

    One metadata key only: the reference writer's order for several is not fixed.
    """
    generator = torch.Generator().manual_seed(99)
    tensors = {
        "b.f32": torch.randn(2, 3, generator=generator),
        "a.f32": torch.randn(5, generator=generator),
        "half": torch.randn(3, 1, generator=generator).half(),
        "brain": torch.randn(7, generator=generator).bfloat16(),
        "ids": torch.tensor([3, -4], dtype=torch.int32),
        "long_ids": torch.tensor([[1], [2], [3]], dtype=torch.int64),
        "scalar": torch.tensor(1.0),
        "nothing": torch.zeros(0, 2, dtype=torch.float16),
    }
    save_file(tensors, path, metadata={"format": "pt"})


def write_odd_dtypes(path: Path) -> None:
    """Dtypes kiln does not compute with, beside one it does."""
    tensors = {
        "f64.values": torch.tensor([1.5, -2.25, 1e-3, 1e300], dtype=torch.float64),
        "int8.buffer": torch.tensor([-128, 0, 127], dtype=torch.int8),
        "u8.mask": torch.tensor([0, 255], dtype=torch.uint8),
        "bool.flags": torch.tensor([True, False, True]),
        "f8.weight": torch.tensor([0.5, -1.0, 448.0, 0.0]).to(torch.float8_e4m3fn),
        "ok.f32": torch.tensor([1.0, 2.0]),
    }
    save_file(tensors, path)


class TinyModel(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(self, dim: int = 4):
        super().__init__()
        self.proj_in = torch.nn.Linear(dim, dim)
        self.norm = torch.nn.LayerNorm(dim)
        self.proj_out = torch.nn.Linear(dim, dim)


def write_model_folders(root: Path) -> None:
    """diffusers folders in each layout WeightSet::open resolves."""
    torch.manual_seed(0)
    model = TinyModel()
    with torch.no_grad():
        model.norm.weight.normal_()  # not all ones, so a wrong tensor shows
    model.save_pretrained(root / "single")
    model.save_pretrained(root / "sharded", max_shard_size=100)
    half = TinyModel().half()
    half.load_state_dict({k: v.half() for k, v in model.state_dict().items()})
    half.save_pretrained(root / "variant_only", variant="fp16")
    half.save_pretrained(root / "sharded_fp16", variant="fp16", max_shard_size=50)
    model.save_pretrained(root / "plain_and_fp16")
    half.save_pretrained(root / "plain_and_fp16", variant="fp16")
    model.save_pretrained(root / "pickle_only", safe_serialization=False)
    for folder in root.iterdir():
        (folder / "config.json").unlink(missing_ok=True)
    for folder in ("sharded", "sharded_fp16"):
        assert len(list((root / folder).glob("*-of-*.safetensors"))) >= 2, folder
    assert (root / "sharded_fp16" / "diffusion_pytorch_model.safetensors.index.fp16.json").exists()


# --------------------------------------------------------------------- PNG


def png_filter_types(path: Path) -> set:
    """The row filter types used in a PNG, read from its IDAT stream."""
    data = path.read_bytes()
    position, idat, header = 8, b"", None
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind = data[position + 4 : position + 8]
        body = data[position + 8 : position + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        position += 12 + length
    width, height, depth, color, _, _, _ = header
    samples = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[color]
    row_bytes = (width * samples * depth + 7) // 8
    raw = zlib.decompress(idat)
    return {raw[y * (row_bytes + 1)] for y in range(height)}


def expected_pixels(image: Image.Image) -> Image.Image:
    """The image in the layout kiln's decoder returns, converted by Pillow."""
    has_transparency = "transparency" in image.info
    if image.mode in ("RGBA", "LA") or has_transparency:
        return image.convert("RGBA")
    if image.mode in ("L", "1"):
        return image.convert("L")
    return image.convert("RGB")


def save_png(folder: Path, name: str, image: Image.Image, **options) -> set:
    path = folder / f"{name}.png"
    image.save(path, **options)
    decoded = Image.open(path)
    expected = expected_pixels(decoded)
    channels = len(expected.getbands())
    # "width height channels\n" then the pixels, row-major, channels interleaved.
    with open(folder / f"{name}.pixels", "wb") as f:
        f.write(f"{expected.width} {expected.height} {channels}\n".encode())
        f.write(expected.tobytes())
    return png_filter_types(path) if decoded.mode not in ("P", "1") else set()


def pattern(height: int, width: int, channels: int, seed: int) -> np.ndarray:
    """Gradients, stripes, flat areas and noise, so the adaptive filter uses all five types."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    image = np.zeros((height, width, channels), dtype=np.int64)
    for c in range(channels):
        image[..., c] = x * (3 + c) + y * (5 - c)
    noisy = slice(height // 3, 2 * height // 3)
    image[noisy] = rng.integers(0, 256, (noisy.stop - noisy.start, width, channels))
    image[:, width // 2 : width // 2 + 3] = 200
    image[-3:] = (x[-3:, :, None] % 7) * 30
    image %= 256
    if height > 2:
        image[2] = rng.integers(0, 256, (width, channels))
    # Rows where each byte is the mean of its left and upper neighbours, which
    # only the Avg filter predicts exactly.
    for row in range(3, min(6, height)):
        image[row, 0] = image[row - 1, 0] // 2
        for column in range(1, width):
            image[row, column] = (image[row, column - 1] + image[row - 1, column]) // 2
    return (image % 256).astype(np.uint8)


def write_pngs(folder: Path) -> None:
    filters = set()
    filters |= save_png(folder, "gray", Image.fromarray(pattern(23, 37, 1, 1)[..., 0], "L"))
    filters |= save_png(folder, "rgb", Image.fromarray(pattern(29, 41, 3, 2), "RGB"))
    filters |= save_png(folder, "rgba", Image.fromarray(pattern(17, 19, 4, 3), "RGBA"))
    filters |= save_png(folder, "gray_alpha", Image.fromarray(pattern(11, 13, 2, 4), "LA"))
    # Pillow tries the Avg filter only when asked to optimize.
    big = Image.fromarray(pattern(64, 96, 3, 5), "RGB")
    filters |= save_png(folder, "rgb_optimized", big, optimize=True)
    assert filters == {0, 1, 2, 3, 4}, f"Pillow used only filter types {sorted(filters)}"

    palette_source = Image.fromarray(pattern(19, 31, 3, 6), "RGB")
    save_png(folder, "palette256", palette_source.quantize(256))
    palette16 = palette_source.quantize(16)
    save_png(folder, "palette16_trns", palette16, transparency=bytes([0, 128, 255] + [255] * 5))
    two_colors = Image.fromarray((pattern(9, 21, 1, 7)[..., 0] > 128).astype(np.uint8), "P")
    two_colors.putpalette([10, 20, 30, 200, 100, 50])
    save_png(folder, "palette2", two_colors)
    save_png(folder, "bilevel", Image.fromarray(pattern(10, 13, 1, 8)[..., 0] > 100))
    save_png(folder, "rgb_trns", Image.fromarray(pattern(8, 9, 3, 9), "RGB"),
             transparency=(200, 200, 200))
    save_png(folder, "gray_trns", Image.fromarray(pattern(8, 9, 1, 10)[..., 0], "L"),
             transparency=200)
    sixteen = (pattern(6, 7, 1, 11)[..., 0].astype(np.uint16) * 257)
    Image.fromarray(sixteen).save(folder / "gray16.png")  # mode I;16

    # Text as A1111 writes it (PngInfo.add_text), one Latin-1 value (tEXt), one
    # that needs iTXt, one compressed (zTXt); the test reads these back and also
    # compares the tEXt/iTXt chunk bytes with the ones kiln's encoder writes.
    text_image = Image.fromarray(pattern(4, 5, 3, 12), "RGB")
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a café, Steps: 20, Sampler: Euler a, CFG scale: 7")
    info.add_text("Comment", "日本語のプロンプト ✓")
    info.add_text("zipped", "compressed text " * 8, zip=True)
    text_image.save(folder / "text.png", pnginfo=info)
    (folder / "text.pixels").write_bytes(b"5 4 3\n" + text_image.tobytes())


def main() -> None:
    if OUT.exists():
        shutil.rmtree(OUT)
    (OUT / "safetensors").mkdir(parents=True)
    (OUT / "models").mkdir()
    (OUT / "png").mkdir()
    write_mixed(OUT / "safetensors" / "mixed.safetensors")
    write_odd_dtypes(OUT / "safetensors" / "odd_dtypes.safetensors")
    write_for_writer_comparison(OUT / "safetensors" / "written_by_python.safetensors")
    write_model_folders(OUT / "models")
    write_pngs(OUT / "png")
    versions = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "safetensors": safetensors.__version__,
        "diffusers": diffusers.__version__,
        "Pillow": PIL.__version__,
        "numpy": np.__version__,
        "zlib": zlib.ZLIB_RUNTIME_VERSION,
    }
    (OUT / "VERSIONS.txt").write_text("".join(f"{k} {v}\n" for k, v in versions.items()))
    total = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(f"wrote {OUT} ({total} bytes)")


if __name__ == "__main__":
    main()
