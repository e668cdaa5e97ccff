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
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxTransformer2DModel,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

from . import families

FAMILIES = families.names()  # every registered family has a tiny pipeline
TINY_RESOLUTION = 32  # pixels; latents are 8x8 with the factor-4 VAEs below
TINY_MAX_SEQUENCE_LENGTH = 32  # T5 tokens for the tiny FLUX (the pipeline default is 512)

_WORDS = ("a red green blue yellow circle square triangle star on the left right top bottom "
          "of small big photo").split()
_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789"


def _clip_tokenizer():
    """A character-level CLIP tokenizer: with no merges, every word splits into letters."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for tok in [*_CHARS, *(c + "</w>" for c in _CHARS)]:
        vocab.setdefault(tok, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def _t5_tokenizer():
    """A unigram T5 tokenizer: whole words when known, else letters."""
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [("▁" + w, -1.0) for w in _WORDS] + [(c, -5.0) for c in _CHARS]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=TINY_MAX_SEQUENCE_LENGTH)


def _clip_text_encoder(tokenizer, *, projection: bool = False, hidden: int = 32):
    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
        projection_dim=hidden, hidden_act="gelu", layer_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    return cls(config).eval()


def _vae(*, latent_channels: int = 4, scaling_factor: float = 0.18215, shift_factor=None):
    kwargs = {} if shift_factor is None else {"shift_factor": shift_factor}
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=latent_channels,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(8, 16, 16), layers_per_block=1, norm_num_groups=4,
        sample_size=TINY_RESOLUTION, scaling_factor=scaling_factor, **kwargs,
    ).eval()


def _sd_components() -> dict:
    tokenizer = _clip_tokenizer()
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64, 64), norm_num_groups=8,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=(2, 4, 4),  # legacy name: the number of heads per level
        cross_attention_dim=32,
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False, set_alpha_to_one=False, steps_offset=1,
    )
    return {
        "unet": unet.eval(), "scheduler": scheduler, "vae": _vae(),
        "text_encoder": _clip_text_encoder(tokenizer), "tokenizer": tokenizer,
        "safety_checker": None, "feature_extractor": None, "image_encoder": None,
    }


def _sdxl_components() -> dict:
    tokenizer, tokenizer_2 = _clip_tokenizer(), _clip_tokenizer()
    text_encoder = _clip_text_encoder(tokenizer, hidden=32)
    text_encoder_2 = _clip_text_encoder(tokenizer_2, projection=True, hidden=32)
    time_dim = 8
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(16, 32, 64), norm_num_groups=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 2, 4), transformer_layers_per_block=(1, 1, 2),
        use_linear_projection=True, cross_attention_dim=32 + 32,  # both encoders concatenated
        addition_embed_type="text_time", addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=6 * time_dim + 32,  # 6 time ids + pooled text
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
        timestep_spacing="leading",
    )
    return {
        "unet": unet.eval(), "scheduler": scheduler, "vae": _vae(scaling_factor=0.13025),
        "text_encoder": text_encoder, "text_encoder_2": text_encoder_2,
        "tokenizer": tokenizer, "tokenizer_2": tokenizer_2,
        "image_encoder": None, "feature_extractor": None,
    }


def _flux_components() -> dict:
    tokenizer, tokenizer_2 = _clip_tokenizer(), _t5_tokenizer()
    text_encoder = _clip_text_encoder(tokenizer, hidden=32)
    t5 = T5EncoderModel(T5Config(
        vocab_size=len(tokenizer_2), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, feed_forward_proj="gated-gelu",
        pad_token_id=tokenizer_2.pad_token_id, eos_token_id=tokenizer_2.eos_token_id,
        decoder_start_token_id=0,
    )).eval()
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4 * 4,  # latent channels x the 2x2 packing
        num_layers=2, num_single_layers=2, attention_head_dim=16, num_attention_heads=4,
        joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
        axes_dims_rope=(4, 6, 6),  # sums to attention_head_dim
    ).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096,
    )
    return {
        "transformer": transformer, "scheduler": scheduler,
        "vae": _vae(scaling_factor=0.5, shift_factor=0.0),
        "text_encoder": text_encoder, "tokenizer": tokenizer,
        "text_encoder_2": t5, "tokenizer_2": tokenizer_2,
        "image_encoder": None, "feature_extractor": None,
    }


def tiny_components(family: str, seed: int = 0) -> dict:
    """The components of a tiny pipeline, with weights drawn from ``seed``.

    >>> c = tiny_components("flux")
    >>> len(c["transformer"].transformer_blocks), len(c["transformer"].single_transformer_blocks)
    (2, 2)
    >>> torch.equal(c["vae"].encoder.conv_in.weight, tiny_components("flux")["vae"].encoder.conv_in.weight)
    True
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
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
        text = _clip_text_encoder(components["tokenizer"], hidden=unet.config.cross_attention_dim)
    finally:
        torch.random.set_rng_state(state)
    pipe = StableDiffusionPipeline(**{**components, "unet": unet, "text_encoder": text},
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe
