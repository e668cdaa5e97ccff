"""Quality measures: latent/image distances, and task accuracy on the bundled shapes models.

The task evaluator is rule based and reads only pixels. Background = per-channel median of
the 2-pixel border (which must be mostly uniform); foreground = pixels farther than 80 (0-255
RGB distance) from it, reduced to its largest 4-connected component. An image with no
plausible object (too small, too large, scattered, or a non-uniform border) fails every
attribute. Otherwise: color = nearest palette color of the component's core pixels (and it
must be close to it), shape = fill ratio of the bounding box (square ~1, circle ~0.79,
triangle ~0.5; with the top-vs-bottom width as a tie-breaker), position = centroid region.

>>> from pruning.tiny.data import render
>>> p = "a red circle at the top left on a white background"
>>> r = shape_task_accuracy([render(p, seed=1)], [p])
>>> r["color"], r["shape"], r["position"], r["all"]
(1.0, 1.0, 1.0, 1.0)
>>> shape_task_accuracy([np.full((64, 64, 3), 245, np.uint8)], [p])["all"]
0.0
>>> round(psnr([render(p)], [render(p)]), 1), latent_mse(torch.zeros(2, 4), torch.ones(2, 4))
(100.0, 1.0)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .tiny.data import BACKGROUNDS, COLORS, parse_caption

FG_DIST = 80.0  # RGB distance from the background that makes a pixel foreground
MIN_AREA, MAX_AREA = 60, 1600  # pixels of the object component (the data set's shapes: ~200-700)
MAX_COLOR_DIST = 90.0
CENTER_RADIUS = 10.0
_PALETTE = np.array(list(COLORS.values()), dtype=np.float32)
_COLOR_NAMES = list(COLORS)


def to_uint8(images) -> np.ndarray:
    """PIL images, uint8/float arrays (HWC, values in [0, 1] for floats) or a (B, 3, H, W) tensor
    in [0, 1] -> uint8 (B, H, W, 3).

    >>> to_uint8(torch.ones(1, 3, 2, 2)).tolist()[0][0][0]
    [255, 255, 255]
    """
    if isinstance(images, torch.Tensor):
        images = images.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
    out = []
    for im in images:
        a = np.asarray(im)
        if a.dtype != np.uint8:
            a = (np.clip(a.astype(np.float32), 0, 1) * 255).round().astype(np.uint8)
        out.append(a[..., :3])
    return np.stack(out)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """Largest 4-connected component of a boolean mask (union-find over runs, no scipy)."""
    h, w = mask.shape
    labels = np.zeros((h, w), np.int32)
    parent = [0]

    def find(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for y in range(h):
        row = mask[y]
        x = 0
        while x < w:
            if not row[x]:
                x += 1
                continue
            x1 = x
            while x1 < w and row[x1]:
                x1 += 1
            lab = len(parent)
            parent.append(lab)
            labels[y, x:x1] = lab
            if y:
                for other in np.unique(labels[y - 1, x:x1]):
                    if other:
                        ra, rb = find(int(other)), find(lab)
                        if ra != rb:
                            parent[max(ra, rb)] = min(ra, rb)
            x = x1
    if len(parent) == 1:
        return np.zeros_like(mask)
    roots = np.array([find(i) for i in range(len(parent))])
    flat = roots[labels]
    counts = np.bincount(flat[mask], minlength=len(parent))
    return flat == counts.argmax()


def describe(image) -> dict:
    """What the evaluator sees in one image: color, shape, position, background (None = not found).

    >>> from pruning.tiny.data import render
    >>> describe(render("a blue triangle at the bottom right on a black background"))["shape"]
    'triangle'
    """
    a = to_uint8([image])[0].astype(np.float32)
    h, w, _ = a.shape
    border = np.concatenate(
        [a[:2].reshape(-1, 3), a[-2:].reshape(-1, 3), a[:, :2].reshape(-1, 3), a[:, -2:].reshape(-1, 3)]
    )
    bg = np.median(border, axis=0)
    out = {"color": None, "shape": None, "position": None, "background": None, "area": 0}
    if np.mean(np.linalg.norm(border - bg, axis=1) < FG_DIST / 2) < 0.75:
        return out  # no uniform background (noise, clutter)
    bgs = np.array(list(BACKGROUNDS.values()), np.float32)
    d_bg = np.linalg.norm(bgs - bg, axis=1)
    if d_bg.min() < 60:
        out["background"] = list(BACKGROUNDS)[int(d_bg.argmin())]
    dist = np.linalg.norm(a - bg, axis=2)
    fg = dist > FG_DIST
    total = int(fg.sum())
    scale = (h * w) / 4096.0
    if total < MIN_AREA * scale or total > MAX_AREA * 2 * scale:
        return out
    comp = _largest_component(fg)
    area = int(comp.sum())
    out["area"] = area
    if area < MIN_AREA * scale or area > MAX_AREA * scale or area < 0.8 * total:
        return out  # nothing, something huge, or scattered blobs
    ys, xs = np.nonzero(comp)
    core = comp & (dist >= np.percentile(dist[comp], 50))
    mean = a[core].mean(axis=0)
    d = np.linalg.norm(_PALETTE - mean, axis=1)
    if d.min() <= MAX_COLOR_DIST:
        out["color"] = _COLOR_NAMES[int(d.argmin())]
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    bh, bw = y1 - y0, x1 - x0
    fill = area / float(bh * bw)
    q = max(1, bh // 4)
    top = comp[y0 : y0 + q].sum(axis=1).mean()
    bottom = comp[y1 - q : y1].sum(axis=1).mean()
    aspect = bw / bh
    if 0.6 <= aspect <= 1.6:
        if fill > 0.89:
            out["shape"] = "square"
        elif fill < 0.64 and top < 0.6 * bottom:
            out["shape"] = "triangle"
        elif fill >= 0.64 and abs(top - bottom) < 0.35 * max(top, bottom):
            out["shape"] = "circle"
        elif fill < 0.72 and top < 0.6 * bottom:
            out["shape"] = "triangle"
    cx, cy = xs.mean() * 64.0 / w, ys.mean() * 64.0 / h
    if abs(cx - 32) < CENTER_RADIUS and abs(cy - 32) < CENTER_RADIUS:
        out["position"] = "center"
    elif min(abs(cx - 32), abs(cy - 32)) > 4:
        out["position"] = ("top " if cy < 32 else "bottom ") + ("left" if cx < 32 else "right")
    return out


def shape_task_accuracy(images, prompts: list[str]) -> dict:
    """Does each image show its prompt's color, shape and position?

    Returns {"color", "shape", "position", "background", "all": accuracies in [0, 1],
    "per_image": DataFrame (prompt, wanted and seen attributes, ok flags)}; "all" needs color,
    shape and position right.
    """
    arr = to_uint8(images)
    if len(arr) != len(prompts):
        raise ValueError(f"{len(arr)} images for {len(prompts)} prompts")
    rows = []
    for im, p in zip(arr, prompts):
        want, seen = parse_caption(p), describe(im)
        row = {"prompt": p}
        for k in ("color", "shape", "position", "background"):
            row[f"seen_{k}"] = seen[k]
            row[f"{k}_ok"] = seen[k] == want[k]
        row["all_ok"] = row["color_ok"] and row["shape_ok"] and row["position_ok"]
        rows.append(row)
    df = pd.DataFrame(rows)
    res = {k: float(df[f"{k}_ok"].mean()) for k in ("color", "shape", "position", "background", "all")}
    res["per_image"] = df
    return res


def latent_mse(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean squared difference of two latent tensors of the same shape."""
    if a.shape != b.shape:
        raise ValueError(f"latent shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    return float((a.detach().float().cpu() - b.detach().float().cpu()).pow(2).mean())


def psnr(images_a, images_b) -> float:
    """Mean PSNR in dB over image pairs (uint8 scale; identical pairs count as 100 dB).

    >>> psnr([np.zeros((4, 4, 3), np.uint8)], [np.full((4, 4, 3), 255, np.uint8)])
    0.0
    """
    a, b = to_uint8(images_a).astype(np.float64), to_uint8(images_b).astype(np.float64)
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {a.shape} vs {b.shape}")
    mse = ((a - b) ** 2).reshape(len(a), -1).mean(axis=1)
    vals = np.where(mse == 0, 100.0, 10 * np.log10(255.0**2 / np.maximum(mse, 1e-12)))
    return float(vals.mean())


def pipeline_family(pipe) -> str:
    """'flux' for a pipeline with a transformer, else 'sd'."""
    return "flux" if getattr(pipe, "transformer", None) is not None else "sd"


def read_defaults(path) -> dict:
    """The `pruning_defaults.json` of a model folder ({} if there is none)."""
    f = Path(path) / "pruning_defaults.json"
    return json.loads(f.read_text()) if f.exists() else {}


def load_bundled(path):
    """Load a tiny shapes pipeline folder offline: (pipe, defaults); `pipe.pruning_defaults` is set too."""
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(str(path), use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    defaults = read_defaults(path)
    pipe.pruning_defaults = defaults
    return pipe, defaults


def _pipe_and_defaults(obj) -> tuple:
    """(pipeline, defaults) from a pipeline or a loading Handle (anything with .pipe and .defaults)."""
    if hasattr(obj, "pipe") and hasattr(obj, "defaults"):
        return obj.pipe, dict(obj.defaults or {})
    d = getattr(obj, "pruning_defaults", None)
    if d is None:  # a bundled folder loaded with plain from_pretrained
        name = getattr(obj, "name_or_path", None)
        d = read_defaults(name) if name and Path(str(name)).is_dir() else {}
    return obj, dict(d)


@torch.no_grad()
def generate(
    pipe,
    prompts: list[str],
    seeds: list[int],
    *,
    steps: int | None = None,
    guidance: float | None = None,
    batch_size: int = 64,
) -> dict:
    """Generate with per-image seeds at the pipeline's defaults: {"latents": (B, C, h, w), "images": uint8}.

    `pipe` is a pipeline or a loading Handle; defaults come from the Handle, `pipe.pruning_defaults`
    or the folder's `pruning_defaults.json`.

    Latents are the final denoised latents, unpacked for FLUX and in the denoiser's (scaled) space.
    """
    pipe, d = _pipe_and_defaults(pipe)
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts for {len(seeds)} seeds")
    steps = int(steps or d.get("steps", 20))
    guidance = float(guidance if guidance is not None else d.get("guidance", 3.0))
    res = int(d.get("resolution", 64))
    family = pipeline_family(pipe)
    lats, imgs = [], []
    for i in range(0, len(prompts), batch_size):
        ps, ss = list(prompts[i : i + batch_size]), seeds[i : i + batch_size]
        gens = [torch.Generator("cpu").manual_seed(int(s)) for s in ss]
        kw = dict(num_inference_steps=steps, generator=gens, height=res, width=res, output_type="latent")
        if family == "flux":
            if d.get("guidance_mode", "true_cfg") == "true_cfg":  # the bundled tiny FLUX
                neg = [d.get("negative_prompt", "")] * len(ps) if guidance > 1 else None
                kw.update(negative_prompt=neg, true_cfg_scale=guidance)
            else:  # FLUX.1-dev style embedded guidance
                kw.update(guidance_scale=guidance)
            seq = int(d.get("max_sequence_length", 16))  # the tiny FLUX is trained on 16 T5 tokens
            lat = pipe(ps, max_sequence_length=seq, **kw).images
            lat = pipe._unpack_latents(lat, res, res, pipe.vae_scale_factor)  # (B, C, h, w)
        else:
            lat = pipe(ps, guidance_scale=guidance, **kw).images
        vae = pipe.vae
        x = vae.decode(lat / vae.config.scaling_factor + (vae.config.shift_factor or 0.0)).sample
        lats.append(lat.float().cpu())
        imgs.append(to_uint8((x / 2 + 0.5).clamp(0, 1)))
    return {"latents": torch.cat(lats), "images": np.concatenate(imgs)}


def evaluate(
    pipe, prompts: list[str], seeds: list[int], reference=None, *, steps=None, guidance=None
) -> dict:
    """Task accuracy of `pipe` on shapes prompts, and, against `reference` (a pipeline, or
    {"latents", "images"} generated for the same prompts and seeds), latent MSE and image PSNR.

    Returns {"color", "shape", "position", "background", "all", "per_image", "latents", "images"}
    plus "latent_mse" and "psnr" when a reference is given.
    """
    out = generate(pipe, prompts, seeds, steps=steps, guidance=guidance)
    res = shape_task_accuracy(out["images"], prompts)
    res.update(out)
    if reference is not None:
        ref = (
            reference
            if isinstance(reference, dict)
            else generate(reference, prompts, seeds, steps=steps, guidance=guidance)
        )
        res["latent_mse"] = latent_mse(out["latents"], ref["latents"])
        res["psnr"] = psnr(out["images"], ref["images"])
    return res
