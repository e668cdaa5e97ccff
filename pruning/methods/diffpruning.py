"""Diff-Pruning: Taylor importance accumulated over timesteps (Fang, Ma and Wang, "Structural
Pruning for Diffusion Models", NeurIPS 2023, arXiv:2305.10924; the authors' code: VainF/Diff-Pruning).

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

Data parallel (``control.processes``, :mod:`pruning.parallel`): the clean images are split
across the processes (each generates or encodes its share and takes its rows of the one noise
draw); at each timestep the losses and gradients are summed, each weighted by its share of
the images, so every process sees the loss over all of them (the threshold rule stops all at
the same timestep) and accumulates the same gradient sums as one process would.

>>> rule = ThresholdRule(thr=0.5)
>>> [rule.keep_going(x) for x in (4.0, 8.0, 5.0, 3.0, 9.0)]
[True, True, True, False, True]
>>> timesteps_used([4.0, 8.0, 5.0, 3.0, 9.0], thr=0.5)
[0, 1, 2, 3]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm.auto import tqdm

from .. import families, validate
from ..catalog import BLOCK_UNIT_KINDS, UNIT_KINDS, discover, unit_totals
from ..errors import RunDiverged, RunStopped, SettingsError
from ..grads import requires_grad
from ..memory import execution_device
from ..parallel import SINGLE, Processes
from ..prompts import calibration_prompts
from ..rollout import prepare, rollout
from ..runs import RunControl, RunState, StateSchema, as_control
from ..sampling import spec
from .base import Method, Scores, opt
from .baselines import unit_table
from .cost import MethodCost, generation_seconds, prompt_count, run_spec

NAME = "diffpruning"  # the registry name (scores, plans, run states, the CLI command)
OLD_NAMES = ("taylor",)  # its name before: still read in files and on the command line


def _renamed(state: RunState) -> RunState:
    """A run state saved under an older name, read as this method's."""
    return replace(state, what=NAME) if state.what in OLD_NAMES else state


class ThresholdRule:
    """Keep accumulating while L_t >= thr * L_max (L_max over the timesteps seen so far)."""

    def __init__(self, thr: float = 0.05):
        self.thr = validate.number("threshold thr", thr, lo=0, hi=1, open_hi=True)
        self.max_loss = 0.0

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


@dataclass(frozen=True)
class DiffPruningSettings:
    """x0 from ``images`` (PIL images / arrays, or a folder of PNG/JPEG files) or, by default,
    generated from ``prompts`` by the original model (data-free). Frozen; checked here."""

    prompts: tuple[str, ...] | None = opt(None, "prompts to generate the clean images from (default: the "
                                          "model's calibration prompts); with images: their captions", "strs")
    seeds: tuple[int, ...] | None = opt(None, "one seed per prompt (default 0, 1, ...)", "ints")
    images: object = opt(None, "a folder of PNG/JPEG images to use instead of generated ones", "str")
    steps: int | None = opt(None, "sampling steps for the generated images (default: the model's)", "int")
    guidance: float | None = opt(None, "guidance scale (default: the model's)", "float")
    resolution: int | None = opt(None, "image side in pixels (default: the model's)", "int")
    stride: int = opt(50, "score every n-th of the 1000 noise levels [timestep stride, Diff-Pruning]: larger = "
                      "faster", "int", label="noise-level stride", basic=True, low=1, high=500, step=1, quick=100)
    thr: float = opt(0.05, "stop once the loss falls below this fraction of its maximum [thr in Diff-Pruning, "
                     "0-0.1]", "float", label="stop threshold", basic=True, low=0.0, high=0.5, step=0.01)
    kinds: tuple[str, ...] = opt(BLOCK_UNIT_KINDS, "which units get an importance score: attention heads (head), "
                                 "FFN neurons (neuron), resnet channel groups (group), conditioning channels "
                                 "(channel)", "choices", UNIT_KINDS,
                                 label="units", basic=True)
    noise_seed: int = opt(0, "seed of the noise added to the clean images", "int")
    scope: str = opt("global", "how a plan cuts these scores: global (one ranking of the scores, "
                     "at most 75% of any layer) or local (the same fraction of every layer, as the authors' "
                     "ddpm_prune.py: Torch-Pruning's default global_pruning=False)", "choice", ("global", "local"))

    def __post_init__(self):
        v = validate
        captionless = self.images is not None and not self.prompts  # user images without captions
        images = self.images
        if isinstance(images, (str, Path)):
            images = str(images)
        elif images is not None and not isinstance(images, (list, tuple)):
            raise SettingsError(f"images must be a folder or a list of images, got {type(images).__name__}")
        values = {
            **v.sampling_fields(prompts=None if captionless else self.prompts, seeds=self.seeds, steps=self.steps,
                                guidance=self.guidance, resolution=self.resolution),
            "images": images,
            "stride": v.integer("timestep stride", self.stride, lo=1, hi=1000),
            "thr": ThresholdRule(self.thr).thr,
            "kinds": v.subset("kinds", self.kinds, UNIT_KINDS),
            "noise_seed": v.seed("noise_seed", self.noise_seed),
            "scope": v.choice("scope", self.scope, ("global", "local")),
        }
        for k, val in values.items():
            object.__setattr__(self, k, val)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["prompts"] = list(self.prompts) if self.prompts is not None else None
        d["kinds"] = list(self.kinds)
        d["seeds"] = list(self.seeds) if self.seeds is not None else None
        d["images"] = self.images if isinstance(self.images, str) else (
            f"{len(self.images)} images" if self.images is not None else None)
        return d


