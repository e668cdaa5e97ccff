"""Structural pruning of diffusion models: SD 1.x/2.x, SDXL, FLUX and SD3 denoisers.

The public API (a contract: code outside this package uses these names; ``__all__`` lists them):

* **Models**: ``load_pipeline(source)`` -> :class:`Handle` (a bundled tiny model, a local
  diffusers folder or a Hub id; safetensors only); ``handle_from_pipe(pipe)`` wraps a diffusers
  pipeline you already hold (without ``model_ref=`` it derives one from the pipeline's config and
  weights, and warns that it did); ``catalog(denoiser)`` lists what can be removed (operators and the
  units of heads, FFN neurons and channel groups, with params and MACs).
* **Scoring**: ``pruning.methods`` is the registry of methods (``methods.names()``,
  ``methods.get(name).score(handle, settings)`` -> ``Scores``, ``methods.to_plan(...)``); each
  method also says its cost (``pruning.estimate``), its settings' plain-words help
  (``methods.fields(name)``) and its CLI commands. The comparison of every method at several
  sparsities is ``compare_methods`` / ``CompareSettings``.
* **Plans**: :class:`PruningPlan` (what to remove, as JSON); ``masked`` (a zero-cost preview of a
  plan) and ``slim`` (the physically smaller denoiser) agree exactly.
* **Quality**: ``reconstruct`` / ``ReconstructSettings`` (training-free re-fit of the slim
  model's layers to the original's outputs), ``recover`` / ``RecoverSettings`` (a short distillation finetune).
* **Images**: ``generate_latents`` / ``generate_images`` (the one generation path).
* **Exports**: ``export`` writes safetensors, the plan, a manifest and a model card;
  ``load_pruned`` reads an export folder, a plan-only export, a plan file or a Hub repo, always
  as a :class:`Handle` (a denoiser-only export takes the other components from the model its
  plan names, or ``base=``); ``load_pruned_denoiser(folder)`` gives the slim denoiser alone;
  ``materialize(plan, base, out)`` writes a full export from the base's files without loading it.
* **Runs**: :class:`RunControl` (stop, progress, time limits).
* **Errors**: every error raised on purpose is a :class:`PruningError`: ``SettingsError`` (a bad
  value; ``UnknownName`` for a name no registry holds), ``ModelLoadError``, ``PlanError``,
  ``ExportError``, ``RunStopped``, ``RunDiverged``.

>>> from pruning import handle_from_pipe, methods, slim, PruningPlan
>>> from pruning.testing import tiny_pipeline
>>> h = handle_from_pipe(tiny_pipeline("sd"), model_ref="tiny:sd")
>>> scores = methods.get("magnitude").score(h, methods.get("magnitude").settings())
>>> plan = methods.to_plan(h, scores, target_sparsity=0.2)
>>> 0.15 < plan.summary(h.denoiser)["params_fraction"] < 0.25
True

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
    from . import methods
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
        UnknownName,
    )
    from .export import export, load_pruned, load_pruned_denoiser
    from .loading import Handle, handle_from_pipe, load_pipeline
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
    "load_pipeline", "Handle", "handle_from_pipe", "methods", "catalog", "PruningPlan", "masked", "slim", "export", "load_pruned",
    "load_pruned_denoiser", "materialize",
    "generate_latents", "generate_images", "reconstruct", "ReconstructSettings", "recover", "RecoverSettings",
    "compare_methods", "CompareSettings",
    "RunControl", "PruningError", "ModelLoadError", "PlanError", "ExportError", "SettingsError", "RunStopped",
    "RunDiverged", "UnknownName",
]
