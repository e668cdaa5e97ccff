"""One comparison table for every method at several sparsities (feeds the quality plot).

Each method of the registry scores the model once; its scores are then cut at every target
sparsity, slimmed (and, with ``reconstruct``, also re-fitted: a second row per plan), and
evaluated on the same prompts and seeds as the original: params, MACs (at the model's own
generation size, the same figure as everywhere else), latent MSE with its standard error,
image PSNR and SSIM against the original, and, on the bundled shapes models, task accuracy
with a 95% bootstrap interval (``acc_*_lo`` / ``acc_*_hi``); on other models a CLIP score
against the prompt when the CLIP model can be loaded (else ``attrs["clip"]`` says why not).

>>> from pruning.testing import tiny_pipeline
>>> from pruning.loading import handle_from_pipe
>>> h = handle_from_pipe(tiny_pipeline("sd"), model_ref="tiny:sd")
>>> s = CompareSettings(eval_prompts=["a red circle", "a blue square"], calib_prompts=["a red circle"],
...                     random_draws=1)
>>> df = compare_methods(h, [0.2], ["magnitude", "random"], settings=s)
>>> df["method"].tolist()[:3], [round(f, 2) for f in df["params_fraction"]][:3]
(['original', 'magnitude', 'random'], [0.0, 0.2, 0.2])

The "fewer steps" rows: the original sampled with the steps that spend each plan's MACs per
image (``matched_steps``), on the same prompts and seeds (``fewer_steps=False`` leaves them out).

>>> few = df[df["method"] == FEWER_STEPS]
>>> bool((few["steps"] < few["steps_full"]).all()), set(few["sparsity"])
(True, {0.2})
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace

import numpy as np
import pandas as pd
import torch

from . import validate
from .clipscore import load_clip
from .errors import ModelLoadError, PruningError, SettingsError
from .export import build as build_model
from .methods import Scores, get, names
from .methods.select import LayerBudget
from .metrics import count_params, total_macs
from .prompts import calibration_prompts, evaluation_prompts, is_shapes_model
from .quality import bootstrap_ci, evaluate, mean_se
from .reconstruct import ReconstructSettings, reconstruct
from .runs import RunControl, RunState, StateSchema, as_control
from .sampling import count_inputs, spec

ACCURACIES = ("color", "shape", "position", "all")

MAX_SPARSITIES = 20
MAX_DRAWS = 20
EVAL_PROMPTS = 64  # the shapes models' whole held-out set (seeds 0..63)
CALIB_PROMPTS = 32  # what the methods score with, apart from the evaluation prompts


@dataclass(frozen=True)
class CompareSettings:
    """Frozen and checked. ``method_settings`` maps a method name to its settings values (a dict)."""

    eval_prompts: tuple[str, ...] | None = None  # default: 64 evaluation prompts of the model
    eval_seeds: tuple[int, ...] | None = None
    calib_prompts: tuple[str, ...] | None = None  # what the methods score with; default: 32 other prompts
    steps: int | None = None
    guidance: float | None = None
    random_draws: int = 3
    method_settings: Mapping[str, Mapping] = field(default_factory=dict)
    reconstruct: bool = False  # also evaluate every plan re-fitted by pruning.reconstruct (a second row)
    reconstruct_settings: Mapping = field(default_factory=dict)  # ReconstructSettings values
    clip: bool = True  # CLIP score on models that are not the shapes models (needs the CLIP model)
    fewer_steps: bool = True  # the "fewer steps" baseline: the original with steps cut to each plan's MACs
    budget: Mapping | None = None  # unit plans' selection budget (pruning.methods.select.LayerBudget fields)

    def __post_init__(self):
        v = validate
        if not isinstance(self.method_settings, Mapping):
            raise SettingsError("method_settings must map a method name to a dict of its settings")
        ev = v.sampling_fields(prompts=self.eval_prompts, seeds=self.eval_seeds, steps=self.steps,
                               guidance=self.guidance)
        values = {"eval_prompts": ev["prompts"], "eval_seeds": ev["seeds"], "steps": ev["steps"],
                  "guidance": ev["guidance"],
                  "calib_prompts": None if self.calib_prompts is None else v.prompt_list(self.calib_prompts,
                                                                                           "calib_prompts"),
                  "random_draws": v.integer("random_draws", self.random_draws, lo=1, hi=MAX_DRAWS),
                  "method_settings": {str(k): dict(val) for k, val in self.method_settings.items()}}
        for name in ("reconstruct", "clip", "fewer_steps"):
            if not isinstance(getattr(self, name), bool):
                raise SettingsError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if not isinstance(self.reconstruct_settings, Mapping):
            raise SettingsError("reconstruct_settings must be a dict of ReconstructSettings values")
        values["reconstruct_settings"] = dict(self.reconstruct_settings)
        values["budget"] = None if self.budget is None else LayerBudget.of(self.budget).to_dict()  # checked now
        ReconstructSettings(**values["reconstruct_settings"])  # checked now, not after the scoring
        for k, val in values.items():
            object.__setattr__(self, k, val)


def check_sparsities(values) -> list[float]:
    """1..20 distinct targets, each in (0, 1).

    >>> check_sparsities([0.1, 1.5])
    Traceback (most recent call last):
    ...
    pruning.errors.SettingsError: sparsities[1] must be a finite number in (0, 1), got 1.5
    """
    items = [values] if isinstance(values, (int, float, str)) else list(values)
    if not items:
        raise SettingsError("give at least one target sparsity in (0, 1)")
    if len(items) > MAX_SPARSITIES:
        raise SettingsError(f"{len(items)} sparsities, at most {MAX_SPARSITIES} in one comparison "
                            "(each is a plan to slim and evaluate)")
    return list(dict.fromkeys(validate.fraction(f"sparsities[{i}]", x) for i, x in enumerate(items)))


def method_settings(method, s: CompareSettings, calib: tuple[str, ...]):
    """The method's settings: its defaults, the comparison's calibration prompts and steps, overrides."""
    names = {f.name for f in fields(method.Settings)}
    values = {k: v for k, v in (("prompts", calib), ("steps", s.steps)) if k in names and v is not None}
    overrides = {k: v for name, given in s.method_settings.items() if get(name).name == method.name
                 for k, v in given.items()}  # keyed by its name or an older one
    return method.settings(**{**values, **method.comparison_settings(tuple(calib)), **overrides})


def matched_steps(steps: int, macs_fraction: float) -> int:
    """The steps at which the original spends the MACs per image of a plan that removes
    ``macs_fraction`` of the MACs per denoiser call: ``steps x (1 - macs_fraction)``, rounded,
    at least 1 (20% fewer MACs = 20% fewer steps).

    >>> matched_steps(20, 0.2), matched_steps(25, 0.3), matched_steps(3, 0.9)
    (16, 18, 1)
    """
    steps = validate.integer("steps", steps, lo=1, hi=10_000)
    f = validate.number("macs_fraction", macs_fraction, lo=0, hi=1)
    return max(1, int(round(steps * (1 - f))))


def _evaluate(handle, denoiser, prompts, seeds, ref, s: CompareSettings, control, clip=None) -> dict:
    """One model's figures and its per-image values (``samples``, pooled over random draws)."""
    out = evaluate(handle, prompts, seeds, denoiser=denoiser, reference=ref, steps=s.steps, guidance=s.guidance,
                   control=control)
    samples = dict(out.get("per_sample", {}))
    if "per_image" in out:
        samples.update({f"acc_{k}": out["per_image"][f"{k}_ok"].to_numpy(float) for k in ACCURACIES})
    if clip is not None:
        samples["clip_score"] = clip.per_image(out["images"], prompts)
    fixed = {"params": count_params(denoiser), "macs": total_macs(denoiser, **count_inputs(handle))}
    return {"fixed": fixed, "samples": samples}, out


