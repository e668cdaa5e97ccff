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
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from .. import validate
from ..catalog import UNIT_KINDS, catalog, discover, inside
from ..errors import PlanError, SettingsError
from ..plan import PruningPlan
from ..sampling import count_inputs

SCOPES = ("global", "local")


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
    plan = PruningPlan(family=handle.family, base=handle.model_ref, kept_heads=by_kind["head"],
                       kept_neurons=by_kind["neuron"], kept_groups=by_kind["group"])
    return plan.with_provenance(**(provenance or {})).normalized(handle.denoiser)


def _removal_order(scores: Mapping[str, torch.Tensor], scope: str, fraction: float | None = None):
    """(fqn, unit) pairs in the order units are removed (least important first)."""
    if scope == "global":
        flat = [(float(v), fqn, i) for fqn, s in scores.items() for i, v in enumerate(s.flatten().tolist())]
        return [(fqn, i) for _, fqn, i in sorted(flat)]
    order = []  # local: the same fraction of each structure, lowest scores first
    for fqn, s in scores.items():
        n = int(round(fraction * s.numel()))
        order += [(fqn, int(i)) for i in torch.argsort(s.flatten(), stable=True)[:n].tolist()]
    return order


def _kept_after(scores, removed) -> dict[str, list[int]]:
    gone: dict[str, set] = {}
    for fqn, i in removed:
        gone.setdefault(fqn, set()).add(i)
    return {fqn: [i for i in range(scores[fqn].numel()) if i not in g] for fqn, g in gone.items()}


def plan_from_unit_scores(handle, scores: Mapping[str, torch.Tensor], *, target_sparsity: float | None = None,
                          scope: str = "global", threshold: float | None = None,
                          provenance: Mapping | None = None, tolerance: float = 0.01) -> PruningPlan:
    """Remove the lowest-scoring units until ``target_sparsity`` of params is removed
    (within ``tolerance``), or every unit scoring below ``threshold``.

    ``scope="global"`` ranks all units together; ``"local"`` removes the same fraction of
    units in every structure (per layer).
    """
    _check_scores(handle, scores)
    validate.choice("scope", scope, SCOPES)
    if threshold is not None:
        threshold = validate.number("threshold", threshold)
        removed = [(f, i) for f, s in scores.items() for i, v in enumerate(s.flatten().tolist()) if v < threshold]
        return _plan(handle, _kept_after(scores, removed), provenance)
    if target_sparsity is None:
        raise SettingsError("give target_sparsity or threshold")
    target = validate.fraction("target sparsity", target_sparsity)
    den = handle.denoiser
    everything = _plan(handle, {f: [] for f in scores}, None).summary(den)["params_fraction"]
    if target > everything + tolerance:
        kinds = sorted({discover(den).structures[f].kind for f in scores})
        raise PlanError(f"target sparsity {target:.3f} is not reachable with kinds {kinds}: removing all of "
                        f"them removes {everything:.3f} of the params (at most {everything:.0%})")

    def fraction_for(plan):
        return plan.summary(den)["params_fraction"]

    if scope == "local":
        lo, hi = 0.0, 1.0
        for _ in range(30):  # bisection on the per-structure fraction
            mid = (lo + hi) / 2
            f = fraction_for(_plan(handle, _kept_after(scores, _removal_order(scores, "local", mid)), None))
            lo, hi = (mid, hi) if f < target else (lo, mid)
        best = min((lo, hi), key=lambda p: abs(
            fraction_for(_plan(handle, _kept_after(scores, _removal_order(scores, "local", p)), None)) - target))
        return _plan(handle, _kept_after(scores, _removal_order(scores, "local", best)), provenance)

    order = _removal_order(scores, "global")
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
    return _plan(handle, _kept_after(scores, order[:best]), provenance)


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
