"""OBS-Diff (ICLR 2026, code Alrightlone/OBS-Diff): structured pruning by the Optimal Brain
Surgeon, with timestep-weighted statistics, selection coupled with compensation and sequential
groups in depth order. Training free.

**Units** are attention heads, FFN neurons, resnet channel groups and conditioning channels,
pruned as *input columns of their consumer layer* (``to_out.0`` and ``to_add_out`` for heads,
``ff.net.2`` / ``ff_context.net.2`` for neurons, a FLUX single block's ``proj_out`` for its heads
and MLP, a resnet's ``conv2`` (its ``k x k`` patches) for channel groups, every AdaLN ``linear`` /
resnet ``time_emb_proj`` for the conditioning channels); the producers are sliced to match by the
plan (``kept_heads`` / ``kept_neurons`` / ``kept_groups`` / ``kept_channels``) as for every method.
The defaults prune neurons, channel groups and conditioning channels (``DEFAULT_KINDS``: on the
bundled models' 4-head layers heads measured worse); the authors' preset prunes heads and neurons.

**Statistics.** For each consumer, ``H = sum_t alpha_t X_t^T X_t / sum_t alpha_t rows_t`` in
float64 over the calibration trajectories (both classifier-free-guidance branches), ``alpha``
falling from ``alpha_first`` (1.2, the first and noisiest step) to ``alpha_last`` (0.8), linearly
or (``schedule="log"``, the authors' released script) along ``log``. Columns whose diagonal is 0
are dead (their weights zeroed, their diagonal set to 1); the damping adds ``damping`` (1%) of
the mean diagonal.

**Selection and compensation.** The OBS error of removing unit ``u`` (columns ``c``) from weight
``W`` is ``tr(W_c (Hinv_cc)^-1 W_c^T)``. Heads and channel groups are removed one at a time,
least error first, ``Hinv`` downdated after each removal and the remaining columns compensated
by the OBS update; FFN neurons are removed in shrinking blocks (the authors' schedule: ``(n -
512) // 2`` columns, at least 64, at most 1024, halving). A structure read by two consumers
(MMDiT joint heads: ``to_out.0`` and ``to_add_out``) ranks its heads in each and merges the
rankings by reciprocal rank fusion (``rrf_k`` = 60); each consumer is compensated with its own
``H``. The final weights are the closed form ``W' = W H[:, K] H[K, K]^-1`` over the kept columns
``K`` (what the sequential updates give, recomputed exactly).

**Sequential groups.** The target layers, in depth order, are split into ``groups`` (4) contiguous
groups (each also within ``max_gram_mb``); each group is calibrated on the trajectories of the
model pruned so far (its own trajectories, as the authors' pipeline runs them), so later layers
see the inputs of the already-pruned model.

**Allocation** (a global target sparsity). ``allocation="uniform"`` (the authors' preset): every
target structure loses the same fraction ``p`` of its units (``round(p * units)``, as the authors'
per-layer ``sparsity_ratio``, at most all but one), ``p`` chosen by bisection so that the plan
removes the target fraction of the denoiser's params (``PruningPlan.summary``); where the rounding
leaves a gap (8 channel groups a resnet move in steps of 12.5%), single units are added, each to
the layer that has lost the smallest fraction, while that brings the total closer to the target.
Blocks left unpruned (``skip_first`` / ``skip_last``) raise the other layers' fraction.
``allocation="measured"`` (the default, :func:`measure`): each layer is pruned alone (OBS-compensated
from the original's statistics) at 0.5, 1, 1.5 and 2 times ``p`` and the error it adds to the final
latents of ``probe_prompts`` (8) calibration prompts is measured; the layers' fractions minimise the
summed error at the target (linear between the probes, :func:`share`), at most
``max(max_fraction, (1 + p) / 2)`` of any layer; then that allocation and the uniform one are run
with every layer pruned at once on the same prompts and the one of lower error is kept. On the
bundled models it is kept every time and lowers the held-out latent MSE 1.4-53x (README). A plan
records its allocation in its units: a rebuild (export, ``load_pruned``) re-runs the selection at
those counts without probing again. The selection depends on the target, so ``to_plan`` runs the procedure at
its target (runs are cached per model, settings and target); ``score`` runs it at ``sparsity``
and its scores (each unit's OBS error: at its removal, or for a kept unit what removing it next
would cost) feed the heatmap. It runs in one chunk (a sequential calibration cannot resume
mid-group).

The plan records the run (``plan.reconstruction = {"settings": {"method": "obsdiff", ...,
"target_sparsity": t}, "compensated": []}``) and :func:`rebuild` gives its compensated slim
denoiser (``pruning.export.build``), so export, plan-only export and ``load_pruned`` reproduce it.
``pruning.reconstruct`` on such a plan starts from that model (its record nested as the
reconstruction's ``"start"``) and keeps its weights wherever a re-fit does not help.

>>> from pruning.testing import tiny_pipeline
>>> from pruning.loading import handle_from_pipe
>>> h = handle_from_pipe(tiny_pipeline("sd3"), model_ref="tiny:sd3")
>>> s = METHOD.settings(prompts=["a red circle", "a blue square"], steps=2)
>>> plan = METHOD.to_plan(h, METHOD.score(h, s), target_sparsity=0.2)
>>> abs(plan.summary(h.denoiser)["params_fraction"] - 0.2) < 0.05, plan.reconstruction["settings"]["method"]
(True, 'obsdiff')
>>> plan.provenance["allocation"], plan.provenance["allocation_check"]["chosen"]
('measured per layer', 'measured')
"""

from __future__ import annotations

import json
import math
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace

import pandas as pd
import torch
from torch import nn

from .. import validate
from ..catalog import UNIT_KINDS, catalog, discover, double_cuts
from ..errors import PlanError, RunStopped, SettingsError
from ..plan import KEPT_FIELDS, PruningPlan
from ..prompts import calibration_prompts
from ..rollout import prepare, rollout, step
from ..runs import RunControl, as_control
from ..slim import keep_masks, slim
from .base import Method, Scores, check_scores_fit, opt
from .cost import MethodCost, generation_calls, run_spec
from .obs import OBSLayer, Unit, compensated, prepare_hessian, rrf, select  # noqa: F401 (the solver, re-exported)

SEED_OFFSET = 10_000  # calibration seeds apart from the evaluation seeds 0..
SCHEDULES = ("linear", "log")
ALLOCATIONS = ("uniform", "measured")
# Measured at 20% params removed on the bundled models (16 held-out prompts, latent MSE): with heads
# tiny-shapes-flux 0.282 and tiny-shapes-sd3 0.056, without 0.0052 and 0.026 (their layers have 4 heads).
DEFAULT_KINDS = ("neuron", "group", "channel")
PRESETS = ("ours", "authors")
# The authors' values: scripts/OBS_Diff_Structured.sh and main.py of Alrightlone/OBS-Diff (commit
# 3383a4f): 100 prompts (gcc3m) x 25 steps at 512 px, guidance 7.0, batch 4, timestep weights
# 1.2 -> 0.8 ("log_decrease"), percdamp 0.01, 4 groups, RRF k = 60 (lib/OBS_Diff_Structured.py),
# blocks minlayer 0 .. maxlayer num_layers - 1 (the last block is left unpruned, the first is pruned).
AUTHORS = {"num_prompts": 100, "steps": 25, "resolution": 512, "guidance": 7.0, "batch_size": 4,
           "alpha_first": 1.2, "alpha_last": 0.8, "schedule": "log", "damping": 0.01, "groups": 4, "rrf_k": 60,
           "skip_first": 0, "skip_last": 1, "kinds": ("head", "neuron"), "allocation": "uniform"}
