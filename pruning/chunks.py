"""Runs in chunks that fit a time budget, each resumed from the last one's state as plain data.

A ZeroGPU Space lends a GPU per call for a limited ``duration``; a long sweep, EcoDiff run,
Taylor run or comparison does not fit one call. Each of them can stop at a chunk boundary
(a :class:`~pruning.runs.Budget` of seconds or units) and hand back a :class:`RunState`:
JSON-able ``data`` (score rows, the loss history, the timesteps used) plus named CPU tensors
(gate logits and AdamW moments, the RNG state, accumulated gradients, the original latents).
The next call resumes from it. A chunked run equals an uninterrupted one: bit for bit for the
sweep and Taylor, and for EcoDiff too (same seeds, the optimizer state is carried exactly).

A state saves to one ``.safetensors`` file (metadata as JSON inside; nothing is unpickled)
so that a run can also resume in another process (``python -m pruning ... --state FILE``).

>>> from pruning.testing import tiny_pipeline
>>> from pruning.loading import handle_from_pipe
>>> from pruning.runs import Budget
>>> h = handle_from_pipe(tiny_pipeline("sd"), model_ref="tiny:sd")
>>> s = methods.get("diffpruning").settings(prompts=["a red circle"], steps=2, stride=250, thr=0.0)
>>> run = score_chunked(h, "diffpruning", s, budget=Budget(units=2))
>>> run.chunks, run.result.partial, run.result.info["timesteps"]
(3, False, [0, 250, 500, 750])
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from . import methods
from .compare import compare_chunk
from .runs import Budget, RunControl, RunState, as_control


@dataclass
class ChunkedRun:
    """A finished (or stopped) chunked run: its ``result`` (a method's :class:`~pruning.methods.Scores`,
    or a comparison table), how many chunks it took, and the state to resume from when it was
    stopped before the end (else None)."""

    result: object
    chunks: int
    state: RunState | None = None


def _direct(fn, *args):
    return fn(*args)


def _one_chunk(chunk: Callable, args: tuple, kwargs: dict, state, budget, control):
    control.begin_chunk(budget)
    try:
        return chunk(*args, state=state, control=control, **kwargs)
    finally:
        control.begin_chunk(None)


def run_chunked(chunk: Callable, *args, budget: Budget | None = None, control: RunControl | None = None,
                state: RunState | None = None, call: Callable = _direct, **kwargs) -> ChunkedRun:
    """Call ``chunk(*args, state=, control=, **kwargs) -> (result, state)`` until the state is None
    (finished) or ``control`` stops the run, each call limited to ``budget``.

    ``call(fn, *args)`` runs one chunk: directly by default; on a Space a function decorated
    with ``spaces.GPU(duration=...)``, so that each chunk is one GPU call. Progress reported
    through ``control`` counts over the whole run, not per chunk.
    """
    control = as_control(control)
    chunks = 0
    while True:
        result, state = call(_one_chunk, chunk, args, kwargs, state, budget, control)
        chunks += 1
        if state is None or control.stopped():
            return ChunkedRun(result, chunks, state)


def _method_chunk(handle, method: str, settings, *, state, control):
    return methods.get(method).run(handle, settings, state=state, control=control)


def score_chunk(handle, method: str, settings=None, state: RunState | None = None,
                budget: Budget | None = None, control: RunControl | None = None):
    """One chunk of ``method``: ``(scores so far, state to resume from or None when finished)``."""
    return _one_chunk(_method_chunk, (handle, method, settings), {}, state, budget, as_control(control))


def score_chunked(handle, method: str, settings=None, *, budget: Budget | None = None,
                  control: RunControl | None = None, state: RunState | None = None,
                  call: Callable = _direct) -> ChunkedRun:
    """Score ``method`` chunk after chunk until it is done or stopped (see :func:`run_chunked`)."""
    return run_chunked(_method_chunk, handle, methods.get(method).name, settings, budget=budget, control=control,
                       state=state, call=call)


def compare_chunked(handle, sparsities, chosen=None, *, settings=None, budget: Budget | None = None,
                    control: RunControl | None = None, state: RunState | None = None,
                    call: Callable = _direct, refit: Callable | None = None) -> ChunkedRun:
    """:func:`~pruning.compare.compare_methods` chunk after chunk (see :func:`run_chunked`)."""
    return run_chunked(compare_chunk, handle, sparsities, chosen, settings=settings, budget=budget,
                       control=control, state=state, call=call, refit=refit)
