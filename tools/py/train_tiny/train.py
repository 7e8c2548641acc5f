"""Train the embedded model (VAE, then UNet + text encoder) from scratch and export it
in diffusers layout. See README.md for the plan, the budget and the commands.

One invocation trains for at most --minutes of wall-clock time (start-up, saving,
export and evaluation included), then saves RUN/ckpt.pt:
  * no checkpoint yet: the VAE first (--vae-minutes), then UNet + text encoder;
  * --resume: starts from RUN/ckpt.pt, which holds the VAE and the EMA weights
    of UNet + text encoder. Each invocation is one learning-rate cycle (warm-up,
    cosine decay) that starts from the previous cycle's EMA weights with a fresh
    optimiser, so a resume behaves the same on a fresh machine as on the one that
    wrote the checkpoint.
--export DIR writes the fp16 diffusers folder (EMA weights); --eval generates the
held-out prompts (20 steps, CFG) and scores them with the analyser; --pack DIR
copies the log, the scores, a sample grid, the checkpoint and the export (as
tar files cut into parts of 16 MB) into DIR.

    python train.py --smoke --run /tmp/smoke                      # CPU plumbing check
    python train.py --smoke --run /tmp/smoke --resume --eval      # + resume, export, generate
    python train.py --minutes 9 --eval --eval-guidance 5 --pack $OUT                          # GPU chunk 1
    python train.py --resume --minutes 9 --lr 2.5e-4 --warmup 100 --eval --pack $OUT           # GPU chunk 2
"""

import argparse
import json
import math
import os
import shutil
import sys
import tarfile
import time
import traceback

T_START = time.time()
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; the GPU machine has no network

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import arch  # noqa: E402
from data import (P_EMPTY_CAPTION, load_excluded, render_batch, sample_scene, save_grid,  # noqa: E402
                  scenes_to_arrays, to_uint8)

PART_BYTES = 16 * 1000 * 1000  # what comes back from the GPU machine: files of at most 16 MiB
MIN_SNR_GAMMA = 5.0


# ---------------------------------------------------------------- logging
class Log:
    def __init__(self, run_dir):
        self.path = os.path.join(run_dir, "train_log.txt")
        self.metrics = os.path.join(run_dir, "metrics.tsv")
        if not os.path.exists(self.metrics):
            with open(self.metrics, "w") as f:
                f.write("stage\tcycle\tstep\telapsed_s\tloss\tlr\timages_per_s\n")

    def __call__(self, msg):
        line = f"[{time.time() - T_START:7.1f}s] {msg}"
        print(line, flush=True)
        with open(self.path, "a") as f:
            f.write(line + "\n")

    def metric(self, stage, cycle, step, loss, lr, ips):
        with open(self.metrics, "a") as f:
            f.write(f"{stage}\t{cycle}\t{step}\t{time.time() - T_START:.1f}\t{loss:.6f}\t{lr:.3e}\t{ips:.0f}\n")


# ---------------------------------------------------------------- tokenizer
def ensure_tokenizer(path):
    if not os.path.exists(os.path.join(path, "vocab.json")):
        from tokenizer_files import write_tokenizer_folder

        write_tokenizer_folder(path)
    return path


class CaptionTokenizer:
    """CLIPTokenizer with a cache per whitespace-separated word (CLIP's normaliser
    works per character and its pre-tokens never cross whitespace, so this is exact
    for text without special-token strings): padded to 77 with <|endoftext|> like
    SD 1.x."""

    def __init__(self, path):
        from transformers import CLIPTokenizer

        self.tok = CLIPTokenizer.from_pretrained(path)
        self.bos, self.eos = self.tok.bos_token_id, self.tok.eos_token_id
        self.cache = {}

    def _word(self, word):
        backend = self.tok.backend_tokenizer
        pieces = backend.pre_tokenizer.pre_tokenize_str(backend.normalizer.normalize_str(word))
        return [t.id for piece, _ in pieces for t in backend.model.tokenize(piece)]

    def ids(self, caption):
        out = [self.bos]
        for word in caption.split():
            if word not in self.cache:
                self.cache[word] = self._word(word)
            out += self.cache[word]
        out = out[:arch.MAX_LENGTH - 1] + [self.eos]
        return out + [self.eos] * (arch.MAX_LENGTH - len(out))

    def __call__(self, captions):
        return np.array([self.ids(c) for c in captions], dtype=np.int64)


