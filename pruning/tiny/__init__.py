"""The bundled tiny shapes models: synthetic data set, model configs and training.

Train with ``python -m pruning.tiny train --arch sd|flux`` (see `pruning.tiny.train` for the
recipe). Importing this package loads no model and trains nothing.

>>> from pruning.tiny import heldout_prompts, BUNDLED
>>> len(heldout_prompts()) >= 64, sorted(BUNDLED)
(True, ['tiny-shapes-flux', 'tiny-shapes-sd', 'tiny-shapes-sd3'])
"""

from __future__ import annotations

from ..bundled import ASSETS, BUNDLED  # bundled name -> diffusers folder (with its pruning_defaults.json)
from .data import (
    ALL_PROMPTS,
    BACKGROUNDS,
    COLORS,
    HELDOUT_PROMPTS,
    POSITIONS,
    SHAPES,
    TRAIN_PROMPTS,
    caption,
    heldout_prompts,
    make_images,
    parse_caption,
    render,
    train_prompts,
)

__all__ = [
    "ALL_PROMPTS",
    "ASSETS",
    "BACKGROUNDS",
    "BUNDLED",
    "COLORS",
    "HELDOUT_PROMPTS",
    "POSITIONS",
    "SHAPES",
    "TRAIN_PROMPTS",
    "caption",
    "heldout_prompts",
    "make_images",
    "parse_caption",
    "render",
    "train_prompts",
]
