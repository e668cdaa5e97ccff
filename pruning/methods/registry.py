"""The registry of methods by name, below every method module: ``pruning.methods`` fills it with the
built-in methods, and a module that must find a method by name (reading a scores file, the
estimator) asks it without importing the package that imports the methods.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..validate import registered

if TYPE_CHECKING:
    from .base import Method

METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add (or replace) a method under ``method.name``."""
    METHODS[method.name] = method
    return method


def unregister(name: str) -> None:
    METHODS.pop(name, None)


def names() -> list[str]:
    """Registered method names, in order."""
    return list(METHODS)


def get(name: str) -> Method:
    """The method registered as ``name`` (errors list the registered ones)."""
    return METHODS[registered("method", name, names())]
