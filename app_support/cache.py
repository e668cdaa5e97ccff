"""The app's model cache: handles shared read-only by every session, one lock per model.

A model is loaded once per (source, device, dtype) and never mutated for one user. Any work
that runs the shared denoiser (or installs masks on it) holds :meth:`ModelCache.lock` for
that model, so a run that outlives its request (cancelled, disconnected) can never overlap
with another request's run on the same weights.

Sources the app accepts: the bundled models, the tiny random test pipelines, Hub ids, and
local folders only inside ``PRUNING_MODEL_DIRS`` (a ``:``-separated allow-list); every other
path gets one message, without looking at the file system.

>>> cache = ModelCache()
>>> h = cache.get("tiny-random-sd")
>>> h.model_ref, cache.get("tiny-random-sd") is h, cache.lock(h) is cache.lock(h)
('tiny:sd', True, True)
>>> cache.get("/etc/shadow")
Traceback (most recent call last):
...
pruning.errors.ModelLoadError: local folders are not served here: choose a bundled model or a Hub id (the server's admin can allow folders with PRUNING_MODEL_DIRS)
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from pruning import families
from pruning.catalog import catalog
from pruning.errors import ModelLoadError
from pruning.loading import BUNDLED, Handle, check_device, check_dtype, handle_from_pipe, load_pipeline
from pruning.sampling import count_inputs

TINY_RANDOM = {f"tiny-random-{name}": name for name in families.names()}  # one per registered family
_HUB_ID_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.@/")


def allowed_dirs() -> list[Path]:
    """Folders whose subfolders may be loaded by path (``PRUNING_MODEL_DIRS``)."""
    return [Path(p).expanduser().resolve() for p in os.environ.get("PRUNING_MODEL_DIRS", "").split(":") if p]


def check_source(source: str) -> str:
    """A source the app may load: bundled, tiny random, a Hub id, or a folder in the allow-list."""
    source = str(source or "").strip()
    if not source:
        raise ModelLoadError("no model given: pick a bundled model, a preset, or type a Hub id")
    if source in BUNDLED or source in TINY_RANDOM:
        return source
    looks_like_path = source.startswith((".", "/", "~", "\\")) or source.count("/") > 1 or \
        not set(source) <= _HUB_ID_CHARS
    if not looks_like_path and "/" not in source:
        raise ModelLoadError(f"{source!r} is not a bundled model ({', '.join(sorted(BUNDLED))}), a preset or a "
                             "Hub id ('org/name' or 'org/name@revision')")
    if not looks_like_path:
        return source  # org/name[@revision]: loading.py checks the id and the Hub
    for root in allowed_dirs():
        full = Path(source).expanduser().resolve()
        if full != root and root in full.parents:
            return str(full)
    raise ModelLoadError("local folders are not served here: choose a bundled model or a Hub id (the server's "
                         "admin can allow folders with PRUNING_MODEL_DIRS)")


class ModelCache:
    """Handles keyed by (source, device, dtype), at most ``max_models`` at a time (least recent out)."""

    def __init__(self, max_models: int = 2):
        self.max_models = max_models
        self._handles: dict[tuple, Handle] = {}
        self._locks: dict[str, threading.RLock] = {}
        self._lock = threading.Lock()

    def get(self, source: str, device: str = "cpu", dtype: str = "float32") -> Handle:
        source = check_source(source)
        key = (source, str(check_device(device)), str(check_dtype(dtype)))
        with self._lock:
            if key in self._handles:
                self._handles[key] = self._handles.pop(key)  # most recent last
                return self._handles[key]
        if source in TINY_RANDOM:
            from pruning.testing import tiny_pipeline

            fam = TINY_RANDOM[source]
            pipe = tiny_pipeline(fam).to(device=key[1], dtype=check_dtype(dtype))
            handle = handle_from_pipe(pipe, model_ref=f"tiny:{fam}", source=source)
        else:
            handle = load_pipeline(source, device=device, dtype=dtype, allow_local=Path(source).is_absolute())
        catalog(handle.denoiser, **count_inputs(handle))  # computed once, before any session shares it
        with self._lock:
            self._handles[key] = handle
            while len(self._handles) > self.max_models:
                self._handles.pop(next(iter(self._handles)))
            return handle

    def lock(self, handle: Handle) -> threading.RLock:
        """The lock every run on ``handle``'s shared denoiser holds (one per model ref)."""
        with self._lock:
            return self._locks.setdefault(handle.model_ref, threading.RLock())
