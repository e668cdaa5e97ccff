"""Diff-Pruning: Taylor importance accumulated over timesteps (seed 002, DESIGN.md section 5).

Fix a batch of clean latents x0 (data-free by default: the original model's own outputs for
some prompts; or user images encoded by the VAE) and one noise draw. For t = 0, stride,
2*stride, ... ascending, compute the denoising loss L_t (the model's training objective:
epsilon / v / sample prediction for UNets, the flow-matching velocity for FLUX) and
accumulate its gradients. Track L_max; stop once L_t < thr * L_max (that step's gradient is
still accumulated, as in the authors' code). A unit's importance is sum |w * dL/dw| over the
weights it owns, i.e. Torch-Pruning's ``TaylorImportance(multivariable=False)`` computed
directly on our structures (their weights are the ``Cut`` slices of the catalog).

Gradients are taken with ``torch.autograd.grad``: nothing is accumulated in the model's
``.grad`` and its ``requires_grad`` flags are restored.

>>> rule = ThresholdRule(thr=0.5)
>>> [rule.keep_going(x) for x in (4.0, 8.0, 5.0, 3.0, 9.0)]
[True, True, True, False, True]
>>> timesteps_used([4.0, 8.0, 5.0, 3.0, 9.0], thr=0.5)
[0, 1, 2, 3]
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..catalog import discover, unit_view
from ..errors import PruningError
from ..plan import PruningPlan
from ..rollout import prepare, rollout
from .select import KINDS, SCOPES, check_sparsity, plan_from_unit_scores


class ThresholdRule:
    """Keep accumulating while L_t >= thr * L_max (L_max over the timesteps seen so far)."""

    def __init__(self, thr: float = 0.05):
        if not 0 <= thr < 1:
            raise PruningError(f"threshold thr {thr!r} is outside [0, 1)")
        self.thr, self.max_loss = thr, 0.0

    def keep_going(self, loss: float) -> bool:
        self.max_loss = max(self.max_loss, loss)
        return loss >= self.thr * self.max_loss


def timesteps_used(losses: Sequence[float], thr: float = 0.05) -> list[int]:
    """Indices of the timesteps whose gradients are accumulated (up to and including the stop)."""
    rule, used = ThresholdRule(thr), []
    for i, loss in enumerate(losses):
        used.append(i)
        if not rule.keep_going(loss):
            break
    return used


@dataclass
class TaylorSettings:
    """x0 from ``images`` (PIL images / arrays, or a folder of PNG/JPEG files) or, by default,
    generated from ``prompts`` by the original model (data-free)."""

    prompts: Sequence[str] = ()
    seeds: Sequence[int] | None = None
    images: Sequence | str | None = None
    steps: int | None = None  # sampling steps for the data-free x0
    guidance: float | None = None
    resolution: int | None = None
    stride: int = 50  # timestep stride over [0, num_train_timesteps)
    thr: float = 0.05
    kinds: Sequence[str] = KINDS
    noise_seed: int = 0

    def validate(self) -> None:
        if not self.prompts and self.images is None:
            raise PruningError("Taylor importance needs prompts (data-free) or images")
        if self.seeds is not None and len(self.seeds) != (len(self.prompts) or len(self.seeds)):
            raise PruningError(f"{len(self.seeds)} seeds for {len(self.prompts)} prompts; they must pair up")
        if self.stride < 1:
            raise PruningError(f"timestep stride must be >= 1, got {self.stride}")
        ThresholdRule(self.thr)
        bad = [k for k in self.kinds if k not in KINDS]
        if not self.kinds or bad:
            raise PruningError(f"structure kinds must be a non-empty subset of {KINDS}, got {list(self.kinds)}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["prompts"], d["kinds"] = list(self.prompts), list(self.kinds)
        d["seeds"] = list(self.seeds) if self.seeds is not None else None
        d["images"] = self.images if isinstance(self.images, str) else (
            f"{len(self.images)} images" if self.images is not None else None)
        return d


# --------------------------------------------------------------------------- data


def _load_images(images, resolution: int) -> list:
    from PIL import Image

    if isinstance(images, (str, Path)):
        folder = Path(images)
        files = sorted(p for p in folder.glob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))
        if not files:
            raise PruningError(f"no PNG/JPEG images in folder {str(folder)!r}")
        images = [Image.open(p).convert("RGB") for p in files]
    out = []
    for im in images:
        im = im if isinstance(im, Image.Image) else Image.fromarray(np.asarray(im, dtype=np.uint8))
        out.append(im.convert("RGB").resize((resolution, resolution)))
    return out


@torch.no_grad()
def _encode(handle, images, resolution: int) -> torch.Tensor:
    pipe, vae = handle.pipe, handle.pipe.vae
    x = pipe.image_processor.preprocess(images, height=resolution, width=resolution)  # (B, 3, H, W) in [-1, 1]
    z = vae.encode(x.to(vae.device, vae.dtype)).latent_dist.mean
    cfg = vae.config
    z = (z - (getattr(cfg, "shift_factor", None) or 0.0)) * cfg.scaling_factor
    if handle.family == "flux":  # (B, C, H, W) -> (B, H/2 * W/2, 4C)
        z = pipe._pack_latents(z, *z.shape[:2], *z.shape[2:])
    return z


def _clean_latents(handle, s: TaylorSettings):
    """(x0 as the denoiser consumes it, conditioning trajectory, prompts)."""
    res = int(s.resolution or handle.defaults["resolution"])
    if s.images is not None:
        images = _load_images(s.images, res)
        if s.prompts and len(s.prompts) != len(images):
            raise PruningError(f"{len(s.prompts)} captions for {len(images)} images; give one per image or none")
        prompts = list(s.prompts) if s.prompts else [""] * len(images)
    else:
        prompts = list(s.prompts)
    seeds = list(s.seeds) if s.seeds is not None else list(range(len(prompts)))
    flux_embedded = handle.family == "flux" and handle.defaults.get("guidance_mode", "embedded") == "embedded"
    cond_guidance = handle.defaults["guidance"] if flux_embedded else 1.0  # conditional pass only, no CFG
    cond = prepare(handle, prompts, seeds, steps=s.steps or 1, guidance=cond_guidance, resolution=res)
    if s.images is not None:
        return _encode(handle, images, res), cond, prompts
    gen = prepare(handle, prompts, seeds, steps=s.steps, guidance=s.guidance, resolution=res)
    with torch.no_grad():
        return rollout(handle.denoiser, gen)[-1], cond, prompts


def _loss_at(handle, x0, noise, cond, t: int) -> torch.Tensor:
    """The training objective at integer timestep t in [0, num_train_timesteps)."""
    den = handle.denoiser
    n_train = handle.pipe.scheduler.config.num_train_timesteps
    if handle.family == "flux":
        sigma = t / n_train
        zt = (1 - sigma) * x0 + sigma * noise
        timestep = torch.full((x0.shape[0],), sigma, dtype=x0.dtype, device=x0.device)
        pred = den(hidden_states=zt, timestep=timestep, return_dict=False, **cond.cond)[0]
        return torch.nn.functional.mse_loss(pred, noise - x0)
    from diffusers import DDPMScheduler

    sched = DDPMScheduler.from_config(handle.pipe.scheduler.config)
    tt = torch.full((x0.shape[0],), t, dtype=torch.long, device=x0.device)
    zt = sched.add_noise(x0, noise, tt)
    kind = sched.config.prediction_type
    target = noise if kind == "epsilon" else (sched.get_velocity(x0, noise, tt) if kind == "v_prediction" else x0)
    pred = den(zt, tt, return_dict=False, **cond.cond)[0]
    return torch.nn.functional.mse_loss(pred, target)


# --------------------------------------------------------------------------- importance


def _unit_params(handle, kinds) -> dict[str, torch.nn.Parameter]:
    params = dict(handle.denoiser.named_parameters())
    names = {c.param for s in discover(handle.denoiser).structures.values() if s.kind in kinds for c in s.cuts}
    return {n: params[n] for n in sorted(names)}


def taylor_scores(handle, grads: dict[str, torch.Tensor], kinds=KINDS) -> dict[str, torch.Tensor]:
    """Per-unit sum |w * g| over the weights each unit owns (``grads``: param name -> dL/dw)."""
    params = dict(handle.denoiser.named_parameters())
    out = {}
    for fqn, s in discover(handle.denoiser).structures.items():
        if s.kind not in kinds:
            continue
        score = torch.zeros(s.units)
        for c in s.cuts:
            wg = (params[c.param].detach().float() * grads[c.param].float()).abs()
            score += unit_view(wg, c, s).sum(1).cpu()
        out[fqn] = score
    return out


def importance(handle, settings: TaylorSettings, *, progress: Callable | None = None,
               stop: threading.Event | None = None) -> pd.DataFrame:
    """One row per unit: fqn, kind, component, index, importance. ``attrs`` hold the timesteps
    used, their losses and whether ``stop`` cut the run short (``partial``)."""
    settings.validate()
    x0, cond, _ = _clean_latents(handle, settings)
    g = torch.Generator().manual_seed(settings.noise_seed)
    noise = torch.randn(x0.shape, generator=g, dtype=x0.dtype).to(x0.device)
    params = _unit_params(handle, settings.kinds)
    grads = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    n_train = handle.pipe.scheduler.config.num_train_timesteps
    ts = list(range(0, n_train, settings.stride))
    rule, used, losses, partial = ThresholdRule(settings.thr), [], [], False
    flags = [(p, p.requires_grad) for p in params.values()]
    try:
        for p in params.values():
            p.requires_grad_(True)
        for t in tqdm(ts, desc="Taylor", disable=progress is False):
            if stop is not None and stop.is_set():
                partial = True
                break
            loss = _loss_at(handle, x0, noise, cond, t)
            for n, gr in zip(params, torch.autograd.grad(loss, list(params.values()), allow_unused=True)):
                if gr is not None:  # a weight outside this forward (e.g. a skipped branch) gets nothing
                    grads[n] += gr.float()
            used.append(t)
            losses.append(loss.item())
            if callable(progress):
                progress(len(used), len(ts), {"t": t, "loss": losses[-1]})
            if not rule.keep_going(losses[-1]):
                break
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
    scores = taylor_scores(handle, grads, settings.kinds) if used else {}
    structures = discover(handle.denoiser).structures
    rows = [{"fqn": f, "kind": structures[f].kind, "component": structures[f].component, "index": i,
             "importance": float(v)} for f, sc in scores.items() for i, v in enumerate(sc.tolist())]
    df = pd.DataFrame(rows, columns=["fqn", "kind", "component", "index", "importance"])
    df.attrs.update(timesteps=used, losses=losses, partial=partial, model_ref=handle.model_ref,
                    settings=settings.to_dict(), method="taylor")
    return df


def scores_to_tensors(handle, scores: pd.DataFrame) -> dict[str, torch.Tensor]:
    """Importance table -> {fqn: (units,) tensor}; missing units of a listed structure count as 0."""
    structures = discover(handle.denoiser).structures
    out = {}
    for fqn, grp in scores.groupby("fqn", sort=False):
        if fqn not in structures:
            raise PruningError(f"scores name {fqn!r}, which is not a prunable structure of {handle.model_ref}")
        t = torch.zeros(structures[fqn].units)
        t[torch.as_tensor(grp["index"].to_numpy().copy(), dtype=torch.long)] = torch.as_tensor(
            grp["importance"].to_numpy().copy(), dtype=torch.float32)
        out[fqn] = t
    return out


def read_importance(path: str | Path) -> pd.DataFrame:
    """An importance table written by ``python -m pruning taylor`` (CSV with fqn, index, importance)."""
    path = Path(path)
    try:
        df = pd.read_csv(path)
    except (OSError, ValueError) as e:
        raise PruningError(f"cannot read importance table {str(path)!r}: {e}") from e
    missing = {"fqn", "index", "importance"} - set(df.columns)
    if missing:
        raise PruningError(f"{str(path)!r} is not an importance table: missing columns {sorted(missing)}")
    return df


def to_plan(handle, scores: pd.DataFrame, *, target_sparsity: float, scope: str = "global") -> PruningPlan:
    """Remove the least important units until ``target_sparsity`` of params is removed."""
    check_sparsity(target_sparsity)
    if scope not in SCOPES:
        raise PruningError(f"unknown scope {scope!r}; choose one of {SCOPES}")
    prov = {"method": "taylor", "settings": scores.attrs.get("settings", {}), "scope": scope,
            "target_sparsity": target_sparsity, "timesteps": scores.attrs.get("timesteps", [])}
    return plan_from_unit_scores(handle, scores_to_tensors(handle, scores), target_sparsity=target_sparsity,
                                 scope=scope, provenance=prov)
