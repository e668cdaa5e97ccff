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

import copy
import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import numpy as np
import pandas as pd
import torch

from . import validate
from .clipscore import load_clip
from .errors import ModelLoadError, PruningError, SettingsError
from .export import build as build_model
from .export import check_base
from .labels import method_name, model_name, model_tooltip, plural, settings_label
from .methods import Method, Scores, check_scores_fit, get, names
from .methods.select import LayerBudget
from .metrics import count_params, total_macs
from .plan import PruningPlan
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
    """Frozen and checked. ``method_settings`` maps a method name to its settings values (a dict):
    the settings the visitor ran, used instead of the comparison's (each curve's ``label`` names them).

    ``method_scores`` maps a method name to scores the visitor already has for this model (a
    :class:`~pruning.methods.Scores` or its ``to_dict()`` data): that method is not scored again,
    its plans are cut from these scores and its label names their settings ("...; your scores").
    Random is always drawn again (its curve is a mean over ``random_draws`` draws).

    ``own_plan`` (a :class:`~pruning.plan.PruningPlan` or its dict): the visitor's own plan, evaluated
    as one more row (method :data:`OWN_PLAN`, label ``own_label`` or the plan's description) on the
    same prompts and seeds as every curve; :func:`evaluate_plan` gives the same figures alone."""

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
    method_scores: Mapping[str, Any] = field(default_factory=dict)  # method name -> the visitor's Scores
    own_plan: Any = None  # the visitor's PruningPlan: one more row on the same prompts and seeds
    own_label: str | None = None  # that row's label (default: the plan's description)

    def __post_init__(self):
        v = validate
        if not isinstance(self.method_settings, Mapping):
            raise SettingsError("method_settings must map a method name to a dict of its settings")
        if not all(isinstance(val, Mapping) for val in self.method_settings.values()):
            bad = next(k for k, val in self.method_settings.items() if not isinstance(val, Mapping))
            raise SettingsError(f"method_settings[{bad!r}] must be a dict of {bad}'s settings, "
                                f"got {type(self.method_settings[bad]).__name__}")
        object.__setattr__(self, "method_scores", _checked_scores(self.method_scores))
        object.__setattr__(self, "own_plan", _checked_plan(self.own_plan))
        if self.own_label is not None and (not isinstance(self.own_label, str) or not self.own_label.strip()):
            raise SettingsError(f"own_label must be a non-empty text, got {self.own_label!r}")
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


def _checked_scores(value) -> dict[str, Scores]:
    """``{method name: Scores}``, each the scores of the method it is filed under."""
    if not isinstance(value, Mapping):
        raise SettingsError("method_scores must map a method name to that method's scores")
    out = {}
    for name, x in value.items():
        key = get(str(name)).name
        sc = x if isinstance(x, Scores) else Scores.from_dict(x, what=f"method_scores[{str(name)!r}]")
        if sc.method != key:
            raise SettingsError(f"method_scores[{str(name)!r}] are {sc.method} scores, not {key} scores")
        out[key] = sc
    return out


def _checked_plan(value) -> PruningPlan | None:
    if value is None or isinstance(value, PruningPlan):
        return value
    if isinstance(value, Mapping):
        return PruningPlan.from_dict(value)
    raise SettingsError(f"own_plan must be a PruningPlan (or its dict), got {type(value).__name__}")


def settings_key(s: CompareSettings) -> dict:
    """The settings as plain JSON data (what a resumed comparison must match): the visitor's
    scores by a digest of their data, the own plan as its dict."""
    plain = {f.name: getattr(s, f.name) for f in fields(s) if f.name not in ("method_scores", "own_plan")}
    out = json.loads(json.dumps(plain, default=list))
    out["method_scores"] = {k: hashlib.sha256(json.dumps(x.to_dict(), sort_keys=True).encode()).hexdigest()[:16]
                            for k, x in s.method_scores.items()}
    out["own_plan"] = None if s.own_plan is None else s.own_plan.to_dict()
    return out