def _row(evals: list[dict]) -> dict:
    """Means over the pooled per-image values, with intervals: the latent MSE's standard error,
    a 95% bootstrap interval of each accuracy."""
    row = {k: float(np.mean([e["fixed"][k] for e in evals])) for k in evals[0]["fixed"]}
    for k in evals[0]["samples"]:
        v = np.concatenate([e["samples"][k] for e in evals])
        row[k], se = mean_se(v)
        if k == "latent_mse":
            row["latent_mse_se"] = se
        if k.startswith("acc_"):
            row[f"{k}_lo"], row[f"{k}_hi"] = bootstrap_ci(v)
    return row


def _clip_scorer(handle, s: CompareSettings, attrs: dict):
    """The CLIP scorer for a real model, or None with the reason in ``attrs["clip"]``."""
    if is_shapes_model(handle.model_ref):
        attrs["clip"] = "not computed: the shapes models are judged by the task accuracy (no CLIP model offline)"
        return None
    if not s.clip:
        attrs["clip"] = "not computed: switched off"
        return None
    try:
        scorer = load_clip(device=handle.device)
    except ModelLoadError as e:
        attrs["clip"] = f"not computed: {e}"
        return None
    attrs["clip"] = "CLIP score (openai/clip-vit-base-patch16): 100 x cos(image, prompt), higher = closer to the prompt"
    return scorer