# ---------------------------------------------------------------- data
class SceneBatches(torch.utils.data.IterableDataset):
    """Endless batches of packed scenes (+ token ids); rendering happens on the device."""

    def __init__(self, batch, seed, tokenizer_dir=None):
        self.batch, self.seed, self.tokenizer_dir = batch, seed, tokenizer_dir

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        rng = np.random.default_rng([*self.seed, info.id if info else 0])
        tok = CaptionTokenizer(self.tokenizer_dir) if self.tokenizer_dir else None
        excluded = load_excluded()
        while True:
            scenes = [sample_scene(rng, excluded) for _ in range(self.batch)]
            arrays = {k: torch.from_numpy(v) for k, v in scenes_to_arrays(scenes).items()}
            if tok is not None:
                captions = ["" if rng.random() < P_EMPTY_CAPTION else s["caption"] for s in scenes]
                arrays["ids"] = torch.from_numpy(tok(captions))
            yield arrays


def batches(batch, seed, workers, tokenizer_dir=None):
    loader = torch.utils.data.DataLoader(SceneBatches(batch, seed, tokenizer_dir), batch_size=None,
                                         num_workers=workers, pin_memory=torch.cuda.is_available(),
                                         prefetch_factor=4 if workers else None, persistent_workers=False)
    return iter(loader)


def images_on(arrays, device):
    """Packed scenes -> images in [-1, 1], [N, 3, 64, 64] on the device."""
    arrays = {k: v.to(device, non_blocking=True) for k, v in arrays.items()}
    return render_batch(arrays, device=device) * 2 - 1, arrays.get("ids")


# ---------------------------------------------------------------- schedule
def lr_at(step, total, peak, warmup, floor=0.05):
    if step < warmup:
        return peak * (step + 1) / warmup
    if total is None:
        return peak
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


class StepPlanner:
    """Fixes a stage's total step count from the measured speed, so that the stage
    ends by its deadline (the cosine schedule needs the total)."""

    def __init__(self, deadline, fixed_total=None, calib=(20, 80)):
        self.deadline, self.total, self.calib = deadline, fixed_total, calib
        self.t0 = None

    def update(self, step):
        if self.total is not None:
            return
        if step == self.calib[0]:
            self.t0 = time.time()
        elif step == self.calib[1]:
            rate = (self.calib[1] - self.calib[0]) / (time.time() - self.t0)
            self.total = step + max(1, int(rate * (self.deadline - time.time())))

    def done(self, step):
        return (self.total is not None and step >= self.total) or time.time() >= self.deadline


# ---------------------------------------------------------------- checkpoint
def save_checkpoint(path, vae, unet_ema, te_ema, meta, seed):
    te_state = {k: v.detach().float().cpu() for k, v in te_ema.state_dict().items()}
    key = next(k for k in te_state if k.endswith("token_embedding.weight"))
    emb = te_state.pop(key)
    rows = (emb != arch.embedding_init(seed)).any(dim=1).nonzero().flatten()
    state = {
        "meta": meta,
        "vae": {k: v.detach().float().cpu() for k, v in vae.state_dict().items()},
        "unet": {k: v.detach().float().cpu() for k, v in unet_ema.state_dict().items()},
        "text_encoder": te_state,
        "token_embedding_key": key,
        "token_embedding_rows": rows,
        "token_embedding_values": emb[rows].clone(),
    }
    torch.save(state, path + ".tmp")
    os.replace(path + ".tmp", path)


def load_checkpoint(path, vae, unet, te):
    state = torch.load(path, map_location="cpu", weights_only=True)
    seed = state["meta"]["seed"]
    vae.load_state_dict(state["vae"])
    unet.load_state_dict(state["unet"])
    emb = arch.embedding_init(seed)
    emb[state["token_embedding_rows"]] = state["token_embedding_values"]
    te.load_state_dict(dict(state["text_encoder"], **{state["token_embedding_key"]: emb}))
    vae.register_to_config(scaling_factor=state["meta"]["scaling_factor"])
    return state["meta"]


