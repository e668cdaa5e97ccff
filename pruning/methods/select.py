"""Turn scores (low = prunable) into a plan at a target sparsity: the one selection rule that
every method's ``to_plan`` uses.

* unit scores (heads, neurons, channel groups): remove the lowest-scoring units, globally or
  the same fraction per structure, until the target fraction of params is removed;
* operator scores: remove operators in increasing score order (skipping one nested in, or
  containing, an already removed one) until the target fraction of params or MACs is removed.

Sparsity is the fraction of the denoiser's params removed, as ``PruningPlan.summary`` predicts
it (and ``slim`` measures it).

>>> import torch
>>> from pruning.testing import tiny_pipeline
>>> from pruning.loading import handle_from_pipe
>>> from pruning.catalog import discover
>>> h = handle_from_pipe(tiny_pipeline("sd"), model_ref="tiny:sd")
>>> g = torch.Generator().manual_seed(0)
>>> scores = {f: torch.rand(s.units, generator=g) for f, s in discover(h.denoiser).structures.items()}
>>> plan = plan_from_unit_scores(h, scores, target_sparsity=0.2)
>>> abs(plan.summary(h.denoiser)["params_fraction"] - 0.2) <= 0.01
True

**Budgets** (:class:`LayerBudget`) keep a global ranking from collapsing a layer: no structure
loses more than ``max_fraction`` of its units (Torch-Pruning's ``max_pruning_ratio``; default
0.75), and scores can be normalised per structure before they are compared (``normalize``:
"none", the default, ranks the raw scores; "mean" divides each structure's scores by their
mean, Torch-Pruning's default normaliser, so a unit is ranked against its own layer's units;
"cost" also divides by the params the unit holds, i.e. ranks by score per parameter removed).
``protect_ends`` leaves the first and last blocks whole, and ``early`` lowers early blocks'
sparsity: a structure at relative depth d (0 first, 1 last) gets a cap (and, per layer, a
fraction) scaled by 1 - early * (1 - d).

Measured on tiny-shapes-sd at 20% params removed (32 held-out prompts; latent MSE / task
accuracy; random: mean of 3 plans): with no cap and raw scores (the old rule) Taylor collapsed
FFNs, 0.339 / 0.38 against random's 0.131 / 0.57; raw scores capped at 75%: Taylor 0.034 /
0.88, magnitude 0.063 / 0.72, EcoDiff 0.0068 / 0.88; "mean": Taylor 0.153 / 0.50 (worse than
random's 0.081 / 0.60 under the same rule); "cost": Taylor 0.065 / 0.66; a 50% cap: Taylor
0.013 / 0.81 but magnitude 0.206 / 0.63 (worse than random); ``protect_ends``: magnitude
0.0035 / 0.88, EcoDiff 0.0058 / 0.78, Taylor 0.013 / 0.69, random 0.073 / 0.66; ``early=0.5``
lowered every method's accuracy.

>>> found = discover(h.denoiser).structures
>>> kept = {f: k for kind in UNIT_KINDS for f, k in plan.kept(kind).items()}
>>> all(len(k) >= (1 - DEFAULT_MAX_FRACTION) * found[f].units for f, k in kept.items())  # no layer emptied
True
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import torch

from .. import validate
from ..catalog import UNIT_KINDS, catalog, discover, inside
from ..errors import PlanError, SettingsError
from ..plan import KEPT_FIELDS, PruningPlan
from ..sampling import count_inputs

SCOPES = ("global", "local")
NORMALIZERS = ("none", "mean", "cost")
DEFAULT_MAX_FRACTION = 0.75  # measured on tiny-shapes-sd (README, "No collapsed layers")
DEFAULT_NORMALIZE = "none"


@dataclass(frozen=True)
class LayerBudget:
    """How a target is spread over the structures (see the module docstring). Frozen and checked.

    >>> LayerBudget(max_fraction=1.5)
    Traceback (most recent call last):
    ...
    pruning.errors.SettingsError: max_fraction must be a finite number in (0, 1], got 1.5
    """

    max_fraction: float = DEFAULT_MAX_FRACTION  # per-structure cap on the units removed (1 = no cap)
    normalize: str = DEFAULT_NORMALIZE  # "none" | "mean" | "cost"
    protect_ends: bool = False  # leave the first and last blocks whole
    early: float = 0.0  # 0..1: how much less early blocks are pruned (0 = no depth preference)

    def __post_init__(self):
        mf = self.max_fraction
        if not isinstance(mf, (int, float)) or isinstance(mf, bool) or not math.isfinite(mf) or not 0 < mf <= 1:
            raise SettingsError(f"max_fraction must be a finite number in (0, 1], got {mf!r}")
        validate.choice("normalize", self.normalize, NORMALIZERS)
        if not isinstance(self.protect_ends, bool):
            raise SettingsError(f"protect_ends must be true or false, got {self.protect_ends!r}")
        early = validate.number("early", self.early, lo=0, hi=1)
        object.__setattr__(self, "max_fraction", float(mf))
        object.__setattr__(self, "early", float(early))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def of(cls, value) -> LayerBudget:
        """A budget from None (the defaults), a LayerBudget or a dict of its fields."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            unknown = sorted(set(value) - set(cls.__dataclass_fields__))
            if unknown:
                raise SettingsError(f"budget has no field(s) {unknown}; it has {sorted(cls.__dataclass_fields__)}")
            return cls(**value)
        raise SettingsError(f"budget must be a dict of {sorted(cls.__dataclass_fields__)}, got {type(value).__name__}")


