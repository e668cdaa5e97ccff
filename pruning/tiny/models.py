"""Configs and builders of the tiny shapes models (tokenizers, text encoders, VAE, denoisers).

All components are built from scratch with seeded initialization; nothing is downloaded.
Text encoders stay frozen at their random initialization (distinct embeddings per prompt).

>>> tok = clip_tokenizer()
>>> tok.tokenize("a red circle")
['a</w>', 'red</w>', 'circle</w>']
>>> tok.model_max_length
16
>>> t5 = t5_tokenizer()
>>> t5.tokenize("a red circle")
['▁a', '▁red', '▁circle']
"""

from __future__ import annotations

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
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

from .data import WORDS

MAX_LENGTH = 16  # tokens; every caption fits (13 with BOS/EOS)
TEXT_DIM = 64

CLIP_SPECIAL = ["<|startoftext|>", "<|endoftext|>"]
T5_SPECIAL = ["<pad>", "</s>", "<unk>"]

CLIP_CONFIG = dict(
    hidden_size=TEXT_DIM,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=2,
    max_position_embeddings=MAX_LENGTH,
    bos_token_id=0,
    eos_token_id=1,
    pad_token_id=1,
    hidden_act="quick_gelu",
    projection_dim=TEXT_DIM,
)
T5_CONFIG = dict(
    d_model=TEXT_DIM,
    d_kv=32,
    d_ff=128,
    num_layers=2,
    num_heads=2,
    relative_attention_num_buckets=8,
    feed_forward_proj="gated-gelu",
    pad_token_id=0,
    eos_token_id=1,
    decoder_start_token_id=0,
)
VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    sample_size=64,
    layers_per_block=1,
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[8, 16, 32, 64],
    norm_num_groups=4,
    shift_factor=0.0,
)
UNET_CONFIG = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    layers_per_block=1,
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    block_out_channels=[32, 64],
    norm_num_groups=8,
    attention_head_dim=4,  # = 4 heads (diffusers naming)
    cross_attention_dim=TEXT_DIM,
)
FLUX_CONFIG = dict(
    patch_size=1,
    in_channels=16,
    num_layers=2,
    num_single_layers=2,
    attention_head_dim=32,
    num_attention_heads=4,
    joint_attention_dim=TEXT_DIM,
    pooled_projection_dim=TEXT_DIM,
    guidance_embeds=False,
    axes_dims_rope=[8, 12, 12],
)
# SD3/3.5 (MMDiT): two CLIPs with projection (penultimate hidden states concatenated: 2 x 64 = 128,
# pooled: 2 x 64 = 128) and a T5 of width 128, so the CLIP part is zero-padded to 128 and the
# context is 16 CLIP + 16 T5 tokens, as in the real models (77 + 256). 3 blocks: block 0 has the
# SD3.5 dual attention (attn2 on the image stream), the last is context_pre_only. RMS q/k norms.
SD3_T5_CONFIG = dict(T5_CONFIG, d_model=2 * TEXT_DIM)
SD3_CONFIG = dict(
    sample_size=8,
    patch_size=2,
    in_channels=4,
    out_channels=4,
    num_layers=3,
    attention_head_dim=32,
    num_attention_heads=4,
    joint_attention_dim=2 * TEXT_DIM,
    caption_projection_dim=128,  # = heads x head dim (both streams have the same width)
    pooled_projection_dim=2 * TEXT_DIM,
    pos_embed_max_size=16,  # latents up to 32x32 (256 px)
    dual_attention_layers=(0,),
    qk_norm="rms_norm",
)
SD3_SCHEDULER = dict(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False)
# v-prediction on a zero-terminal-SNR schedule: pure noise at the first step (dark/bright backgrounds work)
SD_SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_schedule="scaled_linear",
    beta_start=0.00085,
    beta_end=0.012,
    prediction_type="v_prediction",
    rescale_betas_zero_snr=True,
    timestep_spacing="trailing",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
)
FLUX_SCHEDULER = dict(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False)


