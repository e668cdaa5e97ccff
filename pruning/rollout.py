"""Step-wise denoising with pure steps: ``z_{i+1} = step(denoiser, traj, i, z_i)``.

``prepare`` does what a pipeline does before its loop (encode prompts, draw the initial
latents from one generator per seed, set the scheduler's timesteps) and returns a
``Trajectory``. ``step`` then depends only on (z_i, i, the denoiser and its gates): the
scheduler's step index is set explicitly before each call, classifier-free guidance runs the
doubled batch (SD/SDXL) or the negative pass (FLUX true CFG) exactly as the pipeline does.
That is what EcoDiff's reverse replay needs, and the final latent matches ``generate_latents``.

Only single-step schedulers are allowed (DDIM, Euler, FlowMatchEuler); a multistep or
ancestral scheduler is swapped for DDIM (UNets) or FlowMatchEuler (FLUX, SD3) from its config.
Each family builds its conditioning and calls its denoiser (``pruning.families``).

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

import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler

from . import families
from .errors import RunStopped
from .families.base import Trajectory  # noqa: F401 (re-exported: the families build it)
from .sampling import call_pipe, pair_samples, pipeline_kwargs, spec

PURE_SCHEDULERS = (DDIMScheduler, EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler)


def _pure_scheduler(handle, pipe):
    """Install a single-step scheduler on ``pipe`` (a private copy); returns a note if swapped."""
    sched = pipe.scheduler
    if isinstance(sched, PURE_SCHEDULERS) and not getattr(sched.config, "stochastic_sampling", False):
        return None
    cls = families.of(handle).single_step_scheduler()
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
    return families.of(handle).prepare(handle, pipe, scheduler, prompts, gens, steps, guidance, res, extra, meta)


def raw_outputs(denoiser: torch.nn.Module, traj: Trajectory, i: int, z: torch.Tensor) -> list[torch.Tensor]:
    """The denoiser's raw outputs at step i, exactly as the pipeline calls it: one output for
    the (CFG-doubled) batch, or [conditional, negative] for FLUX true CFG."""
    return families.get(traj.family).raw_outputs(denoiser, traj, i, z)


def guided(traj: Trajectory, outs: list[torch.Tensor]) -> torch.Tensor:
    """The per-sample prediction the sampler steps with, from :func:`raw_outputs` (guidance applied)."""
    if traj.mode == "true_cfg":
        return outs[1] + traj.guidance * (outs[0] - outs[1])
    if traj.mode == "cfg":
        uncond, text = outs[0].chunk(2)  # (2B, ...) -> two (B, ...)
        return uncond + traj.guidance * (text - uncond)
    return outs[0]


def advance(traj: Trajectory, i: int, z: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """z_{i+1} from z_i and the guided prediction at step i (the scheduler's update)."""
    sched = traj.scheduler
    sched._step_index = i  # the scheduler keeps no other state across steps
    return sched.step(pred, traj.timesteps[i], z, return_dict=False)[0]


def step(denoiser: torch.nn.Module, traj: Trajectory, i: int, z: torch.Tensor) -> torch.Tensor:
    """One denoising step from z_i; a pure function of its inputs (and the denoiser's gates)."""
    return advance(traj, i, z, guided(traj, raw_outputs(denoiser, traj, i, z)))


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