def _layout(handle, budget: LayerBudget, fqns) -> tuple[dict, dict, set]:
    """Per structure: its depth scale 1 - early * (1 - d), its unit params, and the protected ones."""
    _, st = catalog(handle.denoiser)
    st = st.set_index("fqn")
    # depth over the structures inside blocks: the conditioning channels (block "other", depth 0: the
    # embedding runs first) feed every block, so they are at no depth (scale 1) and do not stretch it
    in_blocks = st["block"] != "other"
    depth = st.loc[in_blocks, "depth"].astype(float)
    lo, hi = float(depth.min()), float(depth.max())
    rel = (depth - lo) / max(hi - lo, 1e-9)
    scale = {f: 1.0 - budget.early * (1.0 - float(rel[f])) if f in rel.index else 1.0 for f in fqns}
    params = {f: float(st.loc[f, "unit_params"]) for f in fqns}
    protected = set()
    if budget.protect_ends:
        blocks = st[st["block"] != "other"].groupby("block")["depth"].agg(["min", "max"])  # not the embeddings
        first, last = blocks["min"].idxmin(), blocks["max"].idxmax()
        protected = {f for f in fqns if st.loc[f, "block"] in (first, last)}
    return scale, params, protected


def normalized_scores(handle, scores: Mapping[str, torch.Tensor], budget: LayerBudget | None = None) -> dict:
    """The scores one global ranking compares (``budget.normalize``, then the depth scale):
    "mean": each structure's scores over their mean; "cost": that, per param the unit holds."""
    budget = LayerBudget.of(budget)
    scale, params, _ = _layout(handle, budget, list(scores))
    out = {}
    for fqn, s in scores.items():
        s = s.double().flatten()
        if budget.normalize in ("mean", "cost"):
            s = s / max(float(s.abs().mean()), 1e-30)
        if budget.normalize == "cost":
            s = s / max(params[fqn], 1.0)
        out[fqn] = s / max(scale[fqn], 1e-9)  # early structures look more important
    return out


def _check_scores(handle, scores: Mapping[str, torch.Tensor]) -> None:
    found = discover(handle.denoiser)
    if not scores:
        raise PlanError("no unit scores given (empty structure kind selection?)")
    for fqn, s in scores.items():
        st = found.structures.get(fqn)
        if st is None:
            raise PlanError(f"scores name {fqn!r}, which is not a prunable structure of {handle.model_ref}")
        if s.numel() != st.units:
            raise PlanError(f"scores for {fqn!r} have {s.numel()} units, the model has {st.units}")
        validate.finite(f"scores[{fqn!r}]", s)


def _plan(handle, kept: dict[str, list[int]], provenance: Mapping | None) -> PruningPlan:
    found = discover(handle.denoiser)
    by_kind = {k: {} for k in UNIT_KINDS}
    for fqn, idx in kept.items():
        by_kind[found.structures[fqn].kind][fqn] = sorted(idx)
    plan = PruningPlan(family=handle.family, base=handle.model_ref,
                       **{KEPT_FIELDS[k]: by_kind[k] for k in UNIT_KINDS})
    return plan.with_provenance(**(provenance or {})).normalized(handle.denoiser)


def _removal_order(scores: Mapping[str, torch.Tensor], scope: str, fraction: float | None = None,
                   caps: Mapping[str, int] | None = None, scale: Mapping[str, float] | None = None):
    """(fqn, unit) pairs in the order units are removed (least important first); ``caps``: at most
    that many units of a structure (global); ``scale``: per-structure multiplier of the fraction (local)."""
    if scope == "global":
        flat = [(float(v), fqn, i) for fqn, s in scores.items() for i, v in enumerate(s.flatten().tolist())]
        order, count = [], {}
        for _, fqn, i in sorted(flat):
            if caps is not None and count.get(fqn, 0) >= caps.get(fqn, 0):
                continue
            count[fqn] = count.get(fqn, 0) + 1
            order.append((fqn, i))
        return order
    order = []  # local: the same fraction of each structure, lowest scores first
    for fqn, s in scores.items():
        f = fraction * (scale or {}).get(fqn, 1.0)
        n = min(int(round(f * s.numel())), (caps or {}).get(fqn, s.numel()))
        order += [(fqn, int(i)) for i in torch.argsort(s.flatten(), stable=True)[:n].tolist()]
    return order


