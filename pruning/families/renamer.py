"""Renaming a diffusers state dict into an original single-file layout (the inverse of diffusers'
``convert_*_checkpoint_to_diffusers``), one move at a time: what the FLUX and SD3 families'
``single_file_state`` are written with.

>>> import torch
>>> r = Renamer({"a.weight": torch.ones(2, 1), "q.weight": torch.ones(1, 1), "q.bias": torch.ones(1),
...              "k.weight": torch.zeros(1, 1), "k.bias": torch.zeros(1),
...              "m.weight": torch.ones(2, 1), "m.bias": torch.tensor([1.0, 2.0])})
>>> r.move("b", "a"); r.cat("qk", ["q", "k"]); r.unswap("n", "m")
>>> sorted(r.out), r.out["qk.weight"].flatten().tolist(), r.out["n.bias"].tolist()
(['b.weight', 'n.bias', 'n.weight', 'qk.bias', 'qk.weight'], [1.0, 0.0], [2.0, 1.0])
>>> r.done() is r.out
True
>>> Renamer({"extra.weight": torch.ones(1)}).done()
Traceback (most recent call last):
...
ValueError: no single-file name for 'extra.weight'
"""

from __future__ import annotations

import torch

PARAMS = ("weight", "bias")


class Renamer:
    """Takes tensors out of ``state`` (a copy) under new names; :meth:`done` refuses a leftover."""

    def __init__(self, state: dict):
        self.d, self.out = dict(state), {}

    def take(self, new: str, old: str) -> None:
        """One tensor, renamed."""
        self.out[new] = self.d.pop(old)

    def move(self, new: str, old: str) -> None:
        """A layer's weight and bias (those it has), renamed."""
        for p in PARAMS:
            if f"{old}.{p}" in self.d:
                self.take(f"{new}.{p}", f"{old}.{p}")

    def cat(self, new: str, olds: list[str]) -> None:
        """Several layers fused into one (e.g. q, k, v into ``qkv``): their rows concatenated."""
        for p in PARAMS:
            self.out[f"{new}.{p}"] = torch.cat([self.d.pop(f"{o}.{p}") for o in olds])

    def unswap(self, new: str, old: str) -> None:
        """A modulation layer whose halves diffusers stores as [scale | shift], back to [shift | scale]."""
        for p in PARAMS:
            scale, shift = self.d.pop(f"{old}.{p}").chunk(2, dim=0)
            self.out[f"{new}.{p}"] = torch.cat([shift, scale])

    def done(self) -> dict:
        """The renamed state; a tensor left without a new name is an error naming it."""
        if self.d:
            raise ValueError(f"no single-file name for {sorted(self.d)[0]!r}")
        return self.out
