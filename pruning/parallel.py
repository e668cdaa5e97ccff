"""Data parallelism over the processes of an ``accelerate launch`` (or ``torchrun``).

A data-parallel run gives each process a contiguous share of its samples (the sweep's
operators, EcoDiff's and Taylor's prompts), computes locally and sums across processes with
``torch.distributed``: every process ends with the same numbers as a single-process run,
within float tolerance. :class:`Processes` is that group; one process (:data:`SINGLE`) does
no communication at all, so the single-process code path is unchanged.

Shares are split as accelerate's ``split_between_processes`` does: the first ``n % count``
processes take one item more; a process may get none (and must still join every reduction).

>>> two = [Processes(rank, 2) for rank in (0, 1)]
>>> [p.split(["a", "b", "c"]) for p in two], [p.weight(3) for p in two]
([['a', 'b'], ['c']], [0.6666666666666666, 0.3333333333333333])
>>> Processes(1, 2).share(1), Processes(1, 2).split(["only"])
(slice(1, 1, None), [])
>>> SINGLE.all_reduce_sum([torch.ones(2)]), SINGLE.any(True), SINGLE.total(3), SINGLE.gather("x")
([tensor([1., 1.])], True, 3, ['x'])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from accelerate import PartialState

from .errors import SettingsError

BUCKET = 1 << 25  # elements per all-reduce call: bounds the flattened copy (128 MiB of float32)


@dataclass(frozen=True)
class Processes:
    """Process ``rank`` of ``count``; ``device`` holds the flags and scalars it reduces."""

    rank: int = 0
    count: int = 1
    device: torch.device = torch.device("cpu")

    def __post_init__(self):
        if not (isinstance(self.count, int) and self.count >= 1 and 0 <= self.rank < self.count):
            raise SettingsError(f"process rank {self.rank!r} of {self.count!r}: need 0 <= rank < count")

    @classmethod
    def launched(cls, state: PartialState | None = None, *, cpu: bool = False) -> Processes:
        """The processes of this launch (one, :data:`SINGLE`-like, when not launched)."""
        state = state or PartialState(cpu=cpu)
        return cls(state.process_index, state.num_processes, torch.device(state.device))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def share(self, n: int) -> slice:
        """This process's contiguous share of ``n`` items."""
        per, extra = divmod(n, self.count)
        start = self.rank * per + min(self.rank, extra)
        return slice(start, start + per + (self.rank < extra))

    def split(self, items: Sequence) -> list:
        return list(items[self.share(len(items))])

    def weight(self, n: int) -> float:
        """This share's fraction of ``n`` items: the weight of a local mean in the global mean."""
        s = self.share(n)
        return (s.stop - s.start) / n if n else 0.0

    def all_reduce_sum(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The element-wise sums over the processes, same shapes (the inputs are left as they are).
        Tensors are flattened into one buffer per dtype and device, at most :data:`BUCKET`
        elements per call."""
        tensors = list(tensors)
        if self.count == 1:
            return tensors
        out: list[torch.Tensor | None] = [None] * len(tensors)
        groups: dict[tuple, list[int]] = {}
        for i, t in enumerate(tensors):
            groups.setdefault((t.dtype, t.device), []).append(i)
        for idx in groups.values():
            start = 0
            while start < len(idx):
                end, size = start, 0
                while end < len(idx) and (end == start or size + tensors[idx[end]].numel() <= BUCKET):
                    size += tensors[idx[end]].numel()
                    end += 1
                part = idx[start:end]
                flat = torch.cat([tensors[i].reshape(-1) for i in part])  # (sum of numel,)
                dist.all_reduce(flat, op=dist.ReduceOp.SUM)
                for i, piece in zip(part, flat.split([tensors[i].numel() for i in part])):
                    out[i] = piece.view(tensors[i].shape)  # (numel,) -> the tensor's shape
                start = end
        return out

    def total(self, n: int) -> int:
        """The sum of ``n`` over the processes (e.g. the rows of all the shares)."""
        if self.count == 1:
            return n
        t = torch.tensor([float(n)], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return int(t.item())

    def any(self, flag: bool) -> bool:
        """True on every process when ``flag`` is true on any (so that all end a loop together)."""
        if self.count == 1:
            return bool(flag)
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def gather(self, obj) -> list:
        """Every process's ``obj`` (picklable; tensors moved to the CPU first), in rank order."""
        if self.count == 1:
            return [obj]
        out = [None] * self.count
        dist.all_gather_object(out, obj)
        return out

    def gather_rows(self, part: torch.Tensor | None) -> torch.Tensor:
        """The shares' rows (dim 0) concatenated in rank order on the CPU; ``None``: no rows here."""
        parts = self.gather(None if part is None else part.detach().cpu())
        return torch.cat([p for p in parts if p is not None])


SINGLE = Processes()
