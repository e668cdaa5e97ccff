"""The one stop-and-progress convention of every long loop (methods, comparison, recovery).

A loop receives a :class:`RunControl` (or ``None``): it calls ``control.stopped()`` between
units of work (an operator, an optimizer step, a timestep, a plan) and ``control.report(done,
total, info)`` after each. ``stopped()`` is true once the stop event is set (Stop pressed,
the request cancelled or disconnected) or the time limit has passed; the loop then returns
what it finished, marked partial. A ``RunControl`` also has ``is_set()``, so it can be passed
where a ``threading.Event`` is expected (``generate_latents(stop=...)`` ends mid-generation).

>>> c = RunControl(time_limit=0.0)
>>> c.stopped(), c.reason
(True, 'time limit of 0 s reached')
>>> seen = []
>>> c = RunControl(progress=lambda d, t, info: seen.append((d, t, info)))
>>> c.report(1, 4, loss=0.5); seen
[(1, 4, {'loss': 0.5})]
>>> c.stopped(), as_control(None).stopped()
(False, False)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class RunControl:
    """Stop event, optional time limit (seconds from creation) and progress callback of one run."""

    def __init__(self, stop: threading.Event | None = None, *, progress: Callable | None = None,
                 time_limit: float | None = None):
        self.event = stop if stop is not None else threading.Event()
        self._progress = progress
        self.deadline = None if time_limit is None else time.monotonic() + float(time_limit)
        self.time_limit = time_limit
        self.reason: str | None = None
        self.stopped_at: float | None = None  # time.monotonic() of the first stop
        self.done: tuple[int, int] = (0, 0)  # the last (done, total) reported

    def stopped(self) -> bool:
        """True once stopped or past the time limit (``reason`` says which)."""
        if self.event.is_set():
            self.reason = self.reason or "stopped"
            self.stopped_at = self.stopped_at or time.monotonic()
            return True
        if self.deadline is not None and time.monotonic() >= self.deadline:
            self.stop(f"time limit of {self.time_limit:g} s reached")
            return True
        return False

    is_set = stopped  # duck-types as a threading.Event for generate_latents(stop=...)

    def stop(self, reason: str = "stopped") -> None:
        self.reason = self.reason or reason
        self.stopped_at = self.stopped_at or time.monotonic()
        self.event.set()

    def report(self, done: int, total: int, **info) -> None:
        self.done = (done, total)
        if self._progress is not None:
            self._progress(done, total, info)


def as_control(control=None, *, stop: threading.Event | None = None, progress: Callable | None = None) -> RunControl:
    """A ``RunControl`` from what a caller passed: a control, a bare stop event, or nothing."""
    if isinstance(control, RunControl):
        return control
    if control is not None and hasattr(control, "is_set"):  # a threading.Event
        stop = control
    return RunControl(stop, progress=progress)
