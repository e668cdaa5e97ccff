"""CLIP score of images against their prompts, for real models (the shapes models use the task
accuracy instead).

The CLIP model loads the way pipelines do (``loading``): safetensors only, no remote code, from
the local cache when the Hub is offline, and a one-line ``ModelLoadError`` at once when it is
neither cached nor reachable. The score is ``100 * max(cos(image, text), 0)``, averaged: the
definition of torchmetrics' ``CLIPScore`` (Hessel et al., 2021).

>>> import numpy as np
>>> from transformers import CLIPConfig, CLIPModel
>>> cfg = CLIPConfig(text_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
...                                   num_attention_heads=2, vocab_size=40, max_position_embeddings=16,
...                                   bos_token_id=0, eos_token_id=2),
...                  vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
...                                     num_attention_heads=2, image_size=32, patch_size=8), projection_dim=8)
>>> scorer = ClipScorer(CLIPModel(cfg).eval(), image_size=32, tokenize=lambda texts: [[1, 2, 3]] * len(texts))
>>> s = scorer.per_image(np.zeros((2, 32, 32, 3), np.uint8), ["a", "b"])
>>> s.shape, bool(((0 <= s) & (s <= 100)).all())
((2,), True)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .errors import ModelLoadError
from .loading import hub_unavailable, quiet_library_logs
from .quality import to_uint8

DEFAULT_CLIP = "openai/clip-vit-base-patch16"  # what torchmetrics' CLIPScore uses by default
_MEAN = (0.48145466, 0.4578275, 0.40821073)  # CLIP's image normalisation
_STD = (0.26862954, 0.26130258, 0.27577711)


class ClipScorer:
    """A CLIP model with its tokenizer: ``per_image(images, prompts)`` -> (N,) scores in [0, 100]."""

    def __init__(self, model, *, image_size: int, tokenize: Callable[[list[str]], list[list[int]]],
                 device: str | torch.device = "cpu"):
        self.model, self.image_size, self.tokenize, self.device = model.to(device), image_size, tokenize, device

    @torch.no_grad()
    def per_image(self, images, prompts: Sequence[str]) -> np.ndarray:
        x = torch.from_numpy(to_uint8(images)).permute(0, 3, 1, 2).float() / 255.0  # (N, 3, H, W)
        x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False)
        x = (x - torch.tensor(_MEAN).view(1, 3, 1, 1)) / torch.tensor(_STD).view(1, 3, 1, 1)
        ids = self.tokenize(list(prompts))
        width = max(len(t) for t in ids)
        tokens = torch.tensor([t + [0] * (width - len(t)) for t in ids])  # (N, L), right-padded
        mask = torch.tensor([[1] * len(t) + [0] * (width - len(t)) for t in ids])
        img = self.model.get_image_features(pixel_values=x.to(self.device))
        txt = self.model.get_text_features(input_ids=tokens.to(self.device), attention_mask=mask.to(self.device))
        img, txt = (getattr(f, "pooler_output", f) for f in (img, txt))  # transformers 5: an output object
        cos = F.cosine_similarity(img.float(), txt.float(), dim=-1)  # (N,)
        return (100 * cos.clamp(min=0)).cpu().double().numpy()


def load_clip(source: str = DEFAULT_CLIP, device: str | torch.device = "cpu") -> ClipScorer:
    """The CLIP scorer from the Hub (or its local cache); ``ModelLoadError`` at once when neither."""
    from transformers import CLIPModel, CLIPTokenizer  # only when a CLIP score is asked for: a real model

    reason = hub_unavailable(source)  # then the local cache only: no retries against an absent Hub
    kw = {"local_files_only": True} if reason else {}
    try:
        with quiet_library_logs():
            model = CLIPModel.from_pretrained(source, use_safetensors=True, trust_remote_code=False, **kw).eval()
            tok = CLIPTokenizer.from_pretrained(source, **kw)
    except Exception as e:
        where = f"{reason} and it is not in the local cache" if reason else \
            f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"
        raise ModelLoadError(f"cannot load the CLIP model {source!r} for the CLIP score: {where}") from None
    size = model.config.vision_config.image_size
    return ClipScorer(model, image_size=size, device=device,
                      tokenize=lambda texts: tok(texts, truncation=True, max_length=77)["input_ids"])