AUTHORS_SOURCE = ("Alrightlone/OBS-Diff @3383a4f: scripts/OBS_Diff_Structured.sh, main.py, lib/prune.py, "
                  "lib/OBS_Diff_Structured.py")
MAX_CACHED = 2  # runs kept (their compensated consumer weights): a comparison plans and builds one target at a time


@dataclass(frozen=True)
class OBSDiffSettings:
    """What OBS-Diff calibrates on and how (frozen; every value checked)."""

    prompts: tuple[str, ...] | None = opt(None, "calibration prompts (default: num_prompts of the model's "
                                          "calibration prompts)", "strs")
    seeds: tuple[int, ...] | None = opt(None, f"one seed per prompt (default {SEED_OFFSET}, {SEED_OFFSET + 1}, ...)",
                                        "ints")
    num_prompts: int = opt(32, "how many calibration prompts when none are given", "int")
    steps: int | None = opt(None, "sampling steps of the calibration trajectories (default: the model's)", "int")
    guidance: float | None = opt(None, "guidance scale (default: the model's)", "float")
    resolution: int | None = opt(None, "image side in pixels (default: the model's)", "int")
    sparsity: float = opt(0.2, "the target (fraction of params) at which `score` computes the OBS errors; a plan at "
                          "another target runs the procedure again at that target", "float")
    kinds: tuple[str, ...] = opt(DEFAULT_KINDS, "structures to prune: head, neuron, group, channel (the conditioning "
                                 "channels every modulation layer reads; default neuron, group and channel: the bundled "
                                 "models have 4 heads a layer, so a per-layer fraction removes heads a quarter at a "
                                 "time, which measured worse; the authors' preset prunes heads and neurons)",
                                 "choices", UNIT_KINDS, label="units", basic=True)
    alpha_first: float = opt(1.2, "timestep weight of the first (noisiest) step", "float")
    alpha_last: float = opt(0.8, "timestep weight of the last step", "float")
    schedule: str = opt("linear", "how the weights fall from first to last: linear, or log (the authors' "
                        "released script: log_decrease)", "choice", SCHEDULES)
    damping: float = opt(0.01, "damping: this fraction of the mean diagonal of H is added to it", "float")
    groups: int = opt(4, "sequential calibration groups in depth order (each sees the already-pruned model)", "int")
    rrf_k: int = opt(60, "k of the reciprocal rank fusion of joint heads' rankings (to_out, to_add_out)", "int")
    skip_first: int = opt(0, "blocks at the start left unpruned", "int")
    skip_last: int = opt(0, "blocks at the end left unpruned", "int")
    allocation: str = opt("measured", "how the target is shared among the layers: measured (each layer is pruned "
                          "alone on a few prompts and the error it adds to the final latents sets its share; "
                          "checked against uniform, which is kept if it does better) or uniform (every layer loses "
                          "the same fraction, the authors' allocation)", "choice", ALLOCATIONS)
    probe_prompts: int = opt(8, "measured allocation: how many of the calibration prompts each layer's probe "
                             "generates", "int")
    max_fraction: float = opt(0.75, "measured allocation: the most any layer loses, as a fraction of its units "
                              "(raised to halfway between the uniform fraction and 1 when the target needs more)",
                              "float")
    batch_size: int = opt(8, "prompts per calibration batch", "int")
    max_gram_mb: float = opt(2048.0, "memory for the statistics (float64 H) of one calibration pass, in MB; a group "
                             "that needs more is split into more passes", "float")

    def __post_init__(self):
        v = validate
        values = {**v.sampling_fields(prompts=self.prompts, seeds=self.seeds, steps=self.steps,
                                      guidance=self.guidance, resolution=self.resolution),
                  "num_prompts": v.integer("num_prompts", self.num_prompts, lo=1, hi=v.LIMITS.max_prompts),
                  "sparsity": v.fraction("sparsity", self.sparsity),
                  "kinds": v.subset("kinds", self.kinds, UNIT_KINDS),
                  "alpha_first": v.number("alpha_first", self.alpha_first, lo=0, hi=100, open_lo=True),
                  "alpha_last": v.number("alpha_last", self.alpha_last, lo=0, hi=100, open_lo=True),
                  "schedule": v.choice("schedule", self.schedule, SCHEDULES),
                  "damping": v.number("damping", self.damping, lo=0, hi=100),
                  "groups": v.integer("groups", self.groups, lo=1, hi=1000),
                  "rrf_k": v.integer("rrf_k", self.rrf_k, lo=0, hi=10 ** 6),
                  "skip_first": v.integer("skip_first", self.skip_first, lo=0, hi=1000),
                  "skip_last": v.integer("skip_last", self.skip_last, lo=0, hi=1000),
                  "allocation": v.choice("allocation", self.allocation, ALLOCATIONS),
                  "probe_prompts": v.integer("probe_prompts", self.probe_prompts, lo=1, hi=v.LIMITS.max_prompts),
                  "max_fraction": v.number("max_fraction", self.max_fraction, lo=0, hi=1, open_lo=True),
                  "batch_size": v.integer("batch_size", self.batch_size, lo=1, hi=v.LIMITS.max_prompts),
                  "max_gram_mb": v.number("max_gram_mb", self.max_gram_mb, lo=0.01, hi=1 << 20)}
        for k, val in values.items():
            object.__setattr__(self, k, val)

    def resolved(self, handle) -> OBSDiffSettings:
        """These settings with the prompts and seeds filled in."""
        prompts = self.prompts or calibration_prompts(handle.model_ref, self.num_prompts)
        seeds = self.seeds or tuple(SEED_OFFSET + i for i in range(len(prompts)))
        return replace(self, prompts=tuple(prompts), seeds=tuple(seeds))

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d) -> OBSDiffSettings:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise SettingsError(f"obsdiff settings have unknown field(s) {unknown}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def timestep_weights(s: OBSDiffSettings, steps: int) -> list[float]:
    """alpha_t of each sampling step, first (noisiest) to last.

    >>> s = OBSDiffSettings()
    >>> [round(a, 2) for a in timestep_weights(s, 5)]
    [1.2, 1.1, 1.0, 0.9, 0.8]
    >>> [round(a, 3) for a in timestep_weights(replace(s, schedule="log"), 5)]  # the authors' log_decrease
    [1.2, 1.145, 1.073, 0.972, 0.8]
    """
    if steps == 1:
        return [s.alpha_first]
    if s.schedule == "linear":
        return [s.alpha_first + (s.alpha_last - s.alpha_first) * i / (steps - 1) for i in range(steps)]
    return [s.alpha_last + (s.alpha_first - s.alpha_last) * math.log(steps - i) / math.log(steps)
            for i in range(steps)]


# --------------------------------------------------------------------------- targets and allocation


def _consumer_columns(den: nn.Module, s) -> dict[str, torch.Tensor]:
    """``{consumer fqn: (units, k) columns}`` of a structure, in the layer's flattened inputs."""
    out = {}
    for cut in s.cuts:
        if cut.dim != 1:
            continue
        fqn = cut.param.rsplit(".", 1)[0]
        layer = den.get_submodule(fqn)
        first = cut.offset + torch.arange(s.units)[:, None] * s.unit_size + torch.arange(s.unit_size)  # (units, us)
        if isinstance(layer, nn.Conv2d):
            if layer.groups != 1:
                raise SettingsError(f"OBS-Diff cannot prune {s.fqn!r}: its consumer {fqn!r} is a grouped conv")
            kk = layer.kernel_size[0] * layer.kernel_size[1]
            first = (first[:, :, None] * kk + torch.arange(kk)).reshape(s.units, -1)  # (units, us*kh*kw)
        out[fqn] = first
    return out


def targets(handle, s: OBSDiffSettings) -> pd.DataFrame:
    """The structures OBS-Diff prunes (catalog rows, in depth order): the chosen kinds outside the
    blocks left unpruned."""
    _, st = catalog(handle.denoiser)
    blocks = [b for b in dict.fromkeys(st["block"]) if b != "other"]  # in depth order (not the embeddings)
    skipped = set(blocks[:s.skip_first]) | set(blocks[len(blocks) - s.skip_last:] if s.skip_last else [])
    rows = st[st["kind"].isin(s.kinds) & ~st["block"].isin(skipped) & (st["units"] > 1)]
    if rows.empty:
        raise SettingsError(f"OBS-Diff has nothing to prune: no {list(s.kinds)} structures outside the "
                            f"{len(skipped)} skipped blocks (skip_first={s.skip_first}, skip_last={s.skip_last})")
    return rows.reset_index(drop=True)


def allocate(handle, rows: pd.DataFrame, target: float, weights: dict[str, float] | None = None,
             cap: float = 1.0) -> tuple[dict[str, int], float, float]:
    """Units to remove per structure so that ``target`` of the params is removed: each structure
    ``f`` loses the fraction ``min(p * weights[f], cap)`` of its units (all but one at most; no
    ``weights``: the same ``p`` everywhere), ``p`` found by bisection. Returns ``(counts, p, params
    fraction reached)``.

    >>> import pruning
    >>> h = pruning.load_pipeline("tiny-shapes-sd3")
    >>> rows = targets(h, OBSDiffSettings())
    >>> c, p, reached = allocate(h, rows, 0.2)
    >>> round(reached, 3), len(set(round(n / u, 2) for n, u in zip(c.values(), rows["units"])))  # one fraction
    (0.2, 1)
    >>> w = {f: 2.0 if f.startswith("transformer_blocks.2") else 1.0 for f in rows["fqn"]}
    >>> c2, _, _ = allocate(h, rows, 0.2, w)
    >>> c2["transformer_blocks.2.ff"] / c["transformer_blocks.2.ff"] > 1.5  # twice the weight, about twice the cut
    True
    """
    w = {f: 1.0 for f in rows["fqn"]} if weights is None else {f: float(weights[f]) for f in rows["fqn"]}
    units = dict(zip(rows["fqn"], rows["units"]))

    def counts(p):  # never above the cap, however the rounding falls
        return {f: min(int(round(p * w[f] * u)), math.floor(cap * u + 1e-9), u - 1) for f, u in units.items()}

    def reached(c):
        return removed_fraction(handle, rows, c)

    top = cap / max(min(v for v in w.values() if v > 0), 1e-12) if any(v > 0 for v in w.values()) else 1.0
    most = reached(counts(top))
    if target > most + 0.01:
        raise PlanError(f"target sparsity {target:.3f} is not reachable with OBS-Diff's targets: keeping one unit of "
                        f"each of its {len(rows)} structures (at most {cap:.2f} of any) removes at most {most:.3f} of "
                        "the params (fewer skipped blocks, more kinds or a higher max_fraction?)")
    lo, hi = 0.0, top
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if reached(counts(mid)) < target else (lo, mid)
    p = min((lo, hi), key=lambda q: abs(reached(counts(q)) - target))
    c = counts(p)
    while reached(c) < target:  # rounding left a gap: one more unit where the smallest (weighted) fraction went
        open_ = [f for f in c if c[f] < min(units[f] - 1, int(cap * units[f])) and w[f] > 0]
        if not open_:
            break
        f = min(open_, key=lambda f: ((c[f] + 1) / units[f] / w[f], f))
        bigger = {**c, f: c[f] + 1}
        if abs(reached(bigger) - target) >= abs(reached(c) - target):
            break
        c = bigger
    return c, p, reached(c)


def removed_fraction(handle, rows: pd.DataFrame, counts: dict[str, int]) -> float:
    """The fraction of the params that removing ``counts`` units of the ``rows`` structures removes
    (less what a weight cut along both dims would count twice: a resnet's ``time_emb_proj``)."""
    twice = sum(counts.get(a, 0) * counts.get(b, 0) * per for _, a, b, per in double_cuts(handle.denoiser))
    return (sum(counts.get(f, 0) * int(up) for f, up in zip(rows["fqn"], rows["unit_params"])) - twice) / \
        catalog(handle.denoiser)[1].attrs["total_params"]


def _jobs(den: nn.Module, rows: pd.DataFrame, counts: dict[str, int]) -> list[list[Unit]]:
    """Structures that share a consumer solved together, in depth order."""
    found = discover(den).structures
    units = [Unit(f, found[f].kind, found[f].units, counts[f], _consumer_columns(den, found[f])) for f in rows["fqn"]]
    jobs: list[list[Unit]] = []
    for u in units:
        joined = [j for j in jobs if any(set(u.cols) & set(v.cols) for v in j)]
        merged = [v for j in joined for v in j] + [u]
        jobs = [j for j in jobs if all(j is not x for x in joined)] + [merged]
    for j in jobs:
        j.sort(key=lambda u: (u.kind != "head", u.fqn))  # heads first on a shared consumer (FLUX single blocks)
    return jobs


def _reuse():
    """reconstruct's helpers (imported late: ``pruning.reconstruct`` imports ``pruning.methods``)."""
    from ..reconstruct import Consumer, Stats, flat_weight, layer_inputs

    return Consumer, Stats, flat_weight, layer_inputs


def _width(den: nn.Module, fqn: str) -> int:
    return _reuse()[2](den.get_submodule(fqn)).shape[1]


def recorded(u: Unit) -> list[str]:
    """The consumers whose input statistics a unit needs: all of them, but one for conditioning
    channels (every consumer reads the same embedding, so one Gram serves them all)."""
    return [next(iter(u.cols))] if u.kind == "channel" else list(u.cols)


def split_groups(den: nn.Module, jobs: list[list[Unit]], groups: int, budget_mb: float) -> list[list[list[Unit]]]:
    """``groups`` contiguous groups of jobs (sizes as the authors' ``group_modules_with_parallelism``),
    each split again where its statistics would pass ``budget_mb``."""
    n, g = len(jobs), min(groups, len(jobs))
    size, extra = divmod(n, g)
    out, start = [], 0
    for i in range(g):
        end = start + size + (1 if i < extra else 0)
        part, mb = [[]], 0.0
        for job in jobs[start:end]:
            need = sum(_reuse()[0](c, torch.ones(_width(den, c), dtype=torch.bool)).gram_bytes() / 2 ** 20
                       for c in {c for u in job for c in recorded(u)})
            if part[-1] and mb + need > budget_mb:
                part.append([])
                mb = 0.0
            part[-1].append(job)
            mb += need
        out += part
        start = end
    return out


# --------------------------------------------------------------------------- calibration


def _trajectories(handle, s: OBSDiffSettings, control: RunControl) -> list:
    out = []
    for i in range(0, len(s.prompts), s.batch_size):
        if control.stopped():
            raise RunStopped(f"OBS-Diff {control.reason or 'stopped'} while preparing the calibration set")
        out.append(prepare(handle, list(s.prompts[i:i + s.batch_size]), list(s.seeds[i:i + s.batch_size]),
                           steps=s.steps, guidance=s.guidance, resolution=s.resolution))
    return out


class GramRecorder:
    """Forward pre-hooks that accumulate each layer's timestep-weighted input Gram in float64
    (``alpha``: the current step's weight); ``means()`` gives ``{layer: H}``. A context manager."""

    def __init__(self, model: nn.Module, layers: list[str]):
        _, Stats, _, self._inputs = _reuse()
        device = next(model.parameters()).device
        self.device = torch.device("cpu") if device.type == "mps" else device  # no float64 on MPS
        self.model, self.layers, self.alpha = model, list(layers), 1.0
        self.stats = {f: Stats(_width(model, f), 0, self.device, keep=torch.ones(_width(model, f), dtype=torch.bool))
                      for f in self.layers}
        self.weight = {f: 0.0 for f in self.layers}
        self.hooks = []

    def _record(self, m, args, fqn):
        x = self._inputs(m, args[0]).detach().to(self.device)  # (rows, D)
        self.stats[fqn].add(x.double() * math.sqrt(self.alpha))
        self.weight[fqn] += self.alpha * x.shape[0]

    def __enter__(self) -> GramRecorder:
        self.hooks = [self.model.get_submodule(f).register_forward_pre_hook(
            lambda m, a, f=f: self._record(m, a, f)) for f in self.layers]
        return self

    def __exit__(self, *exc) -> None:
        for h in self.hooks:
            h.remove()

    def means(self) -> dict[str, torch.Tensor]:
        return {f: (st.G[:-1, :-1] / max(self.weight[f], 1e-30)).cpu() for f, st in self.stats.items()}


def calibrate(model: nn.Module, trajs: list, layers: list[str], s: OBSDiffSettings, control: RunControl,
              what: str) -> dict[str, torch.Tensor]:
    """``{layer: H}``: the timestep-weighted mean ``E[x x^T]`` of each layer's inputs over ``model``'s own
    trajectories (every call: both CFG branches), in float64."""
    with GramRecorder(model, layers) as rec, torch.no_grad():
        for n, traj in enumerate(trajs):
            ws = timestep_weights(s, traj.steps)
            z = traj.z0
            for i in range(traj.steps):
                if control.stopped():
                    raise RunStopped(f"OBS-Diff {control.reason or 'stopped'} during {what} (batch {n + 1} of "
                                     f"{len(trajs)}); nothing was pruned (it runs in one chunk)")
                rec.alpha = ws[i]
                z = step(model, traj, i, z)
    return rec.means()


def all_jobs(handle, s: OBSDiffSettings) -> list[list[Unit]]:
    """Every job of a run with these settings, in depth order (no units removed yet)."""
    rows = targets(handle, s)
    return _jobs(handle.denoiser, rows, {f: 0 for f in rows["fqn"]})


def probe_passes(handle, s: OBSDiffSettings) -> tuple[int, list[list[str]]]:
    """The measured allocation's jobs (how many) and the consumer layers of each of its calibration
    passes (for the estimator)."""
    jobs = all_jobs(handle, s)
    return len(jobs), [sorted({c for job in part for u in job for c in recorded(u)})
                       for part in split_groups(handle.denoiser, jobs, 1, s.max_gram_mb)]


def every_consumer(handle, s: OBSDiffSettings) -> list[str]:
    """Every layer a run compensates (for the estimator)."""
    return sorted({c for job in all_jobs(handle, s) for u in job for c in u.cols})


def job_bytes(handle, s: OBSDiffSettings) -> int:
    """The largest job's float64 OBS states (for the estimator): per consumer its weight twice (the
    original and the compensated) and H, its damped copy and its inverse; for conditioning
    channels the (D, D) surrogate's and one consumer's at a time (:func:`solve_job`)."""
    den = handle.denoiser

    def size(c):  # (out, D) of a consumer's flattened weight
        w = den.get_submodule(c).weight
        return w.shape[0], w[0].numel()

    most = 0
    for job in all_jobs(handle, s):
        shapes = [size(c) for c in {c for u in job for c in u.cols}]
        if len(job) == 1 and job[0].kind == "channel":
            d = shapes[0][1]
            need = 8 * (5 * d * d + 2 * max(o * d for o, d in shapes))
        else:
            need = 8 * sum(2 * o * d + 3 * d * d for o, d in shapes)
        most = max(most, need)
    return most


def passes(handle, s: OBSDiffSettings) -> list[list[str]]:
    """The consumer layers of each calibration pass (for the estimator)."""
    return [sorted({c for job in g for u in job for c in recorded(u)})
            for g in split_groups(handle.denoiser, all_jobs(handle, s), s.groups, s.max_gram_mb)]


def final_latents(model: nn.Module, trajs: list, control: RunControl, what: str) -> list[torch.Tensor]:
    """The last latents of ``model``'s sampling of each trajectory batch (:func:`pruning.rollout.rollout`)."""
    try:
        with torch.no_grad():
            return [rollout(model, traj, control=control)[-1] for traj in trajs]
    except RunStopped as e:
        raise RunStopped(f"OBS-Diff {e} during {what}; nothing was pruned") from None


LEVELS = (0.5, 1.0, 1.5, 2.0)  # measured allocation: probed fractions, times the uniform fraction


def _hull(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The lower convex hull of ``(q, error)`` points, from ``(0, 0)``, in increasing ``q``.

    >>> _hull([(0.0, 0.0), (0.2, 1.0), (0.4, 1.2), (0.6, 3.0)])
    [(0.0, 0.0), (0.4, 1.2), (0.6, 3.0)]
    """
    out: list[tuple[float, float]] = []
    for q, e in sorted(points):
        while len(out) >= 2 and (out[-1][1] - out[-2][1]) * (q - out[-2][0]) >= (e - out[-2][1]) * (out[-1][0] - out[-2][0]):
            out.pop()
        out.append((q, e))
    return out


def share(curves: dict[int, list[tuple[float, float]]], params: dict[int, float], need: float) -> dict[int, float]:
    """Fractions ``q_j`` that remove ``need`` params at the least summed error, each job's error
    linear between its measured points (their lower convex hull): the hulls' segments are taken
    cheapest error per param first, the last one in part.

    >>> share({0: [(0.5, 1.0), (1.0, 4.0)], 1: [(0.5, 2.0), (1.0, 3.0)]}, {0: 10, 1: 10}, 10)
    {0: 0.5, 1: 0.5}
    >>> share({0: [(0.5, 1.0), (1.0, 4.0)], 1: [(0.5, 2.0), (1.0, 3.0)]}, {0: 10, 1: 10}, 15)
    {0: 0.5, 1: 1.0}
    """
    segs = []
    for j, pts in curves.items():
        hull = _hull([(0.0, 0.0), *pts])
        segs += [((e1 - e0) / (params[j] * (q1 - q0)), j, q1 - q0) for (q0, e0), (q1, e1) in zip(hull, hull[1:])
                 if q1 > q0]
    q = {j: 0.0 for j in curves}
    left = need
    for _, j, dq in sorted(segs):
        take = min(dq, left / params[j])
        q[j] += take
        left -= take * params[j]
        if left <= 1e-9:
            break
    return q


def _solve(handle, s: OBSDiffSettings, jobs: list[list[Unit]], H: dict, counts: dict[str, int]) -> tuple[dict, dict]:
    """``(kept units, compensated consumer weights)`` of removing ``counts`` units from the jobs'
    structures, each consumer compensated from the statistics ``H`` (no sequential groups)."""
    den = handle.denoiser
    kept, weights = {}, {}
    for job in jobs:
        todo = [replace(u, remove=counts[u.fqn]) for u in job if counts.get(u.fqn, 0) > 0]
        if todo:
            k, _, w, _ = solve_job(den, todo, H, s)
            kept.update(k)
            weights.update(w)
    return kept, weights  # in the layers' dtype and device: the check holds two sets at once


def solve_job(den: nn.Module, job: list[Unit], H: dict, s: OBSDiffSettings) -> tuple[dict, dict, dict, dict]:
    """Select and compensate one job (structures that share consumers): ``(kept units, OBS errors,
    compensated consumer weights in each layer's dtype, per consumer {columns_kept, columns,
    obs_rel_error})``. The float64 states live only while the job is solved."""
    solve = _solve_channels if len(job) == 1 and job[0].kind == "channel" else _solve_layers
    kept, scores, finals = solve(den, job, H, s)
    weights, info = {}, {}
    for c, (W0, Hc, final, live) in finals:
        diff = W0 - final
        info[c] = {"columns_kept": int(live.sum()), "columns": int(live.numel()),
                   "obs_rel_error": float(torch.einsum("od,de,oe->", diff, Hc, diff) /
                                          torch.einsum("od,de,oe->", W0, Hc, W0).clamp_min(1e-30))}
        weights[c] = final.to(den.get_submodule(c).weight)  # cast once, as _apply would: bit for bit the same
    return kept, scores, weights, info


def _solve_layers(den: nn.Module, job: list[Unit], H: dict, s: OBSDiffSettings):
    """Every consumer its own OBS state; yields ``(consumer, (W0, H, compensated W, live columns))``."""
    layers = {c: OBSLayer(_reuse()[2](den.get_submodule(c)).cpu(), H[c], s.damping)
              for c in sorted({c for u in job for c in u.cols})}
    kept, scores = {}, {}
    for u in job:
        order, scores[u.fqn] = select(u, layers, s.rrf_k)
        kept[u.fqn] = sorted(set(range(u.units)) - set(order))
    return kept, scores, ((c, (x.W0, x.H, x.final(), x.live)) for c, x in layers.items())


def _solve_channels(den: nn.Module, job: list[Unit], H: dict, s: OBSDiffSettings):
    """Conditioning channels (one input read by many consumers), selected on a surrogate: the
    consumers' OBS errors and updates depend on ``W`` only through ``W^T W``, so one (D, D) layer ``L``
    with ``L^T L = sum_c W_c^T W_c`` stands for all of them stacked (the same errors, at (D, D) instead
    of every modulation weight in float64); each consumer is then compensated in closed form over the
    kept columns, one at a time (a generator: one consumer's float64 weights at once)."""
    flat, (u,) = _reuse()[2], job
    first = recorded(u)[0]  # every consumer reads the same input: one H

    def weight(c):
        return flat(den.get_submodule(c)).cpu()

    S = sum(w.T @ w for w in map(weight, u.cols))  # (D, D)
    lam, V = torch.linalg.eigh(S)
    layer = OBSLayer((V * lam.clamp_min(0).sqrt()).T, H[first], s.damping)  # (D, D): L^T L = S
    order, score = select(replace(u, cols={first: u.cols[first]}), {first: layer}, s.rrf_k)

    def finals():
        for c in u.cols:
            Hc, W0 = prepare_hessian(H[first], weight(c), s.damping)
            yield c, (W0, Hc, compensated(W0, Hc, layer.live), layer.live)

    return {u.fqn: sorted(set(range(u.units)) - set(order))}, {u.fqn: score}, finals()


@contextmanager
def _swapped(den: nn.Module, weights: dict[str, torch.Tensor]):
    """``den`` with these full-width consumer weights (a removed unit's columns are zero, so its
    output is what the slim model's is) written in place, restored on exit: a probe without a copy."""
    saved = {c: den.get_submodule(c).weight.detach().clone() for c in weights}
    try:
        with torch.no_grad():
            for c, W in weights.items():
                layer = den.get_submodule(c)
                layer.weight.copy_(W.reshape(layer.weight.shape).to(layer.weight))  # (out, D) -> the layer's shape
        yield den
    finally:
        with torch.no_grad():
            for c, W in saved.items():
                den.get_submodule(c).weight.copy_(W)


def measure(handle, s: OBSDiffSettings, rows: pd.DataFrame, target: float, control: RunControl,
            later: int = 0) -> dict:
    """The measured allocation. Each job (the structures that share a consumer) is pruned alone at
    ``LEVELS`` times the uniform fraction ``p`` for ``target`` (at most ``max(max_fraction, (1 + p) / 2)``),
    compensated from the original model's statistics, and the latent MSE it adds to the final
    latents of ``probe_prompts`` calibration prompts is measured. The jobs' fractions then minimize
    the summed error at the target (:func:`share`, errors linear between the probes). A check: both
    this allocation and the uniform one, every job at once, on the same prompts; the lower error is
    kept. The statistics are those of one calibration pass at a time (``max_gram_mb``; with more
    than one pass, the check calibrates again). Progress counts the probes and then ``later`` more
    steps (the run's groups). Each probe writes its weights into ``handle.denoiser`` in place
    (:func:`_swapped`; given back after it, also on a stop or an error): nothing else may sample the
    same model meanwhile (the app runs one job a model at a time). Returns ``{"weights": {fqn:
    fraction / p} or None (uniform kept),
    "cap": ..., "probes": [...], "check": {...}, "steps": probe steps counted}``."""
    den = handle.denoiser
    units = dict(zip(rows["fqn"], rows["units"]))
    unit_params = dict(zip(rows["fqn"], rows["unit_params"]))
    uniform, p, _ = allocate(handle, rows, target)
    cap = max(s.max_fraction, (1 + p) / 2)
    jobs = _jobs(den, rows, uniform)
    parts = split_groups(den, jobs, 1, s.max_gram_mb)
    k = min(s.probe_prompts, len(s.prompts))
    probe = _trajectories(handle, replace(s, prompts=s.prompts[:k], seeds=s.seeds[:k]), control)
    trajs = _trajectories(handle, s, control)
    dense = final_latents(den, probe, control, "the measured allocation's reference run")
    total_probes = len(jobs) * len(LEVELS) + 2
    done = 0

    def error(kept, weights, what):
        with _swapped(den, weights):
            got = final_latents(den, probe, control, what)
        return float(sum(((a - b).double() ** 2).sum() for a, b in zip(got, dense)) / sum(b.numel() for b in dense))

    def stats(n, part, what):
        names = sorted({c for job in part for u in job for c in recorded(u)})
        return calibrate(den, trajs, names, s, control, f"{what} (pass {n + 1} of {len(parts)})")

    curves, params, report, H = {}, {}, [], {}
    for n, part in enumerate(parts):
        H = stats(n, part, "the measured allocation's statistics")
        for job in part:
            j = len(params)
            params[j] = sum(units[u.fqn] * unit_params[u.fqn] for u in job)
            seen = set()
            for m in LEVELS:
                counts = {u.fqn: max(1, min(int(round(min(m * p, cap) * units[u.fqn])), units[u.fqn] - 1))
                          for u in job}
                done += 1
                if tuple(counts.values()) in seen:
                    continue
                seen.add(tuple(counts.values()))
                q = sum(counts[u.fqn] * unit_params[u.fqn] for u in job) / params[j]
                e = error(*_solve(handle, s, [job], H, counts), f"probe {done} of {total_probes}")
                curves.setdefault(j, []).append((q, e))
                report.append({"structures": [u.fqn for u in job], "fraction": round(q, 4), "latent_mse": e})
                control.report(done, total_probes + later, probe=done, phase="OBS-Diff, measuring each layer's share")
    q = share(curves, params, target * catalog(den)[1].attrs["total_params"])
    weights = {u.fqn: q[j] / p for j, job in enumerate(jobs) for u in job}
    try:
        measured, _, _ = allocate(handle, rows, target, weights, cap)
    except PlanError as e:  # a target near the most the layers can lose: only all-but-one everywhere reaches it
        control.report(total_probes, total_probes + later, probe=total_probes,
                       phase="OBS-Diff, measuring each layer's share")
        return {"weights": None, "cap": cap, "probes": report, "steps": total_probes,
                "check": {"measured": None, "uniform": None, "chosen": "uniform", "why": str(e)}}
    solved = {"measured": ({}, {}), "uniform": ({}, {})}
    for n, part in enumerate(parts):
        H = H if len(parts) == 1 else stats(n, part, "the allocation check's statistics")
        for name, counts in (("measured", measured), ("uniform", uniform)):
            kept, w = _solve(handle, s, part, H, counts)
            solved[name][0].update(kept)
            solved[name][1].update(w)
    del H
    check = {}
    for name, (kept, w) in solved.items():
        done += 1
        check[name] = error(kept, w, f"the allocation check ({name})")
        control.report(done, total_probes + later, probe=done, phase="OBS-Diff, measuring each layer's share")
    check["chosen"] = "measured" if check["measured"] <= check["uniform"] else "uniform"
    return {"weights": weights if check["chosen"] == "measured" else None, "cap": cap, "probes": report,
            "check": check, "steps": total_probes}


# --------------------------------------------------------------------------- the run


@dataclass
class Result:
    """One OBS-Diff run: the plan (recording the run), the compensated consumer weights of the slim
    model (``deltas``: what differs from plain slimming), the scores table and a report."""

    plan: PruningPlan
    deltas: dict
    table: pd.DataFrame
    info: dict

    def build(self, handle) -> nn.Module:
        small = slim(handle.denoiser, self.plan)
        own = small.state_dict()
        small.load_state_dict({**own, **{k: v.to(own[k].device, own[k].dtype) for k, v in self.deltas.items()}})
        small.pruning_plan = self.plan
        small.reconstruction = self.info
        return small


_CACHE: OrderedDict = OrderedDict()


def _key(handle, s: OBSDiffSettings, target: float, counts: dict | None = None) -> tuple:
    return handle.model_ref, str(handle.device), str(handle.dtype), json.dumps(s.to_dict(), sort_keys=True), \
        round(target, 12), json.dumps(counts, sort_keys=True)


def run(handle, settings: OBSDiffSettings | None = None, target: float = 0.2, *,
        control: RunControl | None = None, counts: dict[str, int] | None = None) -> Result:
    """OBS-Diff at ``target`` (fraction of params removed); cached per model, settings and target.
    ``counts``: the units to remove per structure, given (a plan's), instead of allocated."""
    s = (settings or OBSDiffSettings()).resolved(handle)
    target = validate.fraction("target sparsity", target)
    key = _key(handle, s, target, counts)
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    result = _run(handle, s, target, as_control(control), counts)
    _CACHE[key] = result
    while len(_CACHE) > MAX_CACHED:
        _CACHE.popitem(last=False)
    return result


def _run(handle, s: OBSDiffSettings, target: float, control: RunControl, given: dict | None = None) -> Result:
    t0 = time.perf_counter()
    den = handle.denoiser
    rows = targets(handle, s)
    n_groups = len(passes(handle, s))  # the progress count, before the probes
    probes = measure(handle, s, rows, target, control, later=n_groups) \
        if s.allocation == "measured" and given is None else None
    if given is not None:
        counts = {f: int(given.get(f, 0)) for f in rows["fqn"]}
        p, reached = None, removed_fraction(handle, rows, counts)
    else:
        counts, p, reached = (allocate(handle, rows, target) if probes is None or probes["weights"] is None else
                              allocate(handle, rows, target, probes["weights"], probes["cap"]))
    jobs = _jobs(den, rows, counts)
    groups = split_groups(den, jobs, s.groups, s.max_gram_mb)
    trajs = _trajectories(handle, s, control)
    record = {"settings": {"method": "obsdiff", **s.to_dict(), "target_sparsity": target}, "compensated": []}
    kept: dict[str, list[int]] = {}
    weights: dict[str, torch.Tensor] = {}  # consumer fqn -> compensated (out, D), in the layer's dtype
    scores: dict[str, dict[int, float]] = {}
    layers_info = {}
    model, gram_mb = den, 0.0
    for n, group in enumerate(groups):
        names = sorted({c for job in group for u in job for c in recorded(u)})
        H = calibrate(model, trajs, names, s, control, f"calibration pass {n + 1} of {len(groups)}")
        gram_mb = max(gram_mb, sum(h.numel() * 8 for h in H.values()) / 2 ** 20)
        for job in group:
            k, sc, w, info = solve_job(den, job, H, s)
            kept.update(k)
            scores.update(sc)
            weights.update(w)
            layers_info.update(info)
        del H
        plan = _plan(handle, kept, record)
        model = _apply(den, plan, weights)
        done = (probes["steps"] if probes else 0) + n + 1
        control.report(done, (probes["steps"] if probes else 0) + len(groups), group=n + 1,
                       phase="OBS-Diff, pruning and compensating")
    found = discover(den).structures
    table = pd.DataFrame([{"fqn": f, "kind": found[f].kind, "component": found[f].component, "index": i,
                           "score": sc[i], "removed": i not in set(kept[f])} for f, sc in scores.items()
                          for i in range(found[f].units)],
                         columns=["fqn", "kind", "component", "index", "score", "removed"])
    alloc = {"allocation": "given per layer"} if given is not None else \
        {"allocation": "uniform per layer", "layer_fraction": p} if probes is None or probes["weights"] is None \
        else {"allocation": "measured per layer", "max_fraction": probes["cap"],
              "layer_fractions": {f: round(n / u, 4) for f, n, u in zip(counts, counts.values(), rows["units"])}}
    if probes is not None:
        alloc["allocation_check"] = probes["check"]
    plan = plan.with_provenance(method="obsdiff", target_sparsity=target, **alloc, settings=record["settings"])
    plain = slim(den, plan).state_dict()
    own = model.state_dict()
    deltas = {k: v.detach().clone() for k, v in own.items() if not torch.equal(v, plain[k])}
    info = {"target_sparsity": target, "params_fraction": reached, **({"layer_fraction": p} if "layer_fraction" in alloc
                                                                       else {}), "passes": len(groups),
            "gram_mb": round(gram_mb, 3), "seconds": round(time.perf_counter() - t0, 2), "layers": layers_info,
            **({} if probes is None else {"probes": probes["probes"], "allocation_check": probes["check"]})}
    return Result(plan, deltas, table, info)


def _plan(handle, kept: dict[str, list[int]], record: dict) -> PruningPlan:
    found = discover(handle.denoiser).structures
    by = {name: {} for name in KEPT_FIELDS.values()}
    for f, k in kept.items():
        by[KEPT_FIELDS[found[f].kind]][f] = k
    return PruningPlan(family=handle.family, base=handle.model_ref, reconstruction=record,
                       **by).normalized(handle.denoiser)


def _apply(den: nn.Module, plan: PruningPlan, weights: dict[str, torch.Tensor]) -> nn.Module:
    """The slim model for ``plan`` with the compensated consumer weights written in."""
    small = slim(den, plan)
    found = discover(den).structures
    keep_cols: dict[str, torch.Tensor] = {}
    for c, W in weights.items():
        keep_cols[c] = torch.ones(W.shape[1], dtype=torch.bool)
    for kind in UNIT_KINDS:
        for f, kept in plan.kept(kind).items():
            for c, cols in _consumer_columns(den, found[f]).items():
                if c in keep_cols:
                    gone = sorted(set(range(found[f].units)) - set(kept))
                    keep_cols[c][cols[gone].flatten()] = False
    twice = {p for p, *_ in double_cuts(den)}  # a consumer that loses rows too (a resnet's time_emb_proj: its groups)
    rows = keep_masks(den, found, plan) if any(f"{c}.weight" in twice for c in weights) else {}
    with torch.no_grad():
        for c, W in weights.items():
            layer = small.get_submodule(c)
            W = W[:, keep_cols[c]]
            if 0 in rows.get(f"{c}.weight", {}):
                W = W[rows[f"{c}.weight"][0]]
            layer.weight.copy_(W.reshape(layer.weight.shape).to(layer.weight))  # (out, k) -> conv
    return small


def _recorded(handle, plan: PruningPlan) -> tuple[OBSDiffSettings, float]:
    """The settings and target an OBS-Diff plan records (a record older than ``allocation`` was
    allocated uniformly)."""
    rec = dict(plan.reconstruction["settings"])
    rec.pop("method", None)
    rec.setdefault("allocation", "uniform")
    target = rec.pop("target_sparsity")
    return OBSDiffSettings.from_dict(rec), target


def reach(handle, s: OBSDiffSettings) -> float:
    """The most a plan can remove (fraction of the params): all but one unit of each target structure."""
    rows = targets(handle, s)
    return sum((int(u) - 1) * int(up) for u, up in zip(rows["units"], rows["unit_params"])) / \
        catalog(handle.denoiser)[1].attrs["total_params"]


def _held(handle, s: OBSDiffSettings, target: float, plan: PruningPlan) -> Result | None:
    """The cached run at ``s`` and ``target`` when it selected ``plan``'s units, else None."""
    made = _CACHE.get(_key(handle, s.resolved(handle), validate.fraction("target sparsity", target)))
    mine = plan.normalized(handle.denoiser)
    return made if made is not None and all(made.plan.kept(k) == mine.kept(k) for k in UNIT_KINDS) else None


def rebuild_cost(handle, plan: PruningPlan, step) -> MethodCost | None:
    """What :func:`rebuild` of ``plan`` runs: nothing when the run is cached with these units, else
    the sequential groups at the plan's own counts (a measured allocation is not probed again)."""
    s, target = _recorded(handle, plan)
    return None if _held(handle, s, target, plan) else METHOD.cost(handle, replace(s, allocation="uniform"), step)


def rebuild(handle, plan: PruningPlan) -> nn.Module:
    """The compensated slim denoiser an OBS-Diff plan describes (from the cache, or run again with
    its recorded settings and target: deterministic on one device)."""
    s, target = _recorded(handle, plan)
    mine = plan.normalized(handle.denoiser)
    if s.allocation == "uniform" or _held(handle, s, target, plan):
        made = run(handle, s, target)
    else:  # the plan's own measured allocation (not measured again: a probe's rounding must not move a unit)
        found = discover(handle.denoiser).structures
        counts = {f: found[f].units - len(kept) for kind in UNIT_KINDS for f, kept in mine.kept(kind).items()}
        made = run(handle, s, target, counts=counts)
        if abs(made.info["params_fraction"] - target) > 0.02:
            raise PlanError(f"this OBS-Diff plan removes {made.info['params_fraction']:.3f} of the params of the "
                            f"targets its settings prune, not its recorded target {target:.3f}: it was edited")
    if any(made.plan.kept(k) != mine.kept(k) for k in UNIT_KINDS) or mine.removed_operators:
        raise PlanError("this OBS-Diff plan's units differ from what its recorded settings select on "
                        f"{handle.model_ref}: it was edited, or made on another device")
    small = made.build(handle)
    small.pruning_plan = plan  # the same units and weights; the plan (its record, its provenance) is the caller's
    return small


class OBSDiff(Method):
    name = "obsdiff"
    title = "Optimal Brain Surgeon (OBS-Diff)"
    summary = ("Removes the heads, neurons and channel groups whose loss the remaining weights can best make up "
               "for (Optimal Brain Surgeon on timestep-weighted statistics), layer group by layer group, and "
               "compensates the rest; no training.")
    level = "unit"
    Settings = OBSDiffSettings
    presets = PRESETS
    preset_titles = {"ours": "ours (default)", "authors": "the authors' values"}
    preset_help = ("ours: the model's steps and resolution, the calibration prompts given (else 32 of the model's), "
                   "weights falling linearly from 1.2 to 0.8 over the steps, every block pruned, each layer's share "
                   "of the target measured (every layer probed alone on 8 of the prompts); the authors' values: "
                   "their released script "
                   "(100 prompts x 25 steps at 512 px, guidance 7, log-shaped weights 1.2 -> 0.8, the last block "
                   "kept, every layer the same fraction). Both: 1% damping, 4 groups, rank fusion k = 60.")
    chunkable = False  # a sequential calibration: one chunk
    work_unit = "steps (the layers' probes, then the calibration groups)"

    def comparison_settings(self, calib: tuple[str, ...], quick: bool = False) -> dict:
        """Its own default kinds (neurons, channel groups and conditioning channels): with heads, an equal per-layer fraction
        removes a quarter or half of every 4-head attention (latent MSE at 20%: flux 0.282 vs 0.0052,
        sd3 0.056 vs 0.0257 without heads)."""
        return self.quick_values() if quick else {}

    def comparison_runs(self, settings, sparsities) -> int:
        """Its selection depends on the target: one more run per target other than ``settings.sparsity``."""
        return 1 + sum(1 for t in sparsities if t != settings.sparsity)

    def cost(self, handle, settings, step) -> MethodCost:
        """One calibration pass per group over its prompts (the pruned model's own trajectories,
        every step) with the Gram updates of that group's consumers, a slim copy per pass, and the
        float64 solves; memory: the largest pass's Grams, the slim copy and one call's working memory."""
        s = run_spec(handle, settings)
        prompts = len(settings.resolved(handle).prompts)
        groups = passes(handle, settings)
        layers = tuple(sorted({c for g in groups for c in g}))
        b = min(settings.batch_size, prompts)
        batches = math.ceil(prompts / b)
        calls, batch = generation_calls(handle, s, b)
        plain = step.call(batch)
        hooked = step.hooked_call(batch, ("gram", layers), lambda: GramRecorder(handle.denoiser, list(layers)))
        widths = {c: handle.denoiser.get_submodule(c).weight[0].numel() for c in layers}  # in_features, or C*kh*kw
        seconds = len(groups) * batches * calls * plain + batches * calls * max(hooked - plain, 0.0)
        seconds += sum(step.solve_seconds(w) for w in widths.values()) + len(groups) * step.weights_bytes / 1e9
        grams = max(sum(8 * (widths[c] + 1) ** 2 for c in g) for g in groups)
        n_calls, facts = len(groups) * batches * calls, {}
        consumers = {c: handle.denoiser.get_submodule(c).weight for c in every_consumer(handle, settings)}
        # the compensated weights the run keeps (in their dtype), and the largest job's float64 OBS states
        held = sum(w.numel() * w.element_size() for w in consumers.values()) + job_bytes(handle, settings)
        if settings.allocation == "measured":  # the original's statistics, then each probe samples its prompts
            jobs, parts = probe_passes(handle, settings)
            probes = jobs * len(LEVELS) + 3  # at most: every job at each level, the reference and the two checks
            k = min(settings.probe_prompts, prompts)
            kb = min(settings.batch_size, k)
            k_calls, k_batch = generation_calls(handle, s, kb)
            per_probe = math.ceil(k / kb) * k_calls
            stats = len(parts) * (2 if len(parts) > 1 else 1)  # with several passes the check calibrates again
            seconds += stats * batches * calls * hooked
            seconds += probes * (per_probe * step.call(k_batch) + step.weights_bytes / 1e9)
            seconds += (len(LEVELS) + 2) * sum(step.solve_seconds(w) for w in widths.values())
            n_calls += stats * batches * calls + probes * per_probe
            grams = max(grams, max(sum(8 * (widths[c] + 1) ** 2 for c in part) for part in parts))
            # the check's two allocations and the probe's saved weights, in the model's dtype
            held += 3 * sum(w.numel() * w.element_size() for w in consumers.values())
            facts = {"probes": probes}
        working = grams + held + step.weights_bytes + step.working_bytes(batch)
        return MethodCost(seconds, {"denoiser calls": n_calls, "passes": len(groups), **facts,
                                    "batch": batch, "gram_mb": round(grams / 2 ** 20, 1)}, working,
                          ["fewer calibration prompts or steps", "a smaller max_gram_mb (more passes, less memory)",
                           "fewer groups", "the uniform allocation (no probes)"])

    def preset_settings(self, preset: str, family: str, **values) -> OBSDiffSettings:
        """"authors": the released script's values (``AUTHORS``, source ``AUTHORS_SOURCE``)."""
        validate.choice("preset", preset, PRESETS)
        return OBSDiffSettings(**{**AUTHORS, **values})

    def score(self, handle, settings=None, *, control: RunControl | None = None) -> Scores:
        s = settings or self.Settings()
        r = run(handle, s, s.sparsity, control=control)
        info = {k: v for k, v in r.info.items() if k != "layers"}
        return Scores(self.name, "unit", r.table, handle.model_ref, s.to_dict(), info=info)

    def to_plan(self, handle, scores: Scores, *, target_sparsity: float, scope: str | None = "local",
                budget=None, native: bool = False) -> PruningPlan:
        """OBS-Diff's plan at ``target_sparsity``: its own run at that target (its ``allocation`` shares the
        target among the layers, whatever ``scope`` or a ``budget`` say; the plan's provenance records
        it). The plan records the run, so ``pruning.export.build`` gives its
        compensated model. ``native``: whole blocks cut from its scores (no compensation: a native
        plan removes whole blocks, which leaves no consumer to compensate)."""
        if native:
            return super().to_plan(handle, scores, target_sparsity=target_sparsity, native=True)
        check_scores_fit(handle, scores)
        scope = scope or "local"
        validate.choice("scope", scope, ("global", "local"))
        s = OBSDiffSettings.from_dict(scores.settings)
        plan = run(handle, s, validate.fraction("target sparsity", target_sparsity)).plan
        return plan.with_provenance(scope=scope, partial_scores=scores.partial)

    def rebuild(self, handle, plan: PruningPlan) -> nn.Module:
        return rebuild(handle, plan)

    def rebuild_cost(self, handle, plan: PruningPlan, step) -> MethodCost | None:
        return rebuild_cost(handle, plan, step)

    def reach(self, handle, scores: Scores) -> tuple[float, str]:
        s = OBSDiffSettings.from_dict(scores.settings)
        present = set(targets(handle, s)["kind"])  # the kinds this model has (SD3: no channel groups)
        return reach(handle, s), f"its {', '.join(k for k in s.kinds if k in present)} units, all but one of each layer"


METHOD = OBSDiff()