def clip_tokenizer():
    """A CLIPTokenizer whose vocabulary is the data set's words (one token per word)."""
    vocab = {t: i for i, t in enumerate(CLIP_SPECIAL)}
    merges: list[tuple[str, str]] = []
    pieces = set(vocab)

    def add(tok):
        if tok not in vocab:
            vocab[tok] = len(vocab)

    for c in sorted({ch for w in WORDS for ch in w}):  # single characters, then whole words
        add(c)
        add(c + "</w>")
    for w in WORDS:
        add(w + "</w>")
    # merges chaining characters into words, left to right; repaired until every word is one token
    for w in WORDS:
        parts = list(w[:-1]) + [w[-1] + "</w>"]
        cur = parts[0]
        for p in parts[1:]:
            if (cur, p) not in merges:
                merges.append((cur, p))
            cur = cur + p
            add(cur)
            pieces.add(cur)
    for _ in range(10):
        tok = CLIPTokenizer(
            vocab=dict(vocab),
            merges=list(merges),
            model_max_length=MAX_LENGTH,
            unk_token="<|endoftext|>",
            pad_token="<|endoftext|>",
        )
        bad = False
        for w in WORDS:
            parts = tok.tokenize(w)
            if len(parts) > 1:
                bad = True
                cur = parts[0]
                for p in parts[1:]:
                    merges.append((cur, p))
                    cur = cur + p
                    add(cur)
        if not bad:
            return tok
    raise RuntimeError("could not build one-token-per-word merges")


def t5_tokenizer():
    """A T5 (unigram) tokenizer whose vocabulary is the data set's words."""
    vocab = [(t, 0.0) for t in T5_SPECIAL] + [("▁" + w, -1.0) for w in WORDS]
    vocab += [(c, -10.0) for c in sorted({ch for w in WORDS for ch in w})] + [("▁", -10.0)]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=MAX_LENGTH)


def _seeded(seed: int, model_class, config: dict):
    """``model_class(**config)`` right after ``torch.manual_seed(seed)``: each component's random
    init has its own seed offset, so building one never shifts another's weights."""
    torch.manual_seed(seed)
    return model_class(**config)


def _frozen_text_encoder(seed: int, model_class, config_class, tokenizer, config: dict):
    """A text encoder frozen at its seeded random init, its vocabulary the size of ``tokenizer``'s."""
    torch.manual_seed(seed)
    cfg = config_class(vocab_size=len(tokenizer.get_vocab()), **config)
    return model_class(cfg).eval().requires_grad_(False)


def clip_text_encoder(seed: int = 0):
    return _frozen_text_encoder(seed, CLIPTextModel, CLIPTextConfig, clip_tokenizer(), CLIP_CONFIG)


def t5_text_encoder(seed: int = 0):
    return _frozen_text_encoder(seed + 1, T5EncoderModel, T5Config, t5_tokenizer(), T5_CONFIG)


def vae(seed: int = 0):
    return _seeded(seed + 2, AutoencoderKL, VAE_CONFIG)


def unet(seed: int = 0):
    return _seeded(seed + 3, UNet2DConditionModel, UNET_CONFIG)


def flux_transformer(seed: int = 0):
    return _seeded(seed + 4, FluxTransformer2DModel, FLUX_CONFIG)


def clip_text_encoder_with_projection(seed: int = 0, index: int = 0):
    """SD3's CLIP text encoders (CLIPTextModelWithProjection; `index` 0 or 1 seeds them apart)."""
    return _frozen_text_encoder(seed + 5 + index, CLIPTextModelWithProjection, CLIPTextConfig, clip_tokenizer(),
                                CLIP_CONFIG)


def sd3_t5_text_encoder(seed: int = 0):
    return _frozen_text_encoder(seed + 7, T5EncoderModel, T5Config, t5_tokenizer(), SD3_T5_CONFIG)


def sd3_transformer(seed: int = 0):
    return _seeded(seed + 8, SD3Transformer2DModel, SD3_CONFIG)


def sd3_scheduler():
    return FlowMatchEulerDiscreteScheduler(**SD3_SCHEDULER)


def sd_scheduler():
    return DDIMScheduler(**SD_SCHEDULER)


def flux_scheduler():
    return FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER)
