"""The baselines every method must beat: weight magnitude and random unit scores.

Both are data free (no generation) and score the units of the chosen structure kinds.

>>> from pruning.testing import tiny_pipeline
>>> from pruning.loading import handle_from_pipe
>>> h = handle_from_pipe(tiny_pipeline("sd"), model_ref="tiny:sd")
>>> s = MAGNITUDE.score(h, MAGNITUDE.settings(kinds=("head",)))
>>> s.level, sorted(set(s.table["kind"]))
('unit', ['head'])
>>> plan = RANDOM.to_plan(h, RANDOM.score(h), target_sparsity=0.2)
>>> round(plan.summary(h.denoiser)["params_fraction"], 2)
0.2
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import pandas as pd
import torch

from .. import validate
from ..catalog import BLOCK_UNIT_KINDS, UNIT_KINDS, discover, unit_totals
from ..runs import RunControl
from .base import Method, Scores, opt
from .cost import MethodCost, weights_only


def magnitude_scores(handle, kinds=BLOCK_UNIT_KINDS) -> dict[str, torch.Tensor]:
    """Per-unit L2 norm of the weights a unit owns (the magnitude baseline)."""
    squares = unit_totals(handle.denoiser, lambda name, w: w.detach().float().pow(2), kinds)
    return {fqn: sq.sqrt() for fqn, sq in squares.items()}


def random_scores(handle, kinds=BLOCK_UNIT_KINDS, seed: int = 0) -> dict[str, torch.Tensor]:
    """Uniform random unit scores (the random baseline)."""
    g = torch.Generator().manual_seed(seed)
    return {fqn: torch.rand(s.units, generator=g) for fqn, s in sorted(discover(handle.denoiser).structures.items())
            if s.kind in kinds}


def unit_table(handle, scores: dict[str, torch.Tensor]) -> pd.DataFrame:
    """``{fqn: (units,) tensor}`` -> one row per unit: fqn, kind, component, index, score."""
    structures = discover(handle.denoiser).structures
    rows = [{"fqn": f, "kind": structures[f].kind, "component": structures[f].component, "index": i,
             "score": float(v)} for f, t in scores.items() for i, v in enumerate(t.tolist())]
    return pd.DataFrame(rows, columns=["fqn", "kind", "component", "index", "score"])


@dataclass(frozen=True)
class BaselineSettings:
    kinds: tuple[str, ...] = opt(BLOCK_UNIT_KINDS, "which units are scored: attention heads (head), FFN neurons "
                                 "(neuron), resnet channel groups (group), conditioning channels (channel: the "
                                 "time / text embedding every modulation layer reads)", "choices", UNIT_KINDS,
                                 label="units", basic=True)
    seed: int = opt(0, "random draw (random only)", "int")

    def __post_init__(self):
        object.__setattr__(self, "kinds", validate.subset("kinds", self.kinds, UNIT_KINDS))
        object.__setattr__(self, "seed", validate.seed("seed", self.seed))

    def to_dict(self) -> dict:
        return {**asdict(self), "kinds": list(self.kinds)}


class Magnitude(Method):
    name = "magnitude"
    title = "Weight magnitude (baseline)"
    summary = "Scores each head, neuron or channel group by the size (L2 norm) of its weights; no images needed."
    level = "unit"
    Settings = BaselineSettings
    data_free = True

    def scores(self, handle, s: BaselineSettings) -> dict[str, torch.Tensor]:
        return magnitude_scores(handle, s.kinds)

    def cost(self, handle, settings, step) -> MethodCost:
        return weights_only(handle)

    def score(self, handle, settings=None, *, control: RunControl | None = None) -> Scores:
        s = settings or self.Settings()
        return Scores(self.name, "unit", unit_table(handle, self.scores(handle, s)), handle.model_ref, s.to_dict())


class Random(Magnitude):
    name = "random"
    title = "Random (baseline)"
    summary = "Scores units at random: what any method must beat at the same sparsity."

    def scores(self, handle, s: BaselineSettings) -> dict[str, torch.Tensor]:
        return random_scores(handle, s.kinds, s.seed)

    def comparison_draws(self, settings: BaselineSettings, draws: int) -> list[BaselineSettings]:
        """``draws`` independent draws (seeds 0 .. draws-1): a comparison shows their spread."""
        return [replace(settings, seed=d) for d in range(draws)]


MAGNITUDE, RANDOM = Magnitude(), Random()
