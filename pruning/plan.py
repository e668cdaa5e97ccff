"""PruningPlan: the one object passed between every stage, with a JSON round-trip.

A plan names what to remove by FQN strings only: removed operators, and the *kept* unit
indices of each structure it prunes (structures it does not mention stay whole).

>>> plan = PruningPlan(family="sd", base="tiny:sd", removed_operators=("mid_block.resnets.0",),
...                    kept_heads={"down_blocks.0.attentions.0.transformer_blocks.0.attn1": (0, 1)})
>>> PruningPlan.from_json(plan.to_json()) == plan
True
>>> plan.kept_heads["down_blocks.0.attentions.0.transformer_blocks.0.attn1"]
(0, 1)
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from types import MappingProxyType
from typing import Any

from torch import nn

from . import families
from .catalog import UNIT_KINDS, catalog, discover, double_cuts, inside
from .errors import PlanError, SettingsError
from .standin import added_params
from .validate import few, integer, parse_json, read_json, shown

SCHEMA_VERSION = 1
FAMILIES = families.names()
KEPT_FIELDS = {"head": "kept_heads", "neuron": "kept_neurons", "group": "kept_groups",
               "channel": "kept_channels"}  # unit kind -> field
OPTIONAL_FIELDS = ("kept_channels",)  # written only when not empty: plans made before it read and hash as before
assert tuple(KEPT_FIELDS) == UNIT_KINDS


def _frozen_map(name: str, m) -> Mapping[str, tuple[int, ...]]:
    """``{fqn: (kept indices)}`` with strict types; errors name the field and the FQN."""
    if m is None:
        m = {}
    if not isinstance(m, Mapping):
        raise PlanError(f"{name} must be a map of FQN -> list of kept unit indices, got {type(m).__name__}")
    out = {}
    for fqn, kept in m.items():
        if not isinstance(fqn, str) or not fqn:
            raise PlanError(f"{name} has a key {shown(fqn)} that is not an FQN string")
        if isinstance(kept, (str, bytes, Mapping)) or not isinstance(kept, (Sequence, set, frozenset)):
            raise PlanError(f"{name}[{shown(fqn)}] must be a list of kept unit indices, got {shown(kept)}")
        if all(type(v) is int and v >= 0 for v in kept):  # the usual case, fast on a long (hostile) list
            out[fqn] = tuple(kept)
            continue
        try:
            out[fqn] = tuple(integer(f"{name}[{shown(fqn, 200)}][{i}]", v, lo=0, strict=True) for i, v in enumerate(kept))
        except SettingsError as e:
            raise PlanError(str(e)) from None
    return MappingProxyType(dict(sorted(out.items())))


def _operators(value) -> tuple[str, ...]:
    ops = (value,) if isinstance(value, str) else value
    if ops is None or isinstance(ops, Mapping) or not isinstance(ops, (list, tuple, set, frozenset)):
        raise PlanError(f"removed_operators must be a list of operator FQNs, got {shown(value)}")
    for i, fqn in enumerate(ops):
        if not isinstance(fqn, str) or not fqn:
            raise PlanError(f"removed_operators[{i}] must be an operator FQN string, got {shown(fqn, 200)}")
    return tuple(sorted(set(ops)))


@dataclass(frozen=True)
class PruningPlan:
    """What to remove from one base denoiser. Immutable; use ``replace`` to derive new plans."""

    family: str
    base: str  # model_ref of the base model: "hub:<id>@<sha>", "local:<path>@<hash>", "bundled:<name>@<hash>"
    removed_operators: tuple[str, ...] = ()
    kept_heads: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    kept_neurons: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    kept_groups: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    provenance: Mapping[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    # set by ``pruning.reconstruct``: {"settings": {...}, "compensated": [removed operator FQNs
    # whose stand-in carries a bias]}; the exported weights hold the re-fitted values
    reconstruction: Mapping[str, Any] | None = None
    kept_channels: Mapping[str, tuple[int, ...]] = field(default_factory=dict)  # conditioning channels (last: new)

    def __post_init__(self):
        if not isinstance(self.family, str) or self.family not in FAMILIES:
            raise PlanError(f"plan family {shown(self.family)} is not one of {FAMILIES}")
        if not isinstance(self.base, str) or not self.base:
            raise PlanError(f"plan base must be a model ref string, got {shown(self.base, 200)}")
        if isinstance(self.schema_version, bool) or self.schema_version != SCHEMA_VERSION:
            raise PlanError(f"plan schema_version {shown(self.schema_version)} is not supported "
                            f"(expected {SCHEMA_VERSION})")
        object.__setattr__(self, "removed_operators", _operators(self.removed_operators))
        for name in KEPT_FIELDS.values():
            object.__setattr__(self, name, _frozen_map(name, getattr(self, name)))
        prov = self.provenance if self.provenance is not None else {}
        if not isinstance(prov, Mapping):
            raise PlanError(f"plan provenance must be a JSON object, got {type(prov).__name__}")
        object.__setattr__(self, "provenance", MappingProxyType(dict(prov)))
        object.__setattr__(self, "reconstruction", _reconstruction(self.reconstruction))

    def __copy__(self) -> PruningPlan:
        return self  # immutable: copies may share it

    def __deepcopy__(self, memo) -> PruningPlan:
        return self

    # ------------------------------------------------------------------ (de)serialisation

    def to_dict(self) -> dict:
        return {
            "schema_version": self.schema_version,
            "family": self.family,
            "base": self.base,
            "removed_operators": list(self.removed_operators),
            **{name: {k: list(v) for k, v in getattr(self, name).items()} for name in KEPT_FIELDS.values()
               if name not in OPTIONAL_FIELDS or getattr(self, name)},
            "provenance": _jsonable(dict(self.provenance)),
            **({} if self.reconstruction is None else {"reconstruction": _jsonable(dict(self.reconstruction))}),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PruningPlan:
        if not isinstance(d, Mapping):
            raise PlanError(f"a plan must be a JSON object, got {type(d).__name__}")
        version = d.get("schema_version")
        if isinstance(version, bool) or version != SCHEMA_VERSION:
            raise PlanError(f"plan schema_version {shown(version)} is not supported (expected {SCHEMA_VERSION})")
        missing = [k for k in ("family", "base") if k not in d]
        if missing:
            raise PlanError(f"plan is missing field(s) {missing}")
        unknown = set(d) - {"schema_version", "family", "base", "removed_operators", *(KEPT_FIELDS.values()),
                            "provenance", "reconstruction"}
        if unknown:
            raise PlanError(f"plan has unknown field(s) {few(sorted(map(str, unknown)))}")
        return cls(family=d["family"], base=d["base"], removed_operators=d.get("removed_operators", ()),
                   **{name: d.get(name, {}) for name in KEPT_FIELDS.values()}, provenance=d.get("provenance", {}),
                   reconstruction=d.get("reconstruction"))

    def to_json(self, **kw) -> str:
        return json.dumps(self.to_dict(), indent=kw.pop("indent", 2), **kw)

    @classmethod
    def from_json(cls, text: str) -> PruningPlan:
        try:
            return cls.from_dict(parse_json(text, "plan"))
        except SettingsError as e:
            raise PlanError(str(e)) from None

    @classmethod
    def read(cls, path) -> PruningPlan:
        """A plan from a plan JSON file, or the plan inside an export manifest (``pruning_plan.json``).

        Errors name the file: ``PlanError`` for bad content, also for unreadable or non-UTF-8 files.
        """
        try:
            data = read_json(path, "plan file")
        except SettingsError as e:
            raise PlanError(str(e)) from None
        if isinstance(data, Mapping) and "plan" in data and "format" in data:  # an export manifest
            data = data["plan"]
        try:
            return cls.from_dict(data)
        except PlanError as e:
            raise PlanError(f"plan file {str(path)!r}: {e}") from None

    # ------------------------------------------------------------------ queries

    def kept(self, kind: str) -> Mapping[str, tuple[int, ...]]:
        """The kept-index map for a structure kind: 'head', 'neuron', 'group' or 'channel'."""
        return getattr(self, KEPT_FIELDS[kind])

    @property
    def compensated(self) -> tuple[str, ...]:
        """Removed operators whose stand-in carries a compensation bias (after reconstruction)."""
        return tuple(self.reconstruction["compensated"]) if self.reconstruction else ()

    @property
    def is_empty(self) -> bool:
        return not (self.removed_operators or any(self.kept(kind) for kind in UNIT_KINDS))

    def with_provenance(self, **info) -> PruningPlan:
        stamp = {"created_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        return replace(self, provenance={**self.provenance, **stamp, **info})

    # ------------------------------------------------------------------ validation

    def validate(self, denoiser: nn.Module, family: str | None = None) -> None:
        """Raise ``PlanError`` naming the FQN or index that does not fit ``denoiser``."""
        if family is not None and family != self.family:
            raise PlanError(f"plan is for family {shown(self.family)} (base {shown(self.base, 200)}), model is {family!r}")
        found = discover(denoiser)
        if not families.get(self.family).owns(denoiser):
            owner = families.for_denoiser(denoiser)
            kind = owner.denoiser_label if owner is not None else f"a {type(denoiser).__name__}"
            raise PlanError(f"plan is for family {shown(self.family)} but the denoiser is {kind}")
        for fqn in self.removed_operators:
            if fqn not in found.operators:
                raise PlanError(f"unknown operator FQN {shown(fqn, 200)} (not a removable operator of this denoiser)")
        stray = sorted(set(self.compensated) - set(self.removed_operators))
        if stray:
            raise PlanError(f"reconstruction.compensated names {shown(stray[0], 200)}, which the plan does not remove")
        for kind, field_name in KEPT_FIELDS.items():
            for fqn, kept in getattr(self, field_name).items():
                s = found.structures.get(fqn)
                if s is None or s.kind != kind:
                    raise PlanError(f"{field_name}: unknown {kind} structure FQN {shown(fqn, 200)}")
                if len(kept) > s.units:
                    raise PlanError(f"{field_name}[{shown(fqn, 200)}]: {len(kept)} kept indices for a {kind} structure of "
                                    f"{s.units} units")
                if len(set(kept)) != len(kept):
                    seen: set[int] = set()
                    dups = [i for i in kept if i in seen or seen.add(i)]
                    raise PlanError(f"{field_name}[{shown(fqn, 200)}]: duplicate indices {few(dict.fromkeys(dups))}")
                bad = [i for i in kept if not 0 <= i < s.units]
                if bad:
                    raise PlanError(f"{field_name}[{shown(fqn, 200)}]: index {bad[0]} out of range 0..{s.units - 1}")

    def normalized(self, denoiser: nn.Module) -> PruningPlan:
        """Validated, canonical plan: emptied structures become operator removals; entries inside
        removed operators and fully kept structures are dropped.

        Structures that are not operators themselves (FLUX single-block heads and ``proj_mlp``)
        may be emptied completely: they then contribute nothing.
        """
        self.validate(denoiser)
        found = discover(denoiser)
        removed = set(self.removed_operators)
        kept_maps = {}
        for field_name in KEPT_FIELDS.values():
            kept_maps[field_name] = {}
            for fqn, kept in getattr(self, field_name).items():
                if not kept and fqn in found.operators:
                    removed.add(fqn)
                elif len(kept) < found.structures[fqn].units:
                    kept_maps[field_name][fqn] = tuple(sorted(kept))
        removed = {r for r in removed if not any(inside(r, other) for other in removed if other != r)}
        for m in kept_maps.values():
            for fqn in [f for f in m if any(inside(f, r) or f == r for r in removed)]:
                del m[fqn]
        rec = self.reconstruction
        if rec is not None and not set(rec["compensated"]) <= removed:
            rec = {**rec, "compensated": [f for f in rec["compensated"] if f in removed]}
        return replace(self, removed_operators=tuple(removed), reconstruction=rec, **kept_maps)

    # ------------------------------------------------------------------ accounting

    def summary(self, denoiser: nn.Module, **catalog_kw) -> dict:
        """Predicted params and MACs removed, absolute and as fractions of the denoiser.

        The figures are computed from the catalog (per-unit costs), not by slimming; tests
        check that ``slim`` removes exactly this much. Parameters that reconstruction's fitted
        stand-ins add (``pruning.standin.added_params``) are subtracted.
        """
        plan = self.normalized(denoiser)
        ops, st = catalog(denoiser, **catalog_kw)
        total_p, total_m = ops.attrs["total_params"], ops.attrs["total_macs"]
        op_rows = ops.set_index("fqn")
        p_ops = int(op_rows.loc[list(plan.removed_operators), "params"].sum()) if plan.removed_operators else 0
        m_ops = float(op_rows.loc[list(plan.removed_operators), "macs"].sum()) if plan.removed_operators else 0.0
        by_kind = {"operator": p_ops}
        p_st, m_st = 0, 0.0
        st_rows = st.set_index("fqn")
        for kind in UNIT_KINDS:
            p_kind = 0
            for fqn, kept in plan.kept(kind).items():
                row = st_rows.loc[fqn]
                n = int(row["units"]) - len(kept)
                # parts inside a removed operator (a conditioning channel's consumer in a removed block) count there
                gone = [v for m, v in row["parts"].items()
                        if any(m == r or inside(m, r) for r in plan.removed_operators)]
                p_kind += n * (int(row["unit_params"]) - sum(p for p, _ in gone)) + \
                    (0 if kept else int(row["fixed_params"]))
                m_st += n * (float(row["unit_macs"]) - sum(m for _, m in gone))
            by_kind[kind] = p_kind
            p_st += p_kind
        both_p, both_m = _cut_twice(denoiser, plan, st_rows)
        by_kind["channel"] -= both_p
        p_st, m_st = p_st - both_p, m_st - both_m
        added = added_params(denoiser, plan) if plan.compensated else 0  # fitted stand-ins' maps and biases
        p, m = p_ops + p_st - added, m_ops + m_st
        return {
            "params_total": total_p, "params_removed": p, "params_fraction": p / total_p,
            "params_added_by_standins": added,
            "macs_total": total_m, "macs_removed": round(m), "macs_fraction": m / total_m,
            "params_removed_by_kind": by_kind,
            "operators_removed": len(plan.removed_operators),
            "structures_pruned": sum(len(plan.kept(k)) for k in UNIT_KINDS),
        }


def _cut_twice(denoiser: nn.Module, plan: PruningPlan, st_rows) -> tuple[int, float]:
    """``(params, MACs)`` that the per-unit sums count twice: a weight cut along both dims
    (:func:`~pruning.catalog.double_cuts`), where the removed rows' removed columns are in both sums."""
    found = discover(denoiser).structures
    gone = {f: found[f].units - len(k) for kind in UNIT_KINDS for f, k in plan.kept(kind).items()}
    p, m = 0, 0.0
    for param, rows, cols, per in double_cuts(denoiser):
        if gone.get(rows) and gone.get(cols) and not any(inside(param, r) for r in plan.removed_operators):
            col_p, col_m = st_rows.loc[cols, "parts"][param.rsplit(".", 1)[0]]  # per column unit in this layer
            p += gone[rows] * gone[cols] * per
            m += gone[rows] * gone[cols] * per * col_m / col_p  # MACs per weight: the same for every weight
    return p, m