def compare_methods(handle, sparsities: Sequence[float], methods: Sequence[str] | None = None, *,
                    settings: CompareSettings | None = None, control: RunControl | None = None) -> pd.DataFrame:
    """Long table: method, reconstructed, sparsity (target), params_fraction (measured), params,
    macs, latent_mse (and latent_mse_se), psnr, ssim, (shapes models) acc_color / acc_shape /
    acc_position / acc_all with ``_lo`` / ``_hi`` 95% intervals, (other models) clip_score;
    reconstruct_s: seconds to re-fit the plan (reconstructed rows).

    ``methods``: names in the registry (default: all). Random rows are the mean of
    ``random_draws`` plans; an unreachable target gives a row with ``error`` set instead of
    numbers. When ``control`` stops the run, the rows finished so far come back and
    ``attrs["partial"]`` is True (``attrs["stopped"]`` says why). :func:`compare_chunk` runs
    the same comparison in resumable chunks.
    """
    return compare_chunk(handle, sparsities, methods, settings=settings, control=control)[0]


FEWER_STEPS = "fewer steps"  # the method column of the baseline's rows


def _jobs(chosen: list[str], sps: list[float], fewer_steps: bool = False) -> list[tuple]:
    """The comparison's units of work in order: each method's scoring, then its plans; last the
    fewer-steps baseline (it reads the plans' MACs)."""
    jobs = [job for name in chosen for job in [("score", name, None), *(("plan", name, t) for t in sps)]]
    return jobs + ([("steps", FEWER_STEPS, None)] if fewer_steps else [])


def _fewer_steps_rows(handle, rows, prompts, seeds, ref, s: CompareSettings, control, clip) -> list[dict]:
    """One row per (sparsity, step count) the plain plans call for: the original sampled with the
    steps that spend each plan's MACs per image (``matched_steps``), on the same prompts and seeds.
    ``plans`` says which methods' plans each row matches."""
    full = spec(handle, steps=s.steps).steps
    orig = next(r for r in rows if r.get("method") == "original")
    wanted: dict[tuple, list[str]] = {}
    for r in rows:
        if r.get("method") in ("original", FEWER_STEPS) or r.get("reconstructed") or pd.isna(r.get("macs", np.nan)):
            continue
        k = matched_steps(full, 1 - r["macs"] / orig["macs"])
        wanted.setdefault((r["sparsity"], k), []).append(r["method"])
    done: dict[int, dict] = {}
    out = []
    for (t, k), who in sorted(wanted.items()):
        if k not in done:
            settings = replace(s, steps=k)
            done[k] = _row([_evaluate(handle, handle.denoiser, prompts, seeds, ref, settings, control, clip)[0]])
        row = dict(done[k])
        row["macs"] = orig["macs"] * k / full  # MACs per denoiser call, scaled to the same MACs per image
        out.append({"method": FEWER_STEPS, "reconstructed": False, "sparsity": t, **row, "params_fraction": 0.0,
                    "steps": k, "steps_full": full, "plans": ", ".join(dict.fromkeys(who))})
    return out


