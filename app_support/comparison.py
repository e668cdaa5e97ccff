"""Original vs pruned for one prompt and seed: the images (aligned, same size, nearest-neighbour
upscaled so a 64 px image can be judged), their difference, and the figures, with units and
the direction that is better.

>>> from PIL import Image
>>> a, b = Image.new("RGB", (64, 64), "white"), Image.new("RGB", (64, 64), "black")
>>> [im.size for im in display_pair(a, b)], difference(a, b).getpixel((0, 0))
([(384, 384), (384, 384)], (255, 255, 255))
"""

from __future__ import annotations

import statistics
import threading
from dataclasses import replace

import numpy as np
import pandas as pd
import torch
from PIL import Image

from pruning import labels
from pruning.loading import Handle
from pruning.masks import masked
from pruning.plan import PruningPlan
from pruning.prompts import is_shapes_model
from pruning.quality import latent_mse, psnr, shape_task_accuracy
from pruning.reconstruct import ReconstructSettings, reconstruct
from pruning.sampling import count_inputs, decode_latents, generate_latents

from . import format as fmt

DISPLAY = 384  # px: both images (and the difference) are shown at exactly this size
DIFF_GAIN = 4  # the difference image shows |original - pruned| x 4 (white = differs by 64/255 or more)
LATENCY_MAX_PARAMS = 100_000_000  # above this the comparison skips latency (it needs a slim copy)


def _resize(im: Image.Image) -> Image.Image:
    if im.size == (DISPLAY, DISPLAY):
        return im
    small = max(im.size) <= DISPLAY
    return im.resize((DISPLAY, DISPLAY), Image.Resampling.NEAREST if small else Image.Resampling.LANCZOS)


def display_pair(original: Image.Image, pruned: Image.Image) -> tuple[Image.Image, Image.Image]:
    """Both images at DISPLAY x DISPLAY (nearest-neighbour when upscaling: pixels stay pixels)."""
    return _resize(original.convert("RGB")), _resize(pruned.convert("RGB"))


def difference(original: Image.Image, pruned: Image.Image) -> Image.Image:
    """|original - pruned| per pixel (max over channels) x DIFF_GAIN, black = identical."""
    a = np.asarray(original.convert("RGB"), dtype=np.int16)
    b = np.asarray(pruned.convert("RGB"), dtype=np.int16)
    d = np.clip(np.abs(a - b).max(axis=2) * DIFF_GAIN, 0, 255).astype(np.uint8)  # (H, W)
    return _resize(Image.fromarray(np.stack([d] * 3, axis=2)))


_REBUILT: dict = {}  # (model, device, dtype, plan) -> (the same without the plan's provenance, the re-fit): the last one
_REBUILT_LOCK = threading.Lock()


def _key(handle: Handle, plan: PruningPlan, when: bool = True) -> tuple:
    """The cache key; ``when=False`` leaves out the plan's provenance (when and how it was made)."""
    return handle.model_ref, str(handle.device), str(handle.dtype), \
        (plan if when else replace(plan, provenance={})).to_json()


def refit(handle: Handle, plan: PruningPlan, control=None):
    """``pruning.reconstruct(handle, plan)`` (default settings), computed once for the last plan
    asked: Generate and Export of the same plan share one re-fit (it is deterministic on one
    device). The module is shared: callers read it, and copy it before changing it (recovery)."""
    key = _key(handle, plan)
    with _REBUILT_LOCK:
        if key in _REBUILT:
            return _REBUILT[key][1]
    small = reconstruct(handle, plan, control=control)  # a Stop raises: nothing is cached
    with _REBUILT_LOCK:
        _REBUILT.clear()
        _REBUILT[key] = (_key(handle, plan, when=False), small)
    return small


def comparison_refit(handle: Handle, plan: PruningPlan, settings: ReconstructSettings, control=None):
    """The How much? comparison's re-fit (``compare_methods(refit=...)``): the re-fit Generate or
    Export already made of the same cut (its provenance aside: the comparison makes its plans anew),
    if the settings are the defaults, else a fresh one, which is not kept (the comparison's plans
    would push the visitor's own out of the cache). The comparison only reads it."""
    if settings == ReconstructSettings():
        same = _key(handle, plan, when=False)
        with _REBUILT_LOCK:
            held = next((small for cut, small in _REBUILT.values() if cut == same), None)
        if held is not None:
            return held
    return reconstruct(handle, plan, settings, control=control)


