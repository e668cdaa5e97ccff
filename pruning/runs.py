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

from . import validate
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
            diff = sorted(str(k) for k in set(self.settings) | set(settings)
                          if _plain(self.settings.get(k)) != _plain(settings.get(k)))
            names = ", ".join(k if k.isidentifier() else _short(k, 40) for k in diff[:5])  # odd names quoted + (f" and {len(diff) - 5} more" if len(diff) > 5 else "")
            raise StateMismatch(f"cannot resume: the state was made with other settings ({names} differ)")
        return self

    def save(self, path: str | Path) -> Path:
        """One safetensors file (written atomically); :meth:`load` reads it back."""
        meta = {"what": self.what, "model_ref": self.model_ref, "settings": _plain(self.settings),
                "data": _plain(self.data)}
        return write_tensors(path, self.tensors, STATE_FORMAT, meta)

    @classmethod
    def load(cls, path: str | Path) -> RunState:
        """Read what :meth:`save` wrote. Only the envelope is checked here (what / model_ref /
        settings / data); each method checks ``data`` and ``tensors`` against the model and
        settings it resumes with (:class:`StateSchema`) before using any of them."""
        what = f"run state {str(path)!r}"
        m, tensors = read_tensors(path, STATE_FORMAT, what)
        if not all(isinstance(m.get(k), t) for k, t in (("what", str), ("model_ref", str), ("settings", Mapping),
                                                         ("data", Mapping))):
            raise SettingsError(f"{what}: its metadata lacks what / model_ref / settings / data")
        return cls(m["what"], m["model_ref"], dict(m["settings"]), dict(m["data"]), tensors)


class StateSchema:
    """Checks one :class:`RunState`'s ``data`` fields and ``tensors`` against what this model and
    these settings produce; the first problem is one :class:`~pruning.errors.StateMismatch`
    naming the field (``data.timesteps[2]``, ``tensor 'x0'``). Each resumable loop states its
    schema with these calls before it uses anything from the state.

    >>> st = RunState("taylor", "tiny:sd", {}, {"timesteps": [0, "abc"]}, {"x0": torch.zeros(2, 4)})
    >>> sc = StateSchema(st)
    >>> sc.data_keys(required=("timesteps",))
    >>> sc.integers("timesteps", lo=0, hi=999)
    Traceback (most recent call last):
    ...
    pruning.errors.StateMismatch: cannot resume the taylor run: its state's data.timesteps[1] must be an integer in 0..999, got 'abc'
    >>> sc.tensor("x0", shape=(3, 4))
    Traceback (most recent call last):
    ...
    pruning.errors.StateMismatch: cannot resume the taylor run: its state's tensor 'x0' has shape (2, 4), this model and these settings give (3, 4)
    """

    def __init__(self, state: RunState):
        self.state = state
        self.prefix = f"cannot resume the {state.what} run: its state's"

    def fail(self, field_: str, message: str):
        raise StateMismatch(f"{self.prefix} {field_} {message}")

    def _checked(self, field_: str, check, *args, **kw):
        try:
            return check(field_, *args, **kw)
        except SettingsError as e:
            raise StateMismatch(f"{self.prefix} {e}") from None

    # ------------------------------------------------------------------ data

    def data_keys(self, required: tuple = (), optional: tuple = ()) -> None:
        """``data`` holds the ``required`` keys, and no key beyond them and ``optional``."""
        data = self.state.data
        for k in required:
            if k not in data:
                self.fail(f"data.{k}", "is missing")
        extra = sorted(str(k) for k in data if k not in required and k not in optional)
        if extra:
            self.fail(f"data.{extra[0]}", f"is not a field of a {self.state.what} state")

    def items(self, key: str, *, max_len: int | None = None, length: int | None = None,
              data: Mapping | None = None, name: str | None = None) -> list:
        """``data[key]`` as a list (of at most ``max_len`` / exactly ``length`` items)."""
        name = name or f"data.{key}"
        value = (self.state.data if data is None else data).get(key)
        if not isinstance(value, list):
            self.fail(name, f"must be a list, got {_short(value)}")
        if length is not None and len(value) != length:
            self.fail(name, f"must have {length} items (this model and these settings), got {len(value)}")
        if max_len is not None and len(value) > max_len:
            self.fail(name, f"has {len(value)} items, at most {max_len} for this model and these settings")
        return value

    def integer(self, name: str, value, *, lo: int | None = None, hi: int | None = None) -> int:
        return self._checked(name, validate.integer, value, lo=lo, hi=hi, strict=True)

    def number(self, name: str, value, *, lo: float | None = None, hi: float | None = None) -> float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            self.fail(name, f"must be a number, got {_short(value)}")
        return self._checked(name, validate.number, value, lo=lo, hi=hi)

    def integers(self, key: str, *, lo: int | None = None, hi: int | None = None, max_len: int | None = None,
                 length: int | None = None) -> list[int]:
        return [self.integer(f"data.{key}[{i}]", v, lo=lo, hi=hi)
                for i, v in enumerate(self.items(key, max_len=max_len, length=length))]

    def numbers(self, key: str, *, lo: float | None = None, hi: float | None = None, max_len: int | None = None,
                length: int | None = None) -> list[float]:
        return [self.number(f"data.{key}[{i}]", v, lo=lo, hi=hi)
                for i, v in enumerate(self.items(key, max_len=max_len, length=length))]

    def record(self, name: str, value, required: dict, optional: dict | None = None) -> dict:
        """A JSON object with the ``required`` keys (key -> check(name, value)) and maybe ``optional``
        ones (a key -> check mapping, or a prefix ending in ``*`` -> check)."""
        if not isinstance(value, Mapping):
            self.fail(name, f"must be an object, got {_short(value)}")
        optional = optional or {}
        out = {}
        for k, check in required.items():
            if k not in value:
                self.fail(f"{name}.{k}", "is missing")
            out[k] = check(f"{name}.{k}", value[k])
        for k, v in value.items():
            if k in required:
                continue
            check = optional.get(k) or next((c for p, c in optional.items()
                                             if p.endswith("*") and isinstance(k, str) and k.startswith(p[:-1])), None)
            if check is None:
                self.fail(f"{name}.{k}", "is not a field of this record")
            out[k] = check(f"{name}.{k}", v)
        return out

    # ------------------------------------------------------------------ tensors

    def tensor(self, name: str, *, shape: tuple | None = None, dtype: torch.dtype | None = None,
               floating: bool = True, finite: bool = True, required: bool = True) -> torch.Tensor | None:
        """The tensor ``name``, checked: its shape (None entries: any size), dtype (or any floating
        dtype with ``floating``) and finiteness. A missing one is refused when ``required``."""
        t = self.state.tensors.get(name)
        what = f"tensor {name!r}"
        if t is None:
            if required:
                self.fail(what, "is missing")
            return None
        if shape is not None and (t.dim() != len(shape) or any(s is not None and s != n for s, n in
                                                                zip(shape, t.shape))):
            want = "(" + ", ".join("any" if s is None else str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"
            self.fail(what, f"has shape {tuple(t.shape)}, this model and these settings give {want}")
        if dtype is not None and t.dtype != dtype:
            self.fail(what, f"has dtype {t.dtype}, not {dtype}")
        if dtype is None and floating and not t.is_floating_point():
            self.fail(what, f"has dtype {t.dtype}, not a floating-point dtype")
        if finite and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            self.fail(what, "holds non-finite values (NaN or infinity)")
        return t

    def only_tensors(self, allowed) -> None:
        """No tensor beyond ``allowed`` (names, or a predicate on the name)."""
        ok = allowed if callable(allowed) else set(allowed).__contains__
        extra = sorted(k for k in self.state.tensors if not ok(k))
        if extra:
            self.fail(f"tensor {extra[0]!r}", f"is not part of a {self.state.what} state"
                      + (f" ({len(extra) - 1} more such tensors)" if len(extra) > 1 else ""))


def _short(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _plain(x):
    return json.loads(json.dumps(x, default=str))