def check_sparsities(values) -> list[float]:
    """1..20 distinct targets, each in (0, 1); an error says what a target is and names the culprit.

    >>> check_sparsities([0.1, 1.5])
    Traceback (most recent call last):
    ...
    pruning.errors.SettingsError: target sparsities are fractions between 0 and 1, like 0.2 (the share of the params to remove); sparsities[1] is 1.5 (write 1.5% as 0.015)
    """
    items = [values] if isinstance(values, (int, float, str)) else list(values)
    if not items:
        raise SettingsError("give at least one target sparsity: a fraction between 0 and 1, like 0.2")
    if len(items) > MAX_SPARSITIES:
        raise SettingsError(f"{len(items)} sparsities, at most {MAX_SPARSITIES} in one comparison "
                            "(each is a plan to slim and evaluate)")
    out = []
    for i, x in enumerate(items):
        try:
            out.append(validate.fraction(f"sparsities[{i}]", x))
        except SettingsError:
            text = x.strip() if isinstance(x, str) else None
            shown_x = f"{x:g}" if isinstance(x, float) else text if text and re.fullmatch(r"[\w.%+-]{1,20}", text) \
                else validate.shown(x)  # as typed, quoted only when it is odd
            raise SettingsError("target sparsities are fractions between 0 and 1, like 0.2 (the share of the params "
                                f"to remove); sparsities[{i}] is {shown_x}{validate.percent_hint(x)}") from None
    return list(dict.fromkeys(out))


def method_settings(method, s: CompareSettings, calib: tuple[str, ...]):
    """The method's settings: its defaults, the comparison's calibration prompts and steps, overrides
    (``s.method_settings``); with the visitor's scores (``s.method_scores``), the settings they were
    made with."""
    if method.name in s.method_scores:
        return method.settings(**s.method_scores[method.name].settings)
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
                    settings: CompareSettings | None = None, control: RunControl | None = None,
                    refit: Callable | None = None) -> pd.DataFrame:
    """Long table: method, label (the method and the settings it ran with, e.g. "EcoDiff
    (authors' configs, 3 epochs)"), reconstructed, sparsity (target), params_fraction (measured),
    params, macs, latent_mse (and latent_mse_se), psnr, ssim, (shapes models) acc_color /
    acc_shape / acc_position / acc_all with ``_lo`` / ``_hi`` 95% intervals, (other models)
    clip_score; n_prompts (the images each figure is a mean over, per draw); reconstruct_s:
    seconds to re-fit the plan (reconstructed rows). With ``settings.own_plan``, one more row
    (method :data:`OWN_PLAN`) for the visitor's plan on the same prompts and seeds.

    ``attrs``: ``model`` (its display name), ``weights`` (the hash, for a tooltip),
    ``labels`` ({method: label}), ``computed_on`` (one line: what every figure is
    computed on, :func:`computed_on`), ``reused_scores`` (methods not scored again:
    ``settings.method_scores``), ``eval_prompts`` / ``eval_seeds`` / ``calib_prompts``, ``clip``.

    ``methods``: names in the registry (default: all). Random rows are the mean of
    ``random_draws`` plans; an unreachable target gives a row with ``error`` set instead of
    numbers. When ``control`` stops the run, the rows finished so far come back and
    ``attrs["partial"]`` is True (``attrs["stopped"]`` says why). :func:`compare_chunk` runs
    the same comparison in resumable chunks.

    ``refit(handle, plan, reconstruct_settings, control)`` re-fits a plan for the reconstructed
    rows (default :func:`pruning.reconstruct.reconstruct`): the app passes one that reuses a
    re-fit it already holds. ``reconstruct_s`` is the re-fit's own time (its report's seconds).
    """
    return compare_chunk(handle, sparsities, methods, settings=settings, control=control, refit=refit)[0]


FEWER_STEPS = "fewer steps"  # the method column of the baseline's rows
OWN_PLAN = "your plan"  # the method column of the visitor's own plan (CompareSettings.own_plan)


