"""Cost estimates before a run: wall time and peak memory of a method's run, a reconstruction or
a comparison for the chosen settings, from timed denoiser calls on the current device and dtype.

:func:`step_cost` times one denoiser call (no grad) at batch 1 and 2, and one call with a
backward pass to its input (what EcoDiff's replay does) and to its weights (Taylor, recovery),
at the model's generation size; it records the bytes autograd saves for that backward and the
weights' bytes. It is cached per (model, device, dtype, input size). :func:`estimate` then counts
the denoiser calls each method makes for its settings (the same loops the methods run) and
adds their times. Peak memory is the weights plus what one call saves for backward at the
run's batch (plus the stored latents for EcoDiff); a no-grad run holds less, so that figure is
an upper bound there. The estimate says when it exceeds the device's memory or a time budget
(``budget_s``: a ZeroGPU ``duration``) and what to change.

>>> from pruning.testing import tiny_pipeline
>>> from pruning.loading import handle_from_pipe
>>> from pruning import methods
>>> h = handle_from_pipe(tiny_pipeline("sd"), model_ref="tiny:sd")
>>> e = estimate(h, "ldpruner", methods.get("ldpruner").settings(n_gen=2, steps=2))
>>> e.calls["denoiser calls"] > 0 and e.seconds > 0 and e.peak_bytes > 0
True
>>> "about" in e.text()
True
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field

import torch

from . import families, methods
from .catalog import catalog
from .compare import CALIB_PROMPTS, EVAL_PROMPTS, CompareSettings, check_sparsities, method_settings
from .metrics import SavedTensorMeter, example_inputs
from .prompts import calibration_prompts
from .reconstruct import ReconstructSettings
from .sampling import count_inputs, spec

_CACHE: dict[tuple, StepCost] = {}


class StepCost:
    """Measured costs of one denoiser call on this device and dtype, timed lazily per batch size
    (small models are dominated by per-call overhead, so no batch is extrapolated from another)."""

    def __init__(self, handle, size: dict, repeats: int = 3):
        self.den, self.size, self.repeats = handle.denoiser, size, repeats
        self.device = str(handle.device)
        self.weights_bytes = sum(p.numel() * p.element_size() for p in self.den.parameters())
        self._times: dict[tuple, float] = {}
        self._saved: dict[int, int] = {}

    def _inputs(self, batch: int) -> dict:
        return example_inputs(self.den, batch=batch, generator=torch.Generator().manual_seed(0), **self.size)

    def call(self, batch: int) -> float:
        """Seconds of one no-grad call at ``batch``."""
        key = ("call", batch)
        if key not in self._times:
            kw = self._inputs(batch)
            with torch.no_grad():
                self.den(**kw)  # warm up
                self._times[key] = _median_time(lambda: self.den(**kw), self.repeats)
        return self._times[key]

    def grad_call(self, batch: int, weights: bool = False) -> float:
        """Seconds of one call with its backward at ``batch``: to the input (EcoDiff's replay) or to
        the weights (Taylor, recovery)."""
        key = ("weights" if weights else "input", batch)
        if key not in self._times:
            self._times[key], saved = self._backward(batch, weights)
            self._saved[batch] = max(self._saved.get(batch, 0), saved)
        return self._times[key]

    def saved_bytes(self, batch: int) -> int:
        """Bytes autograd saves for the backward of one call at ``batch``."""
        if batch not in self._saved:
            self.grad_call(batch)
        return self._saved[batch]

    def _backward(self, batch: int, weights: bool) -> tuple[float, int]:
        one = self._inputs(batch)
        first = "hidden_states" if "hidden_states" in one else "sample"
        params = list(self.den.parameters())
        flags = [p.requires_grad for p in params]
        meter = SavedTensorMeter()

        def run():
            kw = {**one, first: one[first].detach().clone().requires_grad_(True)}
            with torch.enable_grad():  # also when the caller is under no_grad
                with meter:
                    out = self.den(**kw)[0]
                torch.autograd.grad(out.float().square().mean(), params if weights else [kw[first]],
                                    allow_unused=True)
        try:
            for p in params:
                p.requires_grad_(weights)
            run()  # warm up
            return _median_time(run, max(1, self.repeats - 1)), meter.peak
        finally:
            for p, f in zip(params, flags):
                p.requires_grad_(f)


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def step_cost(handle, *, resolution: int | None = None, repeats: int = 3) -> StepCost:
    """The (lazily timed) costs of denoiser calls of ``handle`` at its generation size; one per
    (model, device, dtype, input size)."""
    size = count_inputs(handle, resolution)
    key = (handle.model_ref, str(handle.device), str(handle.dtype), tuple(sorted(size.items())))
    if key not in _CACHE:
        _CACHE[key] = StepCost(handle, size, repeats)
    return _CACHE[key]


def device_memory(device) -> int:
    """Bytes of memory of ``device`` (the GPU's, or this machine's RAM for the CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


@dataclass
class Estimate:
    """Predicted wall time and peak memory of one run; ``advice`` when it will not fit."""

    what: str
    seconds: float
    peak_bytes: int
    calls: dict = field(default_factory=dict)
    advice: list[str] = field(default_factory=list)
    device: str = "cpu"
    chunkable: bool = False  # the run can be split into resumable chunks (pruning.chunks)

    def text(self) -> str:
        """One line for people: "about 4 min, 9.1 GB on cuda" and what to change if needed."""
        t, gb = self.seconds, self.peak_bytes / 2 ** 30
        when = "under a second" if t < 1 else (f"about {t:.0f} s" if t < 120 else f"about {t / 60:.0f} min")
        size = f"{gb:.1f} GB" if gb >= 0.1 else f"{self.peak_bytes / 2 ** 20:.0f} MB"
        line = f"{self.what}: {when}, peak memory about {size} on {self.device}"
        return line + (" - " + "; ".join(self.advice) if self.advice else "")


def _generation_calls(handle, s, prompts: int) -> tuple[int, int]:
    """(denoiser calls, samples per call) of generating ``prompts`` images at spec ``s``."""
    cfg = s.guidance_mode == "cfg" and s.guidance > 1 and families.of(handle).cfg_doubles_batch
    calls = s.steps * (2 if s.guidance_mode == "true_cfg" and s.guidance > 1 else 1)
    return calls, prompts * (2 if cfg else 1)


def _gen_seconds(cost: StepCost, handle, s, prompts: int) -> tuple[float, int, int]:
    calls, batch = _generation_calls(handle, s, prompts)
    return calls * cost.call(batch), calls, batch


def _method_cost(handle, method: str, settings, cost: StepCost) -> tuple[float, dict, int, list[str]]:
    """(seconds, call counts, the largest batch with backward (0: none), advice levers)."""
    get = lambda name, default=None: getattr(settings, name, default)  # noqa: E731
    s = spec(handle, steps=get("steps"), guidance=get("guidance"), resolution=get("resolution"))
    prompts = len(get("prompts") or calibration_prompts(handle.model_ref, 8))
    if method == "ldpruner":
        ops = catalog(handle.denoiser, **count_inputs(handle))[0]
        if get("operators"):
            k = len(get("operators"))
        else:
            gran = get("granularity", "fine")
            k = len(ops) if gran == "all" else int(ops["granularity"].isin([gran, "both"]).sum())
        secs, calls, batch = _gen_seconds(cost, handle, s, get("n_gen", prompts))
        return (k + 1) * secs, {"generations": k + 1, "denoiser calls": (k + 1) * calls, "batch": batch}, 0, \
            ["lower N_gen or the steps", "score only some operators", "or the fast proxy (fewer steps, lower resolution)"]
    if method == "ecodiff":
        b = min(get("batch_size", 4), prompts)
        batches = math.ceil(prompts / b)
        calls, batch = _generation_calls(handle, s, b)
        target = batches * calls * cost.call(batch)
        train = get("epochs", 4) * batches * calls * (cost.call(batch) + cost.grad_call(batch))
        if get("checkpointing", "timestep") == "none":
            train = get("epochs", 4) * batches * calls * cost.grad_call(batch)
        return target + train, {"optimizer steps": get("epochs", 4) * batches,
                                "denoiser calls": batches * calls * (1 + 2 * get("epochs", 4)), "batch": batch}, \
            batch * (s.steps if get("checkpointing", "timestep") == "none" else 1), \
            ["fewer epochs or steps T", "a lower resolution", "fewer prompts per batch"]
    if method == "taylor":
        secs, calls, _ = _gen_seconds(cost, handle, s, prompts)
        n_t = math.ceil(1000 / get("stride", 50))
        grads = n_t * cost.grad_call(prompts, weights=True)
        return secs + grads, {"generation calls": calls, "timesteps (at most)": n_t, "batch": prompts}, prompts, \
            ["a larger timestep stride", "fewer prompts", "fewer steps for the images"]
    return 0.05, {"denoiser calls": 0}, 0, []  # magnitude, random: weights only


def estimate(handle, method: str, settings=None, *, budget_s: float | None = None) -> Estimate:
    """The predicted cost of scoring ``handle`` with ``method`` (a registered name) and its settings."""
    m = methods.get(method)
    settings = settings if settings is not None else m.settings()
    if hasattr(settings, "resolved"):  # settings that depend on the model (the sweep's proxy halves steps and size)
        settings = settings.resolved(handle)
    cost = step_cost(handle, resolution=getattr(settings, "resolution", None))
    seconds, calls, grad_batch, levers = _method_cost(handle, m.name, settings, cost)
    peak = cost.weights_bytes + cost.saved_bytes(max(grad_batch, calls.get("batch", 1)))
    return _finish(Estimate(m.title, seconds, peak, calls, device=cost.device, chunkable=not m.data_free), handle,
                   budget_s, levers)


def estimate_reconstruction(handle, settings=None, *, passes: int = 1, budget_s: float | None = None) -> Estimate:
    """Reconstruction: ``passes`` calibration passes over its prompts (plus the Gram updates)."""
    s0 = (settings or ReconstructSettings()).resolved(handle)
    cost = step_cost(handle, resolution=s0.resolution)
    s = spec(handle, steps=s0.steps, guidance=s0.guidance, resolution=s0.resolution)
    batches = math.ceil(len(s0.prompts) / s0.batch_size)
    calls, batch = _generation_calls(handle, s, min(s0.batch_size, len(s0.prompts)))
    seconds = passes * batches * calls * cost.call(batch)
    peak = cost.weights_bytes * 2 + cost.saved_bytes(batch) + int(s0.max_gram_mb * 2 ** 20)  # + the slim copy
    return _finish(Estimate("Reconstruction", seconds, peak, {"denoiser calls": passes * batches * calls,
                                                              "batch": batch, "passes": passes},
                            device=cost.device), handle, budget_s, ["fewer calibration prompts or steps",
                                                                    "a smaller max_gram_mb (more passes)"])


def estimate_comparison(handle, sparsities, chosen=None, settings=None, *,
                        budget_s: float | None = None) -> Estimate:
    """A comparison (:func:`pruning.compare.compare_methods`): each method's scoring, then one
    evaluation generation of the original and of every plan (random: one per draw; with
    ``reconstruct`` a second, re-fitted one plus its reconstruction). A plan's generation is
    counted at (1 - sparsity) of the original's time: slimming turns removed params into time
    at about that rate (R1)."""
    s = settings or CompareSettings()
    sps = check_sparsities(sparsities)
    names = [methods.get(m).name for m in (chosen if chosen is not None else methods.names())]
    cost = step_cost(handle)
    g = spec(handle, steps=s.steps, guidance=s.guidance)
    n_eval = len(s.eval_prompts or range(EVAL_PROMPTS))
    calib = tuple(s.calib_prompts or calibration_prompts(handle.model_ref, CALIB_PROMPTS))
    eval_s, calls, batch = _gen_seconds(cost, handle, g, n_eval)
    seconds, peak, levers = eval_s, cost.weights_bytes + cost.saved_bytes(batch), ["fewer sparsities or methods"]
    plans = 0
    for name in names:
        m = methods.get(name)
        ms, mcalls, grad_batch, _ = _method_cost(handle, name, method_settings(m, s, calib), cost)
        seconds += ms
        peak = max(peak, cost.weights_bytes + cost.saved_bytes(max(grad_batch, mcalls.get("batch", 1))))
        draws = s.random_draws if name == "random" else 1
        plans += draws * len(sps)
        seconds += draws * sum(eval_s * (1 - t) for t in sps) * (2 if s.reconstruct else 1)
    if s.reconstruct:
        r = estimate_reconstruction(handle, ReconstructSettings(**s.reconstruct_settings))
        seconds += plans * r.seconds
        peak = max(peak, r.peak_bytes)
        levers.append("no reconstruction")
    levers.append(f"fewer evaluation prompts ({n_eval})")
    return _finish(Estimate("Comparison", seconds, peak, {"plans": plans, "evaluation generations": 1 + plans,
                                                         "batch": batch}, device=cost.device, chunkable=True),
                   handle, budget_s, levers)


def estimate_export(handle, *, reconstruct: bool = False, recover_iters: int = 0, recover_batch: int = 4,
                    budget_s: float | None = None) -> Estimate:
    """An export: the optional reconstruction, the optional recovery finetune (each iteration one
    teacher call and one student call with backward to its weights), and writing the weights."""
    cost = step_cost(handle)
    seconds, peak = 0.0, 2 * cost.weights_bytes  # the model and its slim copy
    calls = {}
    if reconstruct:
        r = estimate_reconstruction(handle)
        seconds, peak = seconds + r.seconds, max(peak, r.peak_bytes)
        calls["reconstruction calls"] = r.calls["denoiser calls"]
    if recover_iters:
        b = recover_batch * (2 if spec(handle).guidance_mode == "cfg" and families.of(handle).cfg_doubles_batch else 1)
        seconds += recover_iters * (cost.call(b) + cost.grad_call(b, weights=True))
        peak = max(peak, 2 * cost.weights_bytes + cost.saved_bytes(b) + 3 * cost.weights_bytes)  # + AdamW moments
        calls["recovery iterations"] = recover_iters
    seconds += cost.weights_bytes / 200e6  # safetensors write and hashing, ~200 MB/s
    return _finish(Estimate("Export", seconds, peak, calls, device=cost.device), handle, budget_s,
                   ["fewer recovery iterations", "no reconstruction"])


def _finish(e: Estimate, handle, budget_s, levers: list[str]) -> Estimate:
    memory = device_memory(handle.device)
    if e.peak_bytes > memory:
        e.advice.append(f"will not fit this device's memory ({memory / 2 ** 30:.0f} GB): {', '.join(levers) or 'a GPU'}")
    if budget_s is not None and e.seconds > budget_s:
        how = (f"runs as about {math.ceil(e.seconds / budget_s)} chunks of {budget_s:g} s, resumed one after "
               "another; to shorten it: " if e.chunkable else "to shorten it: ")
        e.advice.append(f"longer than the {budget_s:g} s budget: {how}{', '.join(levers)}")
    return e


__all__ = ["StepCost", "step_cost", "Estimate", "estimate", "estimate_reconstruction", "estimate_comparison",
           "estimate_export", "device_memory"]