# ---------------------------------------------------------------- stages
def autocast(device):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def train_vae(vae, args, device, deadline, log, cycle_seed):
    log(f"VAE: training until {deadline - T_START:.0f}s, batch {args.vae_batch}, lr {args.vae_lr}")
    vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, betas=(0.9, 0.99), weight_decay=0.0,
                            fused=device.type == "cuda")
    data = batches(args.vae_batch, cycle_seed, args.workers)
    planner = StepPlanner(deadline, args.vae_steps, calib=(10, 40) if not args.smoke else (1, 2))
    step, t_log, seen, losses, t_stage = 0, time.time(), 0, [], time.time()
    while not planner.done(step):
        lr = lr_at(step, planner.total, args.vae_lr, args.vae_warmup)
        for g in opt.param_groups:
            g["lr"] = lr
        x, _ = images_on(next(data), device)
        with autocast(device):
            posterior = vae.encode(x).latent_dist
            recon = vae.decode(posterior.sample()).sample
        rec = F.l1_loss(recon.float(), x) + F.mse_loss(recon.float(), x)
        mu, logvar = posterior.mean.float(), posterior.logvar.float()
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).mean()  # per latent element
        loss = rec + args.vae_kl * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        step += 1
        seen += x.shape[0]
        losses.append(loss.detach())
        planner.update(step)
        if time.time() - t_log > args.log_seconds or planner.done(step):
            mean = torch.stack(losses).mean().item()
            ips = seen / (time.time() - t_log)
            log(f"VAE step {step}/{planner.total} loss {mean:.5f} (rec {rec.item():.5f} kl {kl.item():.3f}) "
                f"lr {lr:.2e} {ips:.0f} img/s")
            log.metric("vae", 0, step, mean, lr, ips)
            t_log, seen, losses = time.time(), 0, []
    del data
    vae.eval()
    t = time.time() - t_stage
    log(f"VAE done: {step} steps, {step * args.vae_batch} images in {t:.0f}s ({step * args.vae_batch / t:.0f} img/s)")
    return step


@torch.no_grad()
def vae_report(vae, device, log, n=512, seed=123):
    """Latent std (-> scaling_factor) and the analyser's accuracy on reconstructions."""
    from analyse import analyse_array
    from evaluate import match

    rng = np.random.default_rng(seed)
    scenes = [sample_scene(rng, load_excluded()) for _ in range(n)]
    arrays = {k: torch.from_numpy(v) for k, v in scenes_to_arrays(scenes).items()}
    x, _ = images_on(arrays, device)
    with autocast(device):
        z = vae.encode(x).latent_dist.sample()
        recon = vae.decode(z).sample.float()
    std = z.float().std().item()
    rms = z.float().pow(2).mean().sqrt().item()  # scaled latents get E[z^2] = 1 (the pipeline has no shift)
    mse = F.mse_loss(recon, x).item()
    psnr = 10 * math.log10(4 / mse)
    ok = total = 0
    for scene, img in zip(scenes, to_uint8(recon / 2 + 0.5)):
        a = analyse_array(img)
        for o in scene["objects"]:
            m = match(o, a["objects"])
            total += 1
            ok += (a["background"] == scene["background"] and m is not None and m["shape"] == o["shape"]
                   and m["position"] == o["position"])
    log(f"VAE report: latent mean {z.mean().item():.3f} std {std:.3f} rms {rms:.3f} -> scaling_factor {1 / rms:.4f}; "
        f"reconstruction PSNR {psnr:.2f} dB; analyser on reconstructions: {ok}/{total} objects fully right")
    return 1.0 / rms, recon[:32]