def _jobs(chosen: list[str], sps: list[float], fewer_steps: bool = False, own: bool = False) -> list[tuple]:
    """The comparison's units of work in order: the visitor's own plan, each method's scoring,
    then its plans; last the fewer-steps baseline (it reads the plans' MACs)."""
    jobs = [("own", OWN_PLAN, None)] if own else []
    jobs += [job for name in chosen for job in [("score", name, None), *(("plan", name, t) for t in sps)]]
    return jobs + ([("steps", FEWER_STEPS, None)] if fewer_steps else [])


def evaluation_set(handle, settings: CompareSettings | None = None) -> tuple[list[str], list[int]]:
    """The prompts and seeds every figure of a comparison is computed on (one seed per prompt):
    ``settings.eval_prompts`` (default: the model's first ``EVAL_PROMPTS`` evaluation prompts) and
    ``settings.eval_seeds`` (default 0, 1, ...). :func:`evaluate_plan` uses the same.

    >>> from types import SimpleNamespace
    >>> evaluation_set(SimpleNamespace(model_ref="tiny:sd"), CompareSettings(eval_prompts=["a", "b"]))
    (['a', 'b'], [0, 1])
    """
    s = settings or CompareSettings()
    prompts = list(s.eval_prompts or evaluation_prompts(handle.model_ref, EVAL_PROMPTS))
    seeds = list(s.eval_seeds or range(len(prompts)))
    if len(seeds) != len(prompts):
        raise SettingsError(f"eval_seeds: {plural(len(seeds), 'seed')} for {plural(len(prompts), 'prompt')}; "
                            "give one seed per prompt")
    return prompts, seeds


def computed_on(handle, settings: CompareSettings | None = None) -> str:
    """One line saying what every figure of a comparison (and :func:`evaluate_plan`) is computed on,
    e.g. "latent MSE, PSNR and SSIM against the original and the shapes task accuracy, on 4 prompts
    x 1 seed each (seeds 0-3), 10 steps, guidance 1".

    >>> from pruning.testing import tiny_pipeline
    >>> from pruning.loading import handle_from_pipe
    >>> h = handle_from_pipe(tiny_pipeline("sd"), model_ref="tiny:sd")
    >>> computed_on(h, CompareSettings(eval_prompts=["a red circle", "a blue square"], steps=2))
    'latent MSE, PSNR and SSIM against the original (CLIP score where the CLIP model loads), on 2 prompts x 1 seed each (seeds 0-1), 2 steps, guidance 7.5'
    """
    s = settings or CompareSettings()
    prompts, seeds = evaluation_set(handle, s)
    g = spec(handle, steps=s.steps, guidance=s.guidance)
    if is_shapes_model(handle.model_ref):
        what = "latent MSE, PSNR and SSIM against the original and the shapes task accuracy"
    elif s.clip:
        what = "latent MSE, PSNR and SSIM against the original (CLIP score where the CLIP model loads)"
    else:
        what = "latent MSE, PSNR and SSIM against the original"
    span = f"seeds {seeds[0]}-{seeds[-1]}" if seeds == list(range(seeds[0], seeds[0] + len(seeds))) else \
        f"seeds {', '.join(map(str, seeds[:4]))}{'...' if len(seeds) > 4 else ''}"
    return (f"{what}, on {plural(len(prompts), 'prompt')} x 1 seed each ({span}), {plural(g.steps, 'step')}, "
            f"guidance {g.guidance:g}")


def plan_label(plan: PruningPlan, s: CompareSettings) -> str:
    """The own plan's label: ``s.own_label``, else the plan's description ("EcoDiff 20%, edited by hand")."""
    from .plan import describe

    return s.own_label or describe(plan)