# --------------------------------------------------------------------------- data


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))


def _load_images(images, resolution: int) -> list:
    if isinstance(images, (str, Path)):
        folder = Path(images)
        files = _image_files(folder)
        if not files:
            raise SettingsError(f"no PNG/JPEG images in folder {str(folder)!r}")
        if len(files) > validate.LIMITS.max_prompts:
            raise SettingsError(f"folder {str(folder)!r} has {len(files)} images, at most "
                                f"{validate.LIMITS.max_prompts} in one run")
        try:
            images = [Image.open(p).convert("RGB") for p in files]
        except OSError as e:
            raise SettingsError(f"cannot read an image in {str(folder)!r}: {e}") from None
    out = []
    for im in images:
        im = im if isinstance(im, Image.Image) else Image.fromarray(np.asarray(im, dtype=np.uint8))
        out.append(im.convert("RGB").resize((resolution, resolution)))
    return out


@torch.no_grad()
def _encode(handle, images, resolution: int) -> torch.Tensor:
    pipe, vae = handle.pipe, handle.pipe.vae
    x = pipe.image_processor.preprocess(images, height=resolution, width=resolution)  # (B, 3, H, W) in [-1, 1]
    z = vae.encode(x.to(execution_device(vae), vae.dtype)).latent_dist.mean
    cfg = vae.config
    z = (z - (getattr(cfg, "shift_factor", None) or 0.0)) * cfg.scaling_factor
    return families.of(handle).pack(pipe, z)  # FLUX: (B, C, H, W) -> (B, H/2 * W/2, 4C)


def _clean_latents(handle, s: DiffPruningSettings, control=None, conditioning_only: bool = False,
                   processes: Processes = SINGLE):
    """(x0 as the denoiser consumes it, conditioning trajectory) of this process's share of the
    images (None for an empty share); with ``conditioning_only`` just the conditioning (x0 is
    known: a resumed run)."""
    res = spec(handle, resolution=s.resolution).resolution
    if s.images is not None:
        images = _load_images(s.images, res)
        if s.prompts and len(s.prompts) != len(images):
            raise SettingsError(f"{len(s.prompts)} captions for {len(images)} images; give one per image or none")
        prompts = list(s.prompts) if s.prompts else [""] * len(images)  # unconditional
    else:
        prompts = list(s.prompts or calibration_prompts(handle.model_ref, 8))
    seeds = list(s.seeds) if s.seeds is not None else list(range(len(prompts)))
    share = processes.share(len(prompts))
    prompts, seeds = prompts[share], seeds[share]
    if not prompts:
        return None if conditioning_only else (None, None)
    cond_guidance = families.of(handle).taylor_guidance(handle)  # conditional pass only, no CFG
    cond = prepare(handle, prompts, seeds, steps=s.steps or 1, guidance=cond_guidance, resolution=res)
    if conditioning_only:
        return cond
    if s.images is not None:
        return _encode(handle, images[share], res), cond
    gen = prepare(handle, prompts, seeds, steps=s.steps, guidance=s.guidance, resolution=res)
    with torch.no_grad():
        return rollout(handle.denoiser, gen, control=control)[-1], cond