def train_unet(unet, te, vae, args, device, deadline, log, cycle, cycle_seed):
    from diffusers import DDPMScheduler

    noise_sched = DDPMScheduler(**arch.SCHEDULE)
    alphas_cumprod = noise_sched.alphas_cumprod.to(device)
    snr = alphas_cumprod / (1 - alphas_cumprod)
    loss_weight = torch.clamp(snr, max=MIN_SNR_GAMMA) / snr  # min-SNR-gamma, epsilon prediction

    params_decay, params_plain = [], []
    for module in (unet, te):
        for name, p in module.named_parameters():
            if p.ndim < 2 or "embedding" in name or "norm" in name:
                params_plain.append(p)  # no weight decay: untouched embedding rows stay at their init
            else:
                params_decay.append(p)
    opt = torch.optim.AdamW([{"params": params_decay, "weight_decay": args.weight_decay},
                             {"params": params_plain, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.99), fused=device.type == "cuda")
    ema_params = [p.detach().clone().float() for p in params_decay + params_plain]
    live_params = params_decay + params_plain

    unet_fwd, te_fwd = unet, te
    if args.compile:
        unet_fwd, te_fwd = torch.compile(unet), torch.compile(te)
    unet.train()
    te.train()
    scaling = vae.config.scaling_factor
    log(f"UNet+TE cycle {cycle}: training until {deadline - T_START:.0f}s, batch {args.batch}, peak lr {args.lr}, "
        f"warmup {args.warmup}, scaling_factor {scaling:.4f}")
    data = batches(args.batch, cycle_seed, args.workers, args.tokenizer)
    planner = StepPlanner(deadline, args.unet_steps, calib=(20, 120) if not args.smoke else (1, 2))
    step, t_log, seen, losses, t_stage = 0, time.time(), 0, [], time.time()
    while not planner.done(step):
        lr = lr_at(step, planner.total, args.lr, args.warmup)
        for g in opt.param_groups:
            g["lr"] = lr
        x, ids = images_on(next(data), device)
        with torch.no_grad(), autocast(device):
            latents = vae.encode(x).latent_dist.sample().float() * scaling
        noise = torch.randn_like(latents)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (latents.shape[0],), device=device)
        noisy = noise_sched.add_noise(latents, noise, t)
        with autocast(device):
            cond = te_fwd(ids)[0]
            pred = unet_fwd(noisy, t, encoder_hidden_states=cond).sample
        per_sample = F.mse_loss(pred.float(), noise, reduction="none").mean(dim=(1, 2, 3))
        loss = (per_sample * loss_weight[t]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(live_params, 1.0)
        opt.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        torch._foreach_lerp_(ema_params, [p.detach().float() for p in live_params], 1 - decay)
        step += 1
        seen += x.shape[0]
        losses.append(per_sample.mean().detach())
        planner.update(step)
        if time.time() - t_log > args.log_seconds or planner.done(step):
            mean = torch.stack(losses).mean().item()
            ips = seen / (time.time() - t_log)
            log(f"UNet step {step}/{planner.total} mse {mean:.5f} lr {lr:.2e} {ips:.0f} img/s")
            log.metric("unet", cycle, step, mean, lr, ips)
            t_log, seen, losses = time.time(), 0, []
    del data
    t = time.time() - t_stage
    log(f"UNet cycle {cycle} done: {step} steps, {step * args.batch} images in {t:.0f}s "
        f"({step * args.batch / t:.0f} img/s)")
    with torch.no_grad():  # the EMA becomes the weights that are saved and exported
        for p, e in zip(live_params, ema_params):
            p.copy_(e)
    unet.eval()
    te.eval()
    return step


# ---------------------------------------------------------------- export / eval
def export(vae, unet, te, tokenizer_dir, out_dir, scheduler, log):
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTokenizer

    if os.path.exists(out_dir):
        shutil.rmtree(out_dir)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=CLIPTokenizer.from_pretrained(tokenizer_dir),
                                   unet=unet, scheduler=arch.make_scheduler(scheduler), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.to(torch.float16)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    pipe.to(torch.float32)
    sd1_text_encoder_keys(os.path.join(out_dir, "text_encoder", "model.safetensors"))
    # transformers 5 loads a model in the dtype its config names, diffusers in fp32: name fp32 so that a
    # plain StableDiffusionPipeline.from_pretrained(dir) computes in one dtype (fp16 weights are upcast).
    te_config_path = os.path.join(out_dir, "text_encoder", "config.json")
    with open(te_config_path) as f:
        te_config = json.load(f)
    te_config.pop("torch_dtype", None)
    te_config["dtype"] = "float32"
    with open(te_config_path, "w") as f:
        json.dump(te_config, f, indent=2, sort_keys=True)
    os.remove(os.path.join(out_dir, "tokenizer", "tokenizer.json"))  # kiln reads vocab.json + merges.txt
    for name in ("vocab.json", "merges.txt", "special_tokens_map.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(tokenizer_dir, name), os.path.join(out_dir, "tokenizer", name))
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out_dir) for f in fs)
    log(f"exported fp16 diffusers folder {out_dir}: {total / 1e6:.2f} MB")


def sd1_text_encoder_keys(path):
    """transformers 5 saves CLIPTextModel without the "text_model." prefix that
    Stable Diffusion 1.x checkpoints (and transformers 4) have; use the SD 1.x names
    so that kiln reads the embedded model exactly like a real SD 1.5 folder
    (transformers 5 loads both)."""
    from safetensors.torch import load_file, save_file

    state = load_file(path)
    save_file({(k if k.startswith("text_model.") else "text_model." + k): v for k, v in state.items()}, path,
              metadata={"format": "pt"})


