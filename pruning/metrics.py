"""Params, MACs and latency of a denoiser.

MACs come from ``torch.utils.flop_counter.FlopCounterMode`` (MACs = FLOPs / 2), run on a
meta-device twin of the module: nothing is computed, no weight is copied and the original is
not touched, so counting a full-size SDXL UNet takes about a second on a CPU.

>>> from pruning.testing import tiny_pipeline
>>> unet = tiny_pipeline("sd").unet
>>> count_params(unet) > 0
True
>>> macs = module_macs(unet)
>>> macs[""] > 0
True
"""

from __future__ import annotations

import statistics
import time
import weakref
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from . import families
from .memory import execution_device, plain_copy


def count_params(module: nn.Module) -> int:
    """Number of parameters (meta tensors count too).

    >>> count_params(nn.Linear(3, 2))
    8
    """
    return sum(p.numel() for p in module.parameters())


def example_inputs(
    denoiser: nn.Module,
    *,
    batch: int = 1,
    sample_size: int | None = None,
    text_len: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    generator: torch.Generator | None = None,
) -> dict:
    """Keyword arguments for one forward of ``denoiser`` (its family builds them).

    ``sample_size`` is the latent height = width (before FLUX's 2x2 packing). On the meta
    device the tensors are empty; elsewhere they are seeded random values. ``dtype`` defaults
    to the denoiser's own (a bf16 model gets bf16 inputs).

    >>> from pruning.testing import tiny_pipeline
    >>> kw = example_inputs(tiny_pipeline("sd").unet, batch=2, device="meta")
    >>> tuple(kw["sample"].shape)[:2]
    (2, 4)
    """
    device = torch.device(device) if device is not None else _device_of(denoiser)
    dtype = dtype or _dtype_of(denoiser)

    def rand(*shape):
        if device.type == "meta":
            return torch.empty(*shape, device=device, dtype=dtype)
        return torch.randn(*shape, generator=generator, dtype=dtype).to(device)

    family = families.for_denoiser(denoiser)
    if family is None:
        raise TypeError(f"no registered model family owns a {type(denoiser).__name__}")
    return family.example_inputs(denoiser, batch=batch, sample_size=sample_size, text_len=text_len, rand=rand,
                                 device=device, dtype=dtype)


def _device_of(module: nn.Module) -> torch.device:
    return execution_device(module)  # with offload hooks: where it computes, not where its weights are


def _dtype_of(module: nn.Module) -> torch.dtype:
    p = next((p for p in module.parameters() if p.is_floating_point()), None)
    return p.dtype if p is not None else torch.float32


def meta_twin(module: nn.Module) -> nn.Module:
    """A structural copy of ``module`` whose parameters and buffers live on the meta device.

    No weight is copied and the original is never touched (unlike swapping its parameters),
    so counting MACs is safe while another thread generates with the same module.

    >>> twin = meta_twin(nn.Linear(3, 2))
    >>> twin.weight.device.type, twin.weight.shape
    ('meta', torch.Size([2, 3]))
    """
    memo = {}
    for p in module.parameters():
        memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=False)
    for b in module.buffers():
        memo[id(b)] = torch.empty_like(b, device="meta")
    return plain_copy(module, memo, weights=False)  # offload hooks are not copied: they would move it


def module_macs(denoiser: nn.Module, inputs: dict | None = None, *, twin: nn.Module | None = None,
                **input_kw) -> dict[str, int]:
    """MACs of one forward, per module FQN (``""`` is the whole denoiser), on a meta twin.

    Modules that do no matmul/conv work are absent from the result. ``twin`` may be given
    (a ``meta_twin`` with hooks of the caller's) to avoid copying the structure again.
    """
    kw = dict(inputs) if inputs is not None else example_inputs(denoiser, device="meta", **input_kw)
    kw = {k: _to_meta(v) for k, v in kw.items()}
    model = twin if twin is not None else meta_twin(denoiser)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(**kw)
    root = type(denoiser).__name__
    out: dict[str, int] = {}
    for name, counts in counter.get_flop_counts().items():
        if name == "Global":
            continue
        fqn = "" if name == root else name.removeprefix(root + ".")
        out[fqn] = sum(counts.values()) // 2
    out.setdefault("", 0)
    return out


def _to_meta(v):
    if isinstance(v, torch.Tensor):
        return v.to("meta")
    if isinstance(v, dict):
        return {k: _to_meta(x) for k, x in v.items()}
    return v


def total_macs(denoiser: nn.Module, **input_kw) -> int:
    """MACs of one forward at the reference (or given) input size, batch 1."""
    return module_macs(denoiser, **input_kw)[""]


def median_latency(fn: Callable[[], object], *, repeats: int = 7, warmup: int = 2) -> float:
    """Median wall time of ``fn()`` in seconds.

    >>> median_latency(lambda: sum(range(100)), repeats=3, warmup=1) >= 0
    True
    """
    return statistics.median(timings(fn, repeats=repeats, warmup=warmup))


def timings(fn: Callable[[], object], *, repeats: int = 7, warmup: int = 2) -> list[float]:
    """Wall times of ``repeats`` calls of ``fn()`` in seconds, after ``warmup`` untimed calls (for a
    latency with its spread: :func:`pruning.labels.latency_change`).

    >>> len(timings(lambda: None, repeats=3, warmup=0))
    3
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


@torch.no_grad()
def denoiser_latency(denoiser: nn.Module, *, batch: int = 1, repeats: int = 7, **input_kw) -> float:
    """Median seconds of one no-grad forward on random example inputs."""
    kw = example_inputs(denoiser, batch=batch, generator=torch.Generator().manual_seed(0), **input_kw)
    return median_latency(lambda: denoiser(**kw), repeats=repeats)


@torch.no_grad()
def denoiser_timings(denoiser: nn.Module, *, batch: int = 1, repeats: int = 7, **input_kw) -> list[float]:
    """Seconds of each of ``repeats`` no-grad forwards on random example inputs (after 2 warm-up calls)."""
    kw = example_inputs(denoiser, batch=batch, generator=torch.Generator().manual_seed(0), **input_kw)
    return timings(lambda: denoiser(**kw), repeats=repeats)


class SavedTensorMeter:
    """Peak bytes held by autograd for backward (``saved_tensors_hooks``), while active.

    Each saved tensor counts from when the graph saves it until the graph frees it, so a
    graph that is backpropagated and dropped step by step peaks at one step's worth.

    >>> meter = SavedTensorMeter()
    >>> x = torch.ones(1000, requires_grad=True)
    >>> with meter:
    ...     y = (x * x).sum()
    >>> meter.peak >= 4000
    True
    """

    def __init__(self):
        self.live = 0
        self.peak = 0

    def _pack(self, t: torch.Tensor):
        holder = _Saved(t)
        n = t.numel() * t.element_size()
        self.live += n
        self.peak = max(self.peak, self.live)
        weakref.finalize(holder, self._release, n)
        return holder

    def _release(self, n: int) -> None:
        self.live -= n

    def __enter__(self):
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda h: h.tensor)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)


class _Saved:
    __slots__ = ("tensor", "__weakref__")

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor
