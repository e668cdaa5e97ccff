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

A loop that can end a chunk early (:mod:`pruning.chunks`) also asks ``control.chunk_full()``
before each unit and calls ``control.unit_done()`` after it: the chunk is full once it holds
``Budget.units`` units, or when the next unit (as long as the longest so far) would pass
``Budget.seconds``. A chunk always does at least one unit.

>>> c = RunControl(chunk=Budget(units=2))
>>> [c.chunk_full() or c.unit_done() for _ in range(3)]
[None, None, True]

A data-parallel run (:mod:`pruning.parallel`) gives its control the ``processes`` it spans; a
loop then asks ``control.ending()``, true on every process as soon as one of them is stopped
or its chunk is full, so that all processes leave the loop at the same unit.

>>> RunControl(chunk=Budget(units=1)).ending(), RunControl(time_limit=0.0).ending()
(False, True)
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import SettingsError, StateMismatch
from .files import read_tensors, write_tensors


@dataclass(frozen=True)
class Budget:
    """What one chunk may do: at most ``seconds`` of work (the next unit must fit) and at most
    ``units`` units (an operator, an optimizer step, a timestep, a plan). Both None: no limit."""

    seconds: float | None = None
    units: int | None = None

    def __post_init__(self):
        s, u = self.seconds, self.units
        if s is not None and (isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 < s < float("inf")):
            raise SettingsError(f"chunk budget must be a positive number of seconds, got {s!r}")
        if u is not None and (isinstance(u, bool) or not isinstance(u, int) or u < 1):
            raise SettingsError(f"chunk units must be an integer >= 1, got {u!r}")


class _Clock:
    """Units done and the longest unit of the current chunk."""

    def __init__(self, budget: Budget):
        self.budget = budget
        self.start = self.last = time.monotonic()
        self.units = 0
        self.longest = 0.0

    def full(self) -> bool:
        if self.units == 0:
            return False
        b = self.budget
        if b.units is not None and self.units >= b.units:
            return True
        return b.seconds is not None and time.monotonic() - self.start + self.longest > b.seconds

    def done(self) -> None:
        now = time.monotonic()
        self.longest = max(self.longest, now - self.last)
        self.last = now
        self.units += 1


class RunControl:
    """Stop event, optional time limit (seconds from creation) and progress callback of one run."""

    def __init__(self, stop: threading.Event | None = None, *, progress: Callable | None = None,
                 time_limit: float | None = None, chunk: Budget | None = None, processes=None):
        self.event = stop if stop is not None else threading.Event()
        self._progress = progress
        self.deadline = None if time_limit is None else time.monotonic() + float(time_limit)
        self.time_limit = time_limit
        self.reason: str | None = None
        self.stopped_at: float | None = None  # time.monotonic() of the first stop
        self.done: tuple[int, int] = (0, 0)  # the last (done, total) reported
        self.clock = _Clock(chunk) if chunk is not None else None
        self.processes = processes  # a pruning.parallel.Processes, or None: this process alone

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

    def begin_chunk(self, budget: Budget | None) -> None:
        """Start counting a new chunk against ``budget`` (None: no chunk limit)."""
        self.clock = _Clock(budget) if budget is not None else None

    def chunk_full(self) -> bool:
        """True when the current chunk should end before the next unit of work."""
        return self.clock is not None and self.clock.full()

    def ending(self) -> bool:
        """True when the loop should end before its next unit: stopped or the chunk full, on any
        of ``processes`` (each process must call it at the same unit)."""
        flag = self.stopped() or self.chunk_full()
        return self.processes.any(flag) if self.processes is not None else flag

    def unit_done(self) -> None:
        if self.clock is not None:
            self.clock.done()

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


# --------------------------------------------------------------------------- resumable state

STATE_FORMAT = "pruning-run-state/1"


@dataclass
class RunState:
    """Where an unfinished run stands: ``data`` (JSON-able) and ``tensors`` (name -> CPU tensor),
    for ``what`` (a method name, or "compare") on ``model_ref`` with ``settings`` (a dict)."""

    what: str
    model_ref: str
    settings: Mapping
    data: dict = field(default_factory=dict)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    def check(self, what: str, model_ref: str, settings: Mapping) -> RunState:
        """Refuse to resume a state made by another run; returns itself."""
        if self.what != what:
            raise StateMismatch(f"cannot resume: the state is of a {self.what} run, not {what}")
        if self.model_ref != model_ref:
            raise StateMismatch(f"cannot resume: the state was made on {self.model_ref!r}, not {model_ref!r}")
        if _plain(self.settings) != _plain(settings):
            diff = sorted(k for k in set(self.settings) | set(settings)
                          if _plain(self.settings.get(k)) != _plain(settings.get(k)))
            raise StateMismatch(f"cannot resume: the state was made with other settings ({', '.join(diff)} differ)")
        return self

    def save(self, path: str | Path) -> Path:
        """One safetensors file (written atomically); :meth:`load` reads it back."""
        meta = {"what": self.what, "model_ref": self.model_ref, "settings": _plain(self.settings),
                "data": _plain(self.data)}
        return write_tensors(path, self.tensors, STATE_FORMAT, meta)

    @classmethod
    def load(cls, path: str | Path) -> RunState:
        what = f"run state {str(path)!r}"
        m, tensors = read_tensors(path, STATE_FORMAT, what)
        if not all(isinstance(m.get(k), t) for k, t in (("what", str), ("model_ref", str), ("settings", Mapping),
                                                         ("data", Mapping))):
            raise SettingsError(f"{what}: its metadata lacks what / model_ref / settings / data")
        return cls(m["what"], m["model_ref"], dict(m["settings"]), dict(m["data"]), tensors)


def _plain(x):
    return json.loads(json.dumps(x, default=str))