@torch.no_grad()
def evaluate_folder(model_dir, run_dir, device, log, guidance_scales, n_prompts, steps=20):
    """Generate the held-out prompts with StableDiffusionPipeline from the exported
    folder (fp16 weights, fp32 compute, image i with seed i) and score them."""
    from diffusers import StableDiffusionPipeline
    from PIL import Image

    from evaluate import evaluate

    with open(os.path.join(HERE, "heldout.json")) as f:
        all_prompts = json.load(f)["prompts"]
    prompts = all_prompts[:n_prompts]
    for name in os.listdir(run_dir):  # outputs of an earlier evaluation in this run folder
        if name.startswith("eval_"):
            path = os.path.join(run_dir, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    pipe = StableDiffusionPipeline.from_pretrained(model_dir, dtype=torch.float32).to(device)
    pipe.set_progress_bar_config(disable=True)
    results = {}
    for g in guidance_scales:
        out_dir = os.path.join(run_dir, f"eval_g{g:g}")
        os.makedirs(out_dir, exist_ok=True)
        t0 = time.time()
        for i in range(0, len(prompts), 50):
            chunk = prompts[i:i + 50]
            gens = [torch.Generator("cpu").manual_seed(p["index"]) for p in chunk]
            images = pipe([p["prompt"] for p in chunk], num_inference_steps=steps, guidance_scale=g,
                          generator=gens, output_type="np").images
            for p, im in zip(chunk, images):
                Image.fromarray((im * 255).round().astype(np.uint8)).save(os.path.join(out_dir, f"{p['index']:03d}.png"))
        heldout = os.path.join(HERE, "heldout.json")
        if len(prompts) < len(all_prompts):  # score the subset only
            sub = os.path.join(run_dir, "heldout_subset.json")
            with open(heldout) as f:
                data = json.load(f)
            data["prompts"] = prompts
            with open(sub, "w") as f:
                json.dump(data, f)
            heldout = sub
        res = evaluate(out_dir, heldout)
        results[g] = res
        s = res["all"]
        log(f"held-out eval, guidance {g:g}, {steps} steps ({time.time() - t0:.1f}s): colour {s['colour']:.3f} "
            f"shape {s['shape']:.3f} position {s['position']} count {s['count']:.3f} | held-out phrasings: "
            f"{json.dumps({k: v for k, v in res['heldout_phrasings'].items() if not k.endswith('_n')})}")
        grid = np.stack([np.array(Image.open(os.path.join(out_dir, f"{p['index']:03d}.png"))) for p in prompts[:48]])
        save_grid(grid, os.path.join(run_dir, f"eval_grid_g{g:g}.png"), cols=8, scale=2)
    with open(os.path.join(run_dir, "eval.json"), "w") as f:
        json.dump({str(g): r for g, r in results.items()}, f, indent=1)
    if device.type == "cuda":  # fp16 inference must match fp32 (no overflow in the exported weights)
        p16 = StableDiffusionPipeline.from_pretrained(model_dir, dtype=torch.float16).to(device)
        p16.set_progress_bar_config(disable=True)
        kw = dict(num_inference_steps=steps, guidance_scale=guidance_scales[0], output_type="np")
        a = p16([p["prompt"] for p in prompts[:8]], generator=[torch.Generator("cpu").manual_seed(i) for i in range(8)],
                **kw).images
        b = pipe([p["prompt"] for p in prompts[:8]], generator=[torch.Generator("cpu").manual_seed(i) for i in range(8)],
                 **kw).images
        mse = float(((a.astype(np.float64) - b) ** 2).mean())
        log(f"fp16 vs fp32 pipeline on CUDA: PSNR {10 * math.log10(1 / max(mse, 1e-12)):.1f} dB, "
            f"NaN: {bool(np.isnan(a).any())}")
    return results


def pack(run_dir, export_dir, out_dir, log):
    """At most 8 files, each under 16 MiB: train_log.txt, eval_grids.png, report.tar
    (metrics, scores, generated held-out images, VAE reconstructions) and the
    checkpoint and the export as tar files cut into parts (cat ckpt.tar.part* > ckpt.tar)."""
    from PIL import Image

    os.makedirs(out_dir, exist_ok=True)
    shutil.copy(os.path.join(run_dir, "train_log.txt"), out_dir)
    grids = sorted(f for f in os.listdir(run_dir) if f.startswith("eval_grid"))
    if grids:  # one picture: the grids side by side
        ims = [Image.open(os.path.join(run_dir, g)) for g in grids]
        canvas = Image.new("RGB", (sum(i.width for i in ims) + 8 * (len(ims) - 1), max(i.height for i in ims)), "white")
        x = 0
        for im in ims:
            canvas.paste(im, (x, 0))
            x += im.width + 8
        canvas.save(os.path.join(out_dir, "eval_grids.png"))
    with tarfile.open(os.path.join(out_dir, "report.tar"), "w") as tar:
        for name in sorted(os.listdir(run_dir)):
            if name in ("metrics.tsv", "eval.json", "vae_reconstructions.png") or name.startswith("eval_"):
                tar.add(os.path.join(run_dir, name), arcname=name)
    # ckpt.tar unpacks into a run folder: the checkpoint and the history of the run.
    items = []
    if os.path.exists(os.path.join(run_dir, "ckpt.pt")):
        items.append(("ckpt", [os.path.join(run_dir, f) for f in ("ckpt.pt", "train_log.txt", "metrics.tsv")]))
    if export_dir and os.path.isdir(export_dir):
        items.append(("kiln-tiny", [export_dir]))
    for name, paths in items:
        tar_path = os.path.join(run_dir, name + ".tar")
        with tarfile.open(tar_path, "w") as tar:
            for path in paths:
                tar.add(path, arcname=os.path.basename(path))
        with open(tar_path, "rb") as f:
            k = 0
            while chunk := f.read(PART_BYTES):
                with open(os.path.join(out_dir, f"{name}.tar.part{k}"), "wb") as g:
                    g.write(chunk)
                k += 1
        os.remove(tar_path)
    files = sorted(os.listdir(out_dir))
    log(f"packed into {out_dir}: {', '.join(files)} "
        f"({sum(os.path.getsize(os.path.join(out_dir, f)) for f in files) / 1e6:.1f} MB)")


# ---------------------------------------------------------------- main
def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default=os.path.join(HERE, "run"), help="checkpoint + log folder")
    ap.add_argument("--resume", action="store_true", help="continue from RUN/ckpt.pt (one more lr cycle)")
    ap.add_argument("--minutes", type=float, default=9.0, help="wall-clock budget of this invocation")
    ap.add_argument("--vae-minutes", type=float, default=2.0, help="VAE stage ends this long after start-up")
    ap.add_argument("--no-train", action="store_true", help="only export / evaluate / pack the checkpoint")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--lr", type=float, default=5e-4, help="peak lr of this UNet + text encoder cycle")
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--unet-steps", type=int, help="fix the cycle's step count instead of fitting it to the time")
    ap.add_argument("--vae-batch", type=int, default=256)
    ap.add_argument("--vae-lr", type=float, default=1e-3)
    ap.add_argument("--vae-warmup", type=int, default=100)
    ap.add_argument("--vae-kl", type=float, default=1e-4, help="weight of the KL term (per latent element)")
    ap.add_argument("--vae-steps", type=int)
    ap.add_argument("--workers", type=int, default=min(12, max(1, (os.cpu_count() or 2) - 2)))
    ap.add_argument("--compile", action="store_true", help="torch.compile UNet and text encoder")
    ap.add_argument("--tokenizer", default=os.path.join(HERE, "tokenizer"))
    ap.add_argument("--export", help="write the fp16 diffusers folder here")
    ap.add_argument("--scheduler", default="euler", choices=sorted(arch.SCHEDULER_CLASSES))
    ap.add_argument("--eval", action="store_true", help="generate + score the held-out prompts (needs an export)")
    ap.add_argument("--eval-guidance", default="3,5,7.5")
    ap.add_argument("--eval-n", type=int, default=100)
    ap.add_argument("--pack", help="copy log, scores, checkpoint and export (tar parts) here")
    ap.add_argument("--reserve-seconds", type=float, help="time kept for saving/export/eval (default: estimated)")
    ap.add_argument("--log-seconds", type=float, default=20.0)
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny batches, a few steps: checks the plumbing")
    args = ap.parse_args()
    if args.smoke:
        args.batch, args.vae_batch, args.workers = 4, 4, min(args.workers, 2)
        args.vae_steps = args.vae_steps or 6
        args.unet_steps = args.unet_steps or 8
        args.warmup, args.vae_warmup, args.log_seconds = 2, 2, 0
        args.eval_n, args.eval_guidance = min(args.eval_n, 4), "5"
    if args.eval and not args.export:
        args.export = os.path.join(args.run, "kiln-tiny")
    return args