# --------------------------------------------------------------------------- provenance in words

MANUAL = "manual"  # provenance["method"] of a plan chosen by hand from scratch
EDITED = "edited_by_hand"  # provenance key: True when a method's plan was then edited by hand


def _same_selection(a: PruningPlan, b: PruningPlan) -> bool:
    return (set(a.removed_operators) == set(b.removed_operators)
            and all({f: set(k) for f, k in a.kept(kind).items()} == {f: set(k) for f, k in b.kept(kind).items()}
                    for kind in KEPT_FIELDS))


def mark_edited(plan: PruningPlan, origin: PruningPlan | Mapping | None) -> PruningPlan:
    """``plan`` with the provenance of a hand edit of ``origin`` (the plan a method pre-filled, or
    its provenance): the method, its target and settings are kept and ``edited_by_hand`` is set;
    when ``plan`` selects exactly what ``origin`` selects, ``origin``'s provenance as is; without
    an origin (or a hand-made one) the method is ``"manual"``.

    >>> a = PruningPlan(family="sd", base="tiny:sd", removed_operators=("x", "y"),
    ...                 provenance={"method": "ecodiff", "target_sparsity": 0.2})
    >>> b = mark_edited(PruningPlan(family="sd", base="tiny:sd", removed_operators=("x",)), a)
    >>> b.provenance["method"], b.provenance["edited_by_hand"], describe(b)
    ('ecodiff', True, 'EcoDiff 20%, edited by hand')
    >>> describe(mark_edited(a, a)), describe(mark_edited(b, None))
    ('EcoDiff 20%', 'chosen by hand')
    """
    prov = dict(origin.provenance if isinstance(origin, PruningPlan) else (origin or {}))
    own = {k: v for k, v in plan.provenance.items() if k not in ("method", EDITED)}
    if not prov or prov.get("method", MANUAL) == MANUAL:
        return replace(plan, provenance={**prov, **own, "method": MANUAL})
    if isinstance(origin, PruningPlan) and _same_selection(plan, origin):
        return replace(plan, provenance={**own, **prov})
    return replace(plan, provenance={**own, **prov, EDITED: True})


