"""Views of a method's scores, each labelled with the model, method and settings that made it:
the heatmap, the score table, the status line, and the largest sparsity the scores can reach.

>>> from app_support.cache import ModelCache
>>> from pruning.methods import get
>>> h = ModelCache().get("tiny-random-sd")
>>> s = get("magnitude").score(h)
>>> 0.5 < reachable(h, s) < 1, "magnitude" in subtitle(h, s)
(True, True)
"""

from __future__ import annotations

import math

import pandas as pd

import visual
from pruning import labels, validate
from pruning.catalog import catalog, discover, inside
from pruning.loading import Handle
from pruning.methods import Scores, get
from pruning.methods.base import unit_scores_for
from pruning.methods.select import LayerBudget, removable_fraction
from pruning.plan import PruningPlan
from pruning.reconstruct import fit_summary
from pruning.sampling import count_inputs

from . import format as fmt
from .tables import structure_scores

_SHOWN = {"prompts": "prompts", "n_gen": "N_gen", "steps": "steps", "granularity": "granularity",
          "epochs": "epochs", "beta": "beta", "lr": "lr", "kinds": "kinds", "stride": "stride", "thr": "thr"}


def model_label(handle: Handle) -> str:
    """The model as people know it ("tiny-shapes-sd, float32"); its weights hash is provenance
    (the Model tab's info line, the card, the plan), never part of its name."""
    return labels.model_name(handle)


def reconstruction_note(report: dict) -> str:
    """What a reconstruction did, in words: layers re-fitted (from the compensation of the plan's
    method, if it started from one), fits the end-to-end check undid, their error, its time.

    >>> e = {"rel_error_before": 0.2, "rel_error_after": 0.1}
    >>> reconstruction_note({"layers": {"a": e, "b": e}, "seconds": 2, "start": "obsdiff"})
    "reconstructed on OBS-Diff's compensation: 2 layers re-fitted in 2.0 s, their output error on the calibration set 20.0% -> 10.0%"
    >>> reconstruction_note({"layers": {"a": e, "b": {**e, "kept_by_check": False}}, "seconds": 2})
    'reconstructed: 1 layer re-fitted (1 fit undone: it raised the error on held-out prompts) in 2.0 s, their output error on the calibration set 20.0% -> 10.0%'
    """
    if not report["layers"]:
        return f"reconstructed: nothing to re-fit (only whole operators removed), {report['seconds']:.1f} s"
    f = fit_summary(report)
    on = f" on {labels.method_name(report['start'])}'s compensation" if report.get("start") else ""
    undone = (f" ({labels.plural(f['undone'], 'fit')} undone: {'it' if f['undone'] == 1 else 'they'} raised the "
              "error on held-out prompts)") if f["undone"] else ""
    return (f"reconstructed{on}: {labels.plural(f['refitted'], 'layer')} re-fitted{undone} in {report['seconds']:.1f} "
            f"s, their output error on the calibration set {f['before']:.1%} -> {f['after']:.1%}")


def settings_line(settings: dict) -> str:
    """The settings that matter, in words; a proxy sweep says so (its scores are a shortcut).

    >>> settings_line({"n_gen": 8, "steps": 5, "resolution": 32, "proxy": True})
    'N_gen 8, steps 5, proxy at 32 px'
    >>> settings_line({"n_gen": 8, "fast": True, "timesteps": 2})
    'N_gen 8, fast score: one-step ablation at 2 timesteps'
    """
    parts = []
    for key, name in _SHOWN.items():
        v = settings.get(key)
        if v is None:
            continue
        if key == "prompts":
            parts.append(f"{len(v)} prompts")
        elif isinstance(v, (list, tuple)):
            parts.append(f"{name} {'/'.join(map(str, v))}")
        else:
            parts.append(f"{name} {v:g}" if isinstance(v, float) else f"{name} {v}")
    if settings.get("proxy"):
        parts.append(f"proxy at {settings.get('resolution')} px")
    if settings.get("fast"):
        parts.append(f"fast score: one-step ablation at {settings.get('timesteps')} timesteps")
    return ", ".join(parts)


