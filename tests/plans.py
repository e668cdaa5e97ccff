"""Random valid plans for the invariant tests (kept out of conftest so tests import it)."""

from __future__ import annotations

import random

from pruning.catalog import discover
from pruning.plan import KEPT_FIELDS, PruningPlan


def random_plan(handle, seed: int, *, max_ops: int = 3, p_struct: float = 0.5) -> PruningPlan:
    """Mix operator removals with head, neuron, channel-group and conditioning-channel pruning (some
    structures emptied)."""
    rng = random.Random(seed)
    found = discover(handle.denoiser)
    ops = sorted(found.operators)
    removed = rng.sample(ops, rng.randint(0, min(max_ops, len(ops))))
    kept = {kind: {} for kind in KEPT_FIELDS}
    for fqn, s in sorted(found.structures.items()):
        if rng.random() < p_struct:
            n = 0 if rng.random() < 0.1 else rng.randint(1, s.units)
            kept[s.kind][fqn] = sorted(rng.sample(range(s.units), n))
    return PruningPlan(family=handle.family, base=handle.model_ref, removed_operators=tuple(removed),
                       **{KEPT_FIELDS[k]: v for k, v in kept.items()})
