"""Tiny, random, in-memory SD / SDXL / FLUX / SD3 pipelines for tests (no network, no files).

Configs follow diffusers' ``get_dummy_components`` but keep every structure the pruning code
acts on: several heads per attention, GEGLU FFNs, GroupNorm with several groups, resnets with
``conv_shortcut``, cross-attention at two resolutions, FLUX double and single blocks.
The VAEs have a scale factor of 4, so the default resolution of 32 px gives 8x8 latents.

>>> pipe = tiny_pipeline("sd")
>>> type(pipe).__name__, pipe.unet.config.sample_size, pipe.vae_scale_factor
('StableDiffusionPipeline', 8, 4)
>>> sum(p.numel() for p in pipe.unet.parameters()) < 2_000_000
True
"""

from __future__ import annotations

import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel

from . import families
from .tiny import parts
from .tiny.parts import TINY_MAX_SEQUENCE_LENGTH, TINY_RESOLUTION  # noqa: F401 (re-exported)
from .validate import registered

FAMILIES = families.names()  # every registered family has a tiny pipeline


def tiny_components(family: str, seed: int = 0) -> dict:
    """The components of a tiny pipeline, with weights drawn from ``seed``.

    >>> c = tiny_components("flux")
    >>> len(c["transformer"].transformer_blocks), len(c["transformer"].single_transformer_blocks)
    (2, 2)
    >>> torch.equal(c["vae"].encoder.conv_in.weight, tiny_components("flux")["vae"].encoder.conv_in.weight)
    True
    """
    registered("model family", family, FAMILIES)  # UnknownName, as every registry
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        return families.get(family).tiny_components()
    finally:
        torch.random.set_rng_state(state)


def tiny_pipeline(family: str, seed: int = 0):
    """A tiny ``DiffusionPipeline`` of the given family, on CPU in fp32.

    >>> tiny_pipeline("sdxl").unet.config.addition_embed_type
    'text_time'
    """
    components = tiny_components(family, seed)
    fam = families.get(family)
    pipe = fam.pipeline_class(**components, **fam.tiny_extra())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def real_unet_pipeline(name: str = "sd15", seed: int = 0):
    """An SD pipeline whose UNet is the real ``name`` config (``pruning.reference``) with random
    weights (seeded), around the tiny VAE and a tiny CLIP text encoder of the UNet's width: real
    denoiser cost on a CPU, without a download. SD 1.x/2.x configs only (one text encoder).

    The VAE's factor is 4, so a latent side ``s`` is a ``4 s`` px image.
    """
    from .reference import PIPELINES, REFERENCE_CONFIGS

    if PIPELINES.get(name, {}).get("family") != "sd":
        raise ValueError(f"real_unet_pipeline builds SD 1.x/2.x UNets, not {name!r}")
    components = tiny_components("sd", seed)
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        unet = UNet2DConditionModel.from_config(REFERENCE_CONFIGS[name]).eval()
        text = parts.clip_text_encoder(components["tokenizer"], hidden=unet.config.cross_attention_dim)
    finally:
        torch.random.set_rng_state(state)
    pipe = StableDiffusionPipeline(**{**components, "unet": unet, "text_encoder": text},
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe
