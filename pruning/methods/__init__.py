"""The scoring methods and their registry: the app, the CLI and ``compare_methods`` iterate it.

Adding a method is one new module defining a :class:`~pruning.methods.base.Method` (``METHOD``)
plus one line in ``BUILTIN`` below; ``register`` adds one at run time (a plugin, a test).

>>> names()
['ldpruner', 'ecodiff', 'taylor', 'magnitude', 'random', 'obsdiff']
>>> get("taylor").level, get("ldpruner").level
('unit', 'operator')
>>> get("obs")
Traceback (most recent call last):
...
pruning.errors.UnknownName: method must be one of ['ldpruner', 'ecodiff', 'taylor', 'magnitude', 'random', 'obsdiff'], got 'obs'
"""

from __future__ import annotations

import importlib

from .base import DIRECTION, Method, Scores, check_scores_fit
from .registry import METHODS, get, names, register, unregister

BUILTIN = (  # module, attribute: in the order users see them
    ("pruning.methods.ldpruner", "METHOD"),
    ("pruning.methods.ecodiff", "METHOD"),
    ("pruning.methods.diffpruning", "METHOD"),
    ("pruning.methods.baselines", "MAGNITUDE"),
    ("pruning.methods.baselines", "RANDOM"),
    ("pruning.methods.obsdiff", "METHOD"),
)
def to_plan(handle, scores: Scores, *, target_sparsity: float, scope: str | None = None, budget=None,
            native: bool = False):
    """Cut any method's scores at ``target_sparsity`` (dispatches on ``scores.method``); ``native``: whole
    blocks only, a plan that stock diffusers loads (``pruning.methods.native_plan``)."""
    return get(scores.method).to_plan(handle, scores, target_sparsity=target_sparsity, scope=scope, budget=budget,
                                      native=native)


for _module, _attr in BUILTIN:
    register(getattr(importlib.import_module(_module), _attr))

__all__ = ["Method", "Scores", "DIRECTION", "METHODS", "register", "unregister", "names", "get", "to_plan",
           "check_scores_fit"]
