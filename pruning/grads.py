"""``requires_grad`` switched for a block and restored after it, also on errors.

>>> import torch
>>> w = torch.nn.Parameter(torch.ones(2))
>>> with requires_grad([w], False):
...     w.requires_grad
False
>>> w.requires_grad
True
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch


@contextmanager
def requires_grad(params: Iterable[torch.nn.Parameter], flag: bool) -> Iterator[None]:
    """Set ``requires_grad`` of ``params`` to ``flag`` inside the block; restore each one's own flag."""
    saved = [(p, p.requires_grad) for p in params]
    try:
        for p, _ in saved:
            p.requires_grad_(flag)
        yield
    finally:
        for p, old in saved:
            p.requires_grad_(old)
