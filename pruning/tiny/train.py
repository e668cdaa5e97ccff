"""Training of the bundled tiny shapes models, on CPU, from a seed.

Recipe (all seeded; `python -m pruning.tiny train --arch sd|flux|sd3` runs every stage it needs;
the VAE is taken from the bundled tiny-shapes-sd when present, `PRUNING_TINY_RETRAIN_VAE=1` retrains it):

1. **VAE** (`AutoencoderKL`, factor 8, 4 latent channels, blocks 8/16/32/64, 4 groups, 0.69M
   params): images rendered on the fly from the *training* prompts (random jitter), batch 16,
   random 8-aligned 32x32 crops, decoder fed the posterior mean + 0.05 noise, loss (L1 + MSE)
   on [-1, 1] pixels weighted 11x on the shape's pixels + 1e-6 KL; two cosine cycles
   (`VAE_CYCLES`: 1500 steps at peak lr 1e-3, then 1000 at 2e-3, fresh AdamW). Afterwards
   `scaling_factor` = 1 / std of the posterior means (`shift_factor` 0). Then the encoder is
   frozen (the latent space is final) and the decoder alone is fine-tuned on full 64x64 images
   (`DECODER_CYCLE`: 600 steps, peak lr 1e-3), which can run alongside the denoisers.
2. **Latent cache**: `PER_PROMPT` jittered images per training prompt, encoded (posterior mean,
   scaled); text embeddings of every training prompt and of "" from the frozen, randomly
   initialized text encoders (computed with the pipeline's own `encode_prompt`).
3. **Denoiser**, on the cached latents, batch 64, AdamW lr 1e-3 (200 warm-up steps, cosine to
   1e-4), grad clip 1, EMA 0.999 (the EMA weights ship), caption dropout 10% (prompt -> "").
   - `sd`: `UNet2DConditionModel` (blocks 32/64, 4 heads, GEGLU, 8 groups), v-prediction on a
     scaled-linear schedule rescaled to zero terminal SNR; sampled with `DDIMScheduler`
     (trailing spacing) and classic classifier-free guidance (`guidance_scale`).
   - `flux`: `FluxTransformer2DModel` (2 double + 2 single blocks, 4 heads of 32, no guidance
     embedding), rectified flow (x_t = (1 - s) x0 + s noise, target noise - x0, s logit-normal);
     sampled with `FlowMatchEulerDiscreteScheduler` and **true CFG**: pass
     `true_cfg_scale=guidance, negative_prompt=""` and `max_sequence_length=16` to `FluxPipeline`.
   - `sd3`: `SD3Transformer2DModel` (3 joint blocks, patch 2, 4 heads of 32, RMS q/k norm, block 0
     with SD3.5 dual attention), the same rectified flow on unpacked latents (timestep = 1000 s),
     two CLIPs with projection + a T5 of width 128; sampled with FlowMatchEuler and the
     pipeline's own batched CFG (`max_sequence_length=16`).
4. **Defaults**: a small grid of steps x guidance on the 64 held-out prompts (seeds 0..63);
   the best mean accuracy (ties: fewer steps, lower guidance) is written to
   `pruning_defaults.json` next to the pipeline, with the grid and the training times.

Sizes: VAE 0.69M params, UNet 1.08M (blocks 32/64), FLUX transformer 1.80M, CLIP 0.08M,
T5 0.09M. **FLUX needs `max_sequence_length=16`**: it never saw padded T5 sequences longer than
that, and at the pipeline's default of 512 it draws noise. `pruning.sampling` and
`pruning.quality.generate` take it from `pruning_defaults.json`.

Measured on the 2-core CPU shared with other jobs (1 torch thread each; `training` in
`pruning_defaults.json`): VAE 930 s (all three cycles), SD UNet 1813 s (4000 steps), FLUX
transformer 1642 s (4000 steps). Held-out accuracy at the chosen defaults (64 prompts,
seeds 0..63; the same with seeds 1000..1063):

=========  =====  ========  =====  =====  ========  =====
model      steps  guidance  color  shape  position  all
=========  =====  ========  =====  =====  ========  =====
SD         10     1.0       1.000  0.953  1.000     0.953
FLUX       10     2.0       1.000  0.984  1.000     0.984
SD3        30     2.0       1.000  1.000  1.000     1.000
=========  =====  ========  =====  =====  ========  =====

SD3: 4000 steps in 2020 s on the shared CPU (the grid: 0.984 all at 10 and 20 steps, CFG 2.0).

Guidance works for both (SD at 2.0: 0.938 all; FLUX at 1.0, i.e. no CFG: 0.969); for SD the
grid's best is 1.0 by one image, so its default runs without the doubled CFG batch.

>>> VAE_CYCLES, PER_PROMPT, DENOISER_STEPS
(((1500, 0.001), (1000, 0.002)), 48, {'sd': 4000, 'flux': 4000, 'sd3': 4000})
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import (
    AutoencoderKL,
    FluxPipeline,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
)

from .. import families
from ..bundled import ASSETS  # package data: pruning/assets/<name>
from ..loading import handle_from_pipe, load_pipeline, read_defaults
from ..quality import evaluate, shape_task_accuracy, to_uint8
from . import models as M
from .data import HELDOUT_PROMPTS, TRAIN_PROMPTS, make_images, render

SEED = 0
VAE_CYCLES = ((1500, 1e-3), (1000, 2e-3))  # (steps, peak lr) per cosine cycle
DECODER_CYCLE = (600, 1e-3)  # then the decoder alone, encoder frozen
VAE_BATCH = 16
VAE_CROP = 32
VAE_FG_WEIGHT = 10.0
VAE_LATENT_NOISE = 0.05
PER_PROMPT = 48
BATCH = 64
DENOISER_STEPS = {"sd": 4000, "flux": 4000, "sd3": 4000}
LR = 1e-3
WARMUP = 200
EMA = 0.999
DROPOUT = 0.1
GRID_STEPS = (10, 20, 30)
GRID_GUIDANCE = (1.0, 2.0, 3.0, 5.0)
WORKDIR = Path(os.environ.get("PRUNING_TINY_WORKDIR", "/tmp/pruning-tiny"))
NAMES = {"sd": "tiny-shapes-sd", "flux": "tiny-shapes-flux", "sd3": "tiny-shapes-sd3"}


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _lr(step: int, total: int) -> float:
    if step < WARMUP:
        return LR * (step + 1) / WARMUP
    p = (step - WARMUP) / max(1, total - WARMUP)
    return LR * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (B, 3, 64, 64)


def _vae_batches(opt, steps: int, peak: float, rng: random.Random):
    """The steps of a VAE cycle: sets ``opt``'s learning rate (:func:`_lr`'s schedule scaled to
    ``peak``), then yields ``(step, images (B, 64, 64, 3) uint8, the same as (B, 3, 64, 64) in [-1, 1])``."""
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = _lr(step, steps) * peak / LR
        imgs = _render_batch(rng)
        yield step, imgs, _to_tensor(imgs)


def _update(opt, loss: torch.Tensor, params) -> None:
    """One optimizer step on ``loss``, its gradient clipped to norm 1 over ``params``."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()


