"""Selection tables <-> plans, plan totals, and per-structure views of unit scores.

A selection table has one row per operator (mode "operators") or per prunable structure
("structures"). Ticked operators are removed; a ticked structure keeps the unit indices in its
"kept indices" column (empty: every unit removed). With scores, rows come most prunable first.

>>> from app_support.cache import ModelCache
>>> h = ModelCache().get("tiny-random-sd")
>>> table = selection_table(h, "operators")
>>> list(table.columns)
['prune', 'score', 'fqn', 'kind', 'kept units', 'params', 'MACs', 'kept indices']
>>> table.loc[:1, "prune"] = True
>>> plan = plan_from_table(h, "operators", table)
>>> len(plan.removed_operators), totals(h, plan)["params_removed"] > 0
(2, True)
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from pruning.catalog import UNIT_KINDS, catalog
from pruning.errors import PlanError
from pruning.loading import Handle
from pruning.plan import KEPT_FIELDS, PruningPlan
from pruning.sampling import count_inputs
from pruning.validate import few, integer, shown

from . import format as fmt

MODES = ("operators", "structures")
COLUMNS = ["prune", "score", "fqn", "kind", "kept units", "params", "MACs", "kept indices"]  # score stays in view
# (app.py's phone CSS sizes the first three columns: prune, score and the FQN, wrapped, fill a phone's width)
DATATYPES = ["bool", "number", "str", "str", "str", "str", "str", "str"]


def empty_table() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="bool" if c == "prune" else "object") for c in COLUMNS})


def _indices(text, fqn: str, units: int) -> tuple[int, ...]:
    text = "" if text is None or (isinstance(text, float) and math.isnan(text)) else str(text).strip()
    if text.lower() in ("", "none"):
        return ()
    try:
        return tuple(integer(f"kept index of {fqn!r}", x.strip(), lo=0, hi=units - 1)
                     for x in text.replace(";", ",").split(",") if x.strip())
    except PlanError:
        raise
    except ValueError as e:
        raise PlanError(f"{e} (comma-separated unit indices, e.g. '0,2,3')") from None


def _kept_units(kept: tuple[int, ...] | None, units: int) -> str:
    n = units if kept is None else len(kept)
    return f"{n} of {units}"


def selection_table(handle: Handle, mode: str, plan: PruningPlan | None = None,
                    scores: dict[str, float] | None = None) -> pd.DataFrame:
    """Rows to tick, pre-ticked from ``plan``; with ``scores`` (FQN -> score, low = prunable),
    sorted most prunable first, else in depth order. Params and MACs are shown with units
    (the totals below the table are the exact figures)."""
    ops, st = catalog(handle.denoiser, **count_inputs(handle))
    scores = scores or {}
    removed = set(plan.removed_operators) if plan else set()
    if mode == "operators":
        df = pd.DataFrame({"prune": ops["fqn"].isin(removed), "fqn": ops["fqn"], "kind": ops["kind"],
                           "units": 1, "params": ops["params"].map(fmt.count), "MACs": ops["macs"].map(fmt.count)})
        df["kept units"] = ["0 of 1" if r else "1 of 1" for r in df["prune"]]
        df["kept indices"] = ""
    elif mode == "structures":
        kept = {f: k for kind in UNIT_KINDS for f, k in (plan.kept(kind).items() if plan else ())}
        df = pd.DataFrame({"prune": [f in kept or f in removed for f in st["fqn"]], "fqn": st["fqn"],
                           "kind": st["kind"], "units": st["units"], "params": st["params"].map(fmt.count),
                           "MACs": st["macs"].map(fmt.count)})
        df["kept units"] = [_kept_units(kept.get(f, () if f in removed else None), int(n))
                            for f, n in zip(df["fqn"], df["units"])]
        df["kept indices"] = [",".join(map(str, kept[f])) if f in kept else "" for f in df["fqn"]]
    else:
        raise PlanError(f"unknown table mode {mode!r}; choose one of {MODES}")
    df["score"] = [float(f"{scores[f]:.4g}") if f in scores else float("nan") for f in df["fqn"]]
    if scores:
        df = df.sort_values("score", kind="stable", na_position="last").reset_index(drop=True)
    return df[COLUMNS]


def _ticks(table: pd.DataFrame) -> list[bool]:
    """The prune column: real booleans only (a string such as "yes please", a number or an empty
    cell is refused, naming the row), never coerced."""
    out = []
    for i, (v, fqn) in enumerate(zip(table["prune"], table["fqn"])):
        if not isinstance(v, (bool, np.bool_)):
            raise PlanError(f"row {i} ({shown(fqn)}) of the selection table: prune must be true or false, "
                            f"got {shown(v)}")
        out.append(bool(v))
    return out


def check_rows(handle: Handle, mode: str, table: pd.DataFrame) -> None:
    """The table's rows are exactly the model's catalog rows for ``mode``: each operator (or
    structure) once, none missing, nothing else (no added, blank or repeated rows).

    >>> from app_support.cache import ModelCache
    >>> h = ModelCache().get("tiny-random-sd")
    >>> t = selection_table(h, "operators")
    >>> check_rows(h, "operators", pd.concat([t, t.iloc[:1]]))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    pruning.errors.PlanError: the selection table has ... rows, this model's operators table has ...: ...
    """
    ops, st = catalog(handle.denoiser, **count_inputs(handle))
    expected = list((ops if mode == "operators" else st)["fqn"])
    fqns = list(table["fqn"])
    if len(fqns) != len(expected) or set(map(str, fqns)) != set(expected) or len(set(fqns)) != len(fqns):
        odd = [f for f in dict.fromkeys(fqns) if not isinstance(f, str) or f not in set(expected)]
        seen: set = set()
        repeated = [f for f in fqns if f in seen or seen.add(f)]
        missing = sorted(set(expected) - set(fqns))
        why = "; ".join(text for text in (
            f"not in it: {few(odd)}" if odd else "", f"repeated: {few(repeated)}" if repeated else "",
            f"missing: {few(missing)}" if missing else "") if text)
        raise PlanError(f"the selection table has {len(fqns)} rows, this model's {mode} table has {len(expected)}: "
                        f"{why} (the rows must be the model's {mode}; reload the table with the mode selector)")


def plan_from_table(handle: Handle, mode: str, table: pd.DataFrame, provenance: dict | None = None) -> PruningPlan:
    """The plan a (possibly hand-edited) selection table describes; errors name the row."""
    if not isinstance(table, pd.DataFrame) or not len(table) or not {"fqn", "prune"} <= set(table.columns):
        raise PlanError("the selection table is empty: load a model and fill the table first")
    if mode not in MODES:
        raise PlanError(f"unknown table mode {shown(mode)}; choose one of {MODES}")
    check_rows(handle, mode, table)
    ticked = table[_ticks(table)]
    prov = {"method": "manual", **(provenance or {})}
    if mode == "operators":
        plan = PruningPlan(family=handle.family, base=handle.model_ref, removed_operators=tuple(map(str, ticked["fqn"])),
                           provenance=prov)
    else:
        _, st = catalog(handle.denoiser, **count_inputs(handle))
        info = st.set_index("fqn")
        kept = {k: {} for k in UNIT_KINDS}
        column = "kept indices" if "kept indices" in table.columns else "kept"
        for rec in ticked.to_dict("records"):
            fqn = rec["fqn"]
            if fqn not in info.index:
                raise PlanError(f"unknown structure {fqn!r} in the selection table")
            kept[info.loc[fqn, "kind"]][fqn] = _indices(rec.get(column, ""), fqn, int(info.loc[fqn, "units"]))
        plan = PruningPlan(family=handle.family, base=handle.model_ref, provenance=prov,
                           **{KEPT_FIELDS[k]: v for k, v in kept.items()})
    plan.validate(handle.denoiser, family=handle.family)
    return plan


def refresh_kept(handle: Handle, mode: str, table: pd.DataFrame) -> pd.DataFrame:
    """The table with its "kept units" column recomputed from the ticks (after a manual edit)."""
    plan = plan_from_table(handle, mode, table)
    out = table.copy()
    _, st = catalog(handle.denoiser, **count_inputs(handle))
    units = dict(zip(st["fqn"], st["units"])) if mode == "structures" else {}
    kept = {f: k for kind in UNIT_KINDS for f, k in plan.kept(kind).items()}
    removed = set(plan.removed_operators)
    out["kept units"] = [_kept_units(() if f in removed else kept.get(f), int(units.get(f, 1))) for f in out["fqn"]]
    return out


def totals(handle: Handle, plan: PruningPlan) -> dict:
    """``plan.summary`` at the model's generation size (params and MACs removed)."""
    return plan.summary(handle.denoiser, **count_inputs(handle))


def unit_kept_table(handle: Handle, plan: PruningPlan, kinds=UNIT_KINDS) -> pd.DataFrame:
    """Per structure of ``kinds``: fqn, kind, units, kept fraction under ``plan``, depth."""
    _, st = catalog(handle.denoiser, **count_inputs(handle))
    rows = []
    for rec in st[st["kind"].isin(list(kinds))].to_dict("records"):
        f, n = rec["fqn"], int(rec["units"])
        k = plan.kept(rec["kind"]).get(f)
        frac = 0.0 if f in plan.removed_operators else (1.0 if k is None else len(k) / n)
        rows.append({"fqn": f, "kind": rec["kind"], "units": n, "kept": frac, "depth": rec["depth"]})
    return pd.DataFrame(rows, columns=["fqn", "kind", "units", "kept", "depth"])


def structure_scores(handle: Handle, per_structure: pd.DataFrame) -> pd.DataFrame:
    """One row per structure (fqn, score, units) joined with its component and depth (for heatmaps)."""
    _, st = catalog(handle.denoiser, **count_inputs(handle))
    return per_structure.drop(columns=["units"], errors="ignore").merge(
        st[["fqn", "component", "units", "depth"]], on="fqn")
