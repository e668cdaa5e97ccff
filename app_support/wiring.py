"""What every tab of the app shares: the model cache and the runs, the error toasts, the readers of
common inputs, and the one run-and-estimate loop (:func:`run_with_estimate`) that Score, How much?
and Export use.

Callbacks return ``{component: value}`` dicts; a tab builds its components in ``build`` and wires
its events in ``wire`` (``app_support.tabs``). Nothing here is imported by the library.

>>> friendly(lambda: 1 / 0)()
Traceback (most recent call last):
...
gradio.exceptions.Error: 'unexpected ZeroDivisionError: division by zero'
"""

from __future__ import annotations

import functools
import inspect
import os
import weakref
from types import SimpleNamespace

import gradio as gr
import pandas as pd

from pruning.errors import PruningError
from pruning.plan import PruningPlan

from . import results
from .cache import ModelCache
from .runs import Runs, check_count, check_size, chunk_budget, owned

try:
    import spaces

    GPU = spaces.GPU
    ON_SPACES = True
except ImportError:  # off Spaces: a no-op, usable as @GPU and @GPU(duration=...)
    ON_SPACES = False

    def GPU(fn=None, **_kw):
        return fn if callable(fn) else (lambda f: f)

CHUNK = chunk_budget(on_spaces=ON_SPACES)  # one GPU call's share of a long run; chunks are chained
GPU_BUDGET_S = float(os.environ["PRUNING_GPU_BUDGET_S"]) if os.environ.get("PRUNING_GPU_BUDGET_S") else None
CACHE, RUNS = ModelCache(), Runs()
PROGRESS = gr.Progress()  # gradio's per-call progress marker (a default argument it replaces)
UI = {"concurrency_id": "ui", "concurrency_limit": None, "show_progress": "hidden"}  # cheap: never waits on model work
RUN = {"concurrency_id": "model", "concurrency_limit": 1}  # shared models: one job at a time
PRIVATE = {"api_visibility": "private"}
ACTIVE: dict[str, str] = {}  # session -> what its running run is ("the EcoDiff run on tiny-shapes-sd")
WAITED: dict[str, str] = {}  # session -> the run a model switch waited for (its result is then cleared)
CHOSEN: dict[str, str] = {}  # session -> the method its Score tab shows now (a late estimate of another is dropped)
DEMOS: weakref.WeakSet = weakref.WeakSet()  # the built apps (a run finds its queue entry in them)
EMPTY = {  # tables before their first result: the real headers, never gradio's "1 2 3"
    "kinds": pd.DataFrame(columns=["what", "kind", "count", "params", "share of params", "share of MACs"]),
    "scores": pd.DataFrame(columns=["rank", "operator / structure", "kind", "score (low = prunable)"]),
    "totals": pd.DataFrame(columns=["what", "removed", "of", "fraction"]),
    "metrics": pd.DataFrame(columns=["figure", "original", "pruned", "change / meaning"]),
    "quality": pd.DataFrame(columns=["method", "settings", "reconstructed", "target", "params removed", "MACs",
                                     "latent MSE ± SE (lower = closer)", "PSNR dB (higher = closer)",
                                     "SSIM (higher = closer)"]),
}


def shared() -> SimpleNamespace:
    """The session's state, shared by the tabs: the loaded model, each method's last scores, the
    plan, the last comparison, the last method run, a run button's click stamp, the last image pair."""
    return SimpleNamespace(model=gr.State(None), store=gr.State({}), plan=gr.State(None), comparison=gr.State(None),
                           last_method=gr.State(None), clicked=gr.State(None), pair=gr.State(None))


def message(e: Exception) -> str:
    if isinstance(e, (PruningError, ValueError, OSError)):
        return " ".join(str(e).split()) or type(e).__name__
    return f"unexpected {type(e).__name__}: {e}"


TOAST_S = (5.0, 15.0)  # an error toast's shortest and longest time on screen (the visitor can close it sooner)