def _check_images() -> tuple[np.ndarray, list[str]]:
    """The VAE's reconstruction check: one image of each of the first 32 held-out prompts."""
    return make_images(HELDOUT_PROMPTS[:32], per_prompt=1, seed=99)


def _vae_cycle(vae, steps: int, lr: float, seed: int, reseed: bool = True) -> None:
    """One cosine cycle of VAE training (fresh AdamW, rng seeded by `seed`)."""
    if reseed:
        torch.manual_seed(seed)
    rng = random.Random(seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    check, check_caps = _check_images()
    t0 = time.time()
    for step, imgs, x in _vae_batches(opt, steps, lr, rng):
        if VAE_CROP:  # a random 8-aligned crop: same local task, a quarter of the compute
            i, j = rng.randrange(0, 64 - VAE_CROP + 1, 8), rng.randrange(0, 64 - VAE_CROP + 1, 8)
            x = x[:, :, i : i + VAE_CROP, j : j + VAE_CROP]
        bg = _to_tensor(imgs[:, :1, :1]).flatten(1)[:, :, None, None]  # (B, 3, 1, 1) corner = background
        weight = (
            1.0 + VAE_FG_WEIGHT * ((x - bg).abs().amax(1, keepdim=True) > 0.1).float()
        )  # the shape matters
        post = vae.encode(x).latent_dist
        z = post.mean + VAE_LATENT_NOISE * torch.randn_like(post.mean)
        rec = vae.decode(z).sample
        err = rec - x
        loss = (weight * (err.abs() + err.pow(2))).mean() / weight.mean() + 1e-6 * post.kl().mean()
        _update(opt, loss, vae.parameters())
        if step % 100 == 0 or step == steps - 1:
            _log(
                f"vae step {step} loss {loss.item():.4f} recon acc {_recon_acc(vae, check, check_caps)} "
                f"({time.time() - t0:.0f}s)"
            )


def _decoder_cycle(vae, steps: int, lr: float, seed: int) -> None:
    """Fine-tune the decoder only (encoder frozen, so the latent space is final), full 64x64 images."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    vae.requires_grad_(False)
    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    for q in params:
        q.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    check, check_caps = _check_images()
    t0 = time.time()
    for step, _, x in _vae_batches(opt, steps, lr, rng):
        bg = x[:, :, :1, :1]
        weight = 1.0 + VAE_FG_WEIGHT * ((x - bg).abs().amax(1, keepdim=True) > 0.1).float()
        with torch.no_grad():
            z = vae.encode(x).latent_dist.mean
        rec = vae.decode(z + VAE_LATENT_NOISE * torch.randn_like(z)).sample
        err = rec - x
        loss = (weight * (err.abs() + err.pow(2))).mean() / weight.mean()
        _update(opt, loss, params)
        if step % 100 == 0 or step == steps - 1:
            _log(
                f"decoder step {step} loss {loss.item():.4f} recon {_recon_acc(vae, check, check_caps)} "
                f"({time.time() - t0:.0f}s)"
            )
    vae.requires_grad_(False)


def _recon_acc(vae, images, captions) -> str:
    """The VAE's round trip of ``images`` scored by the shape task: "color 1.00 shape 0.97 position 1.00"."""
    with torch.no_grad():
        r = vae.decode(vae.encode(_to_tensor(images)).latent_dist.mean).sample
    acc = shape_task_accuracy(to_uint8((r / 2 + 0.5).clamp(0, 1)), captions)
    return " ".join(f"{k} {acc[k]:.2f}" for k in ("color", "shape", "position"))


def _set_scaling(vae, seed: int = SEED) -> None:
    imgs, _ = make_images(TRAIN_PROMPTS, per_prompt=2, seed=seed + 7)
    with torch.no_grad():
        mean = torch.cat(
            [vae.encode(_to_tensor(imgs[i : i + 128])).latent_dist.mean for i in range(0, len(imgs), 128)]
        )
    vae.register_to_config(scaling_factor=float(1.0 / mean.std()))


def _render_batch(rng: random.Random) -> np.ndarray:
    """VAE_BATCH jittered renders of random training prompts: (B, 64, 64, 3) uint8."""
    return np.stack([render(rng.choice(TRAIN_PROMPTS), seed=rng.randrange(1 << 30)) for _ in range(VAE_BATCH)])


def train_vae(seed: int = SEED):
    """Train the shared VAE (the cycles of VAE_CYCLES in turn); returns it with `scaling_factor` set."""
    t0 = time.time()
    vae = M.vae(seed)
    for c, (steps, lr) in enumerate(VAE_CYCLES):
        vae.train().requires_grad_(True)
        _vae_cycle(vae, steps, lr, seed + c, reseed=c > 0)  # cycle 0 continues the init's torch rng
    vae.eval().requires_grad_(False)
    _set_scaling(vae, seed)
    _decoder_cycle(vae, *DECODER_CYCLE, seed + len(VAE_CYCLES))  # latents are fixed from here on
    vae.eval().requires_grad_(False)
    _log(f"vae done in {time.time() - t0:.0f}s, scaling_factor {vae.config.scaling_factor:.4f}")
    return vae


def components(vae, seed: int = SEED, arch: str = "sd") -> dict:
    """The shared, frozen components (VAE, CLIP, T5 and their tokenizers); SD3 has its own text encoders."""
    if arch == "sd3":
        return {
            "vae": vae,
            "text_encoder": M.clip_text_encoder_with_projection(seed, 0),
            "tokenizer": M.clip_tokenizer(),
            "text_encoder_2": M.clip_text_encoder_with_projection(seed, 1),
            "tokenizer_2": M.clip_tokenizer(),
            "text_encoder_3": M.sd3_t5_text_encoder(seed),
            "tokenizer_3": M.t5_tokenizer(),
        }
    return {
        "vae": vae,
        "text_encoder": M.clip_text_encoder(seed),
        "tokenizer": M.clip_tokenizer(),
        "text_encoder_2": M.t5_text_encoder(seed),
        "tokenizer_2": M.t5_tokenizer(),
    }


def build_pipeline(arch: str, denoiser, comps: dict):
    """Assemble a StableDiffusionPipeline, FluxPipeline or StableDiffusion3Pipeline around `denoiser`."""
    if arch == "sd3":
        return StableDiffusion3Pipeline(transformer=denoiser, scheduler=M.sd3_scheduler(), **comps)
    if arch == "sd":
        return StableDiffusionPipeline(
            vae=comps["vae"],
            text_encoder=comps["text_encoder"],
            tokenizer=comps["tokenizer"],
            unet=denoiser,
            scheduler=M.sd_scheduler(),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )

    return FluxPipeline(
        scheduler=M.flux_scheduler(),
        vae=comps["vae"],
        text_encoder=comps["text_encoder"],
        tokenizer=comps["tokenizer"],
        text_encoder_2=comps["text_encoder_2"],
        tokenizer_2=comps["tokenizer_2"],
        transformer=denoiser,
    )


def cache_latents(vae, seed: int = SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """(scaled latents (N, 4, 8, 8), prompt index (N,)) of PER_PROMPT images per training prompt."""
    imgs, _ = make_images(TRAIN_PROMPTS, per_prompt=PER_PROMPT, seed=seed + 1)
    with torch.no_grad():
        lat = torch.cat(
            [vae.encode(_to_tensor(imgs[i : i + 256])).latent_dist.mean for i in range(0, len(imgs), 256)]
        )
    lat = (lat - vae.config.shift_factor) * vae.config.scaling_factor
    idx = torch.arange(len(TRAIN_PROMPTS)).repeat_interleave(PER_PROMPT)
    return lat, idx


@torch.no_grad()
def text_embeddings(arch: str, pipe, latent_side: int = 8) -> tuple[dict, dict]:
    """The denoiser's conditioning kwargs for TRAIN_PROMPTS + [""] (the last row is the empty
    prompt), as the pipeline computes them: ``(per-prompt kwargs, indexed by prompt row; kwargs
    shared by every row)``, for latents of ``latent_side`` (FLUX's image ids). Each pipeline's
    ``encode_prompt`` has its own signature."""
    prompts = TRAIN_PROMPTS + [""]
    if arch == "sd":
        emb, _ = pipe.encode_prompt(prompts, "cpu", 1, False)
        return {"encoder_hidden_states": emb}, {}
    if arch == "sd3":
        emb, _, pooled, _ = pipe.encode_prompt(
            prompt=prompts, prompt_2=None, prompt_3=None, do_classifier_free_guidance=False,
            max_sequence_length=M.MAX_LENGTH,
        )
        return {"encoder_hidden_states": emb, "pooled_projections": pooled}, {}
    emb, pooled, txt_ids = pipe.encode_prompt(prompt=prompts, prompt_2=None, max_sequence_length=M.MAX_LENGTH)
    side = latent_side // 2  # 8x8 latents -> 4x4 packed tokens
    img_ids = pipe._prepare_latent_image_ids(BATCH, side, side, "cpu", torch.float32)  # (side * side, 3)
    return {"encoder_hidden_states": emb, "pooled_projections": pooled}, {"txt_ids": txt_ids, "img_ids": img_ids}


def train_denoiser(arch: str, vae, steps: int | None = None, seed: int = SEED, threads: int | None = None):
    """Train the SD UNet, the FLUX or the SD3 transformer on cached latents; returns the pipeline (EMA
    weights). The objective, its timesteps and the latents' packing are the family's own
    (``Family.train_loss``, ``train_timesteps``, ``pack``): what Diff-Pruning's scores differentiate."""
    if threads:
        torch.set_num_threads(threads)
    steps = steps or DENOISER_STEPS[arch]
    comps = components(vae, seed, arch)
    model = {"sd": M.unet, "flux": M.flux_transformer, "sd3": M.sd3_transformer}[arch](seed)
    pipe = build_pipeline(arch, model, comps)
    family = families.get(arch)
    handle = _handle(arch, pipe)
    lat, pidx = cache_latents(vae, seed)  # (N, C, H, W), (N,)
    rows, shared = text_embeddings(arch, pipe, lat.shape[-1])
    empty = len(TRAIN_PROMPTS)
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01)
    n_train = pipe.scheduler.config.num_train_timesteps
    g = torch.Generator().manual_seed(seed + 10)
    model.train()
    t0 = time.time()
    for step in range(steps):
        for grp in opt.param_groups:
            grp["lr"] = _lr(step, steps)
        i = torch.randint(len(lat), (BATCH,), generator=g)
        x0, p = lat[i], pidx[i].clone()
        p[torch.rand(BATCH, generator=g) < DROPOUT] = empty
        noise = torch.randn(x0.shape, generator=g)
        t = family.train_timesteps(BATCH, g, n_train)  # (B,)
        cond = {**{k: v[p] for k, v in rows.items()}, **shared}
        # (B, 4, 8, 8) latents as the denoiser consumes them (FLUX: (B, 16 tokens, 16))
        loss = family.train_loss(handle, family.pack(pipe, x0), family.pack(pipe, noise), cond, t)
        _update(opt, loss, model.parameters())
        decay = min(EMA, (1 + step) / (10 + step))
        with torch.no_grad():
            for k, v in model.state_dict().items():
                ema[k].lerp_(v, 1 - decay) if v.is_floating_point() else ema[k].copy_(v)
        if step % 100 == 0 or step == steps - 1:
            _log(
                f"{arch} step {step} loss {loss.item():.4f} lr {_lr(step, steps):.2e} ({time.time() - t0:.0f}s)"
            )
    model.load_state_dict(ema)
    model.eval().requires_grad_(False)
    _log(f"{arch} denoiser done in {time.time() - t0:.0f}s")
    return pipe


def _mode(arch: str) -> dict:
    """How each bundled arch generates: FLUX with true CFG, SD and SD3 with the pipeline's own CFG;
    the T5-reading ones at the sequence length they were trained on."""
    if arch == "flux":
        return {"guidance_mode": "true_cfg", "negative_prompt": "", "max_sequence_length": M.MAX_LENGTH}
    if arch == "sd3":
        return {"guidance_mode": "cfg", "max_sequence_length": M.MAX_LENGTH}
    return {"guidance_mode": "cfg"}


def _handle(arch: str, pipe, defaults: dict | None = None):
    """A Handle for a freshly trained pipeline, generating the way the app does."""
    base = {"resolution": 64, **_mode(arch)}
    return handle_from_pipe(pipe, model_ref=f"training:{arch}", defaults={**base, **(defaults or {})})


def choose_defaults(arch: str, pipe, prompts=HELDOUT_PROMPTS) -> tuple[dict, list[dict]]:
    """Grid over steps x guidance on the held-out prompts; returns (best defaults, all rows)."""
    seeds = list(range(len(prompts)))
    pipe.set_progress_bar_config(disable=True)
    handle = _handle(arch, pipe)
    rows = []
    for steps in GRID_STEPS:
        for guidance in GRID_GUIDANCE:
            acc = evaluate(handle, prompts, seeds, steps=steps, guidance=guidance)
            row = {
                "steps": steps,
                "guidance": guidance,
                **{k: acc[k] for k in ("color", "shape", "position", "all")},
            }
            _log(f"{arch} grid {row}")
            rows.append(row)
    # best mean accuracy; ties go to fewer steps (cheaper), then lower guidance
    best = max(
        rows,
        key=lambda r: (
            round(r["color"] + r["shape"] + r["position"] + r["all"], 6),
            -r["steps"],
            -r["guidance"],
        ),
    )
    defaults = {"steps": best["steps"], "guidance": best["guidance"], "resolution": 64, **_mode(arch)}
    return defaults, rows


def save(arch: str, pipe, defaults: dict, info: dict, out: Path | None = None) -> Path:
    out = Path(out or ASSETS / NAMES[arch])
    pipe.save_pretrained(out, safe_serialization=True)
    for cfg in out.glob("*/config.json"):  # no local training paths in the shipped configs
        d = json.loads(cfg.read_text())
        if d.pop("_name_or_path", None) is not None:
            cfg.write_text(json.dumps(d, indent=2, sort_keys=True) + "\n")
    with open(out / "pruning_defaults.json", "w") as f:
        json.dump({**defaults, "training": info}, f, indent=1)
    return out


def vae_path() -> Path:
    return WORKDIR / "vae"


def get_vae(seed: int = SEED, threads: int | None = None):
    """The trained VAE from the work dir, training (and saving) it first if needed."""
    if threads:
        torch.set_num_threads(threads)
    path = vae_path()
    if (path / "config.json").exists():
        return AutoencoderKL.from_pretrained(path, use_safetensors=True).eval().requires_grad_(False), None
    bundled = ASSETS / NAMES["sd"]  # the shared VAE, as shipped (the same bits as a retrained one)
    if os.environ.get("PRUNING_TINY_RETRAIN_VAE") != "1" and (bundled / "vae" / "config.json").exists():
        secs = (read_defaults(bundled) or {}).get("training", {}).get("vae_seconds")
        _log(f"using the bundled VAE of {bundled.name} (set PRUNING_TINY_RETRAIN_VAE=1 to retrain it)")
        vae = AutoencoderKL.from_pretrained(bundled / "vae", use_safetensors=True).eval().requires_grad_(False)
        return vae, secs
    t0 = time.time()
    vae = train_vae(seed=seed)
    vae.save_pretrained(path, safe_serialization=True)
    secs = time.time() - t0
    (path / "train_seconds.txt").write_text(f"{secs:.1f}\n")
    return vae, secs


def train(
    arch: str, seed: int = SEED, steps: int | None = None, threads: int | None = None, out=None
) -> Path:
    """Everything for one bundled model: VAE (if not cached), denoiser, defaults, save."""
    torch.manual_seed(seed)
    vae, vae_secs = get_vae(seed, threads=threads)
    if vae_secs is None and (vae_path() / "train_seconds.txt").exists():
        vae_secs = float((vae_path() / "train_seconds.txt").read_text())
    t0 = time.time()
    pipe = train_denoiser(arch, vae, steps=steps, seed=seed, threads=threads)
    den_secs = time.time() - t0
    # the weights first (the grid below is long, and `defaults` can redo it from the saved folder)
    save(arch, pipe, {"steps": 10, "guidance": 1.0, "resolution": 64, **_mode(arch)},
         {"seed": seed, "denoiser_seconds": round(den_secs, 1)}, out)
    defaults, rows = choose_defaults(arch, pipe)
    info = {
        "seed": seed,
        "vae_seconds": round(vae_secs or 0, 1),
        "denoiser_seconds": round(den_secs, 1),
        "denoiser_steps": steps or DENOISER_STEPS[arch],
        "grid": rows,
    }
    path = save(arch, pipe, defaults, info, out)
    _log(f"saved {path}: {defaults}")
    return path


def redo_defaults(path) -> dict:
    """Re-run the defaults grid for a saved model folder and rewrite its `pruning_defaults.json`."""
    h = load_pipeline(str(path))
    old = read_defaults(Path(path)) or {}
    arch = h.family if h.family in DENOISER_STEPS else "sd"
    defaults, rows = choose_defaults(arch, h.pipe)
    info = {**old.get("training", {}), "grid": rows}
    with open(Path(path) / "pruning_defaults.json", "w") as f:
        json.dump({**defaults, "training": info}, f, indent=1)
    _log(f"{path}: {defaults}")
    return defaults
