"""The model families: each one is a registered unit of per-family knowledge.

A family (see :class:`~pruning.families.base.Family`) knows its pipeline and denoiser classes,
its generation defaults, its operators and structures beyond the generic diffusers ``Attention``
and ``FeedForward`` (block types, their stand-ins and cutters), how to build one denoiser step
and its conditioning (rollout, EcoDiff's replay, Taylor's loss), its real configs on the meta
device and a tiny in-memory pipeline for tests. Adding a family is one module here plus one
line in ``REGISTRY``; the rest of the package asks the registry.

Modules load lazily (on first use), so a family module may import any of the package.

>>> names()
('sd', 'sdxl', 'flux', 'sd3')
>>> get("sd3").denoiser_name, get("sdxl").pipeline_class.__name__
('transformer', 'StableDiffusionXLPipeline')
>>> from pruning.testing import tiny_pipeline
>>> for_pipe(tiny_pipeline("flux")).name
'flux'
"""

from __future__ import annotations

import importlib

from ..errors import UnknownName  # a leaf module: the registry imports nothing else of the package

# family name -> "module:attribute". Order matters where pipeline classes subclass each other
# (none do today); ``for_pipe`` takes the first match.
REGISTRY: dict[str, str] = {
    "sd": "pruning.families.sd:SD",
    "sdxl": "pruning.families.sd:SDXL",
    "flux": "pruning.families.flux:FLUX",
    "sd3": "pruning.families.sd3:SD3",
}

_LOADED: dict = {}


def names() -> tuple[str, ...]:
    return tuple(REGISTRY)


def get(name: str):
    """The family object of ``name`` (:class:`~pruning.errors.UnknownName` naming the known ones otherwise)."""
    if name not in _LOADED:
        if name not in REGISTRY:
            raise UnknownName(f"model family must be one of {list(REGISTRY)}, got {name!r}")
        module, attr = REGISTRY[name].split(":")
        _LOADED[name] = getattr(importlib.import_module(module), attr)
    return _LOADED[name]


def all_families() -> list:
    return [get(n) for n in REGISTRY]


def for_pipe(pipe):
    """The family of a pipeline instance (None if no family claims its class)."""
    return next((f for f in all_families() if isinstance(pipe, f.pipeline_class)), None)


def for_class_name(class_name: str):
    """The family whose pipeline class is called ``class_name`` (model_index.json), or None."""
    return next((f for f in all_families() if f.pipeline_class.__name__ == class_name), None)


def for_denoiser(denoiser):
    """The first family that owns this denoiser module (UNets are shared by SD and SDXL: 'sd')."""
    return next((f for f in all_families() if f.owns(denoiser)), None)


def of(handle_or_name):
    """The family of a Handle, a Trajectory or a family name."""
    name = handle_or_name if isinstance(handle_or_name, str) else handle_or_name.family
    return get(name)


def pipeline_class_names() -> list[str]:
    return sorted(f.pipeline_class.__name__ for f in all_families())


__all__ = ["REGISTRY", "names", "get", "all_families", "for_pipe", "for_class_name", "for_denoiser", "of",
           "pipeline_class_names"]
