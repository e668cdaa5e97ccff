"""Files we write and read: atomic writes, sha256 digests, ownership checks before replacing.

Every file the package writes goes through :func:`atomic_write` (a temp file beside the target,
renamed over it only when complete), so an interrupted or failed write never leaves a half
file, and a disk-full error becomes one line naming the path.

>>> import tempfile
>>> p = Path(tempfile.mkdtemp()) / "a.txt"
>>> with atomic_write(p) as tmp:
...     _ = tmp.write_text("hello")
>>> p.read_text(), sha256_file(p)[:12]
('hello', '2cf24dba5fb0')
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .errors import ExportError, SettingsError
from .validate import parse_json


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_error(path: str | os.PathLike, e: BaseException) -> ExportError:
    """One line for a failed write: disk full, permission, or whatever the OS said."""
    if (isinstance(e, OSError) and e.errno == errno.ENOSPC) or "No space left" in str(e):
        why = "no space left on the device"
    elif isinstance(e, OSError) and e.strerror:
        why = e.strerror
    else:
        why = " ".join(str(e).split()) or type(e).__name__
    return ExportError(f"cannot write {str(path)!r}: {why}")


@contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success it replaces ``path``, on error it is removed
    and the error is re-raised as one ``ExportError`` naming ``path``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(path.parent, e) from None
    if path.is_dir():
        raise ExportError(f"cannot write {str(path)!r}: it is a folder")
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if (isinstance(e, OSError) and not isinstance(e, ExportError)) or type(e).__name__ == "SafetensorError":
            raise write_error(path, e) from None
        raise


def check_writable_file(path: str | os.PathLike, what: str = "output file") -> Path:
    """Fail before any work if ``path`` cannot become a file (it is a folder, or its parent is a file).

    >>> check_writable_file("/")
    Traceback (most recent call last):
    ...
    pruning.errors.ExportError: output file '/' is a folder: give a file name
    """
    p = Path(path)
    if p.is_dir():
        raise ExportError(f"{what} {str(p)!r} is a folder: give a file name")
    for parent in p.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise ExportError(f"{what} {str(p)!r}: {str(parent)!r} is a file, not a folder")
            if not os.access(parent, os.W_OK):
                raise ExportError(f"{what} {str(p)!r}: folder {str(parent)!r} is not writable")
            break
    return p


def write_tensors(path: str | os.PathLike, tensors: dict, fmt: str, meta: dict) -> Path:
    """One safetensors file (atomically) with ``meta`` as JSON in its header, tagged ``fmt``.

    >>> import tempfile, torch
    >>> p = write_tensors(Path(tempfile.mkdtemp()) / "t.safetensors", {"x": torch.ones(2)}, "demo/1", {"a": 1})
    >>> meta, tensors = read_tensors(p, "demo/1", "demo file")
    >>> meta, tensors["x"].tolist()
    ({'a': 1}, [1.0, 1.0])
    """
    path = Path(path)
    with atomic_write(path) as tmp:
        save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(tmp),
                  metadata={"format": fmt, "meta": json.dumps(meta)})
    return path


def read_tensors(path: str | os.PathLike, fmt: str, what: str) -> tuple[dict, dict]:
    """(meta, tensors) of a file :func:`write_tensors` wrote; every problem is one ``SettingsError``
    naming ``what`` (the file). Nothing is unpickled: safetensors holds only tensors and strings."""
    path = Path(path)
    if not path.is_file():
        raise SettingsError(f"{what} does not exist")
    try:
        with safe_open(str(path), "pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        # one line: safetensors quotes the file's own tensor names, which may hold newlines
        raise SettingsError(f"{what} is not a valid safetensors file: {' '.join(str(e).split())[:300]}") from None
    if header.get("format") != fmt:
        raise SettingsError(f"{what} is not a {fmt} file (format {header.get('format')!r})")
    meta = parse_json(header.get("meta", ""), f"{what} metadata")
    if not isinstance(meta, dict):
        raise SettingsError(f"{what}: its metadata is not a JSON object")
    return meta, tensors
