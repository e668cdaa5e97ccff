"""Optional recovery finetune: distill a slimmed denoiser towards the original (data-free).

Training inputs are the latents z_i on the original model's own sampling trajectories for
some prompts; the student (slim) matches the teacher's raw outputs at each step, exactly as
the pipeline calls the denoiser (the CFG-doubled batch, or FLUX's two true-CFG passes).
The original denoiser is only read, under ``no_grad``.

>>> from pruning.testing import tiny_pipeline
>>> from pruning.loading import handle_from_pipe
>>> from pruning.plan import PruningPlan
>>> h = handle_from_pipe(tiny_pipeline("sd"), model_ref="tiny:sd")
>>> plan = PruningPlan(family="sd", base="tiny:sd", removed_operators=("mid_block.resnets.0",))
>>> small = recover(h, plan, RecoverSettings(prompts=["a red circle"], iters=3, steps=2))
>>> len(small.recovery["losses"])
3
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from . import validate
from .errors import RunDiverged, RunStopped
from .grads import requires_grad
from .plan import PruningPlan
from .prompts import calibration_prompts
from .rollout import prepare, raw_outputs, rollout
from .runs import RunControl, as_control
from .slim import slim

MAX_ITERS = 100_000


@dataclass(frozen=True)
class RecoverSettings:
    """Distillation settings (frozen; every value is checked here)."""

    prompts: tuple[str, ...] | None = None  # default: the model's calibration prompts
    seeds: tuple[int, ...] | None = None
    steps: int | None = None  # sampling steps of the teacher trajectories
    guidance: float | None = None
    resolution: int | None = None
    iters: int = 200
    lr: float = 1e-4
    batch_size: int = 4  # prompts per trajectory batch
    seed: int = 0

    def __post_init__(self):
        v = validate
        values = {**v.sampling_fields(prompts=self.prompts, seeds=self.seeds, steps=self.steps,
                                      guidance=self.guidance, resolution=self.resolution),
                  "iters": v.integer("recovery iterations", self.iters, lo=0, hi=MAX_ITERS),
                  "lr": v.number("recovery lr", self.lr, lo=0, hi=1, open_lo=True),
                  "batch_size": v.integer("batch_size", self.batch_size, lo=1, hi=v.LIMITS.max_prompts),
                  "seed": v.seed("seed", self.seed)}
        for k, val in values.items():
            object.__setattr__(self, k, val)


def _trajectories(handle, s: RecoverSettings, control: RunControl):
    prompts = list(s.prompts or calibration_prompts(handle.model_ref, 8))
    seeds = list(s.seeds) if s.seeds is not None else list(range(len(prompts)))
    data = []
    for i in range(0, len(prompts), s.batch_size):
        if control.stopped():
            break
        traj = prepare(handle, prompts[i:i + s.batch_size], seeds[i:i + s.batch_size], steps=s.steps,
                       guidance=s.guidance, resolution=s.resolution)
        try:
            with torch.no_grad():
                data.append((traj, [z.detach() for z in rollout(handle.denoiser, traj, control=control)[:-1]]))
        except RunStopped:
            break
    return data


def _float32_masters(params: list[torch.nn.Parameter]) -> list[torch.Tensor]:
    """What AdamW updates: ``params`` themselves when all are float32, else float32 copies that
    are written back after each step. Updating float16/bfloat16 weights directly loses most
    steps (an lr 1e-4 step is below half a bfloat16 ulp of a typical weight) and float16 Adam
    state underflows to NaN."""
    if all(p.dtype == torch.float32 for p in params):
        return params
    return [p.detach().float().clone() for p in params]


def recover(handle, plan: PruningPlan, settings: RecoverSettings | None = None, *,
            denoiser: torch.nn.Module | None = None, control: RunControl | None = None,
            show_progress: bool = False) -> torch.nn.Module:
    """The slim denoiser for ``plan`` (or ``denoiser``), finetuned for ``settings.iters`` steps.

    The returned module carries ``.recovery = {"iters", "losses", "partial"}``; a stopped run
    returns what it reached. A non-finite loss raises ``RunDiverged`` (the copy is discarded;
    the base model is never touched).
    """
    control = as_control(control)
    settings = settings or RecoverSettings()
    teacher = handle.denoiser
    student = denoiser if denoiser is not None else slim(teacher, plan)
    data = _trajectories(handle, settings, control)
    losses, partial = [], control.stopped()
    gen = torch.Generator().manual_seed(settings.seed)
    params = list(student.parameters())
    masters = _float32_masters(params)
    opt = torch.optim.AdamW(masters, lr=settings.lr, weight_decay=0.0)
    fp16 = any(p.dtype == torch.float16 for p in params)  # loss scaling: fp16 gradients underflow
    scaler = torch.amp.GradScaler(params[0].device.type if params else "cpu", enabled=fp16)
    with requires_grad(params, True):
        try:
            for it in tqdm(range(settings.iters if data else 0), desc="recover", disable=not show_progress,
                           leave=False):
                if control.stopped():
                    partial = True
                    break
                b = int(torch.randint(len(data), (1,), generator=gen))
                traj, zs = data[b]
                i = int(torch.randint(traj.steps, (1,), generator=gen))
                with torch.no_grad():
                    want = raw_outputs(teacher, traj, i, zs[i])
                got = raw_outputs(student, traj, i, zs[i])
                loss = sum(torch.nn.functional.mse_loss(g.float(), w.float()) for g, w in zip(got, want)) / len(got)
                if not math.isfinite(loss.item()):
                    raise RunDiverged(f"recovery diverged at iteration {it + 1} (loss {loss.item():.4g}); lower "
                                      f"the learning rate (lr={settings.lr:g})")
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if masters is not params:  # low-precision grads -> the float32 masters
                    for m, p in zip(masters, params):
                        m.grad, p.grad = (None if p.grad is None else p.grad.float()), None
                scaler.step(opt)  # with fp16: unscaled first; skipped when a gradient overflowed
                scaler.update()
                if masters is not params:
                    with torch.no_grad():
                        for m, p in zip(masters, params):
                            p.copy_(m)
                losses.append(loss.item())
                control.report(it + 1, settings.iters, loss=losses[-1])
        finally:
            opt.zero_grad(set_to_none=True)
            for p in params:
                p.grad = None
    student.recovery = {"iters": len(losses), "losses": losses, "partial": partial}
    return student
