"""The shared parts of the tiny in-memory pipelines (``pruning.testing.tiny_pipeline``): a
character-level CLIP tokenizer, a word-level T5 tokenizer, small CLIP text encoders and a small
VAE. Each family's ``tiny_components`` (in ``pruning/families/``) puts them together with its own
tiny denoiser; the caller seeds torch.

>>> tok = clip_tokenizer()
>>> tok("a red circle").input_ids[:3], vae().config.latent_channels
([0, 38, 19], 4)
"""

from __future__ import annotations

from diffusers import AutoencoderKL
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

TINY_RESOLUTION = 32  # pixels; latents are 8x8 with the factor-4 VAEs below
TINY_MAX_SEQUENCE_LENGTH = 32  # T5 tokens for the tiny FLUX (the pipeline default is 512)

_WORDS = ("a red green blue yellow circle square triangle star on the left right top bottom "
          "of small big photo").split()
_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789"


def clip_tokenizer():
    """A character-level CLIP tokenizer: with no merges, every word splits into letters."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for tok in [*_CHARS, *(c + "</w>" for c in _CHARS)]:
        vocab.setdefault(tok, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def t5_tokenizer():
    """A unigram T5 tokenizer: whole words when known, else letters."""
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [("▁" + w, -1.0) for w in _WORDS] + [(c, -5.0) for c in _CHARS]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=TINY_MAX_SEQUENCE_LENGTH)


def clip_text_encoder(tokenizer, *, projection: bool = False, hidden: int = 32):
    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
        projection_dim=hidden, hidden_act="gelu", layer_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    return cls(config).eval()


def t5_text_encoder(tokenizer, *, hidden: int = 32):
    """A 2-layer T5 encoder of width ``hidden`` (4 heads of 8) over ``tokenizer``'s vocabulary."""
    config = T5Config(
        vocab_size=len(tokenizer), d_model=hidden, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, feed_forward_proj="gated-gelu",
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=0,
    )
    return T5EncoderModel(config).eval()


def vae(*, latent_channels: int = 4, scaling_factor: float = 0.18215, shift_factor=None):
    kwargs = {} if shift_factor is None else {"shift_factor": shift_factor}
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=latent_channels,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(8, 16, 16), layers_per_block=1, norm_num_groups=4,
        sample_size=TINY_RESOLUTION, scaling_factor=scaling_factor, **kwargs,
    ).eval()
