"""The public configs of the real denoisers, built on the meta device (no weights, no download).

These let tests and the catalog check numbers at full size without touching the Hub.

>>> m = meta_denoiser("sd15")
>>> sum(p.numel() for p in m.parameters())
859520964
>>> next(m.parameters()).device.type
'meta'
>>> sorted(REFERENCE_CONFIGS)
['flux-dev', 'flux-schnell', 'sd15', 'sd21', 'sdxl']
>>> PIPELINES["sdxl"]["family"], PIPELINES["sdxl"]["resolution"]
('sdxl', 1024)
"""

from __future__ import annotations

import copy

from accelerate import init_empty_weights
from diffusers import FluxTransformer2DModel, UNet2DConditionModel
from torch import nn

_SD_COMMON = {
    "act_fn": "silu",
    "center_input_sample": False,
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
}

# stable-diffusion-v1-5/stable-diffusion-v1-5, unet/config.json
SD15_UNET = {
    **_SD_COMMON,
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "sample_size": 64,
}

# stabilityai/stable-diffusion-2-1, unet/config.json
SD21_UNET = {
    **SD15_UNET,
    "attention_head_dim": [5, 10, 20, 20],
    "cross_attention_dim": 1024,
    "use_linear_projection": True,
    "upcast_attention": True,
    "sample_size": 96,
}

# stabilityai/stable-diffusion-xl-base-1.0, unet/config.json
SDXL_UNET = {
    **_SD_COMMON,
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280],
    "cross_attention_dim": 2048,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "projection_class_embeddings_input_dim": 2816,
    "transformer_layers_per_block": [1, 2, 10],
    "use_linear_projection": True,
    "sample_size": 128,
}

# black-forest-labs/FLUX.1-dev, transformer/config.json
FLUX_DEV_TRANSFORMER = {
    "attention_head_dim": 128,
    "axes_dims_rope": [16, 56, 56],
    "guidance_embeds": True,
    "in_channels": 64,
    "joint_attention_dim": 4096,
    "num_attention_heads": 24,
    "num_layers": 19,
    "num_single_layers": 38,
    "patch_size": 1,
    "pooled_projection_dim": 768,
}

# black-forest-labs/FLUX.1-schnell: the same, without the guidance embedder
FLUX_SCHNELL_TRANSFORMER = {**FLUX_DEV_TRANSFORMER, "guidance_embeds": False}

REFERENCE_CONFIGS: dict[str, dict] = {
    "sd15": SD15_UNET,
    "sd21": SD21_UNET,
    "sdxl": SDXL_UNET,
    "flux-dev": FLUX_DEV_TRANSFORMER,
    "flux-schnell": FLUX_SCHNELL_TRANSFORMER,
}

# Pipeline-level facts: family, Hub id, default resolution and sampling settings.
PIPELINES: dict[str, dict] = {
    "sd15": {"family": "sd", "hub_id": "stable-diffusion-v1-5/stable-diffusion-v1-5",
             "resolution": 512, "steps": 50, "guidance": 7.5},
    "sd21": {"family": "sd", "hub_id": "stabilityai/stable-diffusion-2-1",
             "resolution": 768, "steps": 50, "guidance": 7.5},
    "sdxl": {"family": "sdxl", "hub_id": "stabilityai/stable-diffusion-xl-base-1.0",
             "resolution": 1024, "steps": 30, "guidance": 5.0},
    "flux-dev": {"family": "flux", "hub_id": "black-forest-labs/FLUX.1-dev",
                 "resolution": 1024, "steps": 28, "guidance": 3.5},
    "flux-schnell": {"family": "flux", "hub_id": "black-forest-labs/FLUX.1-schnell",
                     "resolution": 1024, "steps": 4, "guidance": 0.0},
}


def meta_denoiser(name: str) -> nn.Module:
    """Build the named reference denoiser on the meta device (fast, no memory for weights).

    >>> t = meta_denoiser("flux-dev")
    >>> len(t.transformer_blocks), len(t.single_transformer_blocks)
    (19, 38)
    """
    if name not in REFERENCE_CONFIGS:
        raise KeyError(f"unknown reference model {name!r}; known: {sorted(REFERENCE_CONFIGS)}")

    config = copy.deepcopy(REFERENCE_CONFIGS[name])
    with init_empty_weights():
        if PIPELINES[name]["family"] == "flux":
            return FluxTransformer2DModel.from_config(config)

        return UNet2DConditionModel.from_config(config)
