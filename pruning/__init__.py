"""Structural pruning of diffusion models: SD, SDXL and FLUX denoisers.

The public API (a contract: code outside this package uses these names)::

    from pruning import (load_pipeline, catalog, PruningPlan, masked, slim, export,
                         load_pruned, materialize, generate_latents)
    from pruning.methods import ldpruner, ecodiff, diffpruning   # and the registry: methods.get("taylor")

This package never imports gradio: the app lives beside it (``app.py``, ``app_support/``).
"""

import transformers.utils.logging as _tlog

# Importing diffusers' pipeline classes makes transformers print notices about optional image
# processors (torchvision) that no pruning code uses; keep them out of every import of the
# package (and the CLI's one-line errors), then restore the caller's verbosity.
_verbosity = _tlog.get_verbosity()
_tlog.set_verbosity_error()
try:
    from .catalog import catalog
    from .compare import CompareSettings, compare_methods
    from .errors import (
        ExportError,
        ModelLoadError,
        PlanError,
        PruningError,
        RunDiverged,
        RunStopped,
        SettingsError,
    )
    from .export import export, load_pruned
    from .loading import Handle, load_pipeline
    from .masks import masked
    from .materialize import materialize
    from .plan import PruningPlan
    from .reconstruct import ReconstructSettings, reconstruct
    from .recover import RecoverSettings, recover
    from .runs import RunControl
    from .sampling import generate_images, generate_latents
    from .slim import slim
finally:
    _tlog.set_verbosity(_verbosity)

__all__ = [
    "load_pipeline", "Handle", "catalog", "PruningPlan", "masked", "slim", "export", "load_pruned", "materialize",
    "generate_latents", "generate_images", "reconstruct", "ReconstructSettings", "recover", "RecoverSettings",
    "compare_methods", "CompareSettings",
    "RunControl", "PruningError", "ModelLoadError", "PlanError", "ExportError", "SettingsError", "RunStopped",
    "RunDiverged",
]
