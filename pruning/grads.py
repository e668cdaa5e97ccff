"""``requires_grad`` switched for a block and restored after it, also on errors.

Weight gradients need the weights themselves: switching on a parameter that lives on the meta
device (accelerate's sequential offload keeps the real ones in its hooks and rebuilds them at
every call, so gradients would be lost silently) is refused.

>>> import torch
>>> w = torch.nn.Parameter(torch.ones(2))
>>> with requires_grad([w], False):
...     w.requires_grad
False
>>> w.requires_grad
True
>>> with requires_grad([torch.nn.Parameter(torch.ones(2, device="meta"))], True):
...     pass
Traceback (most recent call last):
...
pruning.errors.SettingsError: cannot take weight gradients of a parameter of shape (2,) on the meta device (with sequential offload the weights live in accelerate's hooks and their gradients are lost); use offload='model' or none
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch

from .errors import SettingsError


@contextmanager
def requires_grad(params: Iterable[torch.nn.Parameter], flag: bool) -> Iterator[None]:
    """Set ``requires_grad`` of ``params`` to ``flag`` inside the block; restore each one's own flag."""
    saved = [(p, p.requires_grad) for p in params]
    meta = next((p for p, _ in saved if flag and p.is_meta), None)
    if meta is not None:
        raise SettingsError(f"cannot take weight gradients of a parameter of shape {tuple(meta.shape)} on the meta "
                            "device (with sequential offload the weights live in accelerate's hooks and their "
                            "gradients are lost); use offload='model' or none")
    try:
        for p, _ in saved:
            p.requires_grad_(flag)
        yield
    finally:
        for p, old in saved:
            p.requires_grad_(old)
