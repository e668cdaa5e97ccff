"""Structural pruning of diffusion models: SD, SDXL and FLUX denoisers.

The public API (a contract: code outside this package uses these names)::

    from pruning import (load_pipeline, catalog, PruningPlan, masked, slim, export,
                         load_pruned, generate_latents)
    from pruning.methods import ldpruner, ecodiff, diffpruning   # and the registry: methods.get("taylor")

This package never imports gradio: the app lives beside it (``app.py``, ``app_support/``).
"""

import signal as _signal
import sys as _sys


def _interrupted_while_starting(signum, frame):  # pragma: no cover - exercised in a subprocess
    """Ctrl-C while ``python -m pruning`` still imports its libraries: nothing has started, so
    say so in one line and exit 130 at once (no ``KeyboardInterrupt`` traceback from an import)."""
    import os

    os.write(2, b"pruning: interrupted\n")
    os._exit(130)


# `python -m pruning`: the handler is in place before the heavy imports below (torch, diffusers);
# pruning.cli.main replaces it with the normal one when the command starts its work.
def _run_as_main() -> bool:
    """This import is the one of ``python [options] -m pruning ...``, before its ``__main__`` runs."""
    argv = list(getattr(_sys, "orig_argv", ()))
    return _sys.argv[:1] == ["-m"] and "-m" in argv and argv[argv.index("-m") + 1:][:1] == ["pruning"]


if _run_as_main() and _signal.getsignal(_signal.SIGINT) is _signal.default_int_handler:
    _signal.signal(_signal.SIGINT, _interrupted_while_starting)

import transformers.utils.logging as _tlog  # noqa: E402

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
    from .plan import PruningPlan
    from .reconstruct import ReconstructSettings, reconstruct
    from .recover import RecoverSettings, recover
    from .runs import RunControl
    from .sampling import generate_images, generate_latents
    from .slim import slim
finally:
    _tlog.set_verbosity(_verbosity)

__all__ = [
    "load_pipeline", "Handle", "catalog", "PruningPlan", "masked", "slim", "export", "load_pruned",
    "generate_latents", "generate_images", "reconstruct", "ReconstructSettings", "recover", "RecoverSettings",
    "compare_methods", "CompareSettings",
    "RunControl", "PruningError", "ModelLoadError", "PlanError", "ExportError", "SettingsError", "RunStopped",
    "RunDiverged",
]
