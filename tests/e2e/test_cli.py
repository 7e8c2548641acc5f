"""kiln generate / kiln info as a user runs them: outputs, metadata, and one-line errors."""

import json
import shutil

from png_chunks import read_png


def test_generate_writes_png_with_a1111_parameters(kiln, golden_model, tmp_path):
    out = tmp_path / "cat.png"
    r = kiln("generate", "--model", golden_model, "--prompt", "a cat, Ünïcödé 東京", "--negative-prompt",
             "blurry", "--steps", 3, "--seed", 7, "--sampler", "euler_a", "--cfg-scale", 6.5,
             "--width", 96, "--height", 64, "--output", out, "--quiet")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(out)
    png = read_png(out)
    assert (png["width"], png["height"]) == (96, 64)
    params = png["text"]["parameters"]
    assert params.splitlines()[0] == "a cat, Ünïcödé 東京"
    assert "Negative prompt: blurry" in params
    for field in ("Steps: 3", "Sampler: Euler a", "CFG scale: 6.5", "Seed: 7", "Size: 96x64", "Model: model"):
        assert field in params, params


def test_same_seed_same_image_and_batch_count_numbers_files(kiln, golden_model, tmp_path):
    a = tmp_path / "a.png"
    r = kiln("generate", "p", "--model", golden_model, "--steps", 2, "--seed", 5, "--output", a, "--quiet")
    assert r.returncode == 0, r.stderr
    r = kiln("generate", "p", "--model", golden_model, "--steps", 2, "--seed", 4, "--batch-count", 2,
             "--output", tmp_path / "b.png", "--quiet")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(tmp_path / "b-1.png"), str(tmp_path / "b-2.png")]
    # Image 2 of the batch used seed 4 + 1 = 5: the same picture as a.png.
    assert (tmp_path / "b-2.png").read_bytes() == a.read_bytes()
    assert (tmp_path / "b-1.png").read_bytes() != a.read_bytes()


def test_info_describes_the_model(kiln, golden_model):
    r = kiln("info", "--model", golden_model)
    assert r.returncode == 0, r.stderr
    assert "StableDiffusionPipeline" in r.stdout
    assert "UNet2DConditionModel" in r.stdout
    assert "native size: 64x64" in r.stdout


def one_line_error(r):
    assert r.returncode != 0
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, r.stderr
    return lines[0]


def test_size_not_multiple_of_8_is_a_clear_error(kiln, golden_model, tmp_path):
    err = one_line_error(kiln("generate", "x", "--model", golden_model, "--width", 100,
                              "--output", tmp_path / "o.png"))
    assert "multiples of 8" in err and "100" in err


def test_missing_model_folder_is_a_clear_error(kiln, tmp_path):
    err = one_line_error(kiln("generate", "x", "--model", tmp_path / "nope", "--output", tmp_path / "o.png"))
    assert "does not exist" in err


def test_unsupported_pipeline_class_is_named(kiln, golden_model, tmp_path):
    model = tmp_path / "m"
    shutil.copytree(golden_model, model)
    index = json.loads((model / "model_index.json").read_text())
    index["_class_name"] = "FluxPipeline"
    (model / "model_index.json").write_text(json.dumps(index))
    err = one_line_error(kiln("generate", "x", "--model", model, "--output", tmp_path / "o.png"))
    assert "FluxPipeline" in err and "not supported" in err


def test_corrupt_weights_are_a_clear_error(kiln, golden_model, tmp_path):
    model = tmp_path / "m"
    shutil.copytree(golden_model, model)
    weights = model / "unet" / "diffusion_pytorch_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])  # truncated download
    err = one_line_error(kiln("generate", "x", "--model", model, "--output", tmp_path / "o.png"))
    assert "diffusion_pytorch_model.safetensors" in err


def test_missing_component_is_a_clear_error(kiln, golden_model, tmp_path):
    model = tmp_path / "m"
    shutil.copytree(golden_model, model)
    shutil.rmtree(model / "vae")
    err = one_line_error(kiln("generate", "x", "--model", model, "--output", tmp_path / "o.png"))
    assert "vae" in err


def test_bad_flags_are_usage_errors(kiln, golden_model, tmp_path):
    for args, needle in [(("--steps", "many"), "--steps"), (("--sampler", "heun"), "heun"),
                         (("--scheduler", "exponential"), "exponential"), (("--frobnicate", "1"), "frobnicate")]:
        r = kiln("generate", "x", "--model", golden_model, *args, "--output", tmp_path / "o.png")
        assert r.returncode == 2, (args, r.stderr)
        assert needle in one_line_error(r)
    r = kiln("generate", "--model", golden_model)
    assert r.returncode == 2 and "prompt" in r.stderr
