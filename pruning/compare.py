"""One comparison table for every method at several sparsities (feeds the quality plot).

Each method scores the model once; plans are then cut at every target sparsity, slimmed,
and evaluated on the same prompts and seeds as the original: params, MACs, latent MSE and
image PSNR against the original, and, on the bundled shapes models, task accuracy.

>>> from pruning.testing import tiny_pipeline
>>> from pruning.loading import handle_from_pipe
>>> h = handle_from_pipe(tiny_pipeline("sd"), model_ref="tiny:sd")
>>> s = CompareSettings(eval_prompts=["a red circle", "a blue square"], calib_prompts=["a red circle"],
...                     random_draws=1)
>>> df = compare_methods(h, [0.2], ["magnitude", "random"], settings=s)
>>> df["method"].tolist(), [round(f, 2) for f in df["params_fraction"]]
(['original', 'magnitude', 'random'], [0.0, 0.2, 0.2])
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .errors import PruningError
from .metrics import count_params, total_macs
from .quality import latent_mse, psnr, shape_task_accuracy
from .sampling import decode_latents, generate_latents
from .slim import slim

METHODS = ("ldpruner", "ecodiff", "taylor", "magnitude", "random")
UNIT_KINDS = ("head", "neuron", "group")


@dataclass
class CompareSettings:
    eval_prompts: Sequence[str] | None = None  # default: 16 held-out shapes prompts
    eval_seeds: Sequence[int] | None = None
    calib_prompts: Sequence[str] | None = None  # what the methods score with; default: 8 other prompts
    steps: int | None = None
    guidance: float | None = None
    random_draws: int = 3
    sweep: dict = field(default_factory=dict)  # extra SweepSettings fields (n_gen, granularity, ...)
    ecodiff: dict = field(default_factory=dict)  # extra EcoDiffSettings fields
    taylor: dict = field(default_factory=dict)  # extra TaylorSettings fields


def _default_prompts(settings: CompareSettings) -> tuple[list[str], list[int], list[str]]:
    from .tiny import heldout_prompts, train_prompts

    held = list(heldout_prompts())
    ev = list(settings.eval_prompts or held[:16])
    seeds = list(settings.eval_seeds or range(len(ev)))
    calib = list(settings.calib_prompts or train_prompts()[:8])
    return ev, seeds, calib


def _is_shapes(prompts) -> bool:
    from .tiny.data import parse_caption

    try:
        return all(parse_caption(p) for p in prompts)
    except Exception:
        return False


def _scorers(handle, methods, calib, s: CompareSettings, stop):
    """method -> function(target sparsity) -> plan (scores computed once per method)."""
    from .methods import diffpruning, ecodiff, ldpruner
    from .methods.select import magnitude_scores, plan_from_unit_scores, random_scores

    out: dict[str, Callable] = {}
    for m in methods:
        if m == "ldpruner":
            sw = ldpruner.sweep(handle, ldpruner.SweepSettings(
                prompts=tuple(calib), **{"n_gen": max(2, len(calib)), "steps": s.steps, **s.sweep}), stop=stop)
            out[m] = lambda t, sw=sw: ldpruner.plan_from_scores(handle, sw, target_sparsity=t)
        elif m == "ecodiff":
            st = ecodiff.optimize(handle, ecodiff.EcoDiffSettings(
                prompts=calib, **{"steps": s.steps, "kinds": UNIT_KINDS, **s.ecodiff}), progress=False, stop=stop)
            out[m] = lambda t, st=st: ecodiff.to_plan(handle, st, target_sparsity=t)
        elif m == "taylor":
            sc = diffpruning.importance(handle, diffpruning.TaylorSettings(
                prompts=calib, **{"steps": s.steps, **s.taylor}), progress=False, stop=stop)
            out[m] = lambda t, sc=sc: diffpruning.to_plan(handle, sc, target_sparsity=t)
        elif m == "magnitude":
            mag = magnitude_scores(handle, UNIT_KINDS)
            out[m] = lambda t, mag=mag: plan_from_unit_scores(handle, mag, target_sparsity=t,
                                                              provenance={"method": "magnitude"})
        elif m == "random":
            draws = [random_scores(handle, UNIT_KINDS, seed=d) for d in range(s.random_draws)]
            out[m] = lambda t, draws=draws: [plan_from_unit_scores(handle, r, target_sparsity=t,
                                                                   provenance={"method": "random"}) for r in draws]
        else:
            raise PruningError(f"unknown method {m!r}; choose from {METHODS}")
    return out


def _evaluate(handle, denoiser, prompts, seeds, ref, s: CompareSettings, shapes: bool) -> dict:
    res = int(handle.defaults["resolution"])
    sample = res // handle.pipe.vae_scale_factor
    lat = generate_latents(handle, prompts, seeds, steps=s.steps, guidance=s.guidance, denoiser=denoiser)
    images = decode_latents(handle, lat)
    row = {"params": count_params(denoiser), "macs": total_macs(denoiser, sample_size=sample),
           "latent_mse": latent_mse(lat, ref["latents"]) if ref else 0.0,
           "psnr": psnr(images, ref["images"]) if ref else 100.0}
    if shapes:
        acc = shape_task_accuracy(images, prompts)
        row.update({f"acc_{k}": acc[k] for k in ("color", "shape", "position", "all")})
    return row, lat, images


def compare_methods(handle, sparsities: Sequence[float], methods: Sequence[str] = METHODS, *,
                    settings: CompareSettings | None = None, progress: Callable | None = None,
                    stop: threading.Event | None = None) -> pd.DataFrame:
    """Long table: method, sparsity (target), params_fraction (measured), params, macs,
    latent_mse, psnr and (shapes models) acc_color/acc_shape/acc_position/acc_all.
    Random rows are the mean of ``random_draws`` plans; an unreachable target gives a row
    with ``error`` set instead of numbers."""
    s = settings or CompareSettings()
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise PruningError(f"unknown method {unknown[0]!r}; choose from {METHODS}")
    prompts, seeds, calib = _default_prompts(s)
    shapes = _is_shapes(prompts)
    base_row, lat, images = _evaluate(handle, handle.denoiser, prompts, seeds, None, s, shapes)
    ref = {"latents": lat, "images": images}
    total = base_row["params"]
    rows = [{"method": "original", "sparsity": 0.0, "params_fraction": 0.0, **base_row}]
    scorers = _scorers(handle, list(methods), calib, s, stop)
    jobs = [(m, t) for m in methods for t in sparsities]
    for n, (m, t) in enumerate(jobs):
        if stop is not None and stop.is_set():
            break
        try:
            plans = scorers[m](t)
        except PruningError as e:
            rows.append({"method": m, "sparsity": t, "error": str(e)})
            continue
        evals = [_evaluate(handle, slim(handle.denoiser, p), prompts, seeds, ref, s, shapes)[0]
                 for p in (plans if isinstance(plans, list) else [plans])]
        row = {k: float(np.mean([e[k] for e in evals])) for k in evals[0]}
        row["params_fraction"] = 1 - row["params"] / total
        rows.append({"method": m, "sparsity": t, **row})
        if callable(progress):
            progress(n + 1, len(jobs), rows[-1])
    df = pd.DataFrame(rows)
    df.attrs.update(model_ref=handle.model_ref, eval_prompts=prompts, eval_seeds=seeds, calib_prompts=calib)
    return df