def _kept_after(scores, removed) -> dict[str, list[int]]:
    gone: dict[str, set] = {}
    for fqn, i in removed:
        gone.setdefault(fqn, set()).add(i)
    return {fqn: [i for i in range(scores[fqn].numel()) if i not in g] for fqn, g in gone.items()}


def _caps(handle, budget: LayerBudget, scores: Mapping[str, torch.Tensor]) -> tuple[dict, dict, set]:
    """(depth scales, per-structure caps on the units removed, protected structures) under ``budget``."""
    scale, _, protected = _layout(handle, budget, list(scores))
    caps = {f: 0 if f in protected else int(math.floor(budget.max_fraction * scale[f] * s.numel() + 1e-9))
            for f, s in scores.items()}
    return scale, caps, protected


def _removable(handle, scores: Mapping[str, torch.Tensor], caps: Mapping[str, int]) -> float:
    """The params fraction removed with every unit the caps allow removed."""
    return _plan(handle, {f: list(range(caps[f], s.numel())) for f, s in scores.items()},
                 None).summary(handle.denoiser)["params_fraction"]


def removable_fraction(handle, scores: Mapping[str, torch.Tensor], budget: LayerBudget | Mapping | None = None
                       ) -> float:
    """The most a cut of ``scores`` can remove under ``budget`` (its per-structure caps): the largest
    target :func:`plan_from_unit_scores` reaches, globally or per layer (the app's target slider ends there).

    >>> import torch
    >>> from pruning.testing import tiny_pipeline
    >>> from pruning.loading import handle_from_pipe
    >>> h = handle_from_pipe(tiny_pipeline("sd"), model_ref="tiny:sd")
    >>> scores = {f: torch.ones(s.units) for f, s in discover(h.denoiser).structures.items()}
    >>> capped, whole = removable_fraction(h, scores), removable_fraction(h, scores, {"max_fraction": 1.0})
    >>> 0 < capped < whole <= 1
    True
    """
    budget = LayerBudget.of(budget)
    return _removable(handle, scores, _caps(handle, budget, scores)[1])


def plan_from_unit_scores(handle, scores: Mapping[str, torch.Tensor], *, target_sparsity: float | None = None,
                          scope: str = "global", threshold: float | None = None,
                          provenance: Mapping | None = None, tolerance: float = 0.01,
                          budget: LayerBudget | Mapping | None = None) -> PruningPlan:
    """Remove the lowest-scoring units until ``target_sparsity`` of params is removed
    (within ``tolerance``), or every unit scoring below ``threshold``.

    ``scope="global"`` ranks all units together (scores normalised and capped per structure by
    ``budget``); ``"local"`` removes the same fraction of units in every structure (per layer).
    """
    _check_scores(handle, scores)
    validate.choice("scope", scope, SCOPES)
    budget = LayerBudget.of(budget)
    if threshold is not None:
        threshold = validate.number("threshold", threshold)
        removed = [(f, i) for f, s in scores.items() for i, v in enumerate(s.flatten().tolist()) if v < threshold]
        return _plan(handle, _kept_after(scores, removed), provenance)
    if target_sparsity is None:
        raise SettingsError("give target_sparsity or threshold")
    target = validate.fraction("target sparsity", target_sparsity)
    den = handle.denoiser
    scale, caps, protected = _caps(handle, budget, scores)
    prov = {**(provenance or {}), "budget": budget.to_dict()}
    everything = _removable(handle, scores, caps)
    if target > everything + tolerance:
        kinds = sorted({discover(den).structures[f].kind for f in scores})
        raise PlanError(f"target sparsity {target:.3f} is not reachable with kinds {kinds} under the budget "
                        f"(at most {budget.max_fraction:.0%} of each structure"
                        f"{', ends protected' if protected else ''}): it removes at most {everything:.3f} of the "
                        f"params (at most {everything:.0%})")

    def fraction_for(plan):
        return plan.summary(den)["params_fraction"]

    if scope == "local":
        def local_plan(p, prov=None):
            return _plan(handle, _kept_after(scores, _removal_order(scores, "local", p, caps, scale)), prov)
        lo, hi = 0.0, 1.0 / max(min(scale.values()), 1e-9)
        for _ in range(30):  # bisection on the per-structure fraction
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if fraction_for(local_plan(mid)) < target else (lo, mid)
        best = min((lo, hi), key=lambda p: abs(fraction_for(local_plan(p)) - target))
        return local_plan(best, prov)

    ranked = normalized_scores(handle, scores, budget)
    order = _removal_order(ranked, "global", caps=caps)
    _, st = catalog(den)
    unit_p = dict(zip(st["fqn"], st["unit_params"]))
    total = st.attrs["total_params"]
    # first guess from per-unit costs, then bisection on the count with the exact summary
    cum, k = 0, 0
    while k < len(order) and cum < target * total:
        cum += unit_p[order[k][0]]
        k += 1
    lo, hi = max(0, k - 64), min(len(order), k + 64)
    while fraction_for(_plan(handle, _kept_after(scores, order[:lo]), None)) > target and lo > 0:
        lo = max(0, lo - 256)
    while fraction_for(_plan(handle, _kept_after(scores, order[:hi]), None)) < target and hi < len(order):
        hi = min(len(order), hi + 256)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fraction_for(_plan(handle, _kept_after(scores, order[:mid]), None)) < target:
            lo = mid
        else:
            hi = mid
    best = min((lo, hi), key=lambda n: abs(fraction_for(_plan(handle, _kept_after(scores, order[:n]), None)) - target))
    return _plan(handle, _kept_after(scores, order[:best]), prov)


