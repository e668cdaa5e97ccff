"""One comparison table for every method at several sparsities (feeds the quality plot).

Each method of the registry scores the model once; its scores are then cut at every target
sparsity, slimmed, and evaluated on the same prompts and seeds as the original: params, MACs
(at the model's own generation size, the same figure as everywhere else), latent MSE and
image PSNR against the original, and, on the bundled shapes models, task accuracy.

>>> from pruning.testing import tiny_pipeline
>>> from pruning.loading import handle_from_pipe
>>> h = handle_from_pipe(tiny_pipeline("sd"), model_ref="tiny:sd")
>>> s = CompareSettings(eval_prompts=["a red circle", "a blue square"], calib_prompts=["a red circle"],
...                     random_draws=1)
>>> df = compare_methods(h, [0.2], ["magnitude", "random"], settings=s)
>>> df["method"].tolist(), [round(f, 2) for f in df["params_fraction"]]
(['original', 'magnitude', 'random'], [0.0, 0.2, 0.2])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields

import numpy as np
import pandas as pd

from . import validate
from .catalog import UNIT_KINDS
from .errors import PruningError, SettingsError
from .methods import get, names
from .metrics import count_params, total_macs
from .prompts import calibration_prompts, evaluation_prompts
from .quality import evaluate
from .runs import RunControl, as_control
from .sampling import count_inputs
from .slim import slim

MAX_SPARSITIES = 20
MAX_DRAWS = 20


@dataclass(frozen=True)
class CompareSettings:
    """Frozen and checked. ``method_settings`` maps a method name to its settings values (a dict)."""

    eval_prompts: tuple[str, ...] | None = None  # default: 16 evaluation prompts of the model
    eval_seeds: tuple[int, ...] | None = None
    calib_prompts: tuple[str, ...] | None = None  # what the methods score with; default: 8 other prompts
    steps: int | None = None
    guidance: float | None = None
    random_draws: int = 3
    method_settings: Mapping[str, Mapping] = field(default_factory=dict)

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


def _settings_for(method, handle, s: CompareSettings, calib: tuple[str, ...]):
    """The method's settings: its defaults, the comparison's calibration prompts and steps, overrides."""
    names = {f.name for f in fields(method.Settings)}
    values = {k: v for k, v in (("prompts", calib), ("steps", s.steps)) if k in names and v is not None}
    if method.name == "ldpruner":
        values["n_gen"] = max(2, len(calib))
    if "kinds" in names:
        values["kinds"] = UNIT_KINDS
    return method.settings(**{**values, **s.method_settings.get(method.name, {})})


def _evaluate(handle, denoiser, prompts, seeds, ref, s: CompareSettings, control) -> dict:
    out = evaluate(handle, prompts, seeds, denoiser=denoiser, reference=ref, steps=s.steps, guidance=s.guidance,
                   control=control)
    row = {"params": count_params(denoiser), "macs": total_macs(denoiser, **count_inputs(handle)),
           "latent_mse": out.get("latent_mse", 0.0), "psnr": out.get("psnr", 100.0)}
    if "all" in out:
        row.update({f"acc_{k}": out[k] for k in ("color", "shape", "position", "all")})
    return row, out


def compare_methods(handle, sparsities: Sequence[float], methods: Sequence[str] | None = None, *,
                    settings: CompareSettings | None = None, control: RunControl | None = None) -> pd.DataFrame:
    """Long table: method, sparsity (target), params_fraction (measured), params, macs,
    latent_mse, psnr and (shapes models) acc_color/acc_shape/acc_position/acc_all.

    ``methods``: names in the registry (default: all). Random rows are the mean of
    ``random_draws`` plans; an unreachable target gives a row with ``error`` set instead of
    numbers. When ``control`` stops the run, the rows finished so far come back and
    ``attrs["partial"]`` is True (``attrs["stopped"]`` says why).
    """
    control = as_control(control)
    s = settings or CompareSettings()
    sps = check_sparsities(sparsities)
    chosen = [get(m).name for m in (methods if methods is not None else names())]
    if not chosen:
        raise SettingsError("choose at least one method to compare")
    prompts = list(s.eval_prompts or evaluation_prompts(handle.model_ref, 16))
    seeds = list(s.eval_seeds or range(len(prompts)))
    calib = tuple(s.calib_prompts or calibration_prompts(handle.model_ref, 8))
    attrs = dict(model_ref=handle.model_ref, eval_prompts=prompts, eval_seeds=seeds, calib_prompts=list(calib),
                 methods=chosen, sparsities=sps, partial=False)
    rows = []
    try:
        base_row, ref = _evaluate(handle, handle.denoiser, prompts, seeds, None, s, control)
        total = base_row["params"]
        rows.append({"method": "original", "sparsity": 0.0, "params_fraction": 0.0, **base_row})
        n_jobs, done = len(chosen) * len(sps), 0
        for name in chosen:
            method = get(name)
            if control.stopped():
                break
            draws = range(s.random_draws) if name == "random" else [None]
            scored = [method.score(handle, _settings_for(method, handle, s, calib) if d is None else
                                   method.settings(seed=d), control=control) for d in draws]
            if any(x.partial for x in scored) or control.stopped():
                break
            for t in sps:
                if control.stopped():
                    break
                try:
                    plans = [method.to_plan(handle, x, target_sparsity=t) for x in scored]
                except PruningError as e:
                    rows.append({"method": name, "sparsity": t, "error": str(e)})
                    continue
                evals = [_evaluate(handle, slim(handle.denoiser, p), prompts, seeds, ref, s, control)[0]
                         for p in plans]
                row = {k: float(np.mean([e[k] for e in evals])) for k in evals[0]}
                row["params_fraction"] = 1 - row["params"] / total
                rows.append({"method": name, "sparsity": t, **row})
                done += 1
                control.report(done, n_jobs, method=name, sparsity=t)
    except PruningError as e:
        if not control.stopped():
            raise
        attrs["error"] = str(e)
    if control.stopped():
        attrs.update(partial=True, stopped=control.reason)
    df = pd.DataFrame(rows)
    df.attrs.update(attrs)
    return df

