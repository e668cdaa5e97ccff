"""The registry of methods by name, below every method module: ``pruning.methods`` fills it with the
built-in methods, and a module that must find a method by name (reading a scores file, the
estimator) asks it without importing the package that imports the methods.

A method is registered under its one ``name``; its ``aliases`` (older names) still find it, so
files and command lines written before a rename keep working. ``names()`` lists the names only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..validate import registered

if TYPE_CHECKING:
    from .base import Method

METHODS: dict[str, Method] = {}
ALIASES: dict[str, str] = {}  # older name -> registry name


def register(method: Method) -> Method:
    """Add (or replace) a method under ``method.name`` (and its ``aliases``)."""
    METHODS[method.name] = method
    for old in getattr(method, "aliases", ()):
        ALIASES[old] = method.name
    return method


def unregister(name: str) -> None:
    method = METHODS.pop(name, None)
    for old in getattr(method, "aliases", ()):
        ALIASES.pop(old, None)


def names() -> list[str]:
    """Registered method names, in order."""
    return list(METHODS)


def canonical(name) -> str:
    """The registry name of ``name`` (a name or an older alias); :class:`~pruning.errors.UnknownName`
    listing the registered names otherwise."""
    if isinstance(name, str) and name in ALIASES and ALIASES[name] in METHODS:
        return ALIASES[name]
    return registered("method", name, names())


def get(name: str) -> Method:
    """The method registered as ``name`` or under an older alias (errors list the registered ones)."""
    return METHODS[canonical(name)]
