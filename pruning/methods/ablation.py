"""LD-Pruner's one-step ablation score (the sweep's "fast" preset): no rollouts per operator.

The full sweep regenerates N_gen images once per operator. The fast score instead records the
original model's denoiser inputs (latents, timestep, conditioning, both guidance branches) at K
timesteps of its own trajectories for the N_gen (prompt, seed) pairs, then, for each operator,
calls the denoiser once per recorded timestep with that operator removed (the same stand-ins as
:func:`pruning.masks.masked`, so a masked output is exactly the masked model's) and measures how
far the output moves, in LD-Pruner's form, per timestep ``k``::

    d_k = ||mean_orig - mean_mod||_2 + ||std_orig - std_mod||_2     (over the N_gen samples)
    score = (1/K) sum_k d_k                                          (low = prunable)

measured on the next latent the guided prediction steps to (``weighting="step"``, the default:
each timestep weighted by the scheduler's coefficient of the prediction in its update,
|sigma_{k+1} - sigma_k| for flow matching, DDIM's epsilon coefficient for the UNets), on the
guided prediction itself (``"uniform"``: every timestep counts the same) or on the clean-latent
estimate (``"denoised"``: weighted by sigma_k for flow matching, sqrt(1 - a_t) / sqrt(a_t) for
DDIM). Measured on the bundled models (benchmark R5): all three rank with Spearman >= 0.94
against the full sweep at fine granularity; "step" is the default because its 20% plans were
never worse than the full sweep's (tiny-shapes-sd3: uniform's plan loses 39 points of accuracy).
The recorded timesteps are the centres of K equal stretches of the schedule
(:func:`recorded_steps`); the rollout stops at the last one.

Cost: (last recorded step + 1) calls to record, then K calls per operator, each at the
generation's batch (N_gen, doubled for CFG): about K / steps of the full sweep. With
``ablation_batch`` = M > 1, M operators share one call: the recorded inputs are repeated M
times and each operator is removed only in its own copy (per-sample gates, :func:`removed_per_sample`).

>>> from pruning.testing import tiny_pipeline
>>> from pruning.loading import handle_from_pipe
>>> from pruning.methods.ldpruner import SweepSettings, sweep
>>> h = handle_from_pipe(tiny_pipeline("sd"), model_ref="tiny:sd")
>>> ops = ("mid_block.resnets.0", "down_blocks.0.attentions.0.transformer_blocks.0.attn2")
>>> s = SweepSettings(prompts=("a red circle", "a blue square"), n_gen=2, steps=4, operators=ops, fast=True)
>>> df = sweep(h, s, show_progress=False)
>>> len(df), df.attrs["settings"]["timesteps"], df.attrs["settings"]["weighting"], bool((df["score"] > 0).all())
(2, 2, 'step', True)
>>> recorded_steps(50, 2), recorded_steps(10, 3)
([12, 37], [1, 5, 8])
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from tqdm.auto import tqdm

from ..bundled import ASSETS
from ..catalog import discover
from ..errors import SettingsError
from ..masks import _ForwardOverride, masked
from ..plan import PruningPlan
from ..replacements import replacement_for
from ..rollout import Trajectory, advance, guided, prepare, raw_outputs
from ..runs import as_control
from ..sampling import GenerationStopped
from .proxy import model_entry, read_measured
from .sweep_table import SCORE_COLUMNS, halted, ldpruner_score, resumed_rows, scored_table, select_operators

TARGETS = ("uniform", "step", "denoised")  # the weightings, in the order of the distance arrays' axis 1


def recorded_steps(steps: int, k: int) -> list[int]:
    """The K step indices recorded out of ``steps``: the centres of K equal stretches."""
    if not 1 <= k <= steps:
        raise SettingsError(f"timesteps (K) must be in 1..{steps} (the denoising steps), got {k}")
    return [int((j + 0.5) * steps / k) for j in range(k)]


def fast_calls(operators: int, steps: int, k: int, *, batch: int, calls_per_step: int = 1,
               ablation_batch: int = 1) -> dict:
    """The denoiser calls of a fast score: the recording (the original rollout up to the last
    recorded step) and the ablations (K calls per group of ``ablation_batch`` operators), with
    ``work`` = the sum of calls x samples per call. ``batch``: the generation's samples per call
    (N_gen, doubled for CFG); ``calls_per_step``: 2 for FLUX's true CFG (a second, negative pass).

    >>> c = fast_calls(70, 50, 2, batch=16)       # SD 1.5: 70 fine operators, 50 steps, N_gen 8 with CFG
    >>> c["recording calls"], c["ablation calls"], c["work"]
    (38, 140, 2848)
    >>> fast_calls(70, 50, 2, batch=16, ablation_batch=8)["ablation calls"]   # 9 groups x 2 steps
    18
    """
    record = calls_per_step * (recorded_steps(steps, k)[-1] + 1)
    ablate = -(-operators // ablation_batch) * k * calls_per_step
    return {"recording calls": record, "ablation calls": ablate, "denoiser calls": record + ablate,
            "batch": batch, "ablation batch": batch * ablation_batch,
            "work": (record + operators * k * calls_per_step) * batch}  # every operator's copy: ``batch`` samples


# --------------------------------------------------------------------------- recording


@dataclass
class Recording:
    """The original model at the recorded steps: z_k, the denoiser calls made there (args and
    kwargs, exactly as the pipeline makes them), their outputs, the guided prediction and the
    next latent."""

    traj: Trajectory
    steps: list[int]
    z: list[torch.Tensor]
    calls: list[list[tuple[tuple, dict]]] = field(default_factory=list)
    outs: list[list[torch.Tensor]] = field(default_factory=list)
    pred: list[torch.Tensor] = field(default_factory=list)
    next: list[torch.Tensor] = field(default_factory=list)
    x0: list[torch.Tensor] = field(default_factory=list)

    def stacked(self) -> torch.Tensor:
        """The recorded latents as one ``(K, B, ...)`` CPU tensor (a chunked run's state)."""
        return torch.stack([z.detach().cpu() for z in self.z])


@contextmanager
def _capture(denoiser: torch.nn.Module, calls: list) -> Iterator[None]:
    def hook(_m, args, kwargs):
        calls.append((args, dict(kwargs)))
    h = denoiser.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        h.remove()


def _observe(rec: Recording, denoiser, i: int, z: torch.Tensor) -> list[torch.Tensor]:
    calls: list = []
    with _capture(denoiser, calls):
        outs = raw_outputs(denoiser, rec.traj, i, z)
    pred = guided(rec.traj, outs)
    rec.calls.append(calls)
    rec.outs.append(outs)
    rec.pred.append(pred)
    rec.next.append(advance(rec.traj, i, z, pred))
    rec.x0.append(denoised(rec.traj, i, z, pred))
    return outs


@torch.no_grad()
def record(handle, settings, *, stop=None, z: torch.Tensor | None = None) -> Recording:
    """Roll the original model out for ``settings``' samples (resolved sweep settings) up to its
    last recorded step, keeping its inputs and outputs there. ``z``: the recorded latents of an
    earlier run (``Recording.stacked``): no rollout then, only the K calls at them."""
    prompts, seeds = settings.samples()
    traj = prepare(handle, prompts, seeds, steps=settings.steps, guidance=settings.guidance,
                   resolution=settings.resolution)
    ks = recorded_steps(traj.steps, settings.timesteps)
    den = handle.denoiser
    rec = Recording(traj, ks, [])
    if z is not None:
        if len(z) != len(ks):
            raise SettingsError(f"the saved state holds {len(z)} recorded steps, the settings ask for {len(ks)}")
        for i, zk in zip(ks, z):
            rec.z.append(zk.to(traj.z0.device, traj.z0.dtype))
            _observe(rec, den, i, rec.z[-1])
        return rec
    x = traj.z0
    for i in range(ks[-1] + 1):
        if stop is not None and stop.is_set():
            raise GenerationStopped("generation stopped")
        if i in ks:
            rec.z.append(x)
            _observe(rec, den, i, x)
            x = rec.next[-1]
        else:
            x = advance(traj, i, x, guided(traj, raw_outputs(den, traj, i, x)))
    return rec


_RECORDINGS: OrderedDict = OrderedDict()  # (model_ref, device, dtype, generation key, K) -> Recording
_LOCK = threading.Lock()


def _key(handle, s) -> tuple:
    return (handle.model_ref, str(handle.device), str(handle.dtype), s.generation_key(), s.timesteps)


def recording(handle, s, *, stop=None, z: torch.Tensor | None = None) -> Recording:
    """:func:`record`, cached in process per (model, generation settings, K) (the last 4)."""
    key = _key(handle, s)
    with _LOCK:
        if key in _RECORDINGS:
            _RECORDINGS.move_to_end(key)
            return _RECORDINGS[key]
    rec = record(handle, s, stop=stop, z=z)
    with _LOCK:
        _RECORDINGS[key] = rec
        while len(_RECORDINGS) > 4:
            _RECORDINGS.popitem(last=False)
    return rec


def cached_recording(handle, s) -> Recording | None:
    with _LOCK:
        return _RECORDINGS.get(_key(handle, s))


def clear_cache() -> None:
    with _LOCK:
        _RECORDINGS.clear()


# --------------------------------------------------------------------------- per-sample removal


def _mix(keep: torch.Tensor, out, alt):
    """``out`` where ``keep`` (per sample: bool (batch,) or a float gate), else ``alt``, per tensor."""
    if out is None or alt is None:
        return out if alt is None else alt
    if isinstance(out, torch.Tensor):
        if keep.dtype == torch.bool:
            return torch.where(keep.view(-1, *[1] * (out.ndim - 1)), out, alt)  # (batch, 1, ...) broadcast
        return keep * out + (1 - keep) * alt  # a scalar gate: the first-order variant's
    if isinstance(out, Transformer2DModelOutput):
        return Transformer2DModelOutput(sample=_mix(keep, out.sample, alt.sample))
    return tuple(_mix(keep, o, a) for o, a in zip(out, alt))


@contextmanager
def removed_per_sample(denoiser: torch.nn.Module, gates: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """Each operator ``fqn`` in ``gates`` computes both itself and its stand-in (the one
    :func:`~pruning.masks.masked` uses) and returns, per sample, its own output where the gate
    is true and the stand-in's where it is false (a bool ``(batch,)`` gate: the outputs are
    exactly those of the masked model), or ``g * own + (1 - g) * stand-in`` for a float gate."""
    found = discover(denoiser)
    handles = []
    try:
        for fqn, gate in gates.items():
            op = found.operators.get(fqn)
            if op is None:
                raise SettingsError(f"no removable operator named {fqn!r} in this denoiser")
            module = denoiser.get_submodule(fqn)
            standin, own = replacement_for(module, op.kind), module.forward

            def forward(*args, _own=own, _alt=standin, _g=gate, **kwargs):
                return _mix(_g, _own(*args, **kwargs), _alt(*args, **kwargs))
            handles.append(_ForwardOverride(module, forward))
        yield
    finally:
        for h in reversed(handles):
            h.remove()


_NOT_BATCHED = ("img_ids", "txt_ids")  # FLUX's token positions: (tokens, 3), shared by the batch


def _repeat(x, m: int, batch: int, name: str = ""):
    """A recorded call argument for ``m`` copies of the batch: tensors with the batch as dim 0
    are repeated (copy j = rows j*batch .. (j+1)*batch - 1); FLUX's position ids are not."""
    if isinstance(x, torch.Tensor):
        if x.ndim >= 1 and x.shape[0] == batch and name not in _NOT_BATCHED:
            return x.repeat(m, *[1] * (x.ndim - 1))  # (batch, ...) -> (m * batch, ...)
        return x
    if isinstance(x, dict):
        return {k: _repeat(v, m, batch, k) for k, v in x.items()}
    return x


def _call_batch(args: tuple, kwargs: dict) -> int:
    first = args[0] if args else kwargs.get("hidden_states", kwargs.get("sample"))
    return int(first.shape[0])


def _batched_outputs(denoiser, rec: Recording, k: int, fqns: Sequence[str]) -> list[list[torch.Tensor]]:
    """Per operator in ``fqns``, the raw outputs at recorded step ``k`` with it removed, all
    operators in one call per recorded call (``len(fqns)`` copies of the batch)."""
    m = len(fqns)
    per_op: list[list[torch.Tensor]] = [[] for _ in fqns]
    for args, kwargs in rec.calls[k]:
        b = _call_batch(args, kwargs)
        device = rec.outs[k][0].device
        slot = torch.arange(m * b, device=device) // b  # (m * b,): which copy each row is
        gates = {f: slot != j for j, f in enumerate(fqns)}
        with removed_per_sample(denoiser, gates):
            out = denoiser(*[_repeat(a, m, b) for a in args], **{n: _repeat(v, m, b, n) for n, v in kwargs.items()})[0]
        for j, piece in enumerate(out.view(m, b, *out.shape[1:])):  # (m * b, ...) -> m of (b, ...)
            per_op[j].append(piece)
    return per_op


def denoised(traj: Trajectory, i: int, z: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """The clean-latent estimate at step i: the scheduler's ``pred_original_sample`` (DDIM, Euler),
    or ``z - sigma_i * v`` for flow matching (whose step does not return it)."""
    sched = traj.scheduler
    sched._step_index = i
    out = sched.step(pred, traj.timesteps[i], z, return_dict=True)
    x0 = getattr(out, "pred_original_sample", None)
    return x0 if x0 is not None else z - sched.sigmas[i].to(z.device, z.dtype) * pred


def _distances(rec: Recording, k: int, outs: list[torch.Tensor]) -> np.ndarray:
    """``(3, 2)``: [uniform (prediction), step (next latent), denoised (clean estimate)] x
    [avg_dist, std_dist] at recorded step k."""
    i, z = rec.steps[k], rec.z[k]
    pred = guided(rec.traj, outs)
    pairs = ((rec.pred[k], pred), (rec.next[k], advance(rec.traj, i, z, pred)),
             (rec.x0[k], denoised(rec.traj, i, z, pred)))
    return np.array([[d["avg_dist"], d["std_dist"]] for d in (ldpruner_score(a, b) for a, b in pairs)])


@torch.no_grad()
def ablation_distances(handle, rec: Recording, fqns: Sequence[str], *, batch: int = 1) -> dict[str, np.ndarray]:
    """Per operator, its ``(K, 3, 2)`` distances (recorded step x weighting x avg/std) with it
    removed. ``batch`` 1: the masked model itself (:func:`~pruning.masks.masked`), one operator
    per call; more: ``batch`` operators per call (:func:`removed_per_sample`)."""
    den, out = handle.denoiser, {}
    if batch <= 1:
        for fqn in fqns:
            plan = PruningPlan(family=handle.family, base=handle.model_ref, removed_operators=(fqn,))
            with masked(den, plan):
                out[fqn] = np.stack([_distances(rec, k, raw_outputs(den, rec.traj, i, rec.z[k]))
                                     for k, i in enumerate(rec.steps)])
        return out
    for start in range(0, len(fqns), batch):
        group = list(fqns[start:start + batch])
        per_k = [_batched_outputs(den, rec, k, group) for k in range(len(rec.steps))]
        for j, fqn in enumerate(group):
            out[fqn] = np.stack([_distances(rec, k, per_k[k][j]) for k in range(len(rec.steps))])
    return out


def aggregate(d: np.ndarray, weighting: str) -> dict[str, float]:
    """``avg_dist``, ``std_dist``, ``score`` of an operator's ``(K, 3, 2)`` distances: the mean
    over the recorded steps for the ``weighting`` ("uniform": on the prediction; "step": on the
    next latent; "denoised": on the clean-latent estimate)."""
    a, s = d[:, TARGETS.index(weighting)].mean(0)
    return {"avg_dist": float(a), "std_dist": float(s), "score": float(a + s)}


# --------------------------------------------------------------------------- the table


def sweep(handle, s, *, control=None, resume: pd.DataFrame | None = None, recorded: torch.Tensor | None = None,
          show_progress: bool = True) -> pd.DataFrame:
    """:func:`pruning.methods.ldpruner.sweep` for fast settings (``s.fast``, resolved): the same
    table, scored by one-step ablation. ``recorded``: the recorded latents of an earlier chunk."""
    control = as_control(control)
    todo = select_operators(handle, s)
    total = len(todo)
    done = resumed_rows(resume, todo)
    rows = {r["fqn"]: r for r in todo.to_dict("records")}
    results = {f: {**rows[f], **{k: done[f][k] for k in SCORE_COLUMNS[:3]}} for f in todo["fqn"] if f in done}
    pending = [f for f in todo["fqn"] if f not in done]
    partial = chunk_ended = False
    bar = tqdm(total=total, initial=len(results), desc="LD-Pruner fast score", unit="op",
               disable=not show_progress, leave=False)
    try:
        rec = None
        for start in range(0, len(pending), s.ablation_batch):
            if halt := halted(control):
                partial, chunk_ended = True, halt == "chunk"
                break
            try:
                rec = rec or recording(handle, s, stop=control, z=recorded)
            except GenerationStopped:
                partial = True
                break
            group = pending[start:start + s.ablation_batch]
            for fqn, d in ablation_distances(handle, rec, group, batch=s.ablation_batch).items():
                results[fqn] = {**rows[fqn], **aggregate(d, s.weighting)}
                control.unit_done()
                control.report(len(results), total, fqn=fqn)
            bar.update(len(group))
    finally:
        bar.close()
    return scored_table(results, todo, s, model_ref=handle.model_ref, partial=partial, chunk_ended=chunk_ended)


# --------------------------------------------------------------------------- first order


def first_order_scores(handle, rec: Recording, fqns: Sequence[str], *, weighting: str = "step",
                       seed: int = 0) -> dict[str, float]:
    """The first-order variant: one backward per recorded step scores every operator. Each
    operator gets a scalar gate g (1 = kept) mixing its output with its stand-in's; the score is
    the mean over the recorded steps of |d<y(g), r_k>/dg| at g = 1, where y is the guided
    prediction ("uniform") or the next latent ("step") and r_k a fixed Gaussian probe: the
    first-order change of y's projection on r_k when the operator is removed (its expected
    square is the squared Frobenius norm of that change)."""
    den = handle.denoiser
    gates = {f: torch.ones((), device=rec.z[0].device, requires_grad=True) for f in fqns}
    flags = [(p, p.requires_grad) for p in den.parameters()]
    totals = np.zeros(len(fqns))
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        for k, i in enumerate(rec.steps):
            with torch.enable_grad(), removed_per_sample(den, gates):
                outs = [den(*args, **kwargs)[0] for args, kwargs in rec.calls[k]]
                y = guided(rec.traj, outs)
                if weighting == "step":
                    y = advance(rec.traj, i, rec.z[k], y)
                elif weighting == "denoised":
                    y = denoised(rec.traj, i, rec.z[k], y)
                gen = torch.Generator(device="cpu").manual_seed(seed + k)
                r = torch.randn(y.shape, generator=gen).to(y.device, y.dtype)
                grads = torch.autograd.grad((y * r).sum(), list(gates.values()), allow_unused=True)
            totals += np.array([0.0 if g is None else abs(float(g)) for g in grads]) / len(rec.steps)
    finally:
        for p, f in flags:
            p.requires_grad_(f)
    return dict(zip(fqns, totals.tolist()))


# --------------------------------------------------------------------------- the measured agreement

AGREEMENT_FILE = ASSETS / "ablation_agreement.json"
FORMAT = "pruning-ablation-agreement/1"
FIGURES = ("spearman", "top_k_overlap", "removed_overlap", "time_ratio")  # each model entry has these


def measured(path: Path = AGREEMENT_FILE) -> dict | None:
    """The whole measured-agreement file (written by ``python -m benchmarks R5``), or None if absent."""
    return read_measured(path, FORMAT)


def fast_agreement(model_ref: str, path: Path = AGREEMENT_FILE) -> dict | None:
    """The fast score's measured agreement for ``model_ref`` (a bundled model measured by R5,
    matched by content hash), or None where it was not measured.

    >>> from pruning import load_pipeline
    >>> a = fast_agreement(load_pipeline("tiny-shapes-sd").model_ref)
    >>> a["model"], a["granularity"], 0 < a["spearman"] <= 1
    ('tiny-shapes-sd', 'fine', True)
    >>> fast_agreement("hub:org/other@abc") is None
    True
    """
    return model_entry(measured(path), model_ref)


def _figures(e: dict) -> str:
    p = e["plans"]
    return (f"Spearman {e['spearman']:.2f} with the full ranking, {e['top_k_overlap']:.0%} of its {e['top_k']} most "
            f"prunable operators shared, {e['removed_overlap']:.0%} of those removed at {e['sparsity']:.0%} sparsity "
            f"shared; the {e['sparsity']:.0%} plans' accuracy {p['fast']['accuracy']:.0%} (fast) vs "
            f"{p['full']['accuracy']:.0%} (full, 95% interval {p['full']['accuracy_ci'][0]:.0%}-"
            f"{p['full']['accuracy_ci'][1]:.0%}); {e['time_ratio']:.1f}x faster")


def fast_note(model_ref: str | None = None, path: Path = AGREEMENT_FILE) -> str:
    """One line for whoever chooses the fast score: what it is, its measured agreement with the
    full sweep (this model's if measured, else the bundled models', labelled as such) and its
    share of the sweep's denoiser work on the real models.

    >>> fast_note("hub:org/other@abc").split(":")[0]
    'Fast score (one-step ablation, no rollouts)'
    >>> "not measured on this model" in fast_note("hub:org/other@abc")
    True
    """
    data = measured(path) or {}
    models = data.get("models") or {}
    head = "Fast score (one-step ablation, no rollouts)"
    if not models:
        return f"{head}: its agreement with the full sweep has not been measured (run `python -m benchmarks R5`)."
    real = data.get("real_models") or {}
    work = ("; denoiser work " + ", ".join(f"{n} {r['work_ratio']:.0%}" for n, r in real.items())
            + " of the full sweep's") if real else ""
    own = fast_agreement(model_ref, path) if model_ref else None
    if own is not None:
        return f"{head}: measured on {own['model']}: {_figures(own)}{work}."
    parts = "; ".join(f"{name}: {_figures(e)}" for name, e in models.items())
    return (f"{head}: not measured on this model. Measured on the bundled models: {parts}{work}. "
            "Check a plan cut from fast scores against the original before relying on it.")


def check_entry(name: str, entry: dict) -> dict:
    """Raise ``SettingsError`` naming the model and the field unless ``entry`` is a complete figure set."""
    for key in ("model_ref", "operators", "top_k", "sparsity", "plans", *FIGURES):
        if key not in entry:
            raise SettingsError(f"fast-score agreement for {name!r} has no {key!r}")
    for key in FIGURES:
        if not isinstance(entry[key], (int, float)) or not math.isfinite(entry[key]):
            raise SettingsError(f"fast-score agreement for {name!r}: {key} must be a finite number, got {entry[key]!r}")
    return entry
