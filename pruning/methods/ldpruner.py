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

import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import pandas as pd
import torch

from pruning.catalog import catalog, discover
from pruning.errors import PlanError, PruningError
from pruning.masks import masked
from pruning.plan import PruningPlan
from pruning.sampling import GenerationStopped, generate_latents

GRANULARITIES = ("fine", "block", "all")
_GRANULARITY_ROWS = {"fine": ("fine", "both"), "block": ("block", "both"), "all": ("fine", "block", "both")}
POSITION_COLUMNS = ("stage", "level", "block", "depth")
SCORE_COLUMNS = ("avg_dist", "std_dist", "score", "rank")
COLUMNS = ("operator", "fqn", "kind", "granularity", *POSITION_COLUMNS, "params", "param_share", "macs",
           "mac_share", *SCORE_COLUMNS)


class SweepSettingsError(PruningError, ValueError):
    """Sweep settings that cannot work: no prompts, N_gen < 2, an unknown granularity..."""


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class SweepSettings:
    """What one sweep generates and which operators it modifies.

    Sample ``i`` (``i < n_gen``) pairs ``seeds[i]`` with ``prompts[i % len(prompts)]``
    (prompts are cycled over the seeds). Give ``seeds`` or ``n_gen`` (then the seeds are
    ``0 .. n_gen-1``); without either, one sample per prompt. ``steps``/``guidance``/
    ``resolution`` left at None take the model's defaults (see :meth:`resolved`).
    ``granularity``: "fine" (attn1, attn2, ff, resnet; FLUX attn, ff, ff_context), "block"
    (whole transformer, resnet and FLUX blocks) or "all". ``operators``, when given, is the
    exact subset of operator FQNs to score (``granularity`` is then ignored).

    >>> s = SweepSettings(prompts=["a", "b", "c"], n_gen=4)
    >>> s.seeds, s.samples()
    ((0, 1, 2, 3), (['a', 'b', 'c', 'a'], [0, 1, 2, 3]))
    >>> SweepSettings(prompts=["a"], seeds=[7])
    Traceback (most recent call last):
    ...
    pruning.methods.ldpruner.SweepSettingsError: N_gen must be at least 2 (the std over samples is undefined for 1), got 1 seed(s)
    """

    prompts: tuple[str, ...]
    seeds: tuple[int, ...] | None = None
    n_gen: int | None = None
    steps: int | None = None
    guidance: float | None = None
    resolution: int | None = None
    granularity: str = "fine"
    operators: tuple[str, ...] | None = None

    def __post_init__(self):
        prompts = (self.prompts,) if isinstance(self.prompts, str) else tuple(str(p) for p in (self.prompts or ()))
        if not prompts:
            raise SweepSettingsError("the prompt list is empty: give at least one prompt")
        if any(not p.strip() for p in prompts):
            raise SweepSettingsError(f"empty prompt in {list(prompts)}")
        if self.seeds is not None:
            seeds = (int(self.seeds),) if isinstance(self.seeds, int) else tuple(int(s) for s in self.seeds)
            if self.n_gen is not None and int(self.n_gen) != len(seeds):
                raise SweepSettingsError(f"n_gen={self.n_gen} but {len(seeds)} seeds were given")
        else:
            n = int(self.n_gen) if self.n_gen is not None else len(prompts)
            seeds = tuple(range(max(n, 0)))
        if len(seeds) < 2:
            raise SweepSettingsError("N_gen must be at least 2 (the std over samples is undefined for 1), "
                                     f"got {len(seeds)} seed(s)")
        if self.granularity not in GRANULARITIES:
            raise SweepSettingsError(f"granularity {self.granularity!r} is not one of {GRANULARITIES}")
        for name in ("steps", "resolution"):
            v = getattr(self, name)
            if v is not None and int(v) < 1:
                raise SweepSettingsError(f"{name} must be >= 1, got {v}")
        ops = self.operators
        if ops is not None:
            ops = (ops,) if isinstance(ops, str) else tuple(dict.fromkeys(str(o) for o in ops))
        object.__setattr__(self, "prompts", prompts)
        object.__setattr__(self, "seeds", seeds)
        object.__setattr__(self, "n_gen", len(seeds))
        object.__setattr__(self, "operators", ops)
        for name, cast in (("steps", int), ("guidance", float), ("resolution", int)):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, cast(getattr(self, name)))

    def samples(self) -> tuple[list[str], list[int]]:
        """The (prompts, seeds) of the N_gen samples, paired one to one."""
        return [self.prompts[i % len(self.prompts)] for i in range(self.n_gen)], list(self.seeds)

    def resolved(self, handle) -> SweepSettings:
        """A copy with unset steps/guidance/resolution filled from ``handle.defaults``."""
        d = handle.defaults
        return replace(self, steps=self.steps or int(d["steps"]),
                       guidance=float(self.guidance if self.guidance is not None else d["guidance"]),
                       resolution=self.resolution or int(d["resolution"]))

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