def _why(scores: Scores) -> str:
    """'' for a plain Stop, else ' (time limit of 900 s reached)' and the like."""
    reason = scores.info.get("stopped") or "stopped"
    return "" if reason == "stopped" else f" ({reason})"


def subtitle(handle: Handle, scores: Scores) -> str:
    """Whose scores: the model, the method and the settings it ran with (the words of every tab)."""
    stop = f" · STOPPED{_why(scores)}" if scores.partial else ""
    try:
        named = labels.settings_label(scores.method, scores.settings, family=handle.family)
    except Exception:  # noqa: BLE001 - settings a label cannot read: the plain line
        named = f"{labels.method_name(scores.method)} ({settings_line(scores.settings)})"
    prompts = scores.settings.get("prompts")
    on = f" · {labels.plural(len(prompts), 'prompt')}" if prompts else ""
    return f"{model_label(handle)} · {named}{on}{stop}"


def allocation_note(provenance: dict | None) -> str:
    """How a plan that shares its target among the layers by a rule of its own (OBS-Diff's
    ``allocation``) shared it, in words; "" for a plan cut from one ranking of the scores.

    >>> allocation_note({"allocation": "measured per layer", "max_fraction": 0.75,
    ...                  "allocation_check": {"measured": 1e-5, "uniform": 3e-5, "chosen": "measured"}})
    "Each layer's share of the target was measured (every layer pruned alone, the error it adds to the final latents), so the layers lose different fractions (the plot below), at most 75% of a layer; the scores only order the units inside a layer. On the probe prompts this allocation's latent error 1e-05 beat the uniform one's 3e-05."
    >>> allocation_note({"allocation": "uniform per layer", "layer_fraction": 0.4,
    ...                  "allocation_check": {"measured": 3e-5, "uniform": 1e-5, "chosen": "uniform"}})
    "Every layer loses the same fraction of its units (40%, to the nearest whole unit). The measured allocation was tried and lost: on the probe prompts its latent error 3e-05 was above the uniform one's 1e-05."
    >>> allocation_note({"target_sparsity": 0.2})
    ''
    """
    prov = provenance or {}
    alloc, check = prov.get("allocation"), prov.get("allocation_check") or {}
    errors = {k: check.get(k) for k in ("measured", "uniform")}
    known = all(isinstance(v, (int, float)) for v in errors.values())
    if alloc == "measured per layer":
        cap = prov.get("max_fraction")
        text = ("Each layer's share of the target was measured (every layer pruned alone, the error it adds to the "
                "final latents), so the layers lose different fractions (the plot below)"
                + (f", at most {cap:.0%} of a layer" if isinstance(cap, (int, float)) else "")
                + "; the scores only order the units inside a layer.")
        if known:
            text += (f" On the probe prompts this allocation's latent error {fmt.number(errors['measured'])} beat the "
                     f"uniform one's {fmt.number(errors['uniform'])}.")
        return text
    if alloc == "uniform per layer":
        p = prov.get("layer_fraction")
        text = "Every layer loses the same fraction of its units" + (
            f" ({p:.0%}, to the nearest whole unit)." if isinstance(p, (int, float)) else ".")
        if known and check.get("chosen") == "uniform":
            text += (f" The measured allocation was tried and lost: on the probe prompts its latent "
                     f"error {fmt.number(errors['measured'])} was above the uniform one's {fmt.number(errors['uniform'])}.")
        return text
    return ""


def ties(scores: Scores, target: float | None = None):
    """The near-tie check of what a view of these scores shows (``pruning.ties``)."""
    from pruning.ties import check_ties

    return check_ties(scores, target_sparsity=target, structures=scores.level == "unit" and target is None)