# --------------------------------------------------------------------------- operators


def _overlaps(fqn: str, removed: Sequence[str]) -> bool:
    return any(inside(fqn, r) or inside(r, fqn) or fqn == r for r in removed)


def plan_from_operator_scores(handle, scores, *, target_sparsity: float | None = None,
                              target_macs: float | None = None, operators: Sequence[str] | None = None,
                              provenance: Mapping | None = None, resolution: int | None = None) -> PruningPlan:
    """A plan removing the lowest-scoring operators, or exactly the ``operators`` named.

    ``scores``: a table with ``fqn`` and ``score``. ``target_sparsity`` / ``target_macs`` (one
    of them, in (0, 1)): remove operators in increasing score order, skipping one nested in or
    containing an already removed one, until that fraction of the denoiser's params (or MACs
    at ``resolution``), measured with ``PruningPlan.summary``, is removed. ``operators``:
    manual selection. Provenance gets ``selection`` (mode, target, fractions reached).
    """
    chosen = [x is not None for x in (target_sparsity, target_macs, operators)]
    if sum(chosen) != 1:
        raise SettingsError("give exactly one of target_sparsity, target_macs or operators")
    for col in ("fqn", "score"):
        if col not in scores.columns:
            raise PlanError(f"the scores table has no {col!r} column (columns: {validate.few(list(scores.columns), 8)})")
    known = discover(handle.denoiser).operators
    for fqn in scores["fqn"]:
        if fqn not in known:
            raise PlanError(f"unknown operator {fqn!r} in the scores table: not a removable operator of this "
                            "denoiser (scores from another model?)")
    for fqn, v in zip(scores["fqn"], scores["score"]):
        validate.number(f"score of {fqn!r}", v)
    cat_kw = count_inputs(handle, resolution)

    def make(removed, **selection):
        plan = PruningPlan(family=handle.family, base=handle.model_ref, removed_operators=tuple(removed))
        summ = plan.summary(handle.denoiser, **cat_kw)
        return plan.with_provenance(**{**(provenance or {}), "selection": {
            **selection, "params_fraction": summ["params_fraction"], "macs_fraction": summ["macs_fraction"]}})

    if operators is not None:
        names = [operators] if isinstance(operators, str) else [str(o) for o in operators]
        if not names:
            raise SettingsError("operators is empty: name at least one operator to remove (a plan that removes "
                                "nothing is the base model)")
        for fqn in names:
            if fqn not in known:
                raise PlanError(f"unknown operator {fqn!r}: not a removable operator of this denoiser")
        return make(names, mode="manual", operators=names)

    metric, target = ("params_fraction", target_sparsity) if target_sparsity is not None else \
        ("macs_fraction", target_macs)
    name = "target_sparsity" if target_sparsity is not None else "target_macs"
    target = validate.fraction(name, target)
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
    outer = [f for f in scores["fqn"] if not any(inside(f, o) for o in scores["fqn"] if o != f)]
    best = PruningPlan(family=handle.family, base=handle.model_ref,
                       removed_operators=tuple(outer)).summary(handle.denoiser, **cat_kw)[metric] if outer else 0.0
    raise PlanError(f"{name}={target} is not reachable with the {len(scores)} scored operators: removing them "
                    f"removes at most {max(best, reached):.4f} of the denoiser's {what}")