def main():
    args = parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    os.makedirs(args.run, exist_ok=True)
    log = Log(args.run)
    log(f"{time.strftime('%Y-%m-%d %H:%M:%S')} train.py {' '.join(sys.argv[1:])} | device {device} | "
        f"torch {torch.__version__} | args {vars(args)}")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
        log(f"GPU {torch.cuda.get_device_name()}")
    ensure_tokenizer(args.tokenizer)
    deadline = T_START + args.minutes * 60
    reserve = args.reserve_seconds
    if reserve is None:
        reserve = 15 + (10 if args.export else 0) + (15 * len(args.eval_guidance.split(",")) + 10 if args.eval else 0) + \
            (10 if args.pack else 0)
        if args.smoke:
            reserve = 0
    train_deadline = deadline - reserve

    vae, unet, te = arch.build_models(args.seed)
    ckpt_path = os.path.join(args.run, "ckpt.pt")
    meta = {"seed": args.seed, "cycles": 0, "vae_steps": 0, "unet_steps": [], "scaling_factor": None,
            "configs": {"unet": arch.UNET_CONFIG, "vae": arch.VAE_CONFIG, "text_encoder": arch.TEXT_ENCODER_CONFIG}}
    if args.resume or args.no_train:
        meta = load_checkpoint(ckpt_path, vae, unet, te)
        if meta["seed"] != args.seed:
            raise SystemExit(f"{ckpt_path} was trained with --seed {meta['seed']}")
        log(f"resumed from {ckpt_path}: {meta['cycles']} UNet cycles, steps {meta['unet_steps']}")
    elif os.path.exists(ckpt_path):
        raise SystemExit(f"{ckpt_path} exists: pass --resume to continue it, or remove it")
    log(f"params: unet {arch.count_params(unet) / 1e6:.3f}M, text encoder {arch.count_params(te) / 1e6:.3f}M, "
        f"vae {arch.count_params(vae) / 1e6:.3f}M; fp16 total "
        f"{2 * sum(map(arch.count_params, (unet, te, vae))) / 1e6:.2f} MB")
    vae, unet, te = vae.to(device), unet.to(device), te.to(device)
    if device.type == "cuda":
        vae.to(memory_format=torch.channels_last)
        unet.to(memory_format=torch.channels_last)

    failed = False
    try:
        if not args.no_train:
            if meta["scaling_factor"] is None:
                vae_deadline = min(train_deadline, T_START + args.vae_minutes * 60)
                meta["vae_steps"] = train_vae(vae, args, device, vae_deadline, log, [args.seed, 0])
                meta["scaling_factor"], recon = vae_report(vae, device, log, n=32 if args.smoke else 512)
                vae.register_to_config(scaling_factor=meta["scaling_factor"])
                save_grid(to_uint8(recon / 2 + 0.5), os.path.join(args.run, "vae_reconstructions.png"))
                save_checkpoint(ckpt_path, vae, unet, te, meta, args.seed)  # a UNet failure keeps the VAE
            vae.requires_grad_(False)
            cycle = meta["cycles"] + 1
            steps = train_unet(unet, te, vae, args, device, train_deadline, log, cycle, [args.seed, cycle])
            meta["cycles"], meta["unet_steps"] = cycle, meta["unet_steps"] + [steps]
            save_checkpoint(ckpt_path, vae, unet, te, meta, args.seed)
            log(f"saved {ckpt_path} ({os.path.getsize(ckpt_path) / 1e6:.1f} MB)")
        if args.export:
            export(vae.float().to(memory_format=torch.contiguous_format),
                   unet.float().to(memory_format=torch.contiguous_format), te.float(), args.tokenizer, args.export,
                   args.scheduler, log)
        if args.eval:
            evaluate_folder(args.export, args.run, device, log, [float(g) for g in args.eval_guidance.split(",")],
                            args.eval_n)
    except Exception:  # still pack what there is: the log says what failed
        failed = True
        log("FAILED:\n" + traceback.format_exc())
    if args.pack:
        pack(args.run, args.export, args.pack, log)
    log(f"done in {time.time() - T_START:.0f}s (budget {args.minutes * 60:.0f}s)")
    if args.pack:
        shutil.copy(log.path, args.pack)  # with its last lines
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
