"""Runs owned by their request: a run ends when its request ends (Stop, cancel, disconnect,
time limit), and never uses a shared model while another request's run does.

:func:`owned` runs the work in a worker thread that holds the model's lock, and yields
while it waits (so the server can cancel the request between yields). When the request's
generator is closed (the job was cancelled, or its client went away) the run's control is
stopped: the work ends after its current step and releases the model.

Stop is per session. A Stop press also stops the session's runs that were *clicked* before
it but still wait in the queue: each run button stamps the click time (an unqueued event)
and :meth:`Runs.start` compares it with the last Stop press.

>>> runs = Runs()
>>> clicked = runs.clicked()
>>> _ = runs.stop("s1")
>>> runs.start("s1", clicked).stopped(), runs.start("s1", runs.clicked()).stopped()
(True, False)
>>> out = list(owned(lambda control: 42, runs=runs, session="s2", lock=threading.RLock()))
>>> out[-1]
('done', 42)
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Iterator

from pruning.errors import RunStopped, SettingsError
from pruning.runs import Budget, RunControl
from pruning.validate import integer

RUN_TIME_LIMIT_S = float(os.environ.get("PRUNING_RUN_TIME_LIMIT", "900"))  # one request's run, at most
POLL_S = 0.25  # how often a waiting request yields (and so can be cancelled)

# The size of one request: each bound keeps a single call from holding the shared queue for long.
APP_LIMITS = {
    "steps": (1, 200, "denoising steps per image"),
    "prompts": (1, 32, "prompts per run"),
    "n_gen": (2, 16, "images per operator"),
    "epochs": (1, 50, "EcoDiff epochs"),
    "batch_size": (1, 16, "prompts per EcoDiff step"),
    "sparsities": (1, 10, "target sparsities per comparison"),
    "recover_iters": (0, 5000, "recovery iterations"),
    "seed": (0, 2**31 - 1, "seed"),
    "stride": (1, 1000, "timestep stride"),
}


def chunk_budget(env=os.environ, on_spaces: bool = False) -> Budget | None:
    """How much work one GPU call does: ``PRUNING_CHUNK_S`` seconds (default on a Space: 100, under
    the GPU function's duration; elsewhere no limit) and ``PRUNING_CHUNK_UNITS`` units at most.
    Long runs are split into chunks of that size and chained (:mod:`pruning.chunks`).

    >>> chunk_budget({"PRUNING_CHUNK_UNITS": "1"})
    Budget(seconds=None, units=1)
    >>> chunk_budget({}, on_spaces=True), chunk_budget({})
    (Budget(seconds=100.0, units=None), None)
    """
    seconds = env.get("PRUNING_CHUNK_S") or ("100" if on_spaces else None)
    units = env.get("PRUNING_CHUNK_UNITS")
    try:
        budget = Budget(seconds=float(seconds) if seconds else None, units=int(units) if units else None)
    except ValueError:
        raise SettingsError(f"PRUNING_CHUNK_S={seconds!r} / PRUNING_CHUNK_UNITS={units!r}: give a number of "
                            "seconds and a whole number of units") from None
    return budget if budget.seconds or budget.units else None


def check_size(name: str, value) -> int:
    """An integer within the app's per-request bound for ``name`` (the error says the bound).

    >>> check_size("epochs", 1000)
    Traceback (most recent call last):
    ...
    pruning.errors.SettingsError: EcoDiff epochs must be an integer in 1..50 (this app's limit per request), got 1000
    """
    lo, hi, what = APP_LIMITS[name]
    return integer(what, value, lo=lo, hi=hi, why="this app's limit per request")


def check_flag(name: str, value) -> bool:
    """A checkbox value: true or false (an API client sending anything else is named).

    >>> check_flag("reconstruct", "yes")
    Traceback (most recent call last):
    ...
    pruning.errors.SettingsError: reconstruct must be true or false, got 'yes'
    """
    if value is None:
        return False
    if not isinstance(value, bool):
        raise SettingsError(f"{name} must be true or false, got {value!r}")
    return value


def check_count(name: str, items) -> list:
    """A list whose length is within the app's bound for ``name``."""
    lo, hi, what = APP_LIMITS[name]
    items = list(items)
    if not lo <= len(items) <= hi:
        raise SettingsError(f"{len(items)} {what}: this app takes {lo}..{hi} per request")
    return items


class Runs:
    """Per-session stop bookkeeping: running controls and the time of the last Stop press."""

    def __init__(self, keep: int = 200):
        self._lock = threading.Lock()
        self._stopped_at: dict[str, float] = {}
        self._active: dict[str, set[RunControl]] = {}
        self.log: list[dict] = []  # finished runs: session, reason, stopped_at, ended_at (monotonic)
        self._keep = keep

    @staticmethod
    def clicked() -> float:
        """The click stamp of a run button (stored in the session's state before the run queues)."""
        return time.monotonic()

    def stop(self, session: str, reason: str = "stopped") -> int:
        """Stop the session's running runs and those clicked before now; returns how many were running."""
        with self._lock:
            self._stopped_at[session] = time.monotonic()
            active = list(self._active.get(session, ()))
        for control in active:
            control.stop(reason)
        return len(active)

    def start(self, session: str, clicked_at: float | None = None,
              time_limit: float | None = RUN_TIME_LIMIT_S) -> RunControl:
        control = RunControl(time_limit=time_limit)
        with self._lock:
            if clicked_at is not None and self._stopped_at.get(session, float("-inf")) >= clicked_at:
                control.stop("Stop was pressed while it waited in the queue")
            self._active.setdefault(session, set()).add(control)
        return control

    def end(self, session: str, control: RunControl) -> None:
        with self._lock:
            self._active.get(session, set()).discard(control)

    def finished(self, session: str, control: RunControl) -> None:
        """Record that a run's work has returned (its worker no longer touches the model)."""
        with self._lock:
            self.log.append({"session": session, "reason": control.reason, "stopped_at": control.stopped_at,
                             "ended_at": time.monotonic()})
            del self.log[:-self._keep]

    def running(self, session: str) -> int:
        with self._lock:
            return len(self._active.get(session, ()))

    def progress(self, session: str) -> int:
        """The most units of work any running run of ``session`` has reported done."""
        with self._lock:
            return max((c.done[0] for c in self._active.get(session, ())), default=0)


def owned(work: Callable[[RunControl], object], *, runs: Runs, session: str, lock: threading.RLock,
          clicked_at: float | None = None, time_limit: float | None = RUN_TIME_LIMIT_S) -> Iterator[tuple]:
    """Run ``work(control)`` in a worker thread holding ``lock``; yield ``("progress", done, total,
    info)`` as it reports, ``("wait",)`` while it runs, and finally ``("done", result)`` (or raise its
    error). Closing this generator (the request ended) stops the run."""
    control = runs.start(session, clicked_at, time_limit)
    updates: queue.Queue = queue.Queue()
    control._progress = lambda done, total, info: updates.put(("progress", done, total, info))
    box: dict = {}

    def target():
        try:
            with lock:  # the shared model: one run at a time, even after a cancelled request
                if control.stopped():  # Stop pressed while this run waited in the queue
                    raise RunStopped(f"{control.reason}: the run did not start")
                box["result"] = work(control)
        except BaseException as e:  # re-raised in the request's thread
            box["error"] = e
        finally:
            runs.finished(session, control)
            updates.put(("end",))

    worker = threading.Thread(target=target, daemon=True, name=f"run-{session[:8]}")
    worker.start()
    finished = False
    try:
        while True:
            try:
                msg = updates.get(timeout=POLL_S)
            except queue.Empty:
                yield ("wait",)
                continue
            if msg[0] == "end":
                break
            yield msg
        finished = True
    finally:
        if not finished:
            control.stop("request ended")  # cancelled or disconnected: the worker stops after its step
        runs.end(session, control)
    if "error" in box:
        raise box["error"]
    yield ("done", box["result"])
