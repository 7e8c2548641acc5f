"""kiln generate / kiln info as a user runs them: outputs, metadata, and one-line errors."""

import json
import shutil

import pytest

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


def test_build_rejects_bad_shapes_and_flags_before_looking_for_a_gpu(kiln, tmp_path):
    plans = tmp_path / "plans"
    for args, needle in [(("--shapes", "513x512", "--plan-cache", plans), "multiples of 8"),
                         (("--shapes", "512x", "--plan-cache", plans), "WIDTHxHEIGHT"),
                         (("--shapes", "512", "--plan-cache", plans), "WIDTHxHEIGHT"),
                         (("--batch", "0", "--plan-cache", plans), "--batch"),
                         (("--dtype", "fp8", "--plan-cache", plans), "fp8"),
                         (("--model", tmp_path, "--plan-cache", plans), "--arch"),
                         (("--plan-cache", "off"), "needs a folder")]:
        r = kiln("build", "--arch", "sd15", *args)
        assert r.returncode == 2, (args, r.stderr)
        err = one_line_error(r)
        assert needle in err, (args, err)
    assert not plans.exists(), "nothing is written after a usage error"


def test_build_with_a_missing_model_is_a_clear_error(kiln, tmp_path):
    err = one_line_error(kiln("build", "--model", tmp_path / "nope", "--plan-cache", tmp_path / "plans"))
    assert "nope" in err and "does not exist" in err


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="a GPU is present: kiln build would run")
def test_build_without_a_gpu_says_so_in_one_line(kiln, tmp_path):
    err = one_line_error(kiln("build", "--arch", "sd15", "--shapes", "512x512", "--plan-cache", tmp_path / "plans"))
    assert "no CUDA device" in err or "no CUDA backend" in err, err


def test_plan_cache_flag_is_accepted_and_ignored_on_the_cpu(kiln, golden_model, tmp_path):
    r = kiln("generate", "x", "--model", golden_model, "--device", "cpu", "--steps", 1, "--width", 64,
             "--height", 64, "--seed", 1, "--plan-cache", tmp_path / "plans", "--output", tmp_path / "o.png",
             "--quiet")
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "plans").exists()
    err = one_line_error(kiln("generate", "x", "--model", golden_model, "--device", "cpu", "--plan-cache", "",
                              "--output", tmp_path / "o.png"))
    assert "--plan-cache" in err


def test_bench_on_the_cpu_counts_the_workloads_flops(kiln, golden_model, tmp_path):
    # The golden text encoder by hand: 3 layers, hidden 32, MLP 48, 77 tokens, batch 1.
    # A layer: q, k, v and out projections, the MLP's two GEMMs, and attention
    # (scores and P·V: 4·77·77·32), multiply-adds counted as two.
    tokens, hidden, mlp = 77, 32, 48
    layer = 2 * tokens * (4 * hidden * hidden + 2 * hidden * mlp) + 4 * tokens * tokens * hidden
    out = tmp_path / "bench.json"
    r = kiln("bench", "--model", golden_model, "--what", "text,unet", "--size", 64, "--device", "cpu",
             "--warmup", 0, "--reps", 1, "--json", out)
    assert r.returncode == 0, r.stderr
    rows = {row["workload"]: row for row in json.loads(out.read_text())["rows"]}
    text = next(v for k, v in rows.items() if "clip" in k or "text" in k)
    assert text["gflop"] * 1e9 == pytest.approx(3 * layer, rel=1e-9)
    unet = next(v for k, v in rows.items() if "unet" in k)
    assert unet["gflop"] > 0 and unet["tflops"] > 0


def test_bench_e2e_counts_every_steps_unet(kiln, golden_model, tmp_path):
    # The e2e row printed 0 GFLOP. One more step is one more UNet call on the two CFG
    # rows (bench's UNet workload, at the latent size the pipeline makes of 64 pixels:
    # bench sizes its latents by 8, the small VAE by its own factor).
    vae = json.loads((golden_model / "vae" / "config.json").read_text())
    factor = 2 ** (len(vae["block_out_channels"]) - 1)

    def gflop(*args):
        out = tmp_path / "bench.json"
        r = kiln("bench", "--model", golden_model, "--device", "cpu", "--warmup", 0, "--reps", 1, "--json",
                 out, *args)
        assert r.returncode == 0, r.stderr
        (row,) = json.loads(out.read_text())["rows"]
        assert row["gflop"] > 0 and row["tflops"] > 0, row
        return row["gflop"]

    e2e2 = gflop("--what", "e2e", "--size", 64, "--steps", 2)
    e2e3 = gflop("--what", "e2e", "--size", 64, "--steps", 3)
    unet = gflop("--what", "unet", "--size", 64 * 8 // factor, "--batch", 2)
    assert e2e3 - e2e2 == pytest.approx(unet, rel=1e-6)
