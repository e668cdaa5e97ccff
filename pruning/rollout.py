"""Step-wise denoising with pure steps: ``z_{i+1} = step(denoiser, traj, i, z_i)``.

``prepare`` does what a pipeline does before its loop (encode prompts, draw the initial
latents from one generator per seed, set the scheduler's timesteps) and returns a
``Trajectory``. ``step`` then depends only on (z_i, i, the denoiser and its gates): the
scheduler's step index is set explicitly before each call, classifier-free guidance runs the
doubled batch (SD/SDXL) or the negative pass (FLUX true CFG) exactly as the pipeline does.
That is what EcoDiff's reverse replay needs, and the final latent matches ``generate_latents``.

Only single-step schedulers are allowed (DDIM, Euler, FlowMatchEuler); a multistep or
ancestral scheduler is swapped for DDIM (UNets) or FlowMatchEuler (FLUX) from its config.

>>> from pruning.testing import tiny_pipeline
>>> from pruning.loading import handle_from_pipe
>>> from pruning.sampling import generate_latents
>>> h = handle_from_pipe(tiny_pipeline("sd"), model_ref="tiny:sd")
>>> traj = prepare(h, ["a red circle", "a blue square"], [0, 1], steps=3)
>>> z = rollout(h.denoiser, traj)[-1]
>>> torch.allclose(traj.unpack(z), generate_latents(h, ["a red circle", "a blue square"], [0, 1], steps=3), atol=1e-5)
True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler, FluxPipeline
from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps

from .errors import RunStopped
from .sampling import call_pipe, pair_samples, pipeline_kwargs, spec

FLUX_DEFAULT_GUIDANCE = 3.5  # FluxPipeline's guidance_scale default
PURE_SCHEDULERS = (DDIMScheduler, EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler)


@dataclass
class Trajectory:
    """Everything a step needs besides z_i. Tensors are fixed (no grad)."""

    family: str
    scheduler: object
    timesteps: torch.Tensor  # (T,)
    z0: torch.Tensor  # initial noise, as the denoiser consumes it (packed for FLUX)
    cond: dict  # denoiser kwargs for the conditional (or doubled CFG) batch
    guidance: float
    mode: str  # "cfg" | "none" | "embedded" | "true_cfg"
    neg_cond: dict | None = None  # FLUX true CFG: the negative pass
    height: int = 0
    vae_scale_factor: int = 8
    meta: dict = field(default_factory=dict)

    @property
    def steps(self) -> int:
        return len(self.timesteps)

    def unpack(self, z: torch.Tensor) -> torch.Tensor:
        """Latents as (B, C, H, W) (FLUX's packed tokens are unpacked)."""
        if self.family != "flux":
            return z

        return FluxPipeline._unpack_latents(z, self.height, self.height, self.vae_scale_factor)


def _pure_scheduler(handle, pipe):
    """Install a single-step scheduler on ``pipe`` (a private copy); returns a note if swapped."""
    sched = pipe.scheduler
    if isinstance(sched, PURE_SCHEDULERS) and not getattr(sched.config, "stochastic_sampling", False):
        return None
    cls = FlowMatchEulerDiscreteScheduler if handle.family == "flux" else DDIMScheduler
    pipe.scheduler = cls.from_config(sched.config)
    return f"{type(sched).__name__} replaced by {cls.__name__}"


@torch.no_grad()
def prepare(handle, prompts: str | Sequence[str], seeds: int | Sequence[int], *, steps: int | None = None,
            guidance: float | None = None, resolution: int | None = None) -> Trajectory:
    """Conditioning, initial latents and timesteps for prompts paired with seeds."""
    prompts, seeds = pair_samples(prompts, seeds)
    s = spec(handle, steps=steps, guidance=guidance, resolution=resolution)
    steps, guidance, res = s.steps, s.guidance, s.resolution
    pipe, device = call_pipe(handle), handle.device  # a private scheduler; the modules are shared
    note = _pure_scheduler(handle, pipe)
    scheduler = pipe.scheduler
    gens = [torch.Generator(device if device.type != "mps" else "cpu").manual_seed(s) for s in seeds]
    extra = pipeline_kwargs(s, len(prompts))
    meta = {"scheduler": type(scheduler).__name__, **({"note": note} if note else {})}
    if handle.family == "flux":
        return _prepare_flux(handle, pipe, scheduler, prompts, gens, steps, guidance, res, extra, meta)
    return _prepare_unet(handle, pipe, scheduler, prompts, gens, steps, guidance, res, extra, meta)


def _prepare_unet(handle, pipe, scheduler, prompts, gens, steps, guidance, res, extra, meta) -> Trajectory:
    device, unet = handle.device, handle.denoiser
    cfg = guidance > 1 and unet.config.time_cond_proj_dim is None
    negative = extra.get("negative_prompt")
    cond: dict = {}
    if handle.family == "sdxl":
        pe, npe, pooled, npooled = pipe.encode_prompt(
            prompt=prompts, device=device, num_images_per_prompt=1, do_classifier_free_guidance=cfg,
            negative_prompt=negative)
        proj = pipe.text_encoder_2.config.projection_dim if pipe.text_encoder_2 is not None else pooled.shape[-1]
        time_ids = pipe._get_add_time_ids((res, res), (0, 0), (res, res), dtype=pe.dtype,
                                          text_encoder_projection_dim=proj)
        if cfg:
            pe, pooled, time_ids = torch.cat([npe, pe]), torch.cat([npooled, pooled]), torch.cat([time_ids, time_ids])
        cond["added_cond_kwargs"] = {"text_embeds": pooled.to(device),
                                     "time_ids": time_ids.to(device).repeat(len(prompts), 1)}
    else:
        pe, npe = pipe.encode_prompt(prompts, device, 1, cfg, negative)
        if cfg:
            pe = torch.cat([npe, pe])  # (2B, L, D): [uncond | cond], as the pipeline does
    cond["encoder_hidden_states"] = pe.to(device)
    scheduler.set_timesteps(steps, device=device)  # before the latents: init_noise_sigma depends on it
    z = pipe.prepare_latents(len(prompts), unet.config.in_channels, res, res, pe.dtype, device, gens, None)
    return Trajectory(handle.family, scheduler, scheduler.timesteps, z, cond, guidance, "cfg" if cfg else "none",
                      height=res, vae_scale_factor=pipe.vae_scale_factor, meta=meta)


def _prepare_flux(handle, pipe, scheduler, prompts, gens, steps, guidance, res, extra, meta) -> Trajectory:
    device, den = handle.device, handle.denoiser
    msl = extra.get("max_sequence_length", 512)
    mode = "true_cfg" if "true_cfg_scale" in extra and guidance > 1 else "embedded"
    pe, pooled, text_ids = pipe.encode_prompt(prompt=prompts, prompt_2=None, device=device,
                                              num_images_per_prompt=1, max_sequence_length=msl)
    z, img_ids = pipe.prepare_latents(len(prompts), den.config.in_channels // 4, res, res, pe.dtype, device, gens, None)
    sigmas = np.linspace(1.0, 1 / steps, steps)
    c = scheduler.config
    mu = calculate_shift(z.shape[1], c.get("base_image_seq_len", 256), c.get("max_image_seq_len", 4096),
                         c.get("base_shift", 0.5), c.get("max_shift", 1.15))
    timesteps, _ = retrieve_timesteps(scheduler, steps, device, sigmas=sigmas, mu=mu)
    embedded = guidance if mode == "embedded" else FLUX_DEFAULT_GUIDANCE  # true CFG: the pipeline's default
    g = torch.full([1], embedded, device=device, dtype=torch.float32).expand(z.shape[0]) \
        if den.config.guidance_embeds else None
    cond = dict(guidance=g, pooled_projections=pooled, encoder_hidden_states=pe, txt_ids=text_ids, img_ids=img_ids)
    neg = None
    if mode == "true_cfg":
        npe, npooled, ntext = pipe.encode_prompt(prompt=extra["negative_prompt"], prompt_2=None, device=device,
                                                 num_images_per_prompt=1, max_sequence_length=msl)
        neg = {**cond, "pooled_projections": npooled, "encoder_hidden_states": npe, "txt_ids": ntext}
    return Trajectory("flux", scheduler, timesteps, z, cond, guidance, mode, neg, height=res,
                      vae_scale_factor=pipe.vae_scale_factor, meta=meta)


def raw_outputs(denoiser: torch.nn.Module, traj: Trajectory, i: int, z: torch.Tensor) -> list[torch.Tensor]:
    """The denoiser's raw outputs at step i, exactly as the pipeline calls it: one output for
    the (CFG-doubled) batch, or [conditional, negative] for FLUX true CFG."""
    t, sched = traj.timesteps[i], traj.scheduler
    if traj.family == "flux":
        timestep = t.expand(z.shape[0]).to(z.dtype) / 1000
        outs = [denoiser(hidden_states=z, timestep=timestep, return_dict=False, **traj.cond)[0]]
        if traj.mode == "true_cfg":
            outs.append(denoiser(hidden_states=z, timestep=timestep, return_dict=False, **traj.neg_cond)[0])
        return outs
    x = torch.cat([z, z]) if traj.mode == "cfg" else z  # (2B, C, H, W) for CFG
    sched._step_index = i
    x = sched.scale_model_input(x, t)
    return [denoiser(x, t, return_dict=False, **traj.cond)[0]]


def step(denoiser: torch.nn.Module, traj: Trajectory, i: int, z: torch.Tensor) -> torch.Tensor:
    """One denoising step from z_i; a pure function of its inputs (and the denoiser's gates)."""
    outs = raw_outputs(denoiser, traj, i, z)
    if traj.mode == "true_cfg":
        pred = outs[1] + traj.guidance * (outs[0] - outs[1])
    elif traj.mode == "cfg":
        uncond, text = outs[0].chunk(2)
        pred = uncond + traj.guidance * (text - uncond)
    else:
        pred = outs[0]
    sched = traj.scheduler
    sched._step_index = i  # the scheduler keeps no other state across steps
    return sched.step(pred, traj.timesteps[i], z, return_dict=False)[0]


def rollout(denoiser: torch.nn.Module, traj: Trajectory, z: torch.Tensor | None = None,
            start: int = 0, control=None) -> list[torch.Tensor]:
    """All latents [z_start, ..., z_T] of a full denoising run (keeps the graph if grad is on).

    ``control`` (anything with ``is_set()``) is checked before every step: a stop raises
    :class:`~pruning.errors.RunStopped`.
    """
    zs = [traj.z0 if z is None else z]
    for i in range(start, traj.steps):
        if control is not None and control.is_set():
            raise RunStopped(getattr(control, "reason", None) or "stopped")
        zs.append(step(denoiser, traj, i, zs[-1]))
    return zs
