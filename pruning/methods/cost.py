"""What a method's run costs, in the words a method uses to say it: :class:`MethodCost` (seconds,
call counts, working memory, what to change) and the counting helpers every method's
:meth:`~pruning.methods.base.Method.cost` shares. The timings come from a
:class:`~pruning.estimate.StepCost` (timed denoiser calls on the current device and dtype), which
:func:`pruning.estimate.estimate` hands to the method; this module only counts.

A leaf below the method modules and the estimator: it imports neither.

>>> MethodCost(1.5, {"denoiser calls": 3}, 2 ** 20).working_bytes
1048576
>>> MethodCost(-1, {}, 0)
Traceback (most recent call last):
...
pruning.errors.SettingsError: a method's cost: seconds must be a finite number >= 0, got -1
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .. import families, validate


@dataclass(frozen=True)
class MethodCost:
    """One scoring run's predicted cost: ``seconds`` of work, ``calls`` (what was counted, e.g.
    ``{"denoiser calls": 40, "batch": 2}``), ``working_bytes`` (what the run holds at its peak
    beyond the weights) and ``levers`` (plain words: what to change to make it cheaper)."""

    seconds: float
    calls: dict
    working_bytes: int
    levers: list[str] = field(default_factory=list)

    def __post_init__(self):
        validate.number("a method's cost: seconds", self.seconds, lo=0)
        validate.number("a method's cost: working_bytes", self.working_bytes, lo=0)


def run_spec(handle, settings):
    """The generation spec (:func:`pruning.sampling.spec`) of settings that may set ``steps``,
    ``guidance`` and ``resolution`` (the model's defaults for those they leave unset)."""
    from ..sampling import spec

    return spec(handle, steps=getattr(settings, "steps", None), guidance=getattr(settings, "guidance", None),
                resolution=getattr(settings, "resolution", None))


def prompt_count(handle, settings, default: int = 8) -> int:
    """The prompts a run uses: its own, else ``default`` of the model's calibration prompts."""
    from ..prompts import calibration_prompts

    return len(getattr(settings, "prompts", None) or calibration_prompts(handle.model_ref, default))


def generation_calls(handle, s, prompts: int) -> tuple[int, int]:
    """(denoiser calls, samples per call) of generating ``prompts`` images at spec ``s``
    (:func:`pruning.sampling.spec`): classifier-free guidance doubles the batch where the family
    runs both branches in one call, true CFG doubles the calls."""
    cfg = s.guidance_mode == "cfg" and s.guidance > 1 and families.of(handle).cfg_doubles_batch
    calls = s.steps * (2 if s.guidance_mode == "true_cfg" and s.guidance > 1 else 1)
    return calls, prompts * (2 if cfg else 1)


def generation_seconds(step, handle, s, prompts: int) -> tuple[float, int, int]:
    """(seconds, denoiser calls, batch) of generating ``prompts`` images with ``step``'s timings."""
    calls, batch = generation_calls(handle, s, prompts)
    return calls * step.call(batch), calls, batch


def latent_bytes(handle, s, samples: int) -> int:
    """Bytes of one latent batch of ``samples`` at spec ``s`` (FLUX packs 2x2 patches: the same
    bytes, fewer tokens)."""
    side = s.resolution // int(getattr(handle.pipe, "vae_scale_factor", 8))
    channels = int(getattr(handle.denoiser.config, "in_channels", 4))
    per = channels * side * side // families.of(handle).latent_packing
    return samples * per * torch.finfo(handle.dtype).bits // 8


def weights_only(handle) -> MethodCost:
    """A data-free method that reads the weights once: about 0.05 s, and a float32 copy of the
    largest weight at a time (the magnitude and random baselines)."""
    largest = max((p.numel() for p in handle.denoiser.parameters()), default=0)
    return MethodCost(0.05, {"denoiser calls": 0}, largest * 4, [])


__all__ = ["MethodCost", "run_spec", "prompt_count", "generation_calls", "generation_seconds", "latent_bytes", "weights_only"]