def _loss_at(handle, x0, noise, cond, t: int) -> torch.Tensor:
    """The training objective at integer timestep t in [0, num_train_timesteps) (the family's)."""
    return families.of(handle).train_loss(handle, x0, noise, cond, t)


# --------------------------------------------------------------------------- importance


def unit_params(handle, kinds) -> dict[str, torch.nn.Parameter]:
    """The weights the units of ``kinds`` own (whose gradients Taylor sums), by parameter name."""
    params = dict(handle.denoiser.named_parameters())
    names = {c.param for s in discover(handle.denoiser).structures.values() if s.kind in kinds for c in s.cuts}
    return {n: params[n] for n in sorted(names)}


def _reduce_step(processes: Processes, grads: dict[str, torch.Tensor], loss: torch.Tensor | None,
                 local: Sequence[torch.Tensor | None] | None, weight: float) -> float:
    """Add one timestep's gradients, summed over the processes and each weighted by its share of
    the images (the gradient of the loss over all of them), to ``grads``; return that loss.
    A process without images adds zeros."""
    local = local if local is not None else [None] * len(grads)
    parts = [g.float() * weight if g is not None else torch.zeros_like(acc) for acc, g in zip(grads.values(), local)]
    value = torch.tensor([loss.item() * weight if loss is not None else 0.0], dtype=torch.float32,
                         device=next(iter(grads.values())).device)  # (1,)
    *summed, value = processes.all_reduce_sum([*parts, value])
    for acc, g in zip(grads.values(), summed):
        acc += g
    return value.item()


def taylor_scores(handle, grads: dict[str, torch.Tensor], kinds=BLOCK_UNIT_KINDS) -> dict[str, torch.Tensor]:
    """Per-unit sum |w * g| over the weights each unit owns (``grads``: param name -> dL/dw)."""
    return unit_totals(handle.denoiser, lambda name, w: (w.detach().float() * grads[name].float()).abs(), kinds)


