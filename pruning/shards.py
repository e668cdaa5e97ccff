"""Denoiser weights as diffusers stores them: one ``diffusion_pytorch_model.safetensors`` or shards
``diffusion_pytorch_model-0000i-of-0000n.safetensors`` with an ``.index.json`` (``weight_map``).

:class:`LazyWeights` reads a folder's tensors one at a time (``safe_open``: nothing else is loaded);
:func:`write_sharded` writes tensors it is given one at a time, straight into the shard files (the
header is computed first from the shapes and dtypes, then each tensor's bytes are appended and
hashed), so writing a model never holds more than one tensor of it.

>>> import tempfile, torch
>>> d = Path(tempfile.mkdtemp())
>>> specs = {"a": ((2, 3), torch.float32), "b": ((4,), torch.bfloat16)}
>>> files = write_sharded(specs, lambda k: torch.ones(specs[k][0], dtype=specs[k][1]), d, max_shard_size=30)
>>> sorted(files)
['diffusion_pytorch_model-00001-of-00002.safetensors', 'diffusion_pytorch_model-00002-of-00002.safetensors', 'diffusion_pytorch_model.safetensors.index.json']
>>> w = LazyWeights(d); w.shape("a"), w.dtype("b"), w.get("b").tolist()
((2, 3), torch.bfloat16, [1.0, 1.0, 1.0, 1.0])
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from huggingface_hub import split_state_dict_into_shards_factory
from safetensors import SafetensorError, safe_open

from .errors import ExportError
from .validate import inside

WEIGHTS = "diffusion_pytorch_model.safetensors"
INDEX = WEIGHTS + ".index.json"
PATTERN = "diffusion_pytorch_model{suffix}.safetensors"
MAX_SHARD_SIZE = "5GB"  # what transformers and huggingface_hub write by default
# safetensors' dtype names (https://github.com/huggingface/safetensors, format "dtype")
_CODES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
          torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
          torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2"}
_DTYPES = {v: k for k, v in _CODES.items()}


def nbytes(shape, dtype: torch.dtype) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n * dtype.itemsize


class LazyWeights:
    """The tensors of one diffusers model folder (single file or shards), read on demand.

    ``keys()``, ``shape(k)`` and ``dtype(k)`` come from the safetensors headers; ``get(k)`` reads one
    tensor (a fresh CPU tensor; the file stays closed between reads, so nothing accumulates)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        index, single = self.folder / INDEX, self.folder / WEIGHTS
        if index.is_file():
            self.weight_map = _read_index(index, self.folder)
        elif single.is_file():
            self.weight_map = None
        else:
            raise ExportError(f"no safetensors weights in {str(self.folder)!r}: neither {WEIGHTS} nor {INDEX} "
                              "(only safetensors are read)")
        self._meta: dict[str, tuple[tuple[int, ...], torch.dtype, str]] = {}
        for file in sorted(set(self.weight_map.values()) if self.weight_map else {WEIGHTS}):
            path = self.folder / file
            try:
                with safe_open(str(path), framework="pt") as f:
                    for k in f.keys():
                        sl = f.get_slice(k)
                        self._meta[k] = (tuple(sl.get_shape()), _DTYPES[sl.get_dtype()], file)
            except (SafetensorError, OSError, KeyError) as e:
                raise ExportError(f"cannot read safetensors file {str(path)!r}: {e}") from None
        if self.weight_map is not None:
            wrong = sorted(k for k, f in self.weight_map.items() if self._meta.get(k, (0, 0, f))[2] != f)
            if wrong or set(self.weight_map) != set(self._meta):
                bad = wrong or sorted(set(self.weight_map) ^ set(self._meta))
                raise ExportError(f"{str(self.folder / INDEX)!r} does not match its shards: {bad[0]!r}")

    def keys(self) -> list[str]:
        return list(self._meta)

    def __contains__(self, key: str) -> bool:
        return key in self._meta

    def shape(self, key: str) -> tuple[int, ...]:
        return self._meta[key][0]

    def dtype(self, key: str) -> torch.dtype:
        return self._meta[key][1]

    def get(self, key: str) -> torch.Tensor:
        path = self.folder / self._meta[key][2]
        try:
            with safe_open(str(path), framework="pt") as f:
                return f.get_tensor(key).clone()  # clone: fresh, aligned storage, no tie to the file
        except (SafetensorError, OSError) as e:
            raise ExportError(f"cannot read {key!r} from {str(path)!r}: {e}") from None

    def items(self) -> Iterator[tuple[str, torch.Tensor]]:
        for k in self.keys():
            yield k, self.get(k)

    def largest_tensor_bytes(self) -> int:
        return max((nbytes(s, d) for s, d, _ in self._meta.values()), default=0)