def describe(plan: PruningPlan | Mapping) -> str:
    """The plan's origin in words, the same on every tab and in the card: the method's name and
    target ("EcoDiff 20%"), ", edited by hand" after a hand edit, "chosen by hand" for a plan made
    by hand (``plan`` or its provenance).

    >>> describe({"method": "ldpruner", "target_sparsity": 0.125}), describe({})
    ('LD-Pruner 12.5%', 'chosen by hand')
    """
    from .labels import method_name  # the method registry imports this module

    prov = plan.provenance if isinstance(plan, PruningPlan) else (plan or {})
    method = str(prov.get("method") or MANUAL)
    if method == MANUAL:
        return "chosen by hand"
    t = prov.get("target_sparsity")
    target = f" {100 * t:.3g}%" if isinstance(t, (int, float)) and not isinstance(t, bool) else ""
    return f"{method_name(method)}{target}" + (", edited by hand" if prov.get(EDITED) else "")


def _reconstruction(value) -> Mapping[str, Any] | None:
    """``None`` or ``{"settings": {...}, "compensated": [FQN, ...]}``, checked and frozen. The
    settings of a method that compensates its own weights name it (``"method"``); a reconstruction
    that re-fits such a method's model records the method's settings as its ``"start"``.

    >>> rec = {"settings": {"ridge": 0.01, "start": {"method": "obsdiff"}}, "compensated": []}
    >>> _reconstruction(rec)["settings"]["start"]["method"]
    'obsdiff'
    >>> _reconstruction({"settings": {"start": {"ridge": 0.01}}, "compensated": []})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    pruning.errors.PlanError: reconstruction.settings.start must be the settings of a method ...
    """
    if value is None:
        return None
    if not isinstance(value, Mapping) or set(value) != {"settings", "compensated"}:
        raise PlanError("reconstruction must be {'settings': {...}, 'compensated': [operator FQNs]}, got "
                        f"{value!r}"[:300])
    if not isinstance(value["settings"], Mapping):
        raise PlanError(f"reconstruction.settings must be a JSON object, got {value['settings']!r}"[:300])
    settings = dict(value["settings"])
    if "start" in settings:
        start = settings["start"]
        if not isinstance(start, Mapping) or not isinstance(start.get("method"), str) or not start["method"] \
                or "method" in settings:
            raise PlanError("reconstruction.settings.start must be the settings of a method that compensated the "
                            f"plan (a JSON object naming its 'method'), got {start!r}"[:300])
        settings["start"] = dict(start)
    comp = value["compensated"]
    if isinstance(comp, (str, Mapping)) or not isinstance(comp, (list, tuple)) or \
            not all(isinstance(f, str) and f for f in comp):
        raise PlanError(f"reconstruction.compensated must be a list of operator FQNs, got {comp!r}"[:300])
    return MappingProxyType({"settings": MappingProxyType(settings),
                             "compensated": tuple(sorted(set(comp)))})


def _jsonable(x):
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return str(x)
