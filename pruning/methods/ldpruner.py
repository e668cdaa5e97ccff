"""LD-Pruner: score every operator by how much removing it moves the generated latents.

For operators 1..k, generate N_gen final latents with the original denoiser and N_gen with
operator i removed (same prompts, seeds, steps, guidance and scheduler). With mean and std
taken over the N_gen samples per latent element and the norm over all elements::

    avg_dist = ||mean_orig - mean_mod||_2      std_dist = ||std_orig - std_mod||_2
    score = avg_dist + std_dist                (low = prunable)

The original latents are computed once per (model ref, generation settings) and cached in
process; the N_gen samples always go in one batch, so every set of latents is generated
with the same batch composition. Statistics are computed in float64; ``std`` is the
unbiased (Bessel-corrected) one, which is why N_gen must be at least 2.

>>> from pruning.testing import tiny_pipeline
>>> from pruning.loading import handle_from_pipe
>>> h = handle_from_pipe(tiny_pipeline("sd"), model_ref="tiny:sd")
>>> s = SweepSettings(prompts=("a red circle", "a blue square"), n_gen=2, steps=2,
...                   operators=("mid_block.resnets.0", "down_blocks.0.attentions.0.transformer_blocks.0.attn2"))
>>> df = sweep(h, s, show_progress=False)
>>> list(df.columns[:3]), len(df), sorted(df["rank"]), df.attrs["partial"]
(['operator', 'fqn', 'kind'], 2, [1, 2], False)
>>> bool((df["score"] == df["avg_dist"] + df["std_dist"]).all())
True
>>> plan = plan_from_scores(h, df, operators=["mid_block.resnets.0"])
>>> plan.removed_operators, plan.provenance["method"]
(('mid_block.resnets.0',), 'ldpruner')
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

import pandas as pd
import torch
from accelerate import PartialState
from tqdm.auto import tqdm

from .. import validate
from ..catalog import catalog
from ..errors import PruningError, SettingsError
from ..masks import masked
from ..parallel import Processes
from ..plan import PruningPlan
from ..prompts import calibration_prompts
from ..runs import RunControl, RunState, StateSchema, as_control
from ..sampling import GenerationStopped, count_inputs, generate_latents, resolution_multiple, spec
from .base import Method, Scores, opt
from .cost import MethodCost, generation_seconds, latent_bytes, prompt_count, run_spec
from .proxy import proxy_agreement, proxy_generation, proxy_note  # noqa: F401  (the proxy's public names)
from .select import plan_from_operator_scores
from .sweep_table import (  # noqa: F401 (the sweep table's vocabulary, re-exported)
    _GRANULARITY_ROWS,
    COLUMNS,
    GRANULARITIES,
    POSITION_COLUMNS,
    SCORE_COLUMNS,
    _table,
    finalize_ranks,
    halted,
    latent_stats,
    ldpruner_score,
    mac_resolution,
    resumed_rows,
    scored_table,
    select_operators,
)

DEFAULT_N_GEN = 8
MAX_N_GEN = 64  # samples per batch: every operator regenerates all of them
PRESETS = ("full", "proxy", "fast")  # full: the model's steps and resolution; proxy: about half of each (see
# .proxy); fast: one-step ablation at K recorded timesteps, no rollouts (see .ablation)
DEFAULT_TIMESTEPS = 2  # K of the fast score: <= 1/10 of the full sweep's denoiser work on SD 1.5, SDXL, FLUX.1-dev
WEIGHTINGS = ("step", "uniform", "denoised")
DEFAULT_WEIGHTING = "step"  # R5: its 20% plans were never worse than the full sweep's on the bundled models
MAX_ABLATION_BATCH = 64


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class SweepSettings:
    """What one sweep generates and which operators it modifies.

    Sample ``i`` (``i < n_gen``) pairs ``seeds[i]`` with ``prompts[i % len(prompts)]``
    (prompts are cycled over the seeds). Give ``seeds`` or ``n_gen`` (then the seeds are
    ``0 .. n_gen-1``); without either, one sample per prompt (8 for the default prompts).
    Unset ``prompts``/``steps``/``guidance``/``resolution`` take the model's defaults (see
    :meth:`resolved`). ``granularity``: "fine" (attn1, attn2, ff, resnet; FLUX attn, ff,
    ff_context), "block" (whole transformer, resnet and FLUX blocks) or "all". ``operators``,
    when given, is the exact subset of operator FQNs to score (``granularity`` is then ignored).
    ``proxy`` (the "proxy" preset) makes unset steps and resolution about half the model's (see
    :func:`~pruning.methods.proxy.proxy_generation`); steps or a resolution given still win.

    >>> s = SweepSettings(prompts=["a", "b", "c"], n_gen=4)
    >>> s.seeds, s.samples()
    ((0, 1, 2, 3), (['a', 'b', 'c', 'a'], [0, 1, 2, 3]))
    >>> SweepSettings(prompts=["a"], seeds=[7])
    Traceback (most recent call last):
    ...
    pruning.errors.SettingsError: N_gen must be at least 2 (the std over samples is undefined for 1), got 1 seed(s)
    """

    prompts: tuple[str, ...] | None = opt(None, "prompts, cycled over the samples (default: the model's "
                                          "calibration prompts)", "strs")
    seeds: tuple[int, ...] | None = opt(None, "explicit seeds (default 0 .. N_gen-1)", "ints")
    n_gen: int | None = opt(None, f"images generated for each operator [N_gen in the LD-Pruner paper], "
                            f"2..{MAX_N_GEN}: more = steadier scores, slower (default {DEFAULT_N_GEN}, or one "
                            "per prompt)", "int", label="images per operator", basic=True, low=2, high=16, step=1,
                            quick=4)
    steps: int | None = opt(None, "denoising steps (default: the model's)", "int")
    guidance: float | None = opt(None, "guidance scale (default: the model's)", "float")
    resolution: int | None = opt(None, "image side in pixels (default: the model's)", "int")
    granularity: str = opt("fine", "fine: attention, FFN and resnet branches one by one; block: whole blocks; "
                           "all: both", "choice", GRANULARITIES, basic=True)
    operators: tuple[str, ...] | None = opt(None, "score only these operators (their FQNs; default: all of the "
                                            "chosen granularity)", "strs", label="only these operators", basic=True)
    proxy: bool = opt(False, "score at about half the model's steps and resolution (chosen with the preset)",
                      "bool", hidden=True)
    fast: bool = opt(False, "one-step ablation: no rollouts, the denoiser's output change at K recorded timesteps "
                     "(chosen with the preset)", "bool", hidden=True)
    timesteps: int | None = opt(None, f"fast score: K, the recorded timesteps (default {DEFAULT_TIMESTEPS})", "int")
    weighting: str | None = opt(None, "fast score: step (the default: on the next latent, each timestep weighted "
                                "by the scheduler's step), uniform (every recorded timestep the same, on the "
                                "prediction) or denoised (on the clean-latent estimate)", "choice", WEIGHTINGS)
    ablation_batch: int = opt(1, "fast score: operators removed per denoiser call (per-sample gates)", "int")

    def __post_init__(self):
        prompts = None if self.prompts is None else validate.prompt_list(self.prompts)
        if self.seeds is not None:
            seeds = validate.seed_list(self.seeds)
            if self.n_gen is not None and validate.integer("n_gen", self.n_gen) != len(seeds):
                raise SettingsError(f"n_gen={self.n_gen} but {len(seeds)} seeds were given")
        else:
            n = self.n_gen if self.n_gen is not None else (len(prompts) if prompts else DEFAULT_N_GEN)
            seeds = tuple(range(validate.integer("N_gen", n, lo=0, hi=MAX_N_GEN)))
        if len(seeds) < 2:
            raise SettingsError("N_gen must be at least 2 (the std over samples is undefined for 1), "
                                f"got {len(seeds)} seed(s)")
        if len(seeds) > MAX_N_GEN:
            raise SettingsError(f"N_gen must be at most {MAX_N_GEN} (all samples go in one batch), got {len(seeds)}")
        validate.choice("granularity", self.granularity, GRANULARITIES)
        for name in ("proxy", "fast"):
            if not isinstance(getattr(self, name), bool):
                raise SettingsError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.weighting is not None:
            validate.choice("weighting", self.weighting, WEIGHTINGS)
        object.__setattr__(self, "ablation_batch",
                           validate.integer("ablation_batch", self.ablation_batch, lo=1, hi=MAX_ABLATION_BATCH))
        if self.timesteps is not None:
            object.__setattr__(self, "timesteps", validate.integer("timesteps", self.timesteps, lo=1, hi=1000))
        if not self.fast and (self.timesteps is not None or self.weighting is not None or self.ablation_batch != 1):
            raise SettingsError("timesteps, weighting and ablation_batch apply to the fast score only "
                                "(the \"fast\" preset)")
        if self.fast and self.timesteps is None:
            object.__setattr__(self, "timesteps", DEFAULT_TIMESTEPS)
        if self.fast and self.weighting is None:
            object.__setattr__(self, "weighting", DEFAULT_WEIGHTING)
        ops = self.operators
        if ops is not None:
            ops = (ops,) if isinstance(ops, str) else tuple(dict.fromkeys(ops))
            if not ops or not all(isinstance(o, str) and o for o in ops):
                raise SettingsError(f"operators must be a non-empty list of operator FQNs, got {self.operators!r}")
        object.__setattr__(self, "prompts", prompts)
        object.__setattr__(self, "seeds", seeds)
        object.__setattr__(self, "n_gen", len(seeds))
        object.__setattr__(self, "operators", ops)
        for name in ("steps", "guidance", "resolution"):
            object.__setattr__(self, name, validate.sampling_fields(**{name: getattr(self, name)})[name])

    def samples(self) -> tuple[list[str], list[int]]:
        """The (prompts, seeds) of the N_gen samples, paired one to one."""
        if self.prompts is None:
            raise SettingsError("no prompts: call resolved(handle) first to take the model's defaults")
        return [self.prompts[i % len(self.prompts)] for i in range(self.n_gen)], list(self.seeds)

    def resolved(self, handle) -> SweepSettings:
        """A copy with unset prompts/steps/guidance/resolution filled from the model (about half its
        steps and resolution for a proxy), checked for it."""
        steps, resolution = self.steps, self.resolution
        if self.proxy:
            d = spec(handle)
            half_steps, half_res = proxy_generation(d.steps, d.resolution, multiple=resolution_multiple(handle))
            steps = half_steps if steps is None else steps
            resolution = half_res if resolution is None else resolution
        g = spec(handle, steps=steps, guidance=self.guidance, resolution=resolution)
        if self.fast and self.timesteps > g.steps:
            raise SettingsError(f"timesteps (K) must be at most the {g.steps} denoising steps, got {self.timesteps}")
        prompts = self.prompts or calibration_prompts(handle.model_ref, self.n_gen)
        return replace(self, prompts=prompts, steps=g.steps, guidance=g.guidance, resolution=g.resolution)

    def generation_key(self) -> tuple:
        """Everything the original latents depend on (not the operator selection)."""
        return (self.prompts, self.seeds, self.steps, self.guidance, self.resolution)

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> SweepSettings:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


# --------------------------------------------------------------------------- original latents


_ORIGINALS: OrderedDict = OrderedDict()  # (model_ref, device, dtype, generation key) -> (B, C, H, W) latents
_CACHE_SIZE = 8
_CACHE_LOCK = threading.Lock()


def clear_cache() -> None:
    """Forget the cached original latents."""
    with _CACHE_LOCK:
        _ORIGINALS.clear()


def original_latents(handle, settings: SweepSettings, *, stop=None) -> torch.Tensor:
    """The N_gen final latents of the unmodified model, generated once per (model ref, settings)."""
    s = settings.resolved(handle)
    key = (handle.model_ref, str(handle.device), str(handle.dtype), s.generation_key())
    with _CACHE_LOCK:
        if key in _ORIGINALS:
            _ORIGINALS.move_to_end(key)
            return _ORIGINALS[key]
    z = _generate(handle, s, stop=stop)
    with _CACHE_LOCK:
        _ORIGINALS[key] = z
        while len(_ORIGINALS) > _CACHE_SIZE:
            _ORIGINALS.popitem(last=False)
    return z


def _generate(handle, s: SweepSettings, stop=None) -> torch.Tensor:
    prompts, seeds = s.samples()
    z = generate_latents(handle, prompts, seeds, steps=s.steps, guidance=s.guidance, resolution=s.resolution,
                         stop=stop)
    return z.detach().to("cpu", torch.float32)


# --------------------------------------------------------------------------- the sweep


def sweep(handle, settings: SweepSettings | None = None, *, control: RunControl | None = None,
          resume: pd.DataFrame | None = None, originals: torch.Tensor | None = None,
          show_progress: bool = True) -> pd.DataFrame:
    """Score each selected operator: remove it, regenerate the N_gen latents, compare.

    Returns one row per scored operator in catalog order: operator/fqn, kind, granularity,
    stage, level, block, depth, params, param_share, macs, mac_share (at the sweep's
    resolution), avg_dist, std_dist, score and rank (1 = most prunable). ``attrs``:
    ``partial`` (stopped early), ``settings`` (resolved, as a dict), ``model_ref``,
    ``scored``/``total``.

    ``control`` (:mod:`pruning.runs`) reports ``(done, total, {"fqn"})`` after each operator
    and, once stopped, ends the sweep after the current operator (an interrupted generation
    is discarded): the rows scored so far come back with ``partial=True``. A tqdm bar runs
    over the operators too (``show_progress``). ``resume``: a partial table from the same
    model and settings whose rows are reused; ``originals``: the original latents, when known.
    A chunk boundary (``control.chunk_full()``, see :mod:`pruning.chunks`) also ends the sweep
    between operators (``attrs["chunk_ended"]``).
    """
    control = as_control(control)
    s = (settings or SweepSettings()).resolved(handle)
    if resume is not None and len(resume):
        same = resume.attrs.get("settings", {}) == s.to_dict() and resume.attrs.get("model_ref") == handle.model_ref
        if not same:
            raise SettingsError("cannot resume: the partial table was made with other settings or another model")
    if s.fast:  # one-step ablation at recorded inputs (``originals``: the recorded latents)
        from . import ablation

        return ablation.sweep(handle, s, control=control, resume=resume, recorded=originals,
                              show_progress=show_progress)
    todo = select_operators(handle, s)
    total = len(todo)
    done_rows = resumed_rows(resume, todo)
    results: dict[str, dict] = {}
    partial = chunk_ended = False
    bar = tqdm(total=total, desc="LD-Pruner sweep", unit="op", disable=not show_progress, leave=False)
    try:
        z0 = originals
        for row in todo.to_dict("records"):
            fqn = row["fqn"]
            if fqn in done_rows:
                results[fqn] = {**row, **{k: done_rows[fqn][k] for k in ("avg_dist", "std_dist", "score")}}
            else:
                if halt := halted(control):
                    partial, chunk_ended = True, halt == "chunk"
                    break
                try:
                    if z0 is None:
                        z0 = original_latents(handle, s, stop=control)
                    plan = PruningPlan(family=handle.family, base=handle.model_ref, removed_operators=(fqn,))
                    with masked(handle.denoiser, plan):
                        z = _generate(handle, s, stop=control)
                except GenerationStopped:
                    partial = True
                    break
                results[fqn] = {**row, **ldpruner_score(z0, z)}
                control.unit_done()
                control.report(len(results), total, fqn=fqn)  # resumed rows are not reported again
            bar.update(1)
            bar.set_postfix_str(fqn, refresh=False)
    finally:
        bar.close()
    return scored_table(results, todo, s, model_ref=handle.model_ref, partial=partial, chunk_ended=chunk_ended)


def cached_originals(handle, settings: SweepSettings) -> torch.Tensor | None:
    """The original latents if this process has them already (never generates)."""
    s = settings.resolved(handle)
    with _CACHE_LOCK:
        return _ORIGINALS.get((handle.model_ref, str(handle.device), str(handle.dtype), s.generation_key()))


def sweep_sharded(handle, settings: SweepSettings, *, state=None, show_progress: bool = True) -> pd.DataFrame:
    """:func:`sweep` with the operators split across the processes of an ``accelerate launch``
    (or ``torchrun``): each process scores its contiguous share, and every process gets the
    merged table, equal to a single-process sweep. With one process it is :func:`sweep`.
    """
    ps = Processes.launched(state or PartialState(cpu=handle.device.type == "cpu"))
    s = settings.resolved(handle)
    todo = select_operators(handle, s)
    if ps.count == 1:
        return sweep(handle, s, show_progress=show_progress)
    share = ps.split(list(todo["fqn"]))
    part = sweep(handle, replace(s, operators=tuple(share)), show_progress=show_progress and ps.main) if share else None
    records = [] if part is None else part.drop(columns=["rank"]).to_dict("records")
    merged = [r for rows in ps.gather(records) for r in rows]
    order = {f: i for i, f in enumerate(todo["fqn"])}
    rows = sorted(merged, key=lambda r: order[r["fqn"]])
    if [r["fqn"] for r in rows] != list(todo["fqn"]):
        raise PruningError(f"sharded sweep lost operators: got {len(rows)} rows for {len(todo)} operators")
    df = pd.DataFrame(rows).drop(columns=["operator"])
    return _table(df, s, partial=False, model_ref=handle.model_ref, total=len(todo))


# --------------------------------------------------------------------------- selection


def plan_from_scores(handle, scores: pd.DataFrame, *, target_sparsity: float | None = None,
                     target_macs: float | None = None, operators: Sequence[str] | None = None) -> PruningPlan:
    """A plan removing the lowest-scoring operators, or exactly the ``operators`` named (see
    :func:`~pruning.methods.select.plan_from_operator_scores`). Provenance records method
    "ldpruner" and the sweep settings."""
    if "fqn" not in scores.columns and "operator" in scores.columns:
        scores = scores.assign(fqn=scores["operator"])
    settings = dict(scores.attrs.get("settings") or {})
    prov = {"method": "ldpruner", "settings": settings, "partial_scores": bool(scores.attrs.get("partial", False))}
    return plan_from_operator_scores(handle, scores, target_sparsity=target_sparsity, target_macs=target_macs,
                                     operators=operators, provenance=prov, resolution=mac_resolution(settings))


# --------------------------------------------------------------------------- the method


def latent_shape(handle, n: int, resolution: int) -> tuple[int, int, int, int]:
    """(n, C, H, W) of the final latents ``generate_latents`` gives at ``resolution`` (unpacked for FLUX),
    from the VAE's config: its latent channels and downscale factor.

    >>> from pruning.testing import tiny_pipeline
    >>> from pruning.loading import handle_from_pipe
    >>> latent_shape(handle_from_pipe(tiny_pipeline("sd"), model_ref="tiny:sd"), 2, 32)
    (2, 4, 8, 8)
    """
    cfg = handle.pipe.vae.config
    side = resolution // 2 ** (len(cfg.block_out_channels) - 1)  # the pipelines' vae_scale_factor
    return (n, cfg.latent_channels, side, side)


def _check_state(handle, s: SweepSettings, state: RunState) -> list[dict]:
    """A resumed sweep state checked against this model and these (resolved) settings: its rows
    (one per operator scored, each an operator of this sweep, once, with finite distances >= 0)
    and its original latents, when stored ((N_gen, C, H, W) float32, as this model generates them)."""
    sc = StateSchema(state)
    sc.data_keys(required=("rows",))
    todo = list(select_operators(handle, s)["fqn"])
    known, seen = set(todo), set()
    rows = sc.items("rows", max_len=len(todo))

    def distance(name, v):
        return sc.number(name, v, lo=0)

    def operator(name, v):
        if not isinstance(v, str) or v not in known:
            sc.fail(name, f"must be one of the {len(todo)} operators this sweep scores, got {v!r:.80}")
        if v in seen:
            sc.fail(name, f"names {v!r} a second time")
        seen.add(v)
        return v

    out = [sc.record(f"data.rows[{i}]", r, {"fqn": operator, **{k: distance for k in SCORE_COLUMNS[:3]}})
           for i, r in enumerate(rows)]
    if "originals" in state.tensors and s.fast:  # the fast score's recorded latents: (K, N_gen, ...) as the
        # denoiser consumes them (FLUX's packed tokens hold the same elements as the latents)
        t = sc.tensor("originals", dtype=torch.float32)
        per_sample = math.prod(latent_shape(handle, 1, s.resolution))
        if t.dim() < 3 or tuple(t.shape[:2]) != (s.timesteps, s.n_gen) or t[0, 0].numel() != per_sample:
            sc.fail("tensor 'originals'", f"has shape {tuple(t.shape)}, this model and these settings give "
                    f"({s.timesteps}, {s.n_gen}, ...) with {per_sample} values per sample")
    elif "originals" in state.tensors:
        sc.tensor("originals", shape=latent_shape(handle, s.n_gen, s.resolution), dtype=torch.float32)
    sc.only_tensors({"originals"})
    return out


class LDPruner(Method):
    name = "ldpruner"
    title = "Operator sweep (LD-Pruner)"
    summary = ("Removes each operator (an attention, FFN or resnet branch, or a whole block) in turn, "
               "regenerates N_gen images and scores how far their latents move: low = safe to remove.")
    level = "operator"
    Settings = SweepSettings
    commands = ("sweep",)
    work_unit = "operators"
    sharded = True  # under accelerate launch the operators split across the processes (sweep_sharded)
    presets = PRESETS
    budget_preset = "fast"  # about 1/10 of the full sweep's work, with its measured agreement shown
    preset_titles = {"full": "full (default)", "proxy": "fast proxy", "fast": "fast score: one-step ablation"}
    preset_help = ("full: the model's steps and resolution; proxy: about half of each, several times faster, with "
                   "a ranking that agrees with the full one only in part (its measured agreement is shown); fast "
                   "score: no regeneration per operator, only the denoiser's output change at 2 recorded "
                   "timesteps (about 1/10 of the full sweep's work on real models). Steps given still win.")

    def comparison_settings(self, calib: tuple[str, ...], quick: bool = False) -> dict:
        """One generated sample per calibration prompt (at least 2: a standard deviation needs two;
        ``quick``: at most 8)."""
        return {"n_gen": max(2, min(len(calib), 8) if quick else len(calib))}

    def preset_note(self, preset: str | None, model_ref: str) -> str | None:
        """The proxy's or the fast score's measured agreement with the full sweep on ``model_ref``."""
        if preset == "proxy":
            return proxy_note(model_ref)
        if preset == "fast":
            from .ablation import fast_note

            return fast_note(model_ref)
        return None

    def score_sharded(self, handle, settings, *, state, show_progress: bool = False) -> Scores:
        df = sweep_sharded(handle, settings, state=state, show_progress=show_progress)
        return Scores(self.name, "operator", df, handle.model_ref, df.attrs["settings"], False,
                      {"scored": len(df), "total": len(df)})

    def cost(self, handle, settings: SweepSettings, step) -> MethodCost:
        """K + 1 generations of N_gen samples (the original and one per operator), or the fast
        score's recording rollout and K calls per operator group."""
        s = run_spec(handle, settings)
        n_gen = settings.n_gen or prompt_count(handle, settings)
        if settings.operators:
            k = len(settings.operators)
        else:
            ops = catalog(handle.denoiser, **count_inputs(handle))[0]
            gran = settings.granularity
            k = len(ops) if gran == "all" else int(ops["granularity"].isin([gran, "both"]).sum())
        secs, calls, batch = generation_seconds(step, handle, s, n_gen)
        if settings.fast:
            return _fast_cost(handle, settings, s, step, k, calls, batch)
        working = step.working_bytes(batch) + 2 * latent_bytes(handle, s, n_gen)  # + both latents
        return MethodCost((k + 1) * secs, {"generations": k + 1, "denoiser calls": (k + 1) * calls, "batch": batch,
                                           "work": (k + 1) * calls * batch}, working,
                          ["lower N_gen or the steps", "score only some operators",
                           "or the fast proxy (fewer steps, lower resolution)"])

    def preset_settings(self, preset: str, family: str, **values) -> SweepSettings:
        """The "proxy" preset: about half the model's steps and resolution, resolved once the model is
        known (``values`` override). The same for every family.

        >>> s = LDPruner().settings(preset="proxy", steps=4)
        >>> s.proxy, s.steps, s.resolution
        (True, 4, None)
        """
        validate.choice("preset", preset, PRESETS)
        return SweepSettings(**{"proxy": preset == "proxy", "fast": preset == "fast", **values})

    def score(self, handle, settings: SweepSettings | None = None, *, control: RunControl | None = None,
              show_progress: bool = False) -> Scores:
        control = as_control(control)
        df = sweep(handle, settings, control=control, show_progress=show_progress)
        return self._scores(handle, df, control)

    def _scores(self, handle, df: pd.DataFrame, control: RunControl) -> Scores:
        info = {"scored": df.attrs["scored"], "total": df.attrs["total"]}
        if df.attrs["partial"]:
            info["stopped"] = control.reason or "chunk ended"
        return Scores(self.name, "operator", df, handle.model_ref, df.attrs["settings"], df.attrs["partial"], info)

    def check_state(self, handle, settings: SweepSettings | None, state: RunState) -> None:
        s = (settings or SweepSettings()).resolved(handle)
        state.check(self.name, handle.model_ref, s.to_dict())
        _check_state(handle, s, state)

    def run(self, handle, settings: SweepSettings | None = None, *, state=None, control: RunControl | None = None):
        """One chunk of operators; the state holds the rows scored so far and the original latents."""
        control = as_control(control)
        s = (settings or SweepSettings()).resolved(handle)
        resume = originals = None
        if state is not None:
            state.check(self.name, handle.model_ref, s.to_dict())
            rows = _check_state(handle, s, state)
            resume = pd.DataFrame(rows, columns=["fqn", *SCORE_COLUMNS[:3]])
            resume.attrs.update(settings=s.to_dict(), model_ref=handle.model_ref)
            originals = state.tensors.get("originals")
        df = sweep(handle, s, control=control, resume=resume, originals=originals, show_progress=False)
        scores = self._scores(handle, df, control)
        if not df.attrs["partial"]:
            return scores, None
        rows = df[["fqn", *SCORE_COLUMNS[:3]]].to_dict("records")
        z0 = originals if originals is not None else cached_originals(handle, s)
        if s.fast:  # the recorded latents (the conditioning is recomputed from the prompts)
            from .ablation import cached_recording

            rec = cached_recording(handle, s)
            z0 = originals if originals is not None else (None if rec is None else rec.stacked())
        tensors = {} if z0 is None else {"originals": z0}
        return scores, RunState(self.name, handle.model_ref, s.to_dict(), {"rows": rows}, tensors)


def _fast_cost(handle, settings, s, step, k: int, gen_calls: int, batch: int) -> MethodCost:
    """The fast score (:mod:`.ablation`): its counts, times and memory."""
    from .ablation import fast_calls

    m = settings.ablation_batch
    c = fast_calls(k, s.steps, settings.timesteps, batch=batch, calls_per_step=gen_calls // s.steps, ablation_batch=m)
    full, rest = divmod(k, m)  # groups of m operators per call, and a smaller last one
    per_group = settings.timesteps * gen_calls // s.steps  # calls per group
    seconds = (c["recording calls"] * step.call(batch) + full * per_group * step.call(batch * m)
               + (per_group * step.call(batch * rest) if rest else 0.0))
    # the recorded inputs and outputs (about 4 latents per recorded step), one ablation call
    working = step.working_bytes(batch * m) + 4 * settings.timesteps * latent_bytes(handle, s, batch)
    return MethodCost(seconds, c, working, ["fewer recorded timesteps (K)", "score only some operators", "lower N_gen"])


METHOD = LDPruner()