def _read_index(path: Path, folder: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text())
        weight_map = dict(data["weight_map"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ExportError(f"cannot read the shard index {str(path)!r}: {e}") from None
    for file in set(weight_map.values()):
        if not isinstance(file, str) or not file.endswith(".safetensors") or inside(file, folder).parent != folder:
            raise ExportError(f"{str(path)!r} names a shard outside its folder: {file!r}")
        if not (folder / file).is_file():
            raise ExportError(f"missing shard {str(folder / file)!r} listed in {str(path)!r}")
    return weight_map


def weight_files(folder: str | os.PathLike) -> list[str]:
    """The weight files of a model folder (the index first when sharded), relative to it."""
    folder = Path(folder)
    if (folder / INDEX).is_file():
        return [INDEX, *sorted(set(_read_index(folder / INDEX, folder).values()))]
    return [WEIGHTS]


def write_sharded(specs: dict[str, tuple[tuple[int, ...], torch.dtype]], tensor: Callable[[str], torch.Tensor],
                  folder: str | os.PathLike, *, max_shard_size: int | str = MAX_SHARD_SIZE,
                  metadata: dict[str, str] | None = None) -> dict[str, str]:
    """Write the tensors ``specs`` describes (``{key: (shape, dtype)}``, in that order) into ``folder``
    as diffusers' safetensors shards (one file when they fit in ``max_shard_size``), asking
    ``tensor(key)`` for each in turn; returns ``{file: sha256}`` (the index included when sharded)."""
    folder = Path(folder)
    split = split_state_dict_into_shards_factory(
        specs, get_storage_size=lambda s: nbytes(*s), filename_pattern=PATTERN, max_shard_size=max_shard_size,
        get_storage_id=lambda s: None)
    files = {}
    for file, keys in split.filename_to_tensors.items():
        files[file] = _write_file(folder / file, {k: specs[k] for k in keys}, tensor, metadata or {})
    if split.is_sharded:
        total = sum(nbytes(*s) for s in specs.values())
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(split.tensor_to_filename.items()))}
        (folder / INDEX).write_text(json.dumps(index, indent=2) + "\n")
        files[INDEX] = hashlib.sha256((folder / INDEX).read_bytes()).hexdigest()
    return files


def _write_file(path: Path, specs: dict, tensor: Callable[[str], torch.Tensor], metadata: dict) -> str:
    """One safetensors file, streamed: 8-byte header length, JSON header (space-padded to 8 bytes), data."""
    header: dict = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for k, (shape, dtype) in specs.items():
        n = nbytes(shape, dtype)
        header[k] = {"dtype": _CODES[dtype], "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        for chunk in (len(text).to_bytes(8, "little"), text):
            f.write(chunk)
            digest.update(chunk)
        for k, (shape, dtype) in specs.items():
            t = tensor(k)
            if tuple(t.shape) != tuple(shape) or t.dtype != dtype:
                raise ExportError(f"tensor {k!r} is {tuple(t.shape)} {t.dtype}, expected {tuple(shape)} {dtype}")
            data = t.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy()  # (nbytes,) little-endian
            f.write(data)
            digest.update(data)
            del t, data
    return digest.hexdigest()


__all__ = ["LazyWeights", "write_sharded", "weight_files", "nbytes", "WEIGHTS", "INDEX", "MAX_SHARD_SIZE"]