def compare_chunk(handle, sparsities: Sequence[float], methods: Sequence[str] | None = None, *,
                  settings: CompareSettings | None = None, control: RunControl | None = None,
                  state: RunState | None = None) -> tuple[pd.DataFrame, RunState | None]:
    """One chunk of :func:`compare_methods`: ``(the table so far, the state to resume from)``,
    the state None once finished. Units: the original's evaluation, each method's scoring (whose
    own loop may end the chunk: its state is kept inside this one) and each (method, sparsity)
    plan. The state holds the rows, the original's per-image values, latents and images, and the
    scores of the method being evaluated."""
    control = as_control(control)
    s = settings or CompareSettings()
    sps = check_sparsities(sparsities)
    chosen = [get(m).name for m in (methods if methods is not None else names())]
    if not chosen:
        raise SettingsError("choose at least one method to compare")
    prompts = list(s.eval_prompts or evaluation_prompts(handle.model_ref, EVAL_PROMPTS))
    seeds = list(s.eval_seeds or range(len(prompts)))
    calib = tuple(s.calib_prompts or calibration_prompts(handle.model_ref, CALIB_PROMPTS))
    attrs = dict(model_ref=handle.model_ref, eval_prompts=prompts, eval_seeds=seeds, calib_prompts=list(calib),
                 methods=chosen, sparsities=sps, partial=False)
    key = {"sparsities": sps, "methods": chosen, "settings": asdict(s)}
    clip = _clip_scorer(handle, s, attrs)
    recon = ReconstructSettings(**s.reconstruct_settings) if s.reconstruct else None
    jobs = _jobs(chosen, sps, s.fewer_steps)
    n_jobs = len(chosen) * len(sps)
    rows, total, ref, j, scored, inner = [], None, None, 0, None, None
    if state is not None:
        state.check("compare", handle.model_ref, key)
        _check_state(state, jobs, len(prompts), ["original", *chosen], s)
        rows, j, total = [dict(r) for r in state.data["rows"]], int(state.data["job"]), state.data["total"]
        ref = {"latents": state.tensors["ref.latents"], "images": state.tensors["ref.images"].numpy()}
        scored = [Scores.from_dict(d) for d in state.data["scores"]] if state.data.get("scores") else None
        if state.data.get("inner"):
            inner = RunState(**{**state.data["inner"], "tensors": {
                k.removeprefix("inner."): v for k, v in state.tensors.items() if k.startswith("inner.")}})

    def snapshot() -> RunState:
        data = {"rows": rows, "job": j, "total": total,
                "scores": [x.to_dict() for x in scored] if scored else None,
                "inner": None if inner is None else {"what": inner.what, "model_ref": inner.model_ref,
                                                     "settings": inner.settings, "data": inner.data}}
        tensors = {"ref.latents": ref["latents"], "ref.images": torch.from_numpy(np.ascontiguousarray(ref["images"])),
                   **({} if inner is None else {f"inner.{k}": v for k, v in inner.tensors.items()})}
        return RunState("compare", handle.model_ref, key, data, tensors)

    chunk_ended = False
    try:
        if ref is None:  # the original, evaluated once: its row, and the reference of every other row
            base, out = _evaluate(handle, handle.denoiser, prompts, seeds, None, s, control, clip)
            ref = {"latents": out["latents"], "images": out["images"]}
            base_row = _row([base])
            total = base_row["params"]
            rows.append({"method": "original", "reconstructed": False, "sparsity": 0.0, "params_fraction": 0.0,
                         "latent_mse": 0.0, "latent_mse_se": 0.0, "psnr": 100.0, "ssim": 1.0, **base_row})
            control.unit_done()
        while j < len(jobs) and not control.stopped():
            if control.chunk_full():
                chunk_ended = True
                break
            kind, name, t = jobs[j]
            if kind == "steps":
                rows.extend(_fewer_steps_rows(handle, rows, prompts, seeds, ref, s, control, clip))
                j += 1
                control.unit_done()
                continue
            method = get(name)
            if kind == "score":
                draws = method.comparison_draws(method_settings(method, s, calib), s.random_draws)
                if len(draws) > 1:  # independent random draws (the random baseline), each scored whole
                    scored = [method.score(handle, d, control=control) for d in draws]
                else:
                    x, inner = method.run(handle, draws[0], state=inner, control=control)
                    scored = [x]
                    if inner is not None:  # the method's own loop ended the chunk (or was stopped)
                        scored, chunk_ended = None, not control.stopped()
                        break
                if any(x.partial for x in scored) or control.stopped():
                    break
                j += 1
                continue
            try:
                plans = [method.to_plan(handle, x, target_sparsity=t, budget=s.budget) for x in scored]
            except PruningError as e:
                rows.append({"method": name, "sparsity": t, "error": str(e)})
                plans = None
            if plans:
                rows.extend(_plan_rows(handle, name, t, plans, total, prompts, seeds, ref, s, control, clip, recon))
            j += 1
            if j == len(jobs) or jobs[j][0] == "score":
                scored = None  # this method's plans are done
            control.unit_done()
            control.report(sum(1 for k in jobs[:j] if k[0] == "plan"), n_jobs, method=name, sparsity=t)
    except PruningError as e:
        if not control.stopped():
            raise
        attrs["error"] = str(e)
    if control.stopped():
        attrs.update(partial=True, stopped=control.reason)
    elif chunk_ended:
        attrs.update(partial=True, stopped="chunk ended")
    df = pd.DataFrame(rows)
    df.attrs.update(attrs)
    return df, (snapshot() if attrs["partial"] and ref is not None else None)