def toast_seconds(text: str) -> float:
    """How long an error toast stays: a 3 s glance plus the time to read it (about 200 words a
    minute), within ``TOAST_S``: long enough to read, and it does not follow the visitor through
    the next tabs (Gradio's default is 10 s whatever the text).

    >>> toast_seconds("Give at least one prompt (one per line).")
    5.4
    >>> toast_seconds("word " * 100)
    15.0
    """
    return round(min(TOAST_S[1], max(TOAST_S[0], 3 + 0.3 * len(text.split()))), 1)


def toast(text: str) -> gr.Error:
    """The app's one error toast (every ``gr.Error`` of the app is made here): the text, on screen
    for :func:`toast_seconds`; what the screen showed stays (no output changes).

    >>> toast("Give at least one prompt (one per line).").duration
    5.4
    """
    return gr.Error(text, duration=toast_seconds(text), print_exception=False)


def friendly(fn):
    """Every error becomes a :func:`toast` naming the problem (never a traceback)."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen(*a, **k):
            try:
                yield from fn(*a, **k)
            except gr.Error:
                raise
            except Exception as e:
                raise toast(message(e)) from e
        return gen

    @functools.wraps(fn)
    def wrapper(*a, **k):
        try:
            return fn(*a, **k)
        except gr.Error:
            raise
        except Exception as e:
            raise toast(message(e)) from e
    return wrapper


def handle(model: dict | None):
    if not model:
        raise toast("Load a model first (Model tab).")
    return CACHE.get(model["source"], model["device"], model["dtype"])


def sid(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or "default"


def prompts(text) -> list[str]:
    items = text if isinstance(text, (list, tuple)) else str(text or "").splitlines()
    items = [str(p).strip() for p in items if str(p).strip()]
    if not items:
        raise toast("Give at least one prompt (one per line).")
    return check_count("prompts", items)


def steps(x) -> int | None:
    """Denoising steps; empty or 0 = the model's default (None)."""
    return check_size("steps", x) if x not in (None, "", 0, 0.0) else None


def plan(plan_dict) -> PruningPlan:
    if not plan_dict:
        raise toast("No plan yet: tick what to remove in Select and compare (or pre-fill it).")
    return PruningPlan.from_dict(plan_dict)


def gpu_budget() -> float | None:
    """The time one GPU call may take: the chunk budget when runs are chunked, else PRUNING_GPU_BUDGET_S."""
    return CHUNK.seconds if CHUNK and CHUNK.seconds else GPU_BUDGET_S


def estimate_text(h, e) -> str:
    return f"**Estimate** ({results.model_label(h)}): {e.text()}."


def chunks_note(run) -> str:
    parts = [f"{CHUNK.seconds:g} s" if CHUNK and CHUNK.seconds else "",
             f"{CHUNK.units} unit{'s' * (CHUNK.units > 1)} of work" if CHUNK and CHUNK.units else ""]
    return (f" It ran in {run.chunks} chunks of at most {' and '.join(p for p in parts if p)}, resumed one after "
            "another.") if run.chunks > 1 else ""


def _queued_at(request) -> float | None:
    """When this request joined gradio's queue (``time.monotonic``, the clock of ``Runs``): the
    session's running event of the model queue. An API client has no click stamp, so a Stop it
    sent while its run still waited behind another user's is known by this time."""
    session = getattr(request, "session_hash", None)
    for demo in list(DEMOS):
        for jobs in list(getattr(getattr(demo, "_queue", None), "active_jobs", None) or []):
            for event in list(jobs or []):
                fn = getattr(event, "fn", None)
                if getattr(event, "session_hash", None) == session and \
                        getattr(fn, "concurrency_id", None) == RUN["concurrency_id"]:
                    return getattr(event, "enqueue_time", None)
    return None


def asked_at(clicked, request) -> float | None:
    """The earliest sign of this run: the button's click stamp or the time it joined the queue
    (a Stop of the session pressed after it stops the run before it starts)."""
    stamps = [t for t in (clicked, _queued_at(request)) if isinstance(t, (int, float)) and not isinstance(t, bool)]
    return min(stamps) if stamps else None