def original_latents(handle, settings: SweepSettings, *, stop: threading.Event | None = None) -> torch.Tensor:
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


def _generate(handle, s: SweepSettings, stop: threading.Event | None = None) -> torch.Tensor:
    prompts, seeds = s.samples()
    z = generate_latents(handle, prompts, seeds, steps=s.steps, guidance=s.guidance, resolution=s.resolution,
                         stop=stop)
    return z.detach().to("cpu", torch.float32)


def latent_stats(latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-element mean and (unbiased) std over the samples of ``(N_gen, ...)`` latents, in float64."""
    z = latents.detach().to("cpu", torch.float64).flatten(1)  # (N_gen, C*H*W)
    return z.mean(0), z.std(0)


def ldpruner_score(original: torch.Tensor, modified: torch.Tensor) -> dict[str, float]:
    """``avg_dist``, ``std_dist`` and ``score`` between two sets of N_gen latents.

    >>> a = torch.zeros(2, 1, 2, 2); b = a.clone(); b[1] += 2.0   # b: mean 1, std sqrt(2) per element
    >>> {k: round(v, 4) for k, v in ldpruner_score(a, b).items()}
    {'avg_dist': 2.0, 'std_dist': 2.8284, 'score': 4.8284}
    """
    if original.shape != modified.shape:
        raise ValueError(f"latent shapes differ: {tuple(original.shape)} vs {tuple(modified.shape)}")
    (m0, s0), (m1, s1) = latent_stats(original), latent_stats(modified)
    avg, std = float(torch.linalg.vector_norm(m0 - m1)), float(torch.linalg.vector_norm(s0 - s1))
    return {"avg_dist": avg, "std_dist": std, "score": avg + std}


# --------------------------------------------------------------------------- the sweep


def catalog_kwargs(handle, settings: SweepSettings | None = None) -> dict:
    """``catalog``'s reference input size for the sweep's resolution (MAC shares at that size)."""
    res = (settings.resolution if settings is not None else None) or int(handle.defaults["resolution"])
    kw = {"sample_size": int(res) // int(getattr(handle.pipe, "vae_scale_factor", 8))}
    if handle.family == "flux" and "max_sequence_length" in handle.defaults:
        kw["text_len"] = int(handle.defaults["max_sequence_length"])
    return kw


def select_operators(handle, settings: SweepSettings) -> pd.DataFrame:
    """The catalog rows (in catalog order) of the operators this sweep scores.

    Raises ``PlanError`` naming an FQN that is not a removable operator of the denoiser.
    """
    ops, _ = catalog(handle.denoiser, **catalog_kwargs(handle, settings))
    if settings.operators is None:
        return ops[ops["granularity"].isin(_GRANULARITY_ROWS[settings.granularity])].reset_index(drop=True)
    known = set(ops["fqn"])
    for fqn in settings.operators:
        if fqn not in known:
            raise PlanError(f"unknown operator {fqn!r}: not a removable operator of this denoiser "
                            f"({len(known)} operators, e.g. {ops['fqn'].iloc[0]!r})")
    return ops[ops["fqn"].isin(settings.operators)].reset_index(drop=True)


def _table(rows: pd.DataFrame, settings: SweepSettings, *, partial: bool, model_ref: str,
           total: int) -> pd.DataFrame:
    df = rows.copy()
    df.insert(0, "operator", df["fqn"])
    df = df.reindex(columns=[*COLUMNS, *[c for c in df.columns if c not in COLUMNS]])
    df = finalize_ranks(df)
    df.attrs = {"partial": bool(partial), "settings": settings.to_dict(), "model_ref": model_ref,
                "scored": int(len(df)), "total": int(total), "method": "ldpruner"}
    return df


def finalize_ranks(df: pd.DataFrame) -> pd.DataFrame:
    """Recompute ``rank`` (1 = lowest score = most prunable; ties by table order)."""
    df = df.reset_index(drop=True)
    df["rank"] = df["score"].rank(method="first").astype("int64") if len(df) else pd.Series(dtype="int64")
    return df


def sweep(handle, settings: SweepSettings, *, progress: Callable[[int, int, str], None] | None = None,
          stop: threading.Event | None = None, resume: pd.DataFrame | None = None,
          show_progress: bool = True) -> pd.DataFrame:
    """Score each selected operator: remove it, regenerate the N_gen latents, compare.

    Returns one row per scored operator in catalog order: operator/fqn, kind, granularity,
    stage, level, block, depth, params, param_share, macs, mac_share (at the sweep's
    resolution), avg_dist, std_dist, score and rank (1 = most prunable). ``attrs``:
    ``partial`` (stopped early), ``settings`` (resolved, as a dict), ``model_ref``,
    ``scored``/``total``.

    ``progress(done, total, fqn)`` is called after each operator; a tqdm bar runs over the
    operators too (``show_progress``), so ``gr.Progress(track_tqdm=True)`` follows it.
    When ``stop`` is set the sweep ends after the current operator (an interrupted
    generation is discarded) and returns the rows scored so far with ``partial=True``.
    ``resume``: a partial table from the same model and settings whose rows are reused.
    """
    from tqdm.auto import tqdm

    s = settings.resolved(handle)
    todo = select_operators(handle, s)
    total = len(todo)
    done_rows: dict[str, dict] = {}
    if resume is not None and len(resume):
        same = resume.attrs.get("settings", {}) == s.to_dict() and resume.attrs.get("model_ref") == handle.model_ref
        if not same:
            raise SweepSettingsError("cannot resume: the partial table was made with other settings or another model")
        done_rows = {r["fqn"]: r for r in resume.to_dict("records") if r["fqn"] in set(todo["fqn"])}
    results: dict[str, dict] = {}
    partial = False
    bar = tqdm(total=total, desc="LD-Pruner sweep", unit="op", disable=not show_progress, leave=False)
    try:
        z0 = None
        for i, row in enumerate(todo.to_dict("records")):
            fqn = row["fqn"]
            if fqn in done_rows:
                results[fqn] = {**row, **{k: done_rows[fqn][k] for k in ("avg_dist", "std_dist", "score")}}
            else:
                if stop is not None and stop.is_set():
                    partial = True
                    break
                try:
                    if z0 is None:
                        z0 = original_latents(handle, s, stop=stop)
                    plan = PruningPlan(family=handle.family, base=handle.model_ref, removed_operators=(fqn,))
                    with masked(handle.denoiser, plan):
                        z = _generate(handle, s, stop=stop)
                except GenerationStopped:
                    partial = True
                    break
                results[fqn] = {**row, **ldpruner_score(z0, z)}
            bar.update(1)
            bar.set_postfix_str(fqn, refresh=False)
            if progress is not None:
                progress(i + 1, total, fqn)
    finally:
        bar.close()
    rows = pd.DataFrame([results[f] for f in todo["fqn"] if f in results], columns=[*todo.columns, *SCORE_COLUMNS[:3]])
    return _table(rows, s, partial=partial, model_ref=handle.model_ref, total=total)


def sweep_sharded(handle, settings: SweepSettings, *, state=None, show_progress: bool = True) -> pd.DataFrame:
    """:func:`sweep` with the operators split across the processes of an ``accelerate launch``
    (or ``torchrun``): each process scores its contiguous share, and every process gets the
    merged table, equal to a single-process sweep. With one process it is :func:`sweep`.
    """
    from accelerate import PartialState
    from accelerate.utils import gather_object

    state = state or PartialState(cpu=handle.device.type == "cpu")
    s = settings.resolved(handle)
    todo = select_operators(handle, s)
    if state.num_processes == 1:
        return sweep(handle, s, show_progress=show_progress)
    with state.split_between_processes(list(todo["fqn"])) as share:
        part = sweep(handle, replace(s, operators=tuple(share)), show_progress=show_progress and
                     state.is_main_process) if share else None
    records = [] if part is None else part.drop(columns=["rank"]).to_dict("records")
    merged = gather_object(records)
    order = {f: i for i, f in enumerate(todo["fqn"])}
    rows = sorted(merged, key=lambda r: order[r["fqn"]])
    if [r["fqn"] for r in rows] != list(todo["fqn"]):
        raise PruningError(f"sharded sweep lost operators: got {len(rows)} rows for {len(todo)} operators")
    df = pd.DataFrame(rows).drop(columns=["operator"])
    return _table(df, s, partial=False, model_ref=handle.model_ref, total=len(todo))


# --------------------------------------------------------------------------- selection


def _inside(a: str, b: str) -> bool:
    return a.startswith(b + ".")


def _overlaps(fqn: str, removed: Sequence[str]) -> bool:
    return any(_inside(fqn, r) or _inside(r, fqn) or fqn == r for r in removed)


def plan_from_scores(handle, scores: pd.DataFrame, *, target_sparsity: float | None = None,
                     target_macs: float | None = None, operators: Sequence[str] | None = None) -> PruningPlan:
    """A plan removing the lowest-scoring operators, or exactly the ``operators`` named.

    ``target_sparsity`` / ``target_macs`` (one of them, in (0, 1)): remove operators in
    increasing score order, skipping one nested in or containing an already removed one,
    until that fraction of the denoiser's params (or MACs at the sweep's resolution),
    measured with ``PruningPlan.summary``, is removed. ``operators``: manual selection.
    Provenance records method "ldpruner", the sweep settings and the selection.
    """
    chosen = [x is not None for x in (target_sparsity, target_macs, operators)]
    if sum(chosen) != 1:
        raise PlanError("give exactly one of target_sparsity, target_macs or operators")
    if "fqn" not in scores.columns and "operator" in scores.columns:
        scores = scores.assign(fqn=scores["operator"])
    for col in ("fqn", "score"):
        if col not in scores.columns:
            raise PlanError(f"the scores table has no {col!r} column (columns: {list(scores.columns)})")
    settings = dict(scores.attrs.get("settings") or {})
    known = discover(handle.denoiser).operators
    for fqn in scores["fqn"]:
        if fqn not in known:
            raise PlanError(f"unknown operator {fqn!r} in the scores table: not a removable operator of this "
                            "denoiser (scores from another model?)")
    cat_kw = catalog_kwargs(handle, SweepSettings.from_dict(settings) if settings.get("prompts") else None)

    def make(removed, **selection):
        plan = PruningPlan(family=handle.family, base=handle.model_ref, removed_operators=tuple(removed))
        summ = plan.summary(handle.denoiser, **cat_kw)
        return plan.with_provenance(
            method="ldpruner", settings=settings, partial_scores=bool(scores.attrs.get("partial", False)),
            selection={**selection, "params_fraction": summ["params_fraction"],
                       "macs_fraction": summ["macs_fraction"]})

    if operators is not None:
        names = [operators] if isinstance(operators, str) else [str(o) for o in operators]
        for fqn in names:
            if fqn not in known:
                raise PlanError(f"unknown operator {fqn!r}: not a removable operator of this denoiser")
        return make(names, mode="manual", operators=names)

    metric, target = ("params_fraction", target_sparsity) if target_sparsity is not None else \
        ("macs_fraction", target_macs)
    name = "target_sparsity" if target_sparsity is not None else "target_macs"
    if not 0 < float(target) < 1:
        raise PlanError(f"{name} must be in (0, 1), got {target}")
    ordered = scores.reset_index(drop=True)
    ordered = ordered.iloc[sorted(range(len(ordered)), key=lambda i: (float(ordered["score"].iloc[i]), i))]
    removed: list[str] = []
    reached = 0.0
    for fqn in ordered["fqn"]:
        if _overlaps(fqn, removed):
            continue
        removed.append(fqn)
        plan = PruningPlan(family=handle.family, base=handle.model_ref, removed_operators=tuple(removed))
        reached = plan.summary(handle.denoiser, **cat_kw)[metric]
        if reached >= target:
            return make(removed, mode=name, target=float(target))
    what = "params" if metric == "params_fraction" else "MACs"
    outer = [f for f in scores["fqn"] if not any(_inside(f, o) for o in scores["fqn"] if o != f)]
    best = PruningPlan(family=handle.family, base=handle.model_ref,
                       removed_operators=tuple(outer)).summary(handle.denoiser, **cat_kw)[metric] if outer else 0.0
    raise PlanError(f"{name}={target} is not reachable with the {len(scores)} scored operators: removing them "
                    f"removes at most {max(best, reached):.4f} of the denoiser's {what}")


# --------------------------------------------------------------------------- files


def write_scores(df: pd.DataFrame, path: str | Path) -> Path:
    """Write a sweep table as CSV (or Parquet for ``.parquet``) plus ``<path>.json`` with its attrs."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        df.to_parquet(path, index=False)
    else:
        df.to_csv(path, index=False)
    Path(f"{path}.json").write_text(json.dumps(df.attrs, indent=2) + "\n")
    return path


def read_scores(path: str | Path) -> pd.DataFrame:
    """Read a table written by :func:`write_scores` (attrs restored when ``<path>.json`` exists).

    >>> import tempfile
    >>> df = pd.DataFrame({"fqn": ["a.b"], "score": [1.5]}); df.attrs = {"partial": False}
    >>> p = write_scores(df, Path(tempfile.mkdtemp()) / "scores.csv")
    >>> back = read_scores(p); back.equals(df), back.attrs
    (True, {'partial': False})
    """
    path = Path(path)
    if not path.is_file():
        raise PruningError(f"scores file {str(path)!r} does not exist")
    df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    meta = Path(f"{path}.json")
    if meta.is_file():
        df.attrs = json.loads(meta.read_text())
    return df


__all__ = [
    "SweepSettings", "SweepSettingsError", "sweep", "sweep_sharded", "plan_from_scores", "original_latents",
    "ldpruner_score", "latent_stats", "select_operators", "clear_cache", "write_scores", "read_scores",
    "GRANULARITIES",
]
