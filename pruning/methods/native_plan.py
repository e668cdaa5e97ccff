"""Plans that load natively on purpose: any method's scores cut at whole-block level
(``to_plan(..., native=True)``, the app's "native" switch).

The candidates are the family's native units (``Family.native_units``: FLUX double and single
blocks, SD3 joint blocks but the last, UNet BasicTransformerBlocks as their attn1 + attn2 + ff).
A unit's score, low = prunable:

* operator scores (LD-Pruner): the block's own score where it was scored (block granularity),
  else the sum of its operators' scores when all of them were scored (fine granularity);
* unit scores (heads, neurons, channel groups): the mean score of the units inside the block.

Units are removed in increasing score until ``target_sparsity`` of the params is gone; a unit
whose removal alone would make the plan not native (a UNet mid block that no longer keeps as many
blocks as the last down block's first attention) waits for a partner that makes the pair native
(the next such block of the other side) and goes with it.

>>> import torch
>>> from pruning.testing import tiny_pipeline
>>> from pruning.loading import handle_from_pipe
>>> from pruning.methods import get
>>> from pruning.native import is_native
>>> h = handle_from_pipe(tiny_pipeline("flux"), model_ref="tiny:flux")
>>> scores = get("magnitude").score(h)
>>> plan = get("magnitude").to_plan(h, scores, target_sparsity=0.2, native=True)
>>> is_native(h.denoiser, plan), plan.summary(h.denoiser)["params_fraction"] >= 0.2, plan.provenance["native"]
(True, True, True)
"""

from __future__ import annotations

from collections.abc import Mapping

from .. import families
from ..catalog import catalog, discover, inside
from ..errors import PlanError, SettingsError
from ..native import blockers
from ..plan import PruningPlan


def unit_scores(handle, scores) -> dict[str, float]:
    """``{native unit FQN: score}`` for the units the scores rank (low = prunable)."""
    units = families.get(handle.family).native_units(handle.denoiser)
    out = {}
    if scores.level == "operator":
        by_op = dict(zip(scores.table["fqn"], scores.table["score"]))
        for block, parts in units.items():
            if block in by_op:
                out[block] = float(by_op[block])
            elif all(p in by_op for p in parts):
                out[block] = float(sum(by_op[p] for p in parts))
        return out
    table = scores.table
    for block in units:
        rows = table[table["fqn"].map(lambda f, b=block: f == b or inside(f, b))]
        if len(rows):
            out[block] = float(rows["score"].mean())
    return out


def native_plan(handle, scores, *, target_sparsity: float, provenance: Mapping | None = None) -> PruningPlan:
    """Remove the lowest-scoring native units until ``target_sparsity`` of the params is gone."""
    den = handle.denoiser
    ranked = unit_scores(handle, scores)
    if not ranked:
        raise SettingsError(f"{scores.method} scores rank none of the whole blocks a native plan removes "
                            f"({handle.family}); LD-Pruner: score with granularity 'block' or 'all'")
    units = families.get(handle.family).native_units(den)
    ops = catalog(den)[0].set_index("fqn")
    total = ops.attrs["total_params"]
    found = discover(den).operators
    removed: list[str] = []
    pending: list[str] = []  # blocks that break nativeness alone (a UNet mid block and its partner)
    gone = 0

    def fits(*blocks) -> bool:
        extra = [op for b in blocks for op in units[b]]
        return not blockers(den, PruningPlan(family=handle.family, base=handle.model_ref,
                                             removed_operators=(*removed, *extra)))

    for block in sorted(ranked, key=lambda b: (ranked[b], b)):
        if gone >= target_sparsity * total:
            break
        partner = None
        if not fits(block):
            partner = next((p for p in pending if fits(p, block)), None)
            if partner is None:
                pending.append(block)
                continue
            pending.remove(partner)
        for b in (block, partner) if partner else (block,):
            removed += units[b]
            gone += int(sum(ops.loc[p, "params"] for p in units[b] if p in found))
    plan = PruningPlan(family=handle.family, base=handle.model_ref, removed_operators=tuple(removed))
    reached = plan.summary(den)["params_fraction"]
    if reached < target_sparsity:
        raise PlanError(f"a native plan removes at most {reached:.3f} of the params (every whole block the "
                        f"scores rank: {len(ranked)}), short of the target {target_sparsity}")
    return plan.with_provenance(**(provenance or {}), native=True).normalized(den)


__all__ = ["native_plan", "unit_scores"]