def _check_state(state: RunState, jobs: list, n_prompts: int, methods: list[str], s: CompareSettings) -> None:
    """A resumed comparison state checked before use: the job reached, the rows so far (an object per
    row naming a compared method), the scores being evaluated (``Scores`` data), the inner state of
    the method being scored (checked by that method when it resumes), and the original's latents
    and images for the ``n_prompts`` evaluation prompts."""
    sc = StateSchema(state)
    sc.data_keys(required=("rows", "job", "total", "scores", "inner"))
    d = state.data
    sc.integer("data.job", d["job"], lo=0, hi=len(jobs))
    sc.number("data.total", d["total"], lo=1)  # the original's params (a mean over draws: a float)
    per_plan = 1 + bool(s.reconstruct)
    for i, row in enumerate(sc.items("rows", max_len=1 + per_plan * len(jobs))):
        if not isinstance(row, Mapping) or row.get("method") not in methods:
            sc.fail(f"data.rows[{i}]", f"must be an object whose method is one of {methods}")
    if d["scores"] is not None:
        for i, x in enumerate(sc.items("scores", max_len=max(1, s.random_draws))):
            try:
                Scores.from_dict(x, what=f"data.scores[{i}]")
            except SettingsError as e:
                sc.fail(f"data.scores[{i}]", f"are not valid scores ({e})")
    inner = d["inner"]
    if inner is not None:
        sc.record("data.inner", inner, {"what": lambda n, v: v if v in methods else sc.fail(n, "names no method"),
                                        "model_ref": lambda n, v: v if v == state.model_ref else sc.fail(n, "differs"),
                                        "settings": lambda n, v: v if isinstance(v, Mapping) else sc.fail(n, "is no object"),
                                        "data": lambda n, v: v if isinstance(v, Mapping) else sc.fail(n, "is no object")})
    lat = sc.tensor("ref.latents")
    if lat.dim() < 3 or lat.shape[0] != n_prompts:
        sc.fail("tensor 'ref.latents'", f"has shape {tuple(lat.shape)}, not {n_prompts} latents")
    sc.tensor("ref.images", shape=(n_prompts, None, None, 3), dtype=torch.uint8)
    sc.only_tensors(lambda k: k in ("ref.latents", "ref.images") or (inner is not None and k.startswith("inner.")))


def _plan_rows(handle, name, t, plans, total, prompts, seeds, ref, s, control, clip, recon) -> list[dict]:
    """The slim row of one (method, sparsity), and the reconstructed one with ``recon``."""
    variants = [(False, lambda p: build_model(handle, p))]  # build: a plan that carries its own weights (OBS-Diff) gets them
    if recon is not None:
        variants.append((True, lambda p: reconstruct(handle, p, recon, control=control)))
    out = []
    for rebuilt, build in variants:
        evals, seconds = [], []
        for p in plans:
            t0 = time.perf_counter()
            small = build(p)
            seconds.append(time.perf_counter() - t0)
            evals.append(_evaluate(handle, small, prompts, seeds, ref, s, control, clip)[0])
        row = _row(evals)
        row["params_fraction"] = 1 - row["params"] / total
        if rebuilt:
            row["reconstruct_s"] = float(np.mean(seconds))
        out.append({"method": name, "reconstructed": rebuilt, "sparsity": t, **row})
    return out