def heatmap(handle: Handle, scores: Scores):
    """The per-layer heatmap of any method's scores (operators, or the mean unit score per
    structure); near-tied scores get one flat colour, never a decisive-looking rank."""
    title = "Scores per layer (low = prunable)"
    flat = bool(len(scores.table)) and ties(scores).flat
    if not len(scores.table):
        return visual.placeholder(f"{get(scores.method).title}: stopped before the first result")
    if scores.level == "operator":
        ops, _ = catalog(handle.denoiser, **count_inputs(handle))
        df = scores.table[["fqn", "score"]].merge(ops[["fqn", "kind", "params", "depth"]], on="fqn")
        return visual.operator_heatmap(df, title=title, subtitle=subtitle(handle, scores), flat=flat)
    per = structure_scores(handle, scores.per_structure())
    return visual.structure_heatmap(per, title="Mean unit score per layer (low = prunable)",
                                    subtitle=subtitle(handle, scores), flat=flat)


def score_table(handle: Handle, scores: Scores, rows: int = 60) -> pd.DataFrame:
    """The lowest-scoring rows first (most prunable), with enough digits that distinct scores read
    as distinct (near-ties: as many as they need)."""
    digits = ties(scores).digits if len(scores.table) else 4
    number = lambda v: fmt.number(v, digits)  # noqa: E731
    if scores.level == "operator":
        ops, _ = catalog(handle.denoiser, **count_inputs(handle))
        df = scores.table[["fqn", "score"]].merge(ops[["fqn", "kind", "params"]], on="fqn")
        df = df.sort_values("score", kind="stable").head(rows)
        return pd.DataFrame({"rank": range(1, len(df) + 1), "operator": df["fqn"], "kind": df["kind"],
                             "score (low = prunable)": df["score"].map(number),
                             "params": df["params"].map(fmt.count)})
    found = discover(handle.denoiser).structures
    per = scores.per_structure().sort_values("score", kind="stable").head(rows)
    return pd.DataFrame({"rank": range(1, len(per) + 1), "structure": per["fqn"],
                         "kind": [found[f].kind for f in per["fqn"]], "units": per["units"],
                         "mean unit score (low = prunable)": per["score"].map(number)})


def table_label(handle: Handle, scores: Scores) -> str:
    return f"{get(scores.method).title} on {model_label(handle)}: most prunable first"


def _gates_line(scores: Scores) -> str:
    """EcoDiff: how many units its gates would switch off, and where the plan's sparsity comes from."""
    history = scores.info.get("history") or []
    if not history:
        return ""
    last = history[-1]
    kept = {k.removeprefix("kept_"): v for k, v in last.items() if k.startswith("kept_")}
    off = ", ".join(f"{1 - v:.0%} of {k}s" for k, v in kept.items())
    return (f" After {labels.plural(len(history), 'step')} the gates alone would switch off {off} (expected sparsity); the plan "
            "is cut from their scores at the target you choose in Select.")


def _allocation_line(scores: Scores) -> str:
    """OBS-Diff: which allocation its run at the scoring target kept, and the check's errors.

    >>> from pruning.methods import Scores
    >>> import pandas as pd
    >>> table = pd.DataFrame({"fqn": ["a"], "index": [0], "score": [1.0]})
    >>> s = Scores("obsdiff", "unit", table, "m", {}, info={"target_sparsity": 0.2,
    ...            "allocation_check": {"measured": 6e-7, "uniform": 1.2e-3, "chosen": "measured"}})
    >>> _allocation_line(s)
    " At 20% the measured allocation was kept (the probe prompts' latent error 6e-07, uniform's 0.0012); a plan at another target runs again there."
    """
    check = scores.info.get("allocation_check") or {}
    if check.get("chosen") not in ("measured", "uniform"):
        return ""
    if not all(isinstance(check.get(k), (int, float)) for k in ("measured", "uniform")):
        return f" The uniform allocation was kept ({check.get('why') or 'the measured one was not run'})."
    target = scores.info.get("target_sparsity")
    at = f"At {target:.0%}" if isinstance(target, (int, float)) else "At the scoring target"
    return (f" {at} the {check['chosen']} allocation was kept (the probe prompts' latent error "
            f"{fmt.number(check['measured'])}, uniform's {fmt.number(check['uniform'])}); a plan at another target "
            "runs again there.")


