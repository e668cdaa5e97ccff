"""What a reconstruction (:func:`pruning.reconstruct.reconstruct`) will cost, from the plan's own
layer sizes and one measured denoiser call: the figures behind
:func:`pruning.estimate.estimate_reconstruction`.

**Memory** (beyond the original's weights, which are resident before the run), the largest of
the run's phases, each from sizes the run will allocate:

* ``slim``: the slim copy is made by copying the whole model, then slicing it (the copy plus its
  largest new slice);
* a calibration pass: the slim model, that group's float64 statistics
  (:meth:`~pruning.reconstruct.Consumer.gram_bytes`, twice with the guard's held-out copy) and
  one denoiser call's working memory *with the hooks' temporaries* (each consumer's input rows,
  unfolded for a conv and cast to float64): measured with :class:`~pruning.estimate.LiveBytes`
  on one call at the run's batch and size, which also counts each consumer's rows per call;
* a group's solves: the slim model, the statistics of the group's layers not yet solved (each
  layer's are freed as soon as its fit is written), and the solve's own tensors of the layer in
  hand (:data:`SOLVE_COPIES` kept-input Grams: the Gram, its Cholesky factor, a copy of it).

Bytes autograd saves for a backward (what this estimate used before) are not in it: the run
never builds a graph.

**Time**: the calibration calls (:meth:`~pruning.estimate.StepCost.call`), the Gram updates and
the solves as float64 FLOPs at a timed matmul rate, the end-to-end check's held-out rollouts,
and the slim copy.

>>> from pruning.testing import tiny_pipeline
>>> from pruning.loading import handle_from_pipe
>>> from pruning.reconstruct import ReconstructSettings
>>> h = handle_from_pipe(tiny_pipeline("sd"), model_ref="tiny:sd")
>>> c = reconstruction_cost(h, typical_plan(h), ReconstructSettings(prompts=("a red circle",), steps=2))
>>> c.passes == len(c.group_bytes) and c.peak_working == max(c.phases.values()) > 0 and c.seconds > 0
True
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from .catalog import discover
from .estimate import LiveBytes, StepCost, _generation_calls, _latent_bytes, step_cost
from .metrics import example_inputs
from .plan import PruningPlan
from .reconstruct import (
    HOLDOUT_EVERY,
    Consumer,
    ReconstructSettings,
    _augment,
    consumers,
    layer_inputs,
    sequential_groups,
)
from .sampling import spec

TYPICAL_KEEP = 0.7  # a plan not yet made is estimated as keeping 70% of every structure's units
_RATE: dict[str, float] = {}
_PROFILE: dict[tuple, tuple[dict[str, int], int]] = {}


def typical_plan(handle, keep: float = TYPICAL_KEEP) -> PruningPlan:
    """A plan that prunes every structure (keeps its first ``keep`` of units, at least one): every
    consumer is re-fitted, as after a plan a method makes at about ``1 - keep`` sparsity.

    >>> from pruning.testing import tiny_pipeline
    >>> from pruning.loading import handle_from_pipe
    >>> h = handle_from_pipe(tiny_pipeline("sd"), model_ref="tiny:sd")
    >>> p = typical_plan(h); 0.1 < p.summary(h.denoiser)["params_fraction"] < 0.5
    True
    """
    kept = {"head": {}, "neuron": {}, "group": {}}
    for fqn, s in discover(handle.denoiser).structures.items():
        kept[s.kind][fqn] = tuple(range(max(1, round(keep * s.units))))
    return PruningPlan(family=handle.family, base=handle.model_ref, kept_heads=kept["head"],
                       kept_neurons=kept["neuron"], kept_groups=kept["group"])


def matmul_rate(device) -> float:
    """float64 FLOP/s of a 1024 x 1024 matmul on ``device`` (timed once per device)."""
    key = str(device)
    if key not in _RATE:
        a = torch.randn(1024, 1024, dtype=torch.float64, device=device)
        a @ a  # warm up
        best = math.inf
        for _ in range(3):
            t0 = time.perf_counter()
            a @ a
            if a.device.type == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t0)
        _RATE[key] = 2 * 1024 ** 3 / max(best, 1e-9)
    return _RATE[key]


def call_profile(handle, cost: StepCost, items: list[Consumer], batch: int) -> tuple[dict[str, int], int]:
    """``({consumer: input rows per call}, working bytes)`` of one no-grad call at ``batch`` while
    hooks build each consumer's float64 rows as the calibration does (measured, cached)."""
    key = (handle.model_ref, cost.device, str(handle.dtype), tuple(sorted(cost.size.items())), batch,
           tuple(c.fqn for c in items))
    if key not in _PROFILE:
        den = handle.denoiser
        rows = {c.fqn: 0 for c in items}

        def hook(m, args, fqn):
            xa = _augment(layer_inputs(m, args[0]))  # (rows, D+1) float64, what Stats.add builds
            rows[fqn] += xa.shape[0]

        kw = example_inputs(den, batch=batch, generator=torch.Generator().manual_seed(0), **cost.size)
        hooks = [den.get_submodule(c.fqn).register_forward_pre_hook(lambda m, a, f=c.fqn: hook(m, a, f))
                 for c in items]
        try:
            with torch.no_grad(), LiveBytes() as meter:
                den(**kw)
        finally:
            for h in hooks:
                h.remove()
        _PROFILE[key] = (rows, meter.peak)
    return _PROFILE[key]


