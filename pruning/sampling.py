"""Deterministic generation of final latents and images.

One ``torch.Generator`` per seed, so a (prompt, seed) pair gets the same initial noise
whatever else is in the batch; the results then match to float rounding (batched kernels
differ by ~1e-5 with the batch size on CPU), and exactly for the same batch. Each call runs on a shallow copy of the pipeline (same modules, fresh
scheduler), so swapping the denoiser, interrupting or the progress bar never touch the
cached pipeline.

>>> from pruning.testing import tiny_pipeline
>>> from pruning.loading import handle_from_pipe
>>> h = handle_from_pipe(tiny_pipeline("flux"), model_ref="tiny:flux")
>>> z = generate_latents(h, ["a red circle", "a blue square"], [0, 1])
>>> tuple(z.shape)  # (B, C, H, W), unpacked for FLUX too
(2, 4, 8, 8)
>>> [im.size for im in decode_latents(h, z)]
[(32, 32), (32, 32)]
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from . import families, validate
from .errors import RunStopped, SettingsError
from .memory import execution_device, offloaded_like, plain_copy, release

GUIDANCE_MODES = ("cfg", "embedded", "true_cfg")


class GenerationStopped(RunStopped):
    """The ``stop`` event was set during a generation; no partial result is returned."""


def pair_samples(prompts: str | Sequence[str], seeds: int | Sequence[int]) -> tuple[list[str], list[int]]:
    """Validated (prompts, seeds) paired one to one; one prompt string is repeated for every seed.
    An empty prompt is allowed here (unconditional generation).

    >>> pair_samples("a red circle", [0, 1])
    (['a red circle', 'a red circle'], [0, 1])
    >>> pair_samples(["a", "b"], [0])
    Traceback (most recent call last):
    ...
    pruning.errors.SettingsError: got 2 prompts and 1 seeds; they must pair up
    """
    seeds = list(validate.seed_list(seeds))
    prompts = [prompts] * len(seeds) if isinstance(prompts, str) else prompts
    prompts = list(validate.prompt_list(prompts, allow_empty=True))
    if len(prompts) != len(seeds):
        raise SettingsError(f"got {len(prompts)} prompts and {len(seeds)} seeds; they must pair up")
    return prompts, seeds


@dataclass(frozen=True)
class GenerationSpec:
    """How a model generates: steps, guidance, resolution and the family's extras, validated.

    This is the one place that knows a model's generation defaults and, from them, the input
    size that params and MACs are counted at (``count_inputs``).
    """

    steps: int
    guidance: float
    resolution: int
    guidance_mode: str  # "cfg" (SD/SDXL), "embedded" (FLUX.1-dev style) or "true_cfg" (FLUX + negative)
    negative_prompt: str | None
    max_sequence_length: int | None  # T5 tokens (FLUX, SD3)
    vae_scale_factor: int

    def count_inputs(self) -> dict:
        """``catalog`` / ``module_macs`` input size of one denoiser call at this resolution."""
        return {"sample_size": self.resolution // self.vae_scale_factor, "text_len": self.max_sequence_length}


def resolution_multiple(handle) -> int:
    """Image sides must be a multiple of this: the VAE factor, x2 for FLUX's and SD3's 2x2 latent patches."""
    vae = int(getattr(handle.pipe, "vae_scale_factor", 8))
    return vae * families.of(handle).patch_multiple


def spec(handle, *, steps=None, guidance=None, resolution=None) -> GenerationSpec:
    """The validated generation settings for ``handle``: unset values come from its defaults.

    >>> from pruning.testing import tiny_pipeline
    >>> from pruning.loading import handle_from_pipe
    >>> h = handle_from_pipe(tiny_pipeline("flux"), model_ref="tiny:flux")
    >>> s = spec(h, steps=2); (s.steps, s.resolution, s.guidance_mode, s.count_inputs())
    (2, 32, 'embedded', {'sample_size': 8, 'text_len': 32})
    >>> spec(h, resolution=20)
    Traceback (most recent call last):
    ...
    pruning.errors.SettingsError: resolution must be a multiple of 8 (the VAE's downscale factor x the patch size), got 20
    """
    d = handle.defaults
    native = int(d["resolution"])
    family = families.of(handle)
    mode = d.get("guidance_mode", family.default_guidance_mode)
    msl = int(d["max_sequence_length"]) if family.uses_max_sequence_length() and "max_sequence_length" in d else None
    return GenerationSpec(
        steps=validate.steps(d["steps"] if steps is None else steps),
        guidance=validate.guidance(d["guidance"] if guidance is None else guidance),
        resolution=validate.resolution(native if resolution is None else resolution,
                                       multiple=resolution_multiple(handle), native=native),
        guidance_mode=validate.choice("guidance_mode", mode, GUIDANCE_MODES),
        negative_prompt=d.get("negative_prompt"), max_sequence_length=msl,
        vae_scale_factor=int(getattr(handle.pipe, "vae_scale_factor", 8)))


def count_inputs(handle, resolution: int | None = None) -> dict:
    """Input size for counting params/MACs as ``handle`` generates (at ``resolution``)."""
    return spec(handle, resolution=resolution).count_inputs()


def call_pipe(handle, denoiser: torch.nn.Module | None = None):
    """A shallow copy of ``handle.pipe`` sharing its modules (no weight copy), with a
    fresh scheduler and, if given, ``denoiser`` in place of the UNet/transformer.

    >>> from pruning.testing import tiny_pipeline
    >>> from pruning.loading import handle_from_pipe
    >>> h = handle_from_pipe(tiny_pipeline("sd"), model_ref="tiny:sd")
    >>> p = call_pipe(h); p.unet is h.pipe.unet, p.scheduler is h.pipe.scheduler
    (True, False)
    """
    pipe = handle.pipe
    components = {**pipe.components, "scheduler": copy.deepcopy(pipe.scheduler)}
    if denoiser is not None:
        components[handle.denoiser_name] = denoiser
    params = inspect.signature(type(pipe).__init__).parameters
    if "requires_safety_checker" in params:
        components["requires_safety_checker"] = bool(pipe.config.get("requires_safety_checker", False))
    if "force_zeros_for_empty_prompt" in params and "force_zeros_for_empty_prompt" in pipe.config:
        components["force_zeros_for_empty_prompt"] = pipe.config["force_zeros_for_empty_prompt"]
    if "add_watermarker" in params:
        components["add_watermarker"] = getattr(pipe, "watermark", None) is not None
    return type(pipe)(**components)


def pipeline_kwargs(s: GenerationSpec, batch: int) -> dict:
    """Pipeline call kwargs for the guidance of ``s``.

    ``guidance_mode``: "cfg" (SD/SDXL classifier-free guidance), "embedded" (FLUX.1-dev's
    distilled guidance, the FLUX default) or "true_cfg" (FLUX with a negative prompt, as the
    bundled tiny FLUX is trained). ``negative_prompt`` and FLUX's ``max_sequence_length`` are
    passed through when present.
    """
    mode = s.guidance_mode
    kwargs = {"true_cfg_scale": s.guidance} if mode == "true_cfg" else {"guidance_scale": s.guidance}
    if mode == "true_cfg" or (s.negative_prompt is not None and mode == "cfg"):
        kwargs["negative_prompt"] = [s.negative_prompt or ""] * batch
    if s.max_sequence_length is not None:
        kwargs["max_sequence_length"] = s.max_sequence_length
    return kwargs


def generate_latents(handle, prompts: str | Sequence[str], seeds: int | Sequence[int], *,
                     steps: int | None = None, guidance: float | None = None,
                     resolution: int | None = None, denoiser: torch.nn.Module | None = None,
                     progress: bool = False, stop=None,
                     callback: Callable[[int, int, torch.Tensor], None] | None = None) -> torch.Tensor:
    """Final denoised latents ``(B, C, H, W)`` for prompts paired with seeds, in one batch.

    ``H = W = resolution // vae_scale_factor``. FLUX's packed ``(B, H/2 * W/2, 4C)`` output
    is unpacked to the same layout as SD's. Unset ``steps``/``guidance``/``resolution`` come
    from ``handle.defaults``. ``denoiser`` replaces the pipeline's for this call only.
    ``stop`` (anything with ``is_set()``: an Event, a :class:`~pruning.runs.RunControl`) is
    checked after each step and raises :class:`GenerationStopped`.
    ``callback(step, timestep, latents)`` runs after each step (latents as the pipeline holds
    them: packed for FLUX). On a pipeline with offload hooks (``pruning.memory``) a replacement
    ``denoiser`` is offloaded like the pipeline's own for the call.

    >>> from pruning.testing import tiny_pipeline
    >>> from pruning.loading import handle_from_pipe
    >>> h = handle_from_pipe(tiny_pipeline("sd"), model_ref="tiny:sd")
    >>> a = generate_latents(h, ["a", "b"], [0, 1], steps=2)
    >>> torch.allclose(a[1:], generate_latents(h, ["b"], [1], steps=2), atol=1e-4)
    True
    >>> torch.equal(a, generate_latents(h, ["a", "b"], [0, 1], steps=2))
    True
    >>> import threading
    >>> ev = threading.Event(); ev.set()
    >>> try:
    ...     generate_latents(h, "a", 0, stop=ev)
    ... except GenerationStopped as e:
    ...     print(e)
    generation stopped
    """
    prompts, seeds = pair_samples(prompts, seeds)
    s = spec(handle, steps=steps, guidance=guidance, resolution=resolution)
    if stop is not None and stop.is_set():
        raise GenerationStopped("generation stopped")
    pipe = call_pipe(handle, denoiser)
    pipe.set_progress_bar_config(disable=not progress)

    def on_step_end(p, i, t, kwargs):
        if callback is not None:
            callback(i, t, kwargs["latents"])
        if stop is not None and stop.is_set():
            p._interrupt = True
        return kwargs

    gen_device = handle.device if handle.device.type != "mps" else torch.device("cpu")
    try:
        with offloaded_like(handle, denoiser):
            out = pipe(
                prompt=prompts, num_inference_steps=s.steps, **pipeline_kwargs(s, len(prompts)),
                height=s.resolution, width=s.resolution, output_type="latent",
                generator=[torch.Generator(gen_device).manual_seed(s) for s in seeds],
                callback_on_step_end=on_step_end,
            )
    finally:
        release(handle.pipe)
    if getattr(pipe, "_interrupt", False):
        raise GenerationStopped("generation stopped")
    # FLUX: (B, N, 4C) -> (B, C, H, W)
    return families.of(handle).unpack(out.images, s.resolution, pipe.vae_scale_factor)


@torch.no_grad()
def decode_latents(handle, latents: torch.Tensor) -> list:
    """Decode ``(B, C, H, W)`` latents from :func:`generate_latents` to PIL images (tiled or
    sliced when the VAE has ``enable_tiling`` / ``enable_slicing`` on)."""
    pipe = handle.pipe
    vae = pipe.vae
    cfg = vae.config
    dtype = torch.float32 if getattr(cfg, "force_upcast", False) and vae.dtype == torch.float16 else vae.dtype
    z = latents.to(device=execution_device(vae), dtype=torch.float32)  # offloaded: not where its weights are
    mean, std = getattr(cfg, "latents_mean", None), getattr(cfg, "latents_std", None)
    if mean is not None and std is not None:  # SDXL-style per-channel stats
        mean = torch.tensor(mean, device=z.device).view(1, -1, 1, 1)
        std = torch.tensor(std, device=z.device).view(1, -1, 1, 1)
        z = z * std / cfg.scaling_factor + mean
    else:
        z = z / cfg.scaling_factor + (getattr(cfg, "shift_factor", None) or 0.0)
    if dtype != vae.dtype:
        vae = plain_copy(vae).to(dtype)
    image = vae.decode(z.to(dtype), return_dict=False)[0]
    return pipe.image_processor.postprocess(image.float(), output_type="pil")


def generate_images(handle, prompts: str | Sequence[str], seeds: int | Sequence[int], **kwargs) -> list:
    """PIL images: :func:`generate_latents` (same arguments) then :func:`decode_latents`.

    >>> from pruning.testing import tiny_pipeline
    >>> from pruning.loading import handle_from_pipe
    >>> h = handle_from_pipe(tiny_pipeline("sdxl"), model_ref="tiny:sdxl")
    >>> [im.size for im in generate_images(h, ["a", "b"], [0, 1], steps=2)]
    [(32, 32), (32, 32)]
    """
    return decode_latents(handle, generate_latents(handle, prompts, seeds, **kwargs))