def status(handle: Handle, scores: Scores) -> str:
    what = "operators" if scores.level == "operator" else "units"
    n = len(scores.table)
    total = scores.info.get("total")
    done = f"{n} of {total} {what} scored" if total else f"{n} {what} scored"
    tie = ties(scores) if len(scores.table) else None
    warn = f" **Warning: {tie.message}.**" if tie is not None and tie.tied else ""
    if scores.partial:
        return f"**Stopped**{_why(scores)}: {done}; the finished part is shown." + _gates_line(scores) + warn
    return f"Done: {done} on {model_label(handle)}." + _gates_line(scores) + _allocation_line(scores) + warn


def reachable(handle: Handle, scores: Scores) -> float:
    """The largest fraction of params a plan from ``scores`` can remove: every operator it scores, or
    every unit the selection's per-structure cap allows (what ``methods.to_plan`` reaches)."""
    own = get(scores.method).reach(handle, scores)  # a method that shares the target by its own rule
    if own is not None:
        return own[0]
    if scores.level != "operator":
        return removable_fraction(handle, unit_scores_for(handle, scores))
    fqns = list(dict.fromkeys(scores.table["fqn"]))
    outer = [f for f in fqns if not any(inside(f, o) for o in fqns if o != f)]
    plan = PruningPlan(family=handle.family, base=handle.model_ref, removed_operators=tuple(outer))
    return plan.summary(handle.denoiser, **count_inputs(handle))["params_fraction"]


def slider_max(handle: Handle, scores: Scores | None) -> tuple[float, str]:
    """(slider maximum, why) for cutting ``scores``: a hair below what is reachable."""
    if scores is None:
        return 0.9, ""
    own = get(scores.method).reach(handle, scores)  # a method's own reach, computed once for both
    top = math.floor((own[0] if own is not None else reachable(handle, scores)) * 100 - 1e-9) / 100
    top = max(0.01, min(0.95, top))
    kinds = sorted(set(scores.table["kind"])) if "kind" in scores.table.columns else []
    what = own[1] if own is not None else (
        f"its {', '.join(kinds)} units, at most {LayerBudget().max_fraction:.0%} of each layer"
        if scores.level == "unit" and kinds else "the operators it scored")
    return top, f"{get(scores.method).title} can remove at most {top:.0%} of the params ({what})."


SMALLEST_TARGET = 0.01  # the target slider's first step


def typed_target(value, current: float, top: float, why: str, where: str) -> tuple[float, str]:
    """(the target a typed ``value`` sets, why it is not ``value`` in plain words, else ""): a value
    that is not a fraction leaves ``current``; one beyond ``top``, the most the method can reach on
    the model ``where`` (``why`` says so), becomes ``top``; one below the slider's first step, that step.
    Never a silent clamp: the words go in a toast and in the note under the target.

    >>> typed_target(0.3, 0.2, 0.65, "", "tiny-shapes-sd")
    (0.3, '')
    >>> typed_target(5, 0.2, 0.65, "", "tiny-shapes-sd")[1]
    'Target sparsity must be a fraction between 0 and 1, like 0.2, got 5 (write 5% as 0.05). The target stays at 0.2.'
    >>> typed_target(0.95, 0.2, 0.65, "Weight magnitude can remove at most 65% of the params.", "tiny-shapes-sd")
    (0.65, 'Target 0.95 is out of reach on tiny-shapes-sd: Weight magnitude can remove at most 65% of the params. The target is now 0.65.')
    >>> typed_target(0.001, 0.2, 0.65, "", "tiny-shapes-sd")
    (0.01, 'Target 0.001 is below 0.01, the smallest target here. The target is now 0.01.')
    """
    try:
        v = validate.fraction("target sparsity", value)
    except ValueError as e:
        text = str(e)
        return current, f"{text[:1].upper()}{text[1:]}. The target stays at {current:g}."
    if v > top + 1e-9:
        return top, (f"Target {v:g} is out of reach on {where}: {why or f'targets here go up to {top:g}.'} "
                     f"The target is now {top:g}.")
    if v < SMALLEST_TARGET - 1e-9:
        return SMALLEST_TARGET, (f"Target {v:g} is below {SMALLEST_TARGET:g}, the smallest target here. "
                                 f"The target is now {SMALLEST_TARGET:g}.")
    return v, ""