def importance(handle, settings: DiffPruningSettings | None = None, *, control: RunControl | None = None,
               show_progress: bool = False, state: RunState | None = None) -> pd.DataFrame:
    """One row per unit: fqn, kind, component, index, importance. ``attrs`` hold the timesteps
    used, their losses and whether ``control`` cut the run short (``partial``).

    Units of work, for chunked runs (:mod:`pruning.chunks`): the clean images, then each
    timestep. When ``control.chunk_full()`` ends a chunk, ``attrs["resume"]`` is a
    :class:`~pruning.runs.RunState` (x0, the gradient sums so far, the timesteps and losses)
    from which ``state`` continues bit for bit. A resumed state is consumed: its sums go on
    accumulating in place.

    With ``control.processes`` (data parallel, see the module docstring) every process returns
    the same table; a saved state holds all the clean images, so it resumes on any number of
    processes. Stops and chunk ends are agreed between timesteps (``control.ending()``).
    """
    control = as_control(control)
    ps = control.processes or SINGLE
    inner = control if ps.count == 1 else None  # a stop inside a rollout would leave the others waiting
    settings = settings or DiffPruningSettings()
    if settings.prompts is None and settings.images is None:
        settings = replace(settings, prompts=calibration_prompts(handle.model_ref, 8))
    params = unit_params(handle, settings.kinds)
    used, losses, x0, ready = [], [], None, False  # ready: the clean images exist (on some process)
    n_train = handle.pipe.scheduler.config.num_train_timesteps
    ts = list(range(0, n_train, settings.stride))
    if state is not None:
        state = _renamed(state).check(NAME, handle.model_ref, settings.to_dict())
        used, losses, x0 = _check_state(state, settings, params, ts)
    # a resumed run adds to the state's own sums (no copy: they are the size of the model in fp32)
    grads = {n: (state.tensors[f"grad.{n}"].to(p.device) if state is not None and f"grad.{n}" in state.tensors
                 else torch.zeros_like(p, dtype=torch.float32)) for n, p in params.items()}

    def table(scores: dict, partial: bool, resume: bool = False) -> pd.DataFrame:
        df = unit_table(handle, scores).rename(columns={"score": "importance"})
        df.attrs.update(timesteps=used, losses=losses, partial=partial, model_ref=handle.model_ref,
                        settings=settings.to_dict(), method=NAME,
                        stopped=(control.reason or "chunk ended") if partial else None)
        if partial and ready:
            whole = x0.detach().cpu() if ps.count == 1 else ps.gather_rows(x0)
            df.attrs["resume"] = RunState(NAME, handle.model_ref, settings.to_dict(),
                                          {"timesteps": list(used), "losses": list(losses)},
                                          {"x0": whole, **{f"grad.{n}": g for n, g in grads.items()}})
        return df

    if x0 is not None:  # all the images: take this process's rows
        n_images = x0.shape[0]
        cond = _clean_latents(handle, settings, conditioning_only=True, processes=ps)
        if cond is not None:
            StateSchema(state).tensor("x0", shape=(n_images, *cond.z0.shape[1:]))
        x0 = x0[ps.share(n_images)] if cond is not None else None
    else:
        if control.ending():
            return table({}, True)
        try:
            x0, cond = _clean_latents(handle, settings, inner, processes=ps)
        except RunStopped:  # stopped while generating the clean images: nothing scored
            return table({}, True)
        n_images = ps.total(0 if x0 is None else x0.shape[0])
        control.unit_done()
    ready, weight = True, ps.weight(n_images)
    if x0 is not None:
        x0 = x0.to(handle.device, handle.dtype)
        g = torch.Generator().manual_seed(settings.noise_seed)  # one draw for all the images, this share's rows
        noise = torch.randn((n_images, *x0.shape[1:]), generator=g, dtype=torch.float32)[ps.share(n_images)]
        noise = noise.to(x0.device, x0.dtype)
    rule, partial = ThresholdRule(settings.thr), False
    finished = False
    for loss in losses:  # the rule's state after the timesteps already done
        finished = not rule.keep_going(loss)
    with requires_grad(params.values(), True):
        for t in tqdm(ts[len(used):] if not finished else [], desc="Taylor",
                      disable=not (show_progress and ps.main), leave=False):
            if control.ending():
                partial = True
                break
            loss = local = None
            if x0 is not None:
                loss = _loss_at(handle, x0, noise, cond, t)
                local = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
            if ps.count == 1:
                for n, gr in zip(params, local):
                    if gr is not None:  # a weight outside this forward (e.g. a skipped branch) gets nothing
                        grads[n] += gr.float()
                value = loss.item()
            else:
                value = _reduce_step(ps, grads, loss, local, weight)
            used.append(t)
            losses.append(value)
            control.unit_done()
            control.report(len(used), len(ts), t=t, loss=losses[-1])
            if not rule.keep_going(losses[-1]):
                break
    bad = [n for n, gr in grads.items() if not torch.isfinite(gr).all()]
    if bad:
        raise RunDiverged(f"Taylor importance: the gradient of {bad[0]!r} is not finite (loss {losses[-1]:.4g}); "
                          "try float32 or fewer timesteps")
    return table(taylor_scores(handle, grads, settings.kinds) if used else {}, partial)


def _n_images(settings: DiffPruningSettings) -> int:
    """How many clean images these settings give (prompts filled in)."""
    if settings.images is None:
        return len(settings.prompts)
    return len(_image_files(Path(settings.images))) if isinstance(settings.images, str) else len(settings.images)


