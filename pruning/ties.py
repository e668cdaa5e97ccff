"""Near-ties: do the scores around the cut barely differ, so that the ranking (and the plan cut
from it) is decided by noise?

Scores are ranked low = prunable and a plan at target sparsity t removes about the lowest t of
them (by params; by count here). Take the scores ranked within ``window`` (a fraction of all
scores, at least 2 on each side) of the cut: their **spread** is the highest minus the lowest.
The ranking near the cut is **unreliable** when any of these holds:

1. the spread is at most ``rtol`` (1e-3) of the scores' **scale** (the largest absolute score),
2. the spread is at most the method's ``atol`` (EcoDiff: 1e-3, a gate-logit difference that
   changes a gate's probability by less than 0.03%),
3. at ``digits`` significant digits (what a table shows, 4) more than half of those scores
   collide with another one (the "0.9999, 1, 1, 1" a visitor sees).

Without a target the whole range of the scores is the window. :func:`check_ties` also returns
the significant digits needed to show the window's distinct values as distinct (for the table)
and whether a colour scale over these scores should be flattened (``flat``).

>>> import pandas as pd
>>> from pruning.methods import Scores
>>> def scores(values):
...     return Scores("magnitude", "unit", pd.DataFrame({"fqn": ["a"] * len(values), "index": range(len(values)),
...                   "score": values}), "tiny:sd", {})
>>> t = check_ties(scores([1.0, 0.99995, 1.00001, 0.99999, 1.0, 1.00002]), target_sparsity=0.5)
>>> t.tied, t.message
(True, 'scores barely differ: this ranking is unreliable; run more epochs or another preset')
>>> t.digits
6
>>> check_ties(scores([0.1, 0.5, 0.9, 1.3, 2.0, 2.4]), target_sparsity=0.5).tied
False
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import validate
from .errors import SettingsError

MESSAGE = "scores barely differ: this ranking is unreliable; run more epochs or another preset"
RTOL = 1e-3
DIGITS = 4  # what the app's tables show (``.4g``)
MAX_DIGITS = 12
WINDOW = 0.05  # the fraction of all scores on each side of the cut that is looked at
METHOD_ATOL = {"ecodiff": 1e-3}  # gate-logit units: below this the gates are the same gate


@dataclass(frozen=True)
class TieCheck:
    """What :func:`check_ties` found. ``message`` is "" when the ranking is reliable."""

    tied: bool
    message: str
    digits: int  # significant digits that keep the window's distinct scores distinct (>= DIGITS)
    spread: float  # highest minus lowest score of the window around the cut
    scale: float  # the largest absolute score
    window: int  # how many scores the window holds
    collisions: float  # fraction of the window's scores equal to another at DIGITS digits
    reason: str  # which rule fired, in words ("" when none)

    @property
    def flat(self) -> bool:
        """Whether a colour scale over these scores should be flattened (they say nothing apart)."""
        return self.tied

    def to_dict(self) -> dict:
        return {"tied": self.tied, "message": self.message, "digits": self.digits, "spread": self.spread,
                "scale": self.scale, "window": self.window, "collisions": self.collisions, "reason": self.reason}


def digits_needed(values, *, start: int = DIGITS, most: int = MAX_DIGITS) -> int:
    """The fewest significant digits (at least ``start``, at most ``most``) at which the distinct
    ``values`` print as distinct.

    >>> digits_needed([1.0, 0.99995, 1.00001]), digits_needed([0.5, 2.0])
    (6, 4)
    """
    v = np.unique(np.asarray(values, dtype=np.float64))
    for d in range(start, most + 1):
        if len({f"{x:.{d}g}" for x in v}) == len(v):
            return d
    return most


def _collisions(values, digits: int) -> float:
    shown = [f"{x:.{digits}g}" for x in values]
    counts: dict[str, int] = {}
    for s in shown:
        counts[s] = counts.get(s, 0) + 1
    return sum(1 for s in shown if counts[s] > 1) / max(1, len(shown))


def check_ties(scores, *, target_sparsity: float | None = None, structures: bool = False, rtol: float = RTOL,
               atol: float | None = None, digits: int = DIGITS, window: float = WINDOW) -> TieCheck:
    """Whether the scores around the cut at ``target_sparsity`` barely differ (see the module text).

    ``scores``: a :class:`~pruning.methods.Scores` (or any sequence of numbers); ``structures``:
    judge the per-structure means (what a heatmap colours) instead of the unit scores; ``atol``:
    the method's own floor (default: ``METHOD_ATOL`` of the scores' method, else 0)."""
    method = getattr(scores, "method", None)
    if hasattr(scores, "table"):
        values = (scores.per_structure() if structures else scores.table)["score"].to_numpy(np.float64)
    else:
        values = np.asarray(list(scores), dtype=np.float64)
    if values.ndim != 1 or not len(values):
        raise SettingsError("check_ties needs at least one score")
    if not np.isfinite(values).all():
        raise SettingsError("check_ties: the scores hold a non-finite value")
    rtol = validate.number("rtol", rtol, lo=0, hi=1)
    atol = validate.number("atol", METHOD_ATOL.get(method, 0.0) if atol is None else atol, lo=0)
    digits = validate.integer("digits", digits, lo=1, hi=MAX_DIGITS)
    v = np.sort(values)
    n = len(v)
    if target_sparsity is None:
        lo, hi = 0, n - 1
    else:
        t = validate.fraction("target_sparsity", target_sparsity)
        cut = min(n - 1, max(0, int(math.floor(t * n))))
        side = max(2, int(math.ceil(validate.fraction("window", window) * n)))
        lo, hi = max(0, cut - side), min(n - 1, cut + side)
    near = v[lo:hi + 1]
    spread = float(near[-1] - near[0])
    scale = float(np.abs(v).max())
    coll = _collisions(near, digits)
    reason = ""
    if n < 2:
        reason = ""
    elif spread <= rtol * scale:
        reason = f"the {len(near)} scores around the cut span {spread:.3g}, under {rtol:g} of their scale {scale:.3g}"
    elif spread <= atol:
        reason = f"the {len(near)} scores around the cut span {spread:.3g}, under {method}'s noise floor {atol:g}"
    elif coll > 0.5:
        reason = f"{100 * coll:.0f}% of the {len(near)} scores around the cut look equal at {digits} digits"
    tied = bool(reason)
    return TieCheck(tied, MESSAGE if tied else "", digits_needed(near, start=digits), spread, scale, len(near),
                    coll, reason)


__all__ = ["check_ties", "digits_needed", "TieCheck", "MESSAGE", "METHOD_ATOL"]