def _own_row(handle, plan: PruningPlan, total, prompts, seeds, ref, s: CompareSettings, control, clip) -> dict:
    """The visitor's own plan, built as exported (``pruning.export.build``) and evaluated like every plan."""
    from .plan import EDITED

    small = build_model(handle, plan)
    row = _row([_evaluate(handle, small, prompts, seeds, ref, s, control, clip)[0]])
    row["params_fraction"] = 1 - row["params"] / total
    target = plan.provenance.get("target_sparsity")  # a method's target; after a hand edit, what it removes
    aimed = isinstance(target, (int, float)) and not isinstance(target, bool) and not plan.provenance.get(EDITED)
    sparsity = float(target) if aimed else round(row["params_fraction"], 4)
    return {"method": OWN_PLAN, "label": plan_label(plan, s), "reconstructed": False,
            "sparsity": sparsity, **row, "n_prompts": len(prompts)}


def evaluate_plan(handle, plan: PruningPlan, settings: CompareSettings | None = None, *,
                  control: RunControl | None = None) -> dict:
    """One plan's figures on the comparison's prompts and seeds (:func:`evaluation_set`), the same
    row a comparison with ``CompareSettings(own_plan=plan)`` gives it (method :data:`OWN_PLAN`):
    params, macs, params_fraction, latent_mse (+ latent_mse_se), psnr, ssim, and on the shapes
    models acc_color / acc_shape / acc_position / acc_all with ``_lo`` / ``_hi``, n_prompts, label;
    ``computed_on`` says on what, in one line. For the Select tab's figure to equal the
    comparison's point of the same plan, compute it here with the same settings.

    >>> from pruning.testing import tiny_pipeline
    >>> from pruning.loading import handle_from_pipe
    >>> from pruning.methods import get
    >>> h = handle_from_pipe(tiny_pipeline("sd"), model_ref="tiny:sd")
    >>> plan = get("magnitude").to_plan(h, get("magnitude").score(h), target_sparsity=0.2)
    >>> r = evaluate_plan(h, plan, CompareSettings(eval_prompts=["a red circle", "a blue square"], steps=2))
    >>> r["method"], r["label"], r["n_prompts"], r["latent_mse"] > 0
    ('your plan', 'Weight magnitude 20%', 2, True)
    """
    control = as_control(control)
    s = settings or CompareSettings()
    check_base(plan, handle, "your plan")
    prompts, seeds = evaluation_set(handle, s)
    attrs: dict = {}
    clip = _clip_scorer(handle, s, attrs)
    base, out = _evaluate(handle, handle.denoiser, prompts, seeds, None, s, control, clip)
    ref = {"latents": out["latents"], "images": out["images"]}
    row = _own_row(handle, plan, _row([base])["params"], prompts, seeds, ref, s, control, clip)
    return {**row, "computed_on": computed_on(handle, s), **({"clip": attrs["clip"]} if "clip" in attrs else {})}


class _Progress:
    """The comparison's one progress count: ``(units done, units)`` over the whole run (the original,
    the own plan, each method's scoring, each plan, the fewer-steps baseline), never going back;
    ``info``: ``phase`` (what runs now, in words), ``fraction`` (of the whole run, with the running
    method's own progress inside its unit: monotone too) and, during a method's scoring, ``inner``
    (that method's own ``done``, ``total`` and report)."""

    def __init__(self, control: RunControl, jobs: list):
        self.control, self.units, self.best = control, len(jobs) + 1, 0.0

    def report(self, done_units: int, phase: str, share: float = 0.0, **info) -> None:
        self.best = max(self.best, min(1.0, (done_units + share) / self.units))
        self.control.report(done_units, self.units, phase=phase, fraction=self.best, **info)

    def child(self, done_units: int, phase: str) -> RunControl:
        """A view of the control for a method's own loop: the same stop event, clock and processes;
        its reports become this count's (at ``done_units``, the method's share inside ``fraction``)."""
        view = copy.copy(self.control)

        def forward(done, total, info):
            self.report(done_units, phase, done / total if total else 0.0, inner={"done": done, "total": total, **info})

        view._progress = forward
        return view

    def settle(self, view: RunControl) -> None:
        """A stop the method's loop met (a time limit) is the comparison's, with its reason."""
        if view.reason and not self.control.reason:
            self.control.reason, self.control.stopped_at = view.reason, view.stopped_at