def run_with_estimate(h, work, cost, *, request, clicked, progress, phase: str):
    """Run ``work(control)`` owned by this request (Stop, cancel, disconnect and the time limit end
    it) after putting ``cost()``'s text on screen. Yields ``("estimate", text)`` first,
    ``("progress", done, total, info)`` as the run reports, ``("wait",)`` while it works (the
    request can end then) and ``("done", run)`` last. The progress bar is one bar for the run: it
    names ``phase`` (or the phase the run reports) and never goes back."""
    def with_estimate(control):
        try:
            text = cost()
        except (PruningError, RuntimeError) as e:  # e.g. out of memory in a timed call: the run may still fit
            text = f"**Estimate** unavailable: {' '.join(str(e).split())[:200]}"
        control.report(0, 1, estimate=text)
        return work(control)

    session = sid(request)
    ACTIVE[session] = f"the {phase} run on {results.model_label(h)}"
    try:
        yield from _forward(h, with_estimate, session, clicked, request, progress, phase)
    finally:
        ACTIVE.pop(session, None)


def relay(messages, est, status, extra=None):
    """Screen updates from :func:`run_with_estimate`'s messages (use ``yield from``): the estimate
    into ``est``, a keep-alive into ``status`` for the rest (or ``extra(msg)``'s update when it gives
    one). Returns ``(run, estimate text)``."""
    run, asked = None, ""
    for msg in messages:
        if msg[0] == "estimate":
            asked = msg[1]
            yield {est: asked}
        elif msg[0] == "done":
            run = msg[1]
        else:
            yield (extra(msg) if extra else None) or {status: gr.skip()}
    return run, asked


def run_in_tab(h, work, cost, *, request, clicked, progress, phase: str, est, status, extra=None):
    """A tab's run (use ``yield from``): :func:`run_with_estimate` relayed to ``est`` and ``status``
    (:func:`relay`). Returns ``(run, estimate text)``, or None when a model switch waited for this
    run (:func:`switched`): the Model tab clears the result with the switch and says so, so the tab
    writes nothing (its status stays as it is)."""
    out = yield from relay(run_with_estimate(h, work, cost, request=request, clicked=clicked, progress=progress,
                                             phase=phase), est, status, extra)
    if switched(request):
        yield {status: gr.skip()}
        return None
    return out


def _forward(h, work, session, clicked, request, progress, phase):
    best, main = 0.0, None  # main: the run's own count (the first total > 1); nested counts only name the phase
    for msg in owned(work, runs=RUNS, session=session, lock=CACHE.lock(h),
                     clicked_at=asked_at(clicked, request)):
        if msg[0] == "progress" and "estimate" in msg[3]:
            yield ("estimate", msg[3]["estimate"])
        elif msg[0] == "progress":
            done, total, info = msg[1], msg[2], msg[3]
            main = main or (total if total and total > 1 else None)
            if isinstance(info.get("fraction"), (int, float)):  # the run's own share of the whole (a comparison)
                best = max(best, float(info["fraction"]))
            elif total == main:
                best = max(best, done / total)  # monotone, whatever the phases report
            name = info.get("phase") or phase
            progress(best, desc=f"{name}: {min(round(best * main), main)}/{main}" if main else name)
            yield msg
        else:
            yield msg


@GPU(duration=int((CHUNK.seconds if CHUNK and CHUNK.seconds else 270) + 30))
def gpu_chunk(fn, *args):
    """One chunk of a long run: one GPU call on a Space (its duration covers the chunk's budget)."""
    return fn(*args)


def stamp():
    """A run button's click time (unqueued), so a Stop pressed while the run still waits stops it."""
    return RUNS.clicked()


def waiting_note(request: gr.Request) -> str:
    """What a model switch waits for while this session's run holds the model (or "")."""
    what = ACTIVE.get(sid(request))
    if not what:
        return gr.skip()
    WAITED[sid(request)] = what
    return f"Waiting for {what} to finish (press **Stop** in its tab to load now)..."


def switched(request: gr.Request | None) -> bool:
    """Whether a model switch waits for this session's run: its result is then cleared with the
    switch (the Model tab says so), so the run ends without writing it; a result written now could
    reach the page after the new model's cleared tabs and show the old model's figures."""
    return sid(request) in WAITED


def stop_run(request: gr.Request):
    """Stop this session's runs: the running one ends after its current step; queued ones never start."""
    n = RUNS.stop(sid(request))
    gr.Info("Stopping the current run..." if n else "Stop noted: a run waiting in the queue will not start.")