def _check_state(state: RunState, settings: DiffPruningSettings, params: dict, ts: list[int]):
    """A resumed state checked against this model and these settings: ``(timesteps, losses, x0)``.

    The timesteps are the first ones of the run's schedule (0, stride, ...) with one finite loss >= 0
    each, none after the threshold rule stopped; ``x0`` holds every clean image (its latent shape
    is checked once the conditioning is known) and ``grad.<param>`` each scored weight's float32
    gradient sum."""
    sc = StateSchema(state)
    sc.data_keys(required=("timesteps", "losses"))
    used = sc.integers("timesteps", lo=0, hi=ts[-1], max_len=len(ts))
    for i, t in enumerate(used):
        if t != ts[i]:
            sc.fail(f"data.timesteps[{i}]", f"is {t}, the run's timestep {i} is {ts[i]} (stride {settings.stride})")
    losses = sc.numbers("losses", lo=0, length=len(used))
    if len(timesteps_used(losses, settings.thr)) < len(losses):
        sc.fail("data.losses", f"go on after the threshold rule (thr={settings.thr:g}) stopped the run")
    x0, n = sc.tensor("x0"), _n_images(settings)
    if x0.dim() < 3 or x0.shape[0] != n:
        sc.fail("tensor 'x0'", f"has shape {tuple(x0.shape)}, these settings give {n} clean latents")
    for n, p in params.items():
        sc.tensor(f"grad.{n}", shape=tuple(p.shape), dtype=torch.float32)
    sc.only_tensors({"x0", *(f"grad.{n}" for n in params)})
    return used, losses, x0


class DiffPruning(Method):
    name = NAME
    aliases = OLD_NAMES
    title = "Taylor importance (Diff-Pruning)"
    summary = ("Adds noise to clean images at increasing timesteps and sums |weight x gradient| of the "
               "denoising loss over each unit's weights: low importance = safe to remove.")
    level = "unit"
    Settings = DiffPruningSettings
    commands = (NAME, *OLD_NAMES)
    work_unit = "timesteps (at most)"
    data_parallel = True
    # "authors": VainF/Diff-Pruning's ddpm_prune.py prunes with Torch-Pruning's default
    # global_pruning=False, so every layer loses the same fraction (scope "local")
    presets = ("ours", "authors")
    preset_titles = {"ours": "ours (default)", "authors": "the authors' scope"}
    preset_help = ("ours: one ranking of all units (at most 75% of any layer); the authors': the same fraction "
                   "removed from every layer, as the authors' released script does.")

    def cost(self, handle, settings: DiffPruningSettings, step) -> MethodCost:
        """The clean images' generation, then one backward to the weights per timestep (at most
        1000 / stride of them) and the float32 gradient sums' passes."""
        s = run_spec(handle, settings)
        prompts = prompt_count(handle, settings)
        secs, calls, batch = generation_seconds(step, handle, s, prompts)
        n_t = math.ceil(1000 / settings.stride)
        grads = n_t * step.grad_call(prompts, weights=True)
        numel = sum(p.numel() for p in unit_params(handle, settings.kinds or BLOCK_UNIT_KINDS).values())
        grads += step.sums_seconds(numel, n_t)
        # one timestep's backward with its weight gradients, the float32 sums, or the clean images' generation
        working = max(step.working_bytes(prompts, "weights"), step.working_bytes(batch)) + numel * 4
        return MethodCost(secs + grads, {"generation calls": calls, "timesteps (at most)": n_t, "batch": prompts},
                          working, ["a larger timestep stride", "fewer prompts", "fewer steps for the images"])

    def preset_settings(self, preset: str, family: str, **values) -> DiffPruningSettings:
        return DiffPruningSettings(**{"scope": "local", **values})

    def score(self, handle, settings: DiffPruningSettings | None = None, *, control: RunControl | None = None) -> Scores:
        return self.run(handle, settings, control=control)[0]

    def check_state(self, handle, settings: DiffPruningSettings | None, state: RunState) -> None:
        settings = settings or DiffPruningSettings()
        if settings.prompts is None and settings.images is None:
            settings = replace(settings, prompts=calibration_prompts(handle.model_ref, 8))
        _renamed(state).check(self.name, handle.model_ref, settings.to_dict())
        n_train = handle.pipe.scheduler.config.num_train_timesteps
        _check_state(state, settings, unit_params(handle, settings.kinds), list(range(0, n_train, settings.stride)))

    def run(self, handle, settings: DiffPruningSettings | None = None, *, state: RunState | None = None,
            control: RunControl | None = None):
        df = importance(handle, settings, control=control, state=state)
        resume = df.attrs.pop("resume", None)
        info = {k: df.attrs[k] for k in ("timesteps", "losses")}
        if df.attrs["partial"]:
            info["stopped"] = df.attrs["stopped"]
        scores = Scores(self.name, "unit", df.rename(columns={"importance": "score"}), handle.model_ref,
                        df.attrs["settings"], df.attrs["partial"], info)
        return scores, resume


METHOD = DiffPruning()