def _redrawn(name: str) -> bool:
    """Whether the method's comparison runs are fresh random draws (it overrides
    ``Method.comparison_draws``): never the visitor's scores, a mean over draws."""
    return type(get(name)).comparison_draws is not Method.comparison_draws


def _label(handle, name: str, s: CompareSettings, calib) -> str:
    """The curve's label: the method and the settings it ran with (the visitor's scores say so)."""
    method = get(name)
    if _redrawn(name):
        return f"{method_name(name)} (mean of {plural(s.random_draws, 'draw')})"
    values = asdict(method_settings(method, s, calib))
    note = "your scores" if name in s.method_scores else None
    if name in s.method_scores and s.method_scores[name].partial:
        note = "your scores, stopped early"
    return settings_label(name, values, family=handle.family, note=note)


def _fewer_steps_rows(handle, rows, prompts, seeds, ref, s: CompareSettings, control, clip) -> list[dict]:
    """One row per (sparsity, step count) the plain plans call for: the original sampled with the
    steps that spend each plan's MACs per image (``matched_steps``), on the same prompts and seeds.
    ``plans`` says which methods' plans each row matches."""
    full = spec(handle, steps=s.steps).steps
    orig = next(r for r in rows if r.get("method") == "original")
    wanted: dict[tuple, list[str]] = {}
    for r in rows:
        if r.get("method") in ("original", FEWER_STEPS, OWN_PLAN) or r.get("reconstructed") or \
                pd.isna(r.get("macs", np.nan)):
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
        out.append({"method": FEWER_STEPS, "label": f"original at {plural(k, 'step')} (same MACs per image)",
                    "reconstructed": False, "sparsity": t, **row, "params_fraction": 0.0,
                    "steps": k, "steps_full": full, "plans": ", ".join(dict.fromkeys(who)), "n_prompts": len(prompts)})
    return out


