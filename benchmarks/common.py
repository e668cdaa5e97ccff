"""Shared pieces of the rows: the models, uniform structured plans, interleaved timing."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext

import torch
from torch import nn

THREADS = 1  # the machines are shared: one thread gives the steadiest ratios
BATCH = 2
REPEATS = 41  # timed rounds (after 2 warm-up rounds); ratios are medians of per-round pairs
CLOCK = "wall"  # headline clock; "cpu" (this thread's CPU time, blind to other jobs) is reported beside it
MID_CONFIG = dict(  # a mid-sized SD-style UNet: 53M params, 5.6 GMACs per sample at 20x20 latents
    sample_size=20, in_channels=4, out_channels=4, layers_per_block=1,
    block_out_channels=(192, 384, 384), norm_num_groups=32,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    attention_head_dim=8,  # legacy name: 8 heads per attention
    cross_attention_dim=256,
)


def set_threads(n: int = THREADS) -> int:
    torch.set_num_threads(n)
    return torch.get_num_threads()


def tiny_unet() -> nn.Module:
    from pruning.testing import tiny_pipeline

    return tiny_pipeline("sd").unet.eval()


def mid_unet(seed: int = 0) -> nn.Module:
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(**MID_CONFIG).eval()


MODELS: dict[str, Callable[[], nn.Module]] = {"tiny": tiny_unet, "mid": mid_unet}


def uniform_plan(denoiser: nn.Module, keep: float, family: str = "sd", base: str = "benchmark"):
    """Keep the first ``round(keep * units)`` (at least 1) units of every head/neuron/group structure."""
    from pruning.catalog import discover
    from pruning.plan import PruningPlan

    kept = {"head": {}, "neuron": {}, "group": {}}
    for fqn, s in discover(denoiser).structures.items():
        if s.kind in kept:  # the conditioning channels stay (the figures compare with earlier rounds')
            kept[s.kind][fqn] = tuple(range(max(1, round(keep * s.units))))
    return PruningPlan(family=family, base=base, kept_heads=kept["head"], kept_neurons=kept["neuron"],
                       kept_groups=kept["group"], provenance={"method": "uniform", "keep": keep})


def plan_for_target(denoiser: nn.Module, target: float, **plan_kw):
    """The uniform plan whose predicted MAC fraction removed is closest to ``target``."""
    best = None
    for i in range(5, 101):
        plan = uniform_plan(denoiser, i / 100, **plan_kw)
        frac = plan.summary(denoiser)["macs_fraction"]
        if best is None or abs(frac - target) < abs(best[1] - target):
            best = (plan, frac)
    return best[0]


def interleaved(fns: Sequence[Callable[[], object]], *, repeats: int = 9, warmup: int = 2,
                contexts: Sequence[Callable[[], object] | None] | None = None) -> dict[str, list[list[float]]]:
    """Seconds of each call of each ``fn``, timed round-robin (order rotated each round) to cancel drift.

    Returns ``{"wall": times, "cpu": times}`` (``times[i][round]``): wall-clock and this thread's CPU time
    (``time.thread_time``; with one torch thread all the work runs here, so it is the same
    compute without the time other processes take the core). ``contexts[i]``, when given,
    makes a context manager entered around ``fns[i]`` outside its timing (e.g. hooks).
    """
    contexts = contexts or [None] * len(fns)
    wall, cpu = [[] for _ in fns], [[] for _ in fns]
    for r in range(warmup + repeats):
        order = list(range(len(fns)))
        order = order[r % len(order):] + order[:r % len(order)]
        for i in order:
            with contexts[i]() if contexts[i] else nullcontext():
                t0, c0 = time.perf_counter(), time.thread_time()
                fns[i]()
                dt, dc = time.perf_counter() - t0, time.thread_time() - c0
            if r >= warmup:
                wall[i].append(dt)
                cpu[i].append(dc)
    return {"wall": wall, "cpu": cpu}


def paired_ratio(num: Sequence[float], den: Sequence[float]) -> float:
    """Median over rounds of ``num[r] / den[r]``: each ratio pairs calls made moments apart."""
    return statistics.median(n / d for n, d in zip(num, den))


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def forward(denoiser: nn.Module, kw: dict) -> Callable[[], object]:
    def fn():
        with torch.no_grad():
            return denoiser(**kw)
    return fn


def inputs(denoiser: nn.Module, batch: int = BATCH) -> dict:
    from pruning.metrics import example_inputs

    return example_inputs(denoiser, batch=batch, generator=torch.Generator().manual_seed(0))