@torch.no_grad()
def compare_images(handle: Handle, plan: PruningPlan, prompt: str, seed: int, *, steps: int | None = None,
                   control=None, latency: bool = True, reconstructed: bool = False) -> dict:
    """Original and pruned images for one prompt and seed (the pruned one through ``masked``,
    or, ``reconstructed``, through the re-fitted slim model of ``pruning.reconstruct``, or, for a
    plan that carries its own compensated weights (OBS-Diff), through that slim model), with
    params, MACs, latency, latent MSE, PSNR and (shapes models) task accuracy. ``"reconstruction"``
    (with ``reconstructed``): the re-fit's report (seconds, layers)."""
    kw = dict(steps=steps, stop=control)
    z0 = generate_latents(handle, [prompt], [int(seed)], **kw)
    rebuilt = None
    if reconstructed:
        rebuilt = refit(handle, plan, control=control)
    elif plan.reconstruction is not None:  # a plan that carries its own weights (OBS-Diff's compensation)
        from pruning.export import build

        rebuilt = build(handle, plan)
    if rebuilt is not None:
        z1 = generate_latents(handle, [prompt], [int(seed)], denoiser=rebuilt, **kw)
    else:
        with masked(handle.denoiser, plan):
            z1 = generate_latents(handle, [prompt], [int(seed)], **kw)
    original, pruned = decode_latents(handle, torch.cat([z0, z1]))
    s = plan.summary(handle.denoiser, **count_inputs(handle))
    m = {"params": (s["params_total"], s["params_total"] - s["params_removed"]),
         "macs": (s["macs_total"], s["macs_total"] - s["macs_removed"]),
         "latent_mse": latent_mse(z0, z1), "psnr": psnr([original], [pruned])}
    if latency and s["params_total"] <= LATENCY_MAX_PARAMS:
        from pruning.metrics import denoiser_timings
        from pruning.slim import slim

        small = rebuilt if rebuilt is not None else slim(handle.denoiser, plan)
        m["latency"] = (denoiser_timings(handle.denoiser, repeats=7, **count_inputs(handle)),
                        denoiser_timings(small, repeats=7, **count_inputs(handle)))  # repeated: a spread
    if is_shapes_model(handle.model_ref):
        m["task"] = shape_accuracy([original, pruned], prompt)
    out = {"original": original, "pruned": pruned, "metrics": m}
    if reconstructed:
        out["reconstruction"] = rebuilt.reconstruction
    return out


def shape_accuracy(images: list, prompt: str) -> tuple[bool, bool] | str:
    """Whether (original, pruned) show the caption's color, shape and position; a note if the
    prompt is not a shapes caption."""
    try:
        return tuple(shape_task_accuracy([im], [prompt])["all"] == 1.0 for im in images)
    except (KeyError, ValueError, AttributeError, TypeError):
        return "not a shapes caption (e.g. 'a red circle at the top left on a white background')"


def metrics_table(m: dict) -> pd.DataFrame:
    """The comparison figures as text: what, original, pruned, change / meaning."""
    (p0, p1), (c0, c1) = m["params"], m["macs"]
    rows = [["denoiser params", fmt.count(p0), fmt.count(p1), fmt.change(p0, p1)],
            ["MACs per denoiser call", fmt.count(c0), fmt.count(c1), fmt.change(c0, c1)]]
    change = labels.latency_change(*m["latency"]) if "latency" in m else None
    if change is not None:  # only from repeated timings, with their spread (noise is said to be noise)
        t0, t1 = (statistics.median(x) for x in m["latency"])
        rows.append(["latency per denoiser call (slim copy, this device; median)", fmt.seconds(t0), fmt.seconds(t1),
                     change["text"]])
    rows.append(["latent MSE vs original", "0", fmt.number(m["latent_mse"], 3), "lower = closer to the original"])
    rows.append(["image PSNR vs original", "identical", labels.psnr_text(m["psnr"]),
                 "higher = closer (over 30 dB: hard to tell apart)"])
    task = m.get("task")
    if isinstance(task, tuple):
        mark = {True: "right", False: "wrong"}
        rows.append(["task: color, shape and position", mark[task[0]], mark[task[1]],
                     "what the prompt asks for, checked on the pixels"])
    elif isinstance(task, str):
        rows.append(["task accuracy", "-", "-", task])
    return pd.DataFrame(rows, columns=["figure", "original", "pruned", "change / meaning"])