@dataclass
class ReconCost:
    """The counted cost of one reconstruction: ``peak_working`` is the largest of ``phases``
    (bytes beyond the original's weights); ``group_bytes``: each pass's statistics; ``seconds``
    the sum of ``parts``."""

    passes: int
    group_bytes: list[int]
    phases: dict[str, int]
    seconds: float
    parts: dict[str, float]  # seconds of each part
    calls: dict = field(default_factory=dict)

    @property
    def peak_working(self) -> int:
        return max(self.phases.values())


def reconstruction_cost(handle, plan: PruningPlan, settings: ReconstructSettings,
                        cost: StepCost | None = None) -> ReconCost:
    """The cost of ``reconstruct(handle, plan, settings)`` (see the module docstring)."""
    s0 = settings.resolved(handle)
    cost = cost or step_cost(handle, resolution=s0.resolution)
    den = handle.denoiser
    plan = plan.normalized(den)
    items = consumers(den, plan)
    paired = s0.inputs == "pruned"
    copies = 2 if s0.guard else 1  # the guard's held-out statistics
    groups = sequential_groups(items, s0.max_gram_mb * 2 ** 20 / copies, paired, s0.groups)
    s = spec(handle, steps=s0.steps, guidance=s0.guidance, resolution=s0.resolution)
    batches = math.ceil(len(s0.prompts) / s0.batch_size)
    calls, batch = _generation_calls(handle, s, min(s0.batch_size, len(s0.prompts)))
    rows, hooked = call_profile(handle, cost, items, batch)
    params = list(den.parameters())
    size = params[0].element_size() if params else 4
    largest = max((p.numel() * p.element_size() for p in params), default=0)
    small = cost.weights_bytes - plan.summary(den)["params_removed"] * size  # the slim model
    latents = 2 * batches * _latent_bytes(handle, s, batch)  # each batch's z0 and the checks' targets
    group_bytes = [copies * sum(c.gram_bytes(paired) for c in g) for g in groups]
    phases = {"slim copy": cost.weights_bytes + largest,
              "calibration": small + max(group_bytes, default=0) + hooked + latents,
              "solves": small + max((_solve_peak(den, g, paired, copies) for g in groups), default=0) + latents,
              "checks": small + cost.working_bytes(batch) + latents}
    # time: the calls, the Gram updates and solves as float64 FLOPs, the checks' rollouts, the copy
    rate = matmul_rate(handle.device if handle.device.type != "mps" else "cpu")
    held = sum(1 for n in range(batches) if n % HOLDOUT_EVERY == HOLDOUT_EVERY - 1) if s0.check else 0
    per_pass = batches * calls * cost.call(batch) * (2 if paired else 1)
    updates = batches * calls * sum(_update_flops(c, rows[c.fqn], paired) for c in items) / rate
    solves = sum(_solve_flops(den, c, s0.guard) for c in items) / rate
    checks = held * (2 + len(groups)) * calls * cost.call(batch)
    parts = {"calibration calls": len(groups) * per_pass, "gram updates": updates, "solves": solves,
             "checks": checks, "slim copy": cost.weights_bytes / 1e9}
    return ReconCost(len(groups), group_bytes, phases, sum(parts.values()), parts,
                     {"denoiser calls": len(groups) * batches * calls * (2 if paired else 1)
                      + held * (2 + len(groups)) * calls, "batch": batch, "passes": len(groups),
                      "gram_mb": round(max(group_bytes, default=0) / 2 ** 20, 1), "layers": len(items)})


def _kept(c: Consumer) -> int:
    return int(c.keep.sum()) + 1


SOLVE_COPIES = 2.5  # kept-Gram-sized tensors at once in a solve: the kept Gram and its Cholesky factor, then the
# factor and cholesky_solve's copy of it (RSS measured on a 4001^2 solve: 2.46 with a bias, 2.66 without)


def _solve_peak(den, group: list[Consumer], paired: bool, copies: int) -> int:
    """Bytes while a group is solved, layer by layer: the statistics not yet freed, plus the
    larger of the projection ``[W, b] G`` (two (out, D+1) tensors) and the solve's kept-Gram-sized
    tensors (with the guard also the pooled statistics) of the layer in hand."""
    peak = 0
    for j, c in enumerate(group):
        left = copies * sum(d.gram_bytes(paired) for d in group[j:])
        out = den.get_submodule(c.fqn).weight.shape[0]
        work = max(2 * 8 * out * (c.width + 1), int(SOLVE_COPIES * 8 * _kept(c) ** 2))
        peak = max(peak, left + work + (c.gram_bytes(paired) if copies > 1 else 0))
    return peak


def _update_flops(c: Consumer, rows: int, paired: bool) -> float:
    d, k = c.width + 1, _kept(c)
    return 2 * rows * (d * d + (d * k + k * k if paired else 0))


def _solve_flops(den, c: Consumer, guard: bool) -> float:
    """The fit (Cholesky, its triangular solves), one projection ``[W, b] G`` per statistics
    (with the guard: the fitted, the held-out and the pooled ones) and the error figures' products
    with the kept Gram (two; with the guard four more and a second fit)."""
    out = den.get_submodule(c.fqn).weight.shape[0]
    d, k = c.width + 1, _kept(c)
    fits, stats, errors = (2, 3, 6) if guard else (1, 1, 2)
    return fits * (k ** 3 / 3 + 2 * out * k * k) + stats * 2 * out * d * d + errors * 2 * out * k * k


__all__ = ["ReconCost", "reconstruction_cost", "typical_plan", "call_profile", "matmul_rate", "TYPICAL_KEEP"]
