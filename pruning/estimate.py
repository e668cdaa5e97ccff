"""Cost estimates before a run: wall time and peak memory of a method's run, a reconstruction or
a comparison for the chosen settings, from timed denoiser calls on the current device and dtype.

:func:`step_cost` times one denoiser call (no grad) at batch 1 and 2, and one call with a
backward pass to its input (what EcoDiff's replay does) and to its weights (Taylor, recovery),
at the model's generation size; it records the bytes autograd saves for that backward and the
weights' bytes. It is cached per (model, device, dtype, input size). :func:`estimate` then counts
the denoiser calls each method makes for its settings (the same loops the methods run) and
adds their times.

Peak memory is the weights plus the run's working memory: the peak bytes of the tensors a
call creates and holds at once (:class:`LiveBytes`, recorded on the warm-up calls), for the
call the run makes: a no-grad call for LD-Pruner's generations, a call with its backward to
the input for EcoDiff's replay (plus its stored latents), to the weights for Taylor (plus its
float32 gradient sums, one per unit weight). Bytes autograd saves for backward are not that
figure: they count the weights each layer saves (already resident) and a tensor once per op
that saves it. The estimate says when it exceeds the device's memory or a time budget
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
import weakref
from dataclasses import dataclass, field, replace

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from . import families, methods, validate
from .catalog import discover
from .compare import CALIB_PROMPTS, EVAL_PROMPTS, CompareSettings, check_sparsities, method_settings
from .errors import SettingsError
from .memory import offloaded
from .methods.cost import MethodCost, generation_calls, generation_seconds, latent_bytes
from .metrics import SavedTensorMeter, example_inputs
from .plan import KEPT_FIELDS, PruningPlan
from .prompts import calibration_prompts
from .reconstruct import (
    HOLDOUT_EVERY,
    Consumer,
    ReconstructSettings,
    _augment,
    layer_inputs,
    refit_layers,
    run_order,
    sequential_groups,
    start_record,
    trace_layers,
)
from .sampling import count_inputs, spec

_CACHE: dict[tuple, StepCost] = {}


class LiveBytes(TorchDispatchMode):
    """Peak bytes of the tensor storages created while active and alive at the same time: an
    op's new outputs (not views or in-place results of its inputs), forward and backward, freed
    when their storage is. Tensors made before (weights, inputs) are not counted.

    >>> x = torch.ones(1000, requires_grad=True)
    >>> with LiveBytes() as meter:
    ...     (g,) = torch.autograd.grad((x * 2).relu().sum(), [x])
    >>> 8000 <= meter.peak <= 16000, meter.live == 4000  # two 4000-byte temporaries at most; g is alive
    (True, True)
    """

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._held: dict[int, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {id(t.untyped_storage()) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            st = t.untyped_storage()
            key = id(st)  # storages keep their Python object while alive, so the id is theirs
            if key in inputs or key in self._held:
                continue
            self._held[key] = st.nbytes()
            self.live += self._held[key]
            weakref.finalize(st, self._release, key)
        self.peak = max(self.peak, self.live)
        return out

    def _release(self, key: int) -> None:
        self.live -= self._held.pop(key, 0)


class StepCost:
    """Measured costs of one denoiser call on this device and dtype, timed lazily per batch size
    (small models are dominated by per-call overhead, so no batch is extrapolated from another)."""

    def __init__(self, handle, size: dict, repeats: int = 3):
        self.den, self.size, self.repeats = handle.denoiser, size, repeats
        self.device = str(handle.device)
        self.weights_bytes = sum(p.numel() * p.element_size() for p in self.den.parameters())
        self._times: dict[tuple, float] = {}
        self._saved: dict[int, int] = {}
        self._working: dict[tuple, int] = {}

    def _inputs(self, batch: int) -> dict:
        return example_inputs(self.den, batch=batch, generator=torch.Generator().manual_seed(0), **self.size)

    def call(self, batch: int) -> float:
        """Seconds of one no-grad call at ``batch``."""
        key = ("call", batch)
        if key not in self._times:
            kw = self._inputs(batch)
            with torch.no_grad():
                with LiveBytes() as meter:
                    self.den(**kw)  # warm up
                self._working[key] = meter.peak
                self._times[key] = _median_time(lambda: self.den(**kw), self.repeats)
        return self._times[key]

    def working_bytes(self, batch: int, grad: str | None = None) -> int:
        """Peak bytes one call at ``batch`` creates and holds at once: no grad (``grad=None``), or
        with its backward to the ``"input"`` or the ``"weights"`` (then with their gradients)."""
        key = (grad or "call", batch)
        if key not in self._working:
            self.call(batch) if grad is None else self.grad_call(batch, weights=grad == "weights")
        return self._working[key]

    def grad_call(self, batch: int, weights: bool = False) -> float:
        """Seconds of one call with its backward at ``batch``: to the input (EcoDiff's replay) or to
        the weights (Taylor, recovery)."""
        key = ("weights" if weights else "input", batch)
        if key not in self._times:
            self._times[key], saved = self._backward(batch, weights)
            self._saved[batch] = max(self._saved.get(batch, 0), saved)
        return self._times[key]

    def hooked_call(self, batch: int, key: tuple, hooks) -> float:
        """Seconds of one no-grad call at ``batch`` inside ``hooks()`` (a context manager a method's
        run keeps on the denoiser, e.g. OBS-Diff's Gram recorder); cached under ``key``."""
        key = ("hooked", batch, *key)
        if key not in self._times:
            kw = self._inputs(batch)
            with hooks(), torch.no_grad():
                self.den(**kw)  # warm up
                self._times[key] = _median_time(lambda: self.den(**kw), self.repeats)
        return self._times[key]

    def solve_seconds(self, width: int) -> float:
        """Seconds of OBS-Diff's float64 work on one ``width``-input consumer: a Cholesky inverse, the
        closed-form solve and the downdates (timed once per width; about 3 inversions' worth)."""
        key = ("solve", width)
        if key not in self._times:
            a = torch.randn(width, width, dtype=torch.float64)
            h = a @ a.T + width * torch.eye(width, dtype=torch.float64)
            self._times[key] = 3 * _median_time(lambda: torch.cholesky_inverse(torch.linalg.cholesky(h)),
                                                self.repeats)
        return self._times[key]

    def saved_bytes(self, batch: int) -> int:
        """Bytes autograd saves for the backward of one call at ``batch``."""
        if batch not in self._saved:
            self.grad_call(batch)
        return self._saved[batch]

    def sums_seconds(self, numel: int, adds: int) -> float:
        """Seconds of Taylor's weight-sized work on ``numel`` float32 gradient sums: zeroing them,
        ``adds`` accumulations of one timestep's gradients, and the final |w * g| scoring pass.
        Timed once per device on a 64 MB sample (past the caches, as the real sums are), scaled
        by the element count: these passes are bound by memory bandwidth."""
        if "sums" not in self._times:
            n = 1 << 24
            w = torch.randn(n, device=self.device)
            g = torch.randn(n, device=self.device)
            zero = _median_time(lambda: torch.zeros(n, device=self.device), self.repeats)
            acc = torch.zeros(n, device=self.device)
            add = _median_time(lambda: acc.add_(g), self.repeats)
            score = _median_time(lambda: (w.float() * g.float()).abs().view(256, -1).sum(1), self.repeats)  # as taylor_scores
            self._times["sums"] = (zero / n, add / n, score / n)
        zero, add, score = self._times["sums"]
        return numel * (zero + adds * add + score)

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
            with LiveBytes() as live:
                run()  # warm up
            self._working[("weights" if weights else "input", batch)] = live.peak
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


def _method_cost(handle, method, settings, cost: StepCost) -> MethodCost:
    """The method's own count of its run (:meth:`~pruning.methods.base.Method.cost`), checked: a
    method that does not say what it costs is refused, never given a default."""
    out = method.cost(handle, settings, cost)
    if not isinstance(out, MethodCost):
        raise SettingsError(f"method {method.name!r}: cost() must return a pruning.methods.MethodCost, "
                            f"got {type(out).__name__}")
    return out


def _resolved(handle, settings):
    """Settings that depend on the model (the sweep's proxy halves steps and size) resolved for it."""
    return settings.resolved(handle) if hasattr(settings, "resolved") else settings


def estimate(handle, method: str, settings=None, *, budget_s: float | None = None) -> Estimate:
    """The predicted cost of scoring ``handle`` with ``method`` (a registered name) and its settings."""
    budget_s = check_budget(budget_s)
    m = methods.get(method)
    settings = settings if settings is not None else m.settings()
    settings = _resolved(handle, settings)
    cost = step_cost(handle, resolution=getattr(settings, "resolution", None))
    c = _method_cost(handle, m, settings, cost)
    return _finish(Estimate(m.title, c.seconds, cost.weights_bytes + c.working_bytes, dict(c.calls),
                            device=cost.device, chunkable=m.chunkable and not m.data_free), handle,
                   budget_s, list(c.levers))


def estimate_methods(handle, prompts: int = 4, *, budget_s: float | None = None) -> dict[str, Estimate]:
    """Every registered method's estimate at its quick settings (:meth:`~pruning.methods.base.Method.quick_settings`)
    on ``prompts`` of the model's calibration prompts: what the app's guide says a run takes."""
    p = calibration_prompts(handle.model_ref, prompts)
    return {name: estimate(handle, name, methods.get(name).quick_settings(p), budget_s=budget_s)
            for name in methods.names()}


def estimate_reconstruction(handle, settings=None, *, plan=None, budget_s: float | None = None) -> Estimate:
    """Reconstruction of ``plan`` (default: :func:`typical_plan`, every
    structure pruned): its calibration passes, Gram updates, solves and checks, and its peak memory
    from the plan's statistics sizes and one measured call (:func:`reconstruction_cost`)."""
    budget_s = check_budget(budget_s)
    s0 = (settings or ReconstructSettings()).resolved(handle)
    cost = step_cost(handle, resolution=s0.resolution)
    c = reconstruction_cost(handle, plan if plan is not None else typical_plan(handle), s0, cost)
    return _finish(Estimate("Reconstruction", c.seconds, cost.weights_bytes + c.peak_working, c.calls,
                            device=cost.device), handle, budget_s,
                   ["fewer calibration prompts or steps", "a smaller max_gram_mb (more passes)"])


def estimate_comparison(handle, sparsities, chosen=None, settings=None, *,
                        budget_s: float | None = None) -> Estimate:
    """A comparison (:func:`pruning.compare.compare_methods`): each method's scoring, then one
    evaluation generation of the original and of every plan (random: one per draw; with
    ``reconstruct`` a second, re-fitted one plus its reconstruction). A plan's generation is
    counted at (1 - sparsity) of the original's time: slimming turns removed params into time
    at about that rate (R1)."""
    budget_s = check_budget(budget_s)
    s = settings or CompareSettings()
    sps = check_sparsities(sparsities)
    names = [methods.get(m).name for m in (chosen if chosen is not None else methods.names())]
    cost = step_cost(handle)
    g = spec(handle, steps=s.steps, guidance=s.guidance)
    n_eval = len(s.eval_prompts or range(EVAL_PROMPTS))
    calib = tuple(s.calib_prompts or calibration_prompts(handle.model_ref, CALIB_PROMPTS))
    eval_s, calls, batch = generation_seconds(cost, handle, g, n_eval)
    seconds, peak, levers = eval_s, cost.weights_bytes + cost.saved_bytes(batch), ["fewer sparsities or methods"]
    plans = 0
    for name in names:
        m = methods.get(name)
        ms_settings = method_settings(m, s, calib)
        draws = m.comparison_draws(ms_settings, s.random_draws)  # the settings of each scored draw
        c = _method_cost(handle, m, _resolved(handle, draws[0]), cost)
        seconds += c.seconds * len(draws) * m.comparison_runs(ms_settings, sps)
        peak = max(peak, cost.weights_bytes + c.working_bytes)
        plans += len(draws) * len(sps)
        seconds += len(draws) * sum(eval_s * (1 - t) for t in sps) * (2 if s.reconstruct else 1)
    if s.fewer_steps:  # the original at about (1 - sparsity) of its steps, once per target
        seconds += sum(eval_s * (1 - t) for t in sps)
    if s.reconstruct:  # each plan re-fitted: a plan at the highest target prunes about every structure
        r = estimate_reconstruction(handle, ReconstructSettings(**s.reconstruct_settings),
                                    plan=typical_plan(handle, keep=1 - max(sps)))
        seconds += plans * r.seconds
        peak = max(peak, r.peak_bytes)
        levers.append("no reconstruction")
    levers.append(f"fewer evaluation prompts ({n_eval})")
    return _finish(Estimate("Comparison", seconds, peak, {"plans": plans, "evaluation generations": 1 + plans,
                                                         "batch": batch}, device=cost.device, chunkable=True),
                   handle, budget_s, levers)


# Python with torch, diffusers and this package imported (VmRSS 0.43-0.49 GB measured here), plus
# the meta model, its catalog and the card's figures for a FLUX.1-dev-size transformer (R6: the
# streaming export peaked at 0.78 GB, this formula says 0.97 GB)
RUNTIME_BYTES = 600 * 2 ** 20


def streaming_export_bytes(largest_tensor_bytes: int) -> int:
    """Peak memory of ``materialize``: the runtime plus, at once, the largest base tensor read, its
    slice and a dtype cast of it; nothing else of the model is ever held (R6 measures it).

    >>> streaming_export_bytes(94_371_840) / 2 ** 30 < 1  # FLUX.1-dev's largest tensor, bf16
    True
    """
    return RUNTIME_BYTES + 3 * largest_tensor_bytes


def inplace_slim_bytes(model_bytes: int, largest_param_bytes: int) -> int:
    """Peak memory of ``slim(inplace=True)`` beyond the runtime: the model, plus the old tensor's
    new slice and the intermediate of a cut along two dims (R6 measures it on SDXL fp32)."""
    return model_bytes + 2 * largest_param_bytes


def estimate_export(handle, *, reconstruct: bool = False, recover_iters: int = 0, recover_batch: int = 4,
                    budget_s: float | None = None, inplace: bool = False, streaming: bool = False,
                    plan=None) -> Estimate:
    """An export: the optional reconstruction, the optional recovery finetune (each iteration one
    teacher call and one student call with backward to its weights), and writing the weights.

    Memory of the slimming itself, from tensor sizes: the model and its slim copy (``slim``), the
    model and its largest layer (``inplace``: ``export(inplace=True)``), or one layer and the
    runtime (``streaming``: ``materialize``, which never loads the model). With ``reconstruct``,
    the reconstruction of ``plan`` (default: a plan that prunes every structure)."""
    budget_s = check_budget(budget_s)
    cost = step_cost(handle)
    largest = max((p.numel() * p.element_size() for p in handle.denoiser.parameters()), default=0)
    if streaming:
        peak = streaming_export_bytes(largest)
    elif inplace:
        peak = inplace_slim_bytes(cost.weights_bytes, largest)
    else:
        peak = 2 * cost.weights_bytes  # the model and its slim copy
    seconds = 0.0
    calls = {}
    if reconstruct:
        r = estimate_reconstruction(handle, plan=plan)
        seconds, peak = seconds + r.seconds, max(peak, r.peak_bytes)
        calls["reconstruction calls"] = r.calls["denoiser calls"]
    if recover_iters:
        b = recover_batch * (2 if spec(handle).guidance_mode == "cfg" and families.of(handle).cfg_doubles_batch else 1)
        seconds += recover_iters * (cost.call(b) + cost.grad_call(b, weights=True))
        # the teacher, the student, its gradients and AdamW's two moments, one step's working memory
        peak = max(peak, 5 * cost.weights_bytes + cost.working_bytes(b, "weights"))
        calls["recovery iterations"] = recover_iters
    seconds += cost.weights_bytes / 200e6  # safetensors write and hashing, ~200 MB/s
    return _finish(Estimate("Export", seconds, peak, calls, device=cost.device), handle, budget_s,
                   ["fewer recovery iterations", "no reconstruction"])


# --------------------------------------------------------------------------- reconstruction's cost
# What a reconstruction (pruning.reconstruct.reconstruct) will cost, from the plan's own layer sizes
# and one measured denoiser call: the figures behind estimate_reconstruction (see
# reconstruction_cost's docstring).

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
    kept = {kind: {} for kind in KEPT_FIELDS}
    for fqn, s in discover(handle.denoiser).structures.items():
        kept[s.kind][fqn] = tuple(range(max(1, round(keep * s.units))))
    return PruningPlan(family=handle.family, base=handle.model_ref, **{KEPT_FIELDS[k]: v for k, v in kept.items()})


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
    """The cost of ``reconstruct(handle, plan, settings)`` (:func:`pruning.reconstruct.reconstruct`),
    from the plan's own layer sizes and one measured denoiser call.

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

    **Time**: the recording of the original's sampling, the calibration calls
    (:meth:`~pruning.estimate.StepCost.call`; each pass's calls stop after its group's last layer,
    counted as that layer's share of the run order), the Gram updates and the solves as float64
    FLOPs at a timed matmul rate, the end-to-end check's held-out rollouts (one per layer or group
    it judges: not the layers that read the original's inputs, :func:`reads_original`), and the
    slim copy.

    >>> from pruning.testing import tiny_pipeline
    >>> from pruning.loading import handle_from_pipe
    >>> from pruning.reconstruct import ReconstructSettings
    >>> h = handle_from_pipe(tiny_pipeline("sd"), model_ref="tiny:sd")
    >>> c = reconstruction_cost(h, typical_plan(h), ReconstructSettings(prompts=("a red circle",), steps=2))
    >>> c.passes == len(c.group_bytes) and c.peak_working == max(c.phases.values()) > 0 and c.seconds > 0
    True
    """
    s0 = settings.resolved(handle)
    cost = cost or step_cost(handle, resolution=s0.resolution)
    den = handle.denoiser
    plan = plan.normalized(den)
    paired = s0.inputs == "pruned"
    ran = run_order(den)
    items = refit_layers(den, plan, s0.layers if paired else "consumers", order=ran)
    copies = 2 if s0.guard else 1  # the guard's held-out statistics
    groups = sequential_groups(items, s0.max_gram_mb * 2 ** 20 / copies, paired, s0.groups)
    s = spec(handle, steps=s0.steps, guidance=s0.guidance, resolution=s0.resolution)
    batches = math.ceil(len(s0.prompts) / s0.batch_size)
    calls, batch = generation_calls(handle, s, min(s0.batch_size, len(s0.prompts)))
    rows, hooked = call_profile(handle, cost, items, batch)
    params = list(den.parameters())
    size = params[0].element_size() if params else 4
    largest = max((p.numel() * p.element_size() for p in params), default=0)
    small = cost.weights_bytes - plan.summary(den)["params_removed"] * size  # the slim model
    latents = recorded_bytes(handle, s, len(s0.prompts), s0.batch_size)  # replayed by every pass
    group_bytes = [copies * sum(c.gram_bytes(paired) for c in g) for g in groups]
    phases = {"slim copy": cost.weights_bytes + largest,
              "calibration": small + max(group_bytes, default=0) + hooked + latents,
              "solves": small + max((_solve_peak(den, g, paired, copies) for g in groups), default=0) + latents,
              "checks": small + cost.working_bytes(batch) + latents}
    # time: the calls, the Gram updates and solves as float64 FLOPs, the checks' rollouts, the copy
    rate = matmul_rate(handle.device if handle.device.type != "mps" else "cpu")
    held = sum(1 for n in range(batches) if n % HOLDOUT_EVERY == HOLDOUT_EVERY - 1) if s0.check else 0
    per_pass = batches * calls * cost.call(batch) * (2 if paired else 1)
    order = {f: i for i, f in enumerate(ran)}

    def reach(g):  # a pass's calls stop after the group's last layer: about that share of a call's work
        if not g or offloaded(den):
            return 1.0
        return (max(order.get(c.fqn, len(order) - 1) for c in g) + 1) / max(len(order), 1)
    updates = batches * calls * sum(_update_flops(c, rows[c.fqn], paired) for c in items) / rate
    same = reads_original(den, plan) if paired else set()  # reconstruct skips these: no fit, no check
    refit = [[c for c in g if not (bool(c.keep.all()) and c.fqn in same)] for g in groups]
    judged = sum(len(g) for g in refit) if s0.check_by == "layer" else sum(1 for g in refit if g)
    solves = sum(_solve_flops(den, c, s0.guard) for g in refit for c in g) / rate
    checks = held * (1 + judged) * calls * cost.call(batch)
    parts = {"recording the original's sampling": batches * calls * cost.call(batch),
             "calibration calls": sum(per_pass * reach(g) for g in groups), "gram updates": updates,
             "solves": solves, "checks": checks, "slim copy": cost.weights_bytes / 1e9}
    n_calls = (1 + len(groups) * (2 if paired else 1)) * batches * calls + held * (1 + judged) * calls
    start = start_record(plan)
    if start is not None:  # the start model: its method's rebuild (OBS-Diff's run), unless the method holds it
        rebuilt = methods.get(start["method"]).rebuild_cost(
            handle, replace(plan, reconstruction={"settings": start, "compensated": []}), cost)
        if rebuilt is not None:
            parts["the start's rebuild"] = rebuilt.seconds
            phases["the start's rebuild"] = rebuilt.working_bytes
            n_calls += rebuilt.calls.get("denoiser calls", 0)
    return ReconCost(len(groups), group_bytes, phases, sum(parts.values()), parts,
                     {"denoiser calls": n_calls, "batch": batch, "passes": len(groups),
                      "gram_mb": round(max(group_bytes, default=0) / 2 ** 20, 1), "layers": len(items),
                      "checks": (1 + judged) if held else 0})


def reads_original(den, plan: PruningPlan) -> set[str]:
    """The Linear / Conv2d layers whose inputs ``plan`` leaves exactly as the original's: on one
    forward on example inputs, the original's and the plan's masked preview's (:func:`pruning.masks.masked`,
    no copy) inputs to the layer agree at every call. ``reconstruct`` finds the same layers on its
    calibration set (``report["unchanged"]``) and neither re-fits nor checks them: the layers before
    the first pruned part, a producer that only loses rows, a cross-attention's key and value.

    >>> from pruning.testing import tiny_pipeline
    >>> den = tiny_pipeline("sd").unet
    >>> attn = "up_blocks.2.attentions.1.transformer_blocks.0.attn1"
    >>> same = reads_original(den, PruningPlan(family="sd", base="tiny:sd", kept_heads={attn: (0,)}))
    >>> attn + ".to_q" in same, attn + ".to_out.0" in same, "conv_out" in same
    (True, False, False)
    """
    from .masks import masked

    kw = example_inputs(den, batch=1, generator=torch.Generator().manual_seed(0))

    def fingerprint(x: torch.Tensor) -> tuple:  # equal inputs give equal prints (same kernels, same order)
        x = x.detach().float()
        return tuple(x.shape), float(x.sum()), float(x.square().sum())

    prints: dict[str, list] = {}
    trace_layers(den, lambda f, x: prints.setdefault(f, []).append(fingerprint(x)), kw)
    seen: dict[str, list] = {}
    with masked(den, plan) as preview:
        trace_layers(preview, lambda f, x: seen.setdefault(f, []).append(fingerprint(x)), kw)
    return {f for f, ps in prints.items() if seen.get(f) == ps}


def recorded_bytes(handle, s, prompts: int, batch_size: int) -> int:
    """Bytes of the original's recorded sampling that every reconstruction pass replays
    (:func:`pruning.reconstruct.record_calls`) at spec ``s``: each batch's first and final latents
    and one denoiser input per step (classifier-free guidance doubles the batch where the family
    runs both branches in one call; FLUX's true CFG runs two calls on the same latents). The
    conditioning is the trajectories' own, shared by every call.

    >>> from pruning.testing import tiny_pipeline
    >>> from pruning.loading import handle_from_pipe
    >>> h = handle_from_pipe(tiny_pipeline("sd"), model_ref="tiny:sd")
    >>> s = spec(h, steps=2)  # CFG: each step's input is the doubled batch
    >>> recorded_bytes(h, s, 3, 2) == (2 * 3 + 2 * 2 * 3) * latent_bytes(h, s, 1)
    True
    """
    out = 0
    for start in range(0, prompts, batch_size):
        b = min(batch_size, prompts - start)
        _, samples = generation_calls(handle, s, b)
        out += 2 * latent_bytes(handle, s, b) + s.steps * latent_bytes(handle, s, samples)
    return out


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



def check_budget(budget_s) -> float | None:
    """A time budget in seconds: None, or a positive finite number (checked before any work).

    >>> check_budget(0)
    Traceback (most recent call last):
    ...
    pruning.errors.SettingsError: budget_s must be a finite number > 0 (seconds of a run, e.g. a Space's GPU duration), got 0
    """
    if budget_s is None:
        return None
    return validate.number("budget_s", budget_s, lo=0, open_lo=True, why="seconds of a run, e.g. a Space's GPU duration")


def _finish(e: Estimate, handle, budget_s, levers: list[str]) -> Estimate:
    memory = device_memory(handle.device)
    if e.peak_bytes > memory:
        e.advice.append(f"will not fit this device's memory ({memory / 2 ** 30:.0f} GB): {', '.join(levers) or 'a GPU'}")
    if budget_s is not None and e.seconds > budget_s:
        how = (f"runs as about {math.ceil(e.seconds / budget_s)} chunks of {budget_s:g} s, resumed one after "
               "another; to shorten it: " if e.chunkable else "to shorten it: ")
        e.advice.append(f"longer than the {budget_s:g} s budget: {how}{', '.join(levers)}")
    return e


__all__ = ["LiveBytes", "StepCost", "step_cost", "Estimate", "estimate", "estimate_methods", "estimate_reconstruction",
           "estimate_comparison", "ReconCost", "reconstruction_cost", "typical_plan", "call_profile", "matmul_rate",
           "reads_original", "recorded_bytes",
           "TYPICAL_KEEP", "estimate_export", "device_memory", "streaming_export_bytes", "inplace_slim_bytes",
           "RUNTIME_BYTES"]