def compare_chunk(handle, sparsities: Sequence[float], methods: Sequence[str] | None = None, *,
                  settings: CompareSettings | None = None, control: RunControl | None = None,
                  state: RunState | None = None, refit: Callable | None = None) -> tuple[pd.DataFrame, RunState | None]:
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
    prompts, seeds = evaluation_set(handle, s)
    calib = tuple(s.calib_prompts or calibration_prompts(handle.model_ref, CALIB_PROMPTS))
    own = s.own_plan
    if own is not None:
        check_base(own, handle, "your plan")
    for name, x in s.method_scores.items():
        if name in chosen:
            check_scores_fit(handle, x)
    labels = {name: _label(handle, name, s, calib) for name in chosen}
    attrs = dict(model_ref=handle.model_ref, eval_prompts=prompts, eval_seeds=seeds, calib_prompts=list(calib),
                 methods=chosen, sparsities=sps, partial=False, labels=labels,
                 reused_scores=[n for n in chosen if n in s.method_scores and not _redrawn(n)],
                 computed_on=computed_on(handle, s), model=model_name(handle), weights=model_tooltip(handle))
    key = {"sparsities": sps, "methods": chosen, "settings": settings_key(s)}
    clip = _clip_scorer(handle, s, attrs)
    recon = ReconstructSettings(**s.reconstruct_settings) if s.reconstruct else None
    jobs = _jobs(chosen, sps, s.fewer_steps, own is not None)
    labels = {**labels, "original": f"original ({plural(spec(handle, steps=s.steps).steps, 'step')})"}
    n_jobs = len(chosen) * len(sps)
    rows, total, ref, j, scored, inner = [], None, None, 0, None, None
    if state is not None:
        state.check("compare", handle.model_ref, key)
        _check_state(state, jobs, len(prompts), ["original", *chosen, *([OWN_PLAN] if own is not None else [])], s)
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
            rows.append({"method": "original", "label": labels["original"], "reconstructed": False, "sparsity": 0.0,
                         "params_fraction": 0.0, "latent_mse": 0.0, "latent_mse_se": 0.0, "psnr": 100.0, "ssim": 1.0,
                         **base_row, "n_prompts": len(prompts)})
            control.unit_done()
        progress = _Progress(control, jobs)
        progress.report(1 + j, "original evaluated")
        while j < len(jobs) and not control.stopped():
            if control.chunk_full():
                chunk_ended = True
                break
            kind, name, t = jobs[j]
            if kind == "own":
                progress.report(1 + j, f"evaluating your plan ({plan_label(own, s)})")
                rows.append(_own_row(handle, own, total, prompts, seeds, ref, s, control, clip))
                j += 1
                control.unit_done()
                progress.report(1 + j, "your plan evaluated")
                continue
            if kind == "steps":
                progress.report(1 + j, "evaluating the original with fewer steps")
                rows.extend(_fewer_steps_rows(handle, rows, prompts, seeds, ref, s, control, clip))
                j += 1
                control.unit_done()
                progress.report(1 + j, "fewer-steps baseline evaluated")
                continue
            method = get(name)
            if kind == "score":
                phase = f"scoring with {labels[name]}"
                view = progress.child(1 + j, phase)
                progress.report(1 + j, phase, method=name)
                draws = method.comparison_draws(method_settings(method, s, calib), s.random_draws)
                if len(draws) > 1:  # independent random draws (the random baseline), each scored whole
                    scored = [method.score(handle, d, control=view) for d in draws]
                elif name in s.method_scores:  # the visitor's own scores: not scored again
                    scored = [s.method_scores[name]]
                else:
                    x, inner = method.run(handle, draws[0], state=inner, control=view)
                    scored = [x]
                progress.settle(view)
                if inner is not None and name not in s.method_scores and len(draws) == 1:
                    scored, chunk_ended = None, not control.stopped()  # the method's own loop ended the chunk
                    break
                if any(x.partial for x in scored) or control.stopped():
                    break
                j += 1
                progress.report(1 + j, f"{labels[name]}: scored", method=name)
                continue
            progress.report(1 + j, f"evaluating {labels[name]} at {100 * t:.3g}%", method=name, sparsity=t)
            try:
                plans = [method.to_plan(handle, x, target_sparsity=t, budget=s.budget) for x in scored]
            except PruningError as e:
                rows.append({"method": name, "label": labels[name], "sparsity": t, "error": str(e)})
                plans = None
            if plans:
                rows.extend({**r, "label": labels[name], "n_prompts": len(prompts)}
                            for r in _plan_rows(handle, name, t, plans, total, prompts, seeds, ref, s, control, clip,
                                                recon, refit or _refit))
            j += 1
            if j == len(jobs) or jobs[j][0] == "score":
                scored = None  # this method's plans are done
            control.unit_done()
            progress.report(1 + j, f"{labels[name]} at {100 * t:.3g}% evaluated", method=name, sparsity=t,
                            plans_done=sum(1 for k in jobs[:j] if k[0] == "plan"), plans=n_jobs)
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


def _refit(handle, plan, settings, control):
    return reconstruct(handle, plan, settings, control=control)


def _plan_rows(handle, name, t, plans, total, prompts, seeds, ref, s, control, clip, recon, refit) -> list[dict]:
    """The slim row of one (method, sparsity), and the reconstructed one with ``recon`` (``refit``
    re-fits a plan)."""
    variants = [(False, lambda p: build_model(handle, p))]  # build: a plan that carries its own weights (OBS-Diff) gets them
    if recon is not None:
        variants.append((True, lambda p: refit(handle, p, recon, control)))
    out = []
    for rebuilt, build in variants:
        evals, seconds = [], []
        for p in plans:
            small = build(p)
            seconds.append(small.reconstruction["seconds"] if rebuilt else 0.0)  # the re-fit's own time
            evals.append(_evaluate(handle, small, prompts, seeds, ref, s, control, clip)[0])
        row = _row(evals)
        row["params_fraction"] = 1 - row["params"] / total
        if rebuilt:
            row["reconstruct_s"] = float(np.mean(seconds))
        out.append({"method": name, "reconstructed": rebuilt, "sparsity": t, **row})
    return out
