"""The method protocol: every scorer is a :class:`Method` with frozen, self-validating settings,
one result type (:class:`Scores`, "low = prunable"), one ``to_plan`` and the run convention of
:mod:`pruning.runs`.

A method scores either whole **operators** (LD-Pruner) or the **units** of structures (heads,
neurons, channel groups: EcoDiff, Taylor, magnitude, random). ``to_plan`` cuts any result at a
target sparsity (fraction of the denoiser's params removed), globally or per layer for units.

>>> import pandas as pd
>>> s = Scores("magnitude", "unit", pd.DataFrame({"fqn": ["a.attn1", "a.attn1"], "index": [0, 1],
...            "score": [0.5, 2.0]}), model_ref="tiny:sd", settings={})
>>> Scores.from_dict(s.to_dict()).unit_scores()["a.attn1"].tolist()
[0.5, 2.0]
>>> Scores("x", "unit", pd.DataFrame({"fqn": ["a"], "index": [0], "score": [float("nan")]}), "tiny:sd", {})
Traceback (most recent call last):
...
pruning.errors.SettingsError: x scores: 'a' unit 0 has a non-finite score (nan)
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch

from ..catalog import discover
from ..errors import PlanError, SettingsError
from ..files import atomic_write, read_tensors, write_tensors
from ..loading import same_weights
from ..plan import PruningPlan
from ..runs import RunControl, RunState
from ..validate import LIMITS, choice, few, fraction, read_json, shown
from .cost import MethodCost
from .select import LayerBudget, plan_from_operator_scores, plan_from_unit_scores

DIRECTION = "low = prunable"  # every method's scores: the lowest-scoring parts are removed first
LEVELS = ("operator", "unit")
SCOPES = ("global", "local")
FORMAT = "pruning-scores/1"
MAX_UNIT_INDEX = 2**31 - 1  # far above any layer's units; larger values would wrap in int64
_REQUIRED = {"operator": ("fqn", "score"), "unit": ("fqn", "index", "score")}


def parquet_available() -> bool:
    """Whether pandas can read and write .parquet here (pyarrow or fastparquet installed)."""
    import importlib.util

    return any(importlib.util.find_spec(m) is not None for m in ("pyarrow", "fastparquet"))


SIDE_FILE_LIMITS = replace(LIMITS, max_json_bytes=4 * 2**20)  # settings and info (EcoDiff's history: ~1 MB at most)
META_KEYS = ("format", "method", "level", "model_ref", "settings", "partial", "info", "direction", "records")


def _short(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _jsonable(x):
    return json.loads(json.dumps(x, default=str))


@dataclass(frozen=True)
class Scores:
    """What a method found, as plain data: one row per operator or per unit, ``score`` low = prunable.

    ``info`` holds method extras (EcoDiff's loss history, Taylor's timesteps); ``partial`` is set
    when the run stopped early (``info["stopped"]`` says why).
    """

    method: str
    level: str  # "operator" | "unit"
    table: pd.DataFrame
    model_ref: str
    settings: Mapping = field(default_factory=dict)
    partial: bool = False
    info: Mapping = field(default_factory=dict)
    direction: ClassVar[str] = DIRECTION

    def __post_init__(self):
        what = f"{self.method} scores"
        choice(f"{what} level", self.level, LEVELS)
        missing = [c for c in _REQUIRED[self.level] if c not in self.table.columns]
        if missing:
            raise SettingsError(f"{what}: the table has no {missing} column(s) (columns: {few(list(self.table.columns), 8)})")
        table = self.table.reset_index(drop=True)
        if table["fqn"].map(lambda f: not isinstance(f, str) or not f).any():
            raise SettingsError(f"{what}: every fqn must be a non-empty string")
        for col in _REQUIRED[self.level][1:]:  # true/false is not a number here (pandas would read it as 1/0)
            if table[col].dtype == bool or table[col].map(lambda v: isinstance(v, (bool, np.bool_))).any():
                raise SettingsError(f"{what}: the {col} column holds true/false values, not numbers")
        try:
            values = pd.to_numeric(table["score"], errors="raise").astype("float64")
        except (TypeError, ValueError) as e:
            raise SettingsError(f"{what}: the score column is not numeric ({e})") from None
        bad = ~values.map(math.isfinite)
        if bad.any():
            i = int(bad.idxmax())
            where = f"{table['fqn'][i]!r}" + (f" unit {table['index'][i]}" if self.level == "unit" else "")
            raise SettingsError(f"{what}: {where} has a non-finite score ({values[i]})")
        table["score"] = values
        if self.level == "unit":
            idx = pd.to_numeric(table["index"], errors="coerce")
            if idx.isna().any() or (idx % 1 != 0).any() or (idx < 0).any() or (idx > MAX_UNIT_INDEX).any():
                raise SettingsError(f"{what}: the index column must hold unit indices in 0..{MAX_UNIT_INDEX}")
            table["index"] = idx.astype("int64")
        object.__setattr__(self, "table", table)
        object.__setattr__(self, "settings", _jsonable(dict(self.settings or {})))
        object.__setattr__(self, "info", _jsonable(dict(self.info or {})))

    # ------------------------------------------------------------------ views

    def unit_scores(self, units: Mapping[str, int] | None = None) -> dict[str, torch.Tensor]:
        """``{fqn: (units,) scores}`` of a unit-level result; with ``units`` (fqn -> unit count),
        each tensor has that length and units without a row score 0."""
        if self.level != "unit":
            raise SettingsError(f"{self.method} scores whole operators, not units")
        out = {}
        for fqn, grp in self.table.groupby("fqn", sort=False):
            n = int(units[fqn]) if units is not None else int(grp["index"].max()) + 1
            t = torch.zeros(n, dtype=torch.float32)
            t[torch.as_tensor(grp["index"].to_numpy().copy())] = torch.as_tensor(grp["score"].to_numpy().copy(),
                                                                                  dtype=torch.float32)
            out[fqn] = t
        return out

    def per_structure(self) -> pd.DataFrame:
        """One row per operator, or per structure with the mean unit score (fqn, score, units)."""
        if self.level == "operator":
            return self.table[["fqn", "score"]].assign(units=1)
        g = self.table.groupby("fqn", sort=False)["score"]
        return pd.DataFrame({"score": g.mean(), "units": g.size()}).reset_index()

    # ------------------------------------------------------------------ plain data and files

    def meta(self) -> dict:
        return {"format": FORMAT, "method": self.method, "level": self.level, "model_ref": self.model_ref,
                "settings": self.settings, "partial": self.partial, "info": self.info, "direction": DIRECTION}

    def to_dict(self) -> dict:
        """JSON-able: for ``gr.State`` and APIs."""
        return {**self.meta(), "records": _jsonable(self.table.to_dict("records"))}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], what: str = "scores") -> Scores:
        if not isinstance(d, Mapping) or d.get("format") != FORMAT:
            raise SettingsError(f"{what} are not {FORMAT} data (format {d.get('format') if isinstance(d, Mapping) else None!r})")
        records = d.get("records")
        if not isinstance(records, list):
            raise SettingsError(f"{what} have no records list")
        bad = next((i for i, r in enumerate(records) if not isinstance(r, Mapping)), None)
        if bad is not None:
            raise SettingsError(f"{what}: records[{bad}] must be an object (fqn, score...), got {_short(records[bad])}")
        return cls._from_meta(d, pd.DataFrame(records), what)

    @classmethod
    def _from_meta(cls, m: Mapping, table: pd.DataFrame, what: str) -> Scores:
        """Scores from read metadata, every field checked: the method is a registered one, the level
        its level (an older name of it is read as its name), the settings valid settings of that method (its settings class builds them: unknown
        names, wrong types and out-of-range values are refused), the info a JSON object."""
        from .registry import get

        for key, typ in (("method", str), ("level", str), ("model_ref", str), ("settings", Mapping),
                         ("partial", bool), ("info", Mapping)):
            if not isinstance(m.get(key), typ):
                raise SettingsError(f"{what}: field {key!r} must be a {typ.__name__}, got {_short(m.get(key))}")
        extra = sorted(str(k) for k in m if k not in META_KEYS)
        if extra:
            raise SettingsError(f"{what}: field {_short(extra[0])} is not a field of {FORMAT} metadata")
        if m.get("direction", DIRECTION) != DIRECTION:
            raise SettingsError(f"{what}: direction must be {DIRECTION!r}, got {_short(m.get('direction'))}")
        if not m["model_ref"].strip():
            raise SettingsError(f"{what}: field 'model_ref' is empty")
        try:
            method = get(m["method"])
        except SettingsError as e:
            raise SettingsError(f"{what}: {e}") from None
        if m["level"] != method.level:
            raise SettingsError(f"{what}: {method.name} scores {method.level}s, the file says level {_short(m['level'])}")
        try:
            method.settings(**{str(k): v for k, v in m["settings"].items()})
        except SettingsError as e:
            raise SettingsError(f"{what}: its settings are not valid {method.name} settings: {e}") from None
        except TypeError as e:  # a settings class that takes no such argument
            raise SettingsError(f"{what}: its settings are not valid {method.name} settings: {e}") from None
        try:
            return cls(method.name, m["level"], table, m["model_ref"], m["settings"], m["partial"], m["info"])
        except SettingsError as e:
            raise SettingsError(f"{what}: {e}") from None

    def write(self, path: str | Path) -> Path:
        """``.csv`` / ``.parquet`` plus ``<path>.json`` (the metadata), or one ``.safetensors`` file
        (unit scores as tensors, metadata inside). Written atomically."""
        path = Path(path)
        if path.suffix == ".safetensors":
            return write_tensors(path, self.unit_scores(), FORMAT, self.meta())
        if path.suffix == ".parquet" and not parquet_available():
            raise SettingsError(f"cannot write {str(path)!r}: .parquet needs pyarrow or fastparquet, which are not "
                                "installed; write .csv or .safetensors")
        with atomic_write(path) as tmp:
            if path.suffix == ".parquet":
                self.table.to_parquet(tmp, index=False)
            else:
                self.table.to_csv(tmp, index=False)
        with atomic_write(Path(f"{path}.json")) as tmp:
            tmp.write_text(json.dumps(self.meta(), indent=2) + "\n")
        return path

    @classmethod
    def read(cls, path: str | Path) -> Scores:
        """Read what :meth:`write` wrote; every problem is one ``SettingsError`` naming the file."""
        path = Path(path)
        if not path.is_file():
            raise SettingsError(f"scores file {str(path)!r} does not exist")
        what = f"scores file {str(path)!r}"
        if path.suffix == ".safetensors":
            return cls._read_safetensors(path, what)
        meta_path = Path(f"{path}.json")
        if not meta_path.is_file():
            raise SettingsError(f"{what} has no {meta_path.name} beside it (written by `python -m pruning score`)")
        meta = read_json(meta_path, "scores metadata", limits=SIDE_FILE_LIMITS)
        if not isinstance(meta, Mapping) or meta.get("format") != FORMAT:
            raise SettingsError(f"{str(meta_path)!r} is not {FORMAT} metadata")
        try:
            table = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
        except Exception as e:  # pandas raises many types for garbage (ParserError, UnicodeDecodeError, ...)
            raise SettingsError(f"{what} is not a readable table: {type(e).__name__}: {' '.join(str(e).split())[:200]}") from None
        return cls._from_meta(meta, table, what)

    @classmethod
    def _read_safetensors(cls, path: Path, what: str) -> Scores:
        m, tensors = read_tensors(path, FORMAT, what)
        rows = [{"fqn": f, "index": i, "score": float(v)} for f, t in tensors.items() for i, v in
                enumerate(t.flatten().tolist())]
        return cls._from_meta(m, pd.DataFrame(rows, columns=["fqn", "index", "score"]), what)


# --------------------------------------------------------------------------- settings


def settings_fields(settings_cls) -> list[dict]:
    """The user-facing fields of a settings dataclass, for the CLI's generated options, the app's
    controls and the guide: ``name``, ``default``, ``help`` (plain words, the paper's name in
    brackets), ``kind`` ("int", "float", "str", "ints", "strs", "choice", "choices"),
    ``choices``, ``label`` (a control's short label), ``basic`` (shown among a method's first
    controls), ``low`` / ``high`` / ``step`` (a slider's range, where one makes sense) and
    ``quick`` (the value for a quick interactive run on a CPU; the default when not set).

    >>> @dataclass(frozen=True)
    ... class S:
    ...     stride: int = opt(50, "score every n-th noise level", "int", label="noise-level stride", quick=100)
    >>> [(f["name"], f["label"], f["default"], f["quick"], f["basic"]) for f in settings_fields(S)]
    [('stride', 'noise-level stride', 50, 100, False)]
    """
    out = []
    for f in fields(settings_cls):
        if f.metadata.get("hidden"):
            continue
        default = f.default if f.default is not MISSING else (
            f.default_factory() if f.default_factory is not MISSING else None)
        md = f.metadata
        out.append({"name": f.name, "default": default, "help": md.get("help", ""),
                    "kind": md.get("kind", "str"), "choices": md.get("choices"),
                    "label": md.get("label") or f.name.replace("_", " "), "basic": bool(md.get("basic", False)),
                    "low": md.get("low"), "high": md.get("high"), "step": md.get("step"),
                    "quick": md.get("quick", default)})
    return out


def opt(default, help: str, kind: str, choices=None, **extra):
    """A settings field with its user-facing help (shown by the CLI and the app). ``extra``: the
    control's ``label``, ``basic=True`` (among the method's first controls), ``low`` / ``high`` /
    ``step`` (a slider), ``quick`` (the value of a quick interactive run), ``hidden=True``."""
    return field(default=default, metadata={"help": help, "kind": kind, "choices": choices, **extra})


# --------------------------------------------------------------------------- methods


class Method:
    """A scoring method. Subclasses set the class attributes and implement :meth:`score` and
    :meth:`cost`; everything else that shows a method (the CLI, the estimator, a comparison, the
    app) reads it from here, so a new method is one module and one registration.

    Names: ``name`` is the one registry name (its module's name where it has one module, its CLI
    command ``score <name>``, the ``method`` field of its scores, plans and run states);
    ``aliases`` are older names still read in those files and on the command line; ``title`` is
    its name for people.
    """

    name: ClassVar[str]
    title: ClassVar[str]  # for people, e.g. "Operator sweep (LD-Pruner)"
    summary: ClassVar[str]  # one plain-words sentence for the app and ``--help``
    level: ClassVar[str]  # "operator" | "unit"
    Settings: ClassVar[type]
    aliases: ClassVar[tuple[str, ...]] = ()  # older names, still read in files and on the command line
    commands: ClassVar[tuple[str, ...]] = ()  # CLI shortcuts besides `score <name>` (e.g. "sweep")
    work_unit: ClassVar[str] = "units"  # what a chunk's progress counts (e.g. "optimizer steps")
    data_parallel: ClassVar[bool] = False  # under `accelerate launch` its prompts split across the processes
    sharded: ClassVar[bool] = False  # under `accelerate launch` it runs :meth:`score_sharded` (its own split)
    data_free: ClassVar[bool] = False  # True: no generation needed; scoring takes well under a second
    presets: ClassVar[tuple[str, ...]] = ("ours",)  # named starting points for the settings (the first: the defaults)
    preset_titles: ClassVar[dict[str, str]] = {}  # preset -> its name for people (default: the preset)
    preset_help: ClassVar[str] = ""  # plain words on what the presets set
    chunkable: ClassVar[bool] = True  # False: its run cannot stop at a chunk boundary and resume (one chunk)
    budget_preset: ClassVar[str | None] = None  # the preset to suggest when its default run exceeds a time budget
    tie_floor: ClassVar[float] = 0.0  # scores closer than this are the same score (``pruning.ties``)
    history: ClassVar[bool] = False  # its progress reports a loss per step (rows of ``info["history"]``): plot it

    # ------------------------------------------------------------------ what it shows people

    def fields(self) -> list[dict]:
        """Its user-facing settings (:func:`settings_fields`): what the CLI's options, the app's
        controls and the guide show, with their plain-words help."""
        return settings_fields(self.Settings)

    def setting_help(self) -> dict[str, str]:
        """``{setting: plain-words help}`` of its user-facing settings."""
        return {f["name"]: f["help"] for f in self.fields()}

    def quick_values(self) -> dict:
        """The settings values of a quick interactive run (fields whose ``quick`` differs from the default)."""
        return {f["name"]: f["quick"] for f in self.fields() if f["quick"] != f["default"]}

    def quick_settings(self, prompts=None, **values) -> Any:
        """Settings of a quick interactive run (the app's first values, its guide's estimates): the
        fields' quick values, ``prompts`` where the method takes prompts, then ``values``."""
        takes = {f.name for f in fields(self.Settings)}
        given = {"prompts": tuple(prompts)} if prompts is not None and "prompts" in takes else {}
        return self.settings(**{**self.quick_values(), **given, **values})

    def preset_title(self, preset: str) -> str:
        return self.preset_titles.get(preset, preset)

    def preset_note(self, preset: str | None, model_ref: str) -> str | None:
        """One line to show when ``preset`` is chosen for ``model_ref`` (e.g. a proxy's measured
        agreement with the full run), or None."""
        return None

    # ------------------------------------------------------------------ what a run costs

    def cost(self, handle, settings, step) -> MethodCost:
        """The predicted cost of one :meth:`score` run with ``settings`` (already resolved for the
        model): count the denoiser calls the run makes and price them with ``step`` (a
        :class:`~pruning.estimate.StepCost`: timed calls on this device), see
        :mod:`pruning.methods.cost`. A method that does not say is refused, never guessed."""
        raise SettingsError(f"method {self.name!r} does not say what a run costs: it defines no cost() "
                            "(see pruning.methods.cost), so no estimate can be given")

    # ------------------------------------------------------------------ settings

    def settings(self, preset: str | None = None, family: str | None = None, **values) -> Any:
        """Validated settings (unknown names are refused); ``preset`` (one of ``presets``) gives
        other starting values, possibly per model ``family``, that ``values`` override."""
        known = {f.name for f in fields(self.Settings)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise SettingsError(f"{self.name} has no setting(s) {few(unknown)}; it has {sorted(known)}")
        if preset is None or preset == self.presets[0]:
            return self.Settings(**values)
        choice("preset", preset, self.presets)
        return self.preset_settings(preset, family or "sd", **values)

    def preset_settings(self, preset: str, family: str, **values) -> Any:
        raise SettingsError(f"{self.name} has no preset {preset!r}")

    def score(self, handle, settings=None, *, control: RunControl | None = None) -> Scores:
        raise NotImplementedError

    def run(self, handle, settings=None, *, state: RunState | None = None,
            control: RunControl | None = None) -> tuple[Scores, RunState | None]:
        """One chunk of a resumable run (:mod:`pruning.chunks`): the scores so far and the state to
        resume from, or None once finished. Methods whose loop can end a chunk early (when
        ``control.chunk_full()``) override it; the others run whole in one chunk."""
        if state is not None:
            raise SettingsError(f"{self.name} runs in one chunk; there is no state to resume")
        return self.score(handle, settings, control=control), None

    def comparison_settings(self, calib: tuple[str, ...], quick: bool = False) -> dict:
        """What a method comparison (``compare_methods``, the app's How much? tab, the Q benchmarks)
        sets for this method beyond the shared calibration prompts and steps: by default every unit
        kind inside blocks (``BLOCK_UNIT_KINDS``), so unit methods compare on the same structures; ``quick`` (an interactive comparison
        on a CPU) adds the fields' quick values. A method overrides it with its own."""
        from ..catalog import BLOCK_UNIT_KINDS

        out = {"kinds": BLOCK_UNIT_KINDS} if "kinds" in {f.name for f in fields(self.Settings)} else {}
        return {**out, **self.quick_values()} if quick else out

    def comparison_draws(self, settings, draws: int) -> list:
        """The settings of each run a comparison scores and evaluates for this method: one by
        default; a method whose scores are a random draw (the random baseline) gives ``draws``."""
        return [settings]

    def comparison_runs(self, settings, sparsities) -> int:
        """How many scoring runs a comparison at ``sparsities`` makes (one by default; a method
        whose selection depends on the target runs once per target, as OBS-Diff)."""
        return 1

    def score_sharded(self, handle, settings, *, state, show_progress: bool = False) -> Scores:
        """Its own split of the work across the processes of an ``accelerate launch`` (``state``:
        accelerate's ``PartialState``); only for ``sharded`` methods."""
        raise SettingsError(f"{self.name} does not split its work across processes")

    def rebuild(self, handle, plan: PruningPlan):
        """The slim denoiser of a plan whose ``reconstruction`` names this method (a method that
        compensates weights itself, as OBS-Diff, overrides it; ``pruning.export.build`` calls it)."""
        raise PlanError(f"{self.name} plans carry no weights of their own: slim them (pruning.slim)")

    def reach(self, handle, scores: Scores) -> tuple[float, str] | None:
        """``(the most a plan from these scores can remove, in words why)`` for a method whose
        ``to_plan`` shares the target by its own rule (OBS-Diff); None: the selection's
        (:func:`pruning.methods.select.removable_fraction`)."""
        return None

    def rebuild_cost(self, handle, plan: PruningPlan, step) -> MethodCost | None:
        """What :meth:`rebuild` of ``plan`` would run (the estimator adds it to a reconstruction that
        starts from this method's compensation), or None when there is nothing to run (a method
        without weights of its own, or a rebuild it holds ready)."""
        return None

    def check_state(self, handle, settings, state: RunState) -> None:
        """Refuse a state this run cannot resume (another run's, or one whose fields do not fit this
        model and these settings): one ``StateMismatch`` naming the field. :meth:`run` checks the
        same before it uses a state; this checks without running."""
        raise SettingsError(f"{self.name} runs in one chunk; there is no state to resume")

    def to_plan(self, handle, scores: Scores, *, target_sparsity: float, scope: str | None = None,
                budget=None, native: bool = False) -> PruningPlan:
        """Remove the lowest-scoring operators or units until ``target_sparsity`` of the params is gone.

        ``scope``: "global" or "local" for unit scores; None takes the scores' own ``scope``
        setting (Diff-Pruning's authors' preset: "local") or "global". ``budget``: a
        :class:`~pruning.methods.select.LayerBudget` (or a dict of its fields) for unit scores: the
        per-structure cap, the score normalisation, protected ends, lower early sparsity.
        ``native``: only whole blocks a diffusers config states (``methods.native_plan``).
        """
        check_scores_fit(handle, scores)
        target = fraction("target sparsity", target_sparsity)
        if scope is None:
            scope = scores.settings.get("scope") or "global"
        choice("scope", scope, SCOPES)
        budget = LayerBudget.of(budget)
        prov = {"method": scores.method, "settings": dict(scores.settings), "scope": scope,
                "target_sparsity": target, "partial_scores": scores.partial}
        if native:
            from .native_plan import native_plan

            return native_plan(handle, scores, target_sparsity=target, provenance=prov)
        if scores.level == "operator":
            if scope != "global":
                raise SettingsError(f"scope {scope!r} needs unit scores; {scores.method} scores whole operators")
            return plan_from_operator_scores(handle, scores.table, target_sparsity=target, provenance=prov)
        return plan_from_unit_scores(handle, unit_scores_for(handle, scores), target_sparsity=target, scope=scope,
                                     provenance=prov, budget=budget)


def unit_scores_for(handle, scores: Scores) -> dict[str, torch.Tensor]:
    """Unit scores sized to ``handle``'s structures (checked with :func:`check_scores_fit`)."""
    check_scores_fit(handle, scores)
    found = discover(handle.denoiser).structures
    return scores.unit_scores({f: found[f].units for f in scores.table["fqn"].unique()})


def check_scores_fit(handle, scores: Scores) -> None:
    """Refuse scores made on other weights, or naming parts this denoiser lacks."""
    if not same_weights(scores.model_ref, handle.model_ref):
        raise PlanError(f"{scores.method} scores were computed on {shown(scores.model_ref, 200)}, not on {handle.model_ref!r}")
    found = discover(handle.denoiser)
    known = found.operators if scores.level == "operator" else found.structures
    for fqn in scores.table["fqn"].unique():
        if fqn not in known:
            what = "removable operator" if scores.level == "operator" else "prunable structure"
            raise PlanError(f"{scores.method} scores name {shown(fqn, 200)}, which is not a {what} of {handle.model_ref}")
    if scores.level == "unit":
        top = scores.table.groupby("fqn")["index"].max()
        for fqn, i in top.items():
            if i >= found.structures[fqn].units:
                raise PlanError(f"{scores.method} scores for {shown(fqn, 200)} name unit {i}, the model has "
                                f"{found.structures[fqn].units} (0..{found.structures[fqn].units - 1})")
