"""The scoring methods and their registry: the app, the CLI and ``compare_methods`` iterate it.

Adding a method is one new module defining a :class:`~pruning.methods.base.Method` (``METHOD``)
plus one line in ``BUILTIN`` below; ``register`` adds one at run time (a plugin, a test).

Each method has one registry name (its module's, its CLI command's, the ``method`` field of its
scores, plans and run states) and a ``title`` for people; older names still find it.

>>> names()
['ldpruner', 'ecodiff', 'diffpruning', 'magnitude', 'random', 'obsdiff']
>>> get("diffpruning").level, get("ldpruner").level, get("taylor").name  # "taylor": Diff-Pruning's older name
('unit', 'operator', 'diffpruning')
>>> get("obs")
Traceback (most recent call last):
...
pruning.errors.UnknownName: method must be one of ['ldpruner', 'ecodiff', 'diffpruning', 'magnitude', 'random', 'obsdiff'], got 'obs'

What shows a method comes from the method itself: ``get(name).fields()`` (its settings with
plain-words help, labels and ranges), ``setting_help(name)``, ``get(name).cost(...)`` (through
``pruning.estimate``), its CLI commands, aliases and work unit.

>>> setting_help("diffpruning")["stride"]
'score every n-th of the 1000 noise levels [timestep stride, Diff-Pruning]: larger = faster'
"""

from __future__ import annotations

import importlib

from .base import DIRECTION, Method, Scores, check_scores_fit
from .cost import MethodCost
from .registry import ALIASES, METHODS, canonical, get, names, register, unregister

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


def setting_help(name: str) -> dict[str, str]:
    """``{setting: plain-words help}`` of method ``name``'s user-facing settings (the help the CLI's
    options show, for the app's controls and guide)."""
    return get(name).setting_help()


def fields(name: str) -> list[dict]:
    """Method ``name``'s user-facing settings (:func:`~pruning.methods.base.settings_fields`): name,
    label, help, kind, default, choices, basic, low / high / step, quick."""
    return get(name).fields()


for _module, _attr in BUILTIN:
    register(getattr(importlib.import_module(_module), _attr))

__all__ = ["Method", "Scores", "MethodCost", "DIRECTION", "METHODS", "ALIASES", "register", "unregister", "names",
           "get", "canonical", "to_plan", "check_scores_fit", "setting_help", "fields"]
