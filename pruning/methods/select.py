"""Turn per-unit scores (higher = more important) into a plan at a target param sparsity.

Shared by EcoDiff (scores = lambdas), Diff-Pruning (Taylor importance) and the baselines
(weight magnitude, random). Sparsity is the fraction of the denoiser's params removed, as
``PruningPlan.summary`` predicts it (and ``slim`` measures it).

>>> from pruning.testing import tiny_pipeline
>>> from pruning.loading import handle_from_pipe
>>> h = handle_from_pipe(tiny_pipeline("sd"), model_ref="tiny:sd")
>>> plan = plan_from_unit_scores(h, random_scores(h, kinds=("head", "neuron", "group")), target_sparsity=0.2)
>>> abs(plan.summary(h.denoiser)["params_fraction"] - 0.2) <= 0.01
True
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ..catalog import catalog, discover, unit_view
from ..errors import PlanError
from ..plan import PruningPlan

SCOPES = ("global", "local")
KINDS = ("head", "neuron", "group")


def check_sparsity(target: float) -> float:
    """A target sparsity must lie in (0, 1).

    >>> check_sparsity(1.2)
    Traceback (most recent call last):
    ...
    pruning.errors.PlanError: target sparsity 1.2 is outside (0, 1)
    """
    if not isinstance(target, (int, float)) or not 0 < float(target) < 1:
        raise PlanError(f"target sparsity {target!r} is outside (0, 1)")
    return float(target)


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


def _plan(handle, kept: dict[str, list[int]], provenance: Mapping | None) -> PruningPlan:
    found = discover(handle.denoiser)
    by_kind = {k: {} for k in KINDS}
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
    if scope not in SCOPES:
        raise PlanError(f"unknown scope {scope!r}; choose one of {SCOPES}")
    if threshold is not None:
        removed = [(f, i) for f, s in scores.items() for i, v in enumerate(s.flatten().tolist()) if v < threshold]
        return _plan(handle, _kept_after(scores, removed), provenance)
    if target_sparsity is None:
        raise PlanError("give target_sparsity or threshold")
    target = check_sparsity(target_sparsity)
    den = handle.denoiser
    everything = _plan(handle, {f: [] for f in scores}, None).summary(den)["params_fraction"]
    if target > everything + tolerance:
        kinds = sorted({discover(den).structures[f].kind for f in scores})
        raise PlanError(f"target sparsity {target:.3f} is not reachable with kinds {kinds}: removing all of "
                        f"them removes {everything:.3f} of the params")

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


# --------------------------------------------------------------------------- baselines


def magnitude_scores(handle, kinds=KINDS) -> dict[str, torch.Tensor]:
    """Per-unit L2 norm of the weights a unit owns (the magnitude baseline)."""
    params = dict(handle.denoiser.named_parameters())
    out = {}
    for fqn, s in discover(handle.denoiser).structures.items():
        if s.kind not in kinds:
            continue
        sq = torch.zeros(s.units)
        for c in s.cuts:
            sq += unit_view(params[c.param].detach().float(), c, s).pow(2).sum(1).cpu()
        out[fqn] = sq.sqrt()
    return out


def random_scores(handle, kinds=KINDS, seed: int = 0) -> dict[str, torch.Tensor]:
    """Uniform random unit scores (the random baseline)."""
    g = torch.Generator().manual_seed(seed)
    return {fqn: torch.rand(s.units, generator=g) for fqn, s in sorted(discover(handle.denoiser).structures.items())
            if s.kind in kinds}
