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

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .errors import PruningError
from .plan import PruningPlan
from .rollout import prepare, raw_outputs, rollout
from .slim import slim


@dataclass
class RecoverSettings:
    prompts: Sequence[str]
    seeds: Sequence[int] | None = None
    steps: int | None = None  # sampling steps of the teacher trajectories
    guidance: float | None = None
    resolution: int | None = None
    iters: int = 200
    lr: float = 1e-4
    batch_size: int = 4  # prompts per trajectory batch
    seed: int = 0

    def validate(self) -> None:
        if not self.prompts:
            raise PruningError("recovery needs at least one prompt")
        if self.seeds is not None and len(self.seeds) != len(self.prompts):
            raise PruningError(f"{len(self.seeds)} seeds for {len(self.prompts)} prompts; they must pair up")
        if self.iters < 0 or self.lr <= 0 or self.batch_size < 1:
            raise PruningError(f"iters >= 0, lr > 0 and batch_size >= 1 required (got {self.iters}, {self.lr}, "
                               f"{self.batch_size})")


def _trajectories(handle, s: RecoverSettings):
    prompts = list(s.prompts)
    seeds = list(s.seeds) if s.seeds is not None else list(range(len(prompts)))
    data = []
    for i in range(0, len(prompts), s.batch_size):
        traj = prepare(handle, prompts[i:i + s.batch_size], seeds[i:i + s.batch_size], steps=s.steps,
                       guidance=s.guidance, resolution=s.resolution)
        with torch.no_grad():
            data.append((traj, [z.detach() for z in rollout(handle.denoiser, traj)[:-1]]))
    return data


def recover(handle, plan: PruningPlan, settings: RecoverSettings, *, denoiser: torch.nn.Module | None = None,
            progress: Callable | None = None, stop: threading.Event | None = None) -> torch.nn.Module:
    """The slim denoiser for ``plan`` (or ``denoiser``), finetuned for ``settings.iters`` steps.

    The returned module carries ``.recovery = {"iters", "losses", "partial"}``.
    """
    settings.validate()
    teacher = handle.denoiser
    student = denoiser if denoiser is not None else slim(teacher, plan)
    data = _trajectories(handle, settings)
    opt = torch.optim.AdamW([p for p in student.parameters()], lr=settings.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(settings.seed)
    losses, partial = [], False
    flags = [(p, p.requires_grad) for p in student.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(True)
        for it in tqdm(range(settings.iters), desc="recover", disable=progress is False):
            if stop is not None and stop.is_set():
                partial = True
                break
            b = int(torch.randint(len(data), (1,), generator=gen))
            traj, zs = data[b]
            i = int(torch.randint(traj.steps, (1,), generator=gen))
            with torch.no_grad():
                want = raw_outputs(teacher, traj, i, zs[i])
            got = raw_outputs(student, traj, i, zs[i])
            loss = sum(torch.nn.functional.mse_loss(g, w) for g, w in zip(got, want)) / len(got)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            if callable(progress):
                progress(it + 1, settings.iters, {"loss": losses[-1]})
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        opt.zero_grad(set_to_none=True)
    student.recovery = {"iters": len(losses), "losses": losses, "partial": partial}
    return student
