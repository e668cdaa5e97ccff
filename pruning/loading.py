"""Load a diffusion pipeline from a bundled name, a local diffusers folder or a Hub id.

Everything downstream takes a :class:`Handle`: the pipeline, its family, its denoiser and a
stable ``model_ref`` string (content hash or commit) that plans and caches key on.

>>> from pruning.testing import tiny_pipeline
>>> h = handle_from_pipe(tiny_pipeline("flux"), model_ref="tiny:flux")
>>> h.family, h.denoiser_name, h.defaults["resolution"], h.defaults["steps"]
('flux', 'transformer', 32, 4)
>>> load_pipeline("no-such-model")
Traceback (most recent call last):
...
pruning.errors.ModelLoadError: 'no-such-model' is not a bundled model (tiny-shapes-flux, tiny-shapes-sd, tiny-shapes-sd3), an existing folder or a Hub id ('org/name' or 'org/name@revision')
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import diffusers.utils.logging as dlog
import huggingface_hub.constants as hc
import torch
import transformers.utils.logging as tlog
from diffusers import DiffusionPipeline
from huggingface_hub import HfApi, hf_hub_download, try_to_load_from_cache
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from . import families, validate
from .bundled import BUNDLED, TRAIN_ARCH
from .errors import ModelLoadError, SettingsError
from .files import sha256_file
from .memory import execution_device
from .sampling import spec
from .validate import check_device  # noqa: F401 (re-exported)

# model_index.json `_class_name` -> family, and each family's defaults: from the registry.
# Text-to-image pipelines only.
SUPPORTED_CLASSES = {f.pipeline_class.__name__: f.name for f in families.all_families()}
FAMILY_DEFAULTS = {f.name: dict(f.defaults) for f in families.all_families()}
SMALL_DENOISER_PARAMS = 50_000_000  # below this, a test/toy model: default to 4 steps
HUB_TIMEOUT_S = 8.0  # metadata call; an unreachable Hub must fail well within 10 s
DEFAULTS_FILE = "pruning_defaults.json"
DEFAULTS_LIMITS = dataclasses.replace(validate.LIMITS, max_json_bytes=64 * 2**10)  # a few settings: KiB, not MiB
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# dtype name -> torch dtype; every one loads, generates, scores and exports on CPU (torch >= 2.8)
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class Handle:
    """A loaded pipeline and what the rest of the library needs to know about it."""

    pipe: Any
    family: str  # a registered family: "sd" | "sdxl" | "flux" | "sd3"
    denoiser: torch.nn.Module  # pipe.unet or pipe.transformer
    model_ref: str  # stable: "bundled:<name>@<hash>", "local:<path>@<hash>", "hub:<id>@<sha>"
    source: str
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    defaults: dict = field(default_factory=dict)  # steps, guidance, resolution (+ extras)

    @property
    def denoiser_name(self) -> str:
        """The pipeline component name: ``"unet"`` (SD, SDXL) or ``"transformer"`` (FLUX, SD3)."""
        return families.get(self.family).denoiser_name


def family_of(pipe, source: str | None = None) -> str:
    """The family of a pipeline instance, from its class.

    >>> from pruning.testing import tiny_pipeline
    >>> family_of(tiny_pipeline("sdxl"))
    'sdxl'
    >>> family_of(object(), source="x")
    Traceback (most recent call last):
    ...
    pruning.errors.ModelLoadError: unsupported pipeline class 'object' (from 'x'); supported: FluxPipeline, StableDiffusion3Pipeline, StableDiffusionPipeline, StableDiffusionXLPipeline
    """
    family = families.for_pipe(pipe)
    if family is not None:
        return family.name
    raise _unsupported(type(pipe).__name__, source if source is not None else repr(pipe)[:80])


def _unsupported(class_name: str, source: str) -> ModelLoadError:
    return ModelLoadError(f"unsupported pipeline class {class_name!r} (from {source!r}); "
                          f"supported: {', '.join(sorted(SUPPORTED_CLASSES))}")


def check_dtype(dtype) -> torch.dtype:
    """A torch dtype from a name or a dtype; errors list the supported ones.

    >>> check_dtype("bfloat16")
    torch.bfloat16
    >>> check_dtype("float64")
    Traceback (most recent call last):
    ...
    pruning.errors.SettingsError: dtype must be one of ['float32', 'float16', 'bfloat16'], got 'float64'
    """
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    name = str(dtype).removeprefix("torch.") if isinstance(dtype, (str, torch.dtype)) else dtype
    return DTYPES[validate.choice("dtype", name, tuple(DTYPES))]


def same_weights(a: str, b: str) -> bool:
    """Two model refs name the same weights: equal, or the same content hash / commit after '@'.

    >>> same_weights("local:/a/x@abc123", "bundled:x@abc123"), same_weights("hub:a/b@1", "hub:a/b@2")
    (True, False)
    """
    return a == b or ("@" in a and "@" in b and a.rsplit("@", 1)[1] == b.rsplit("@", 1)[1])


def check_defaults(d, where: str) -> dict:
    """Validated generation defaults from a ``pruning_defaults.json`` (unknown keys are kept).

    >>> check_defaults({"steps": 10, "guidance": "abc"}, "x/pruning_defaults.json")
    Traceback (most recent call last):
    ...
    pruning.errors.ModelLoadError: x/pruning_defaults.json: guidance must be a finite number in [0, 50], got 'abc'
    """
    if not isinstance(d, Mapping):
        raise ModelLoadError(f"{where} must be a JSON object with steps, guidance, resolution..., "
                             f"got a {type(d).__name__}")
    out = dict(d)
    checks = {
        "steps": validate.steps,
        "guidance": validate.guidance,
        "resolution": lambda v, name: validate.integer(name, v, lo=8, hi=validate.LIMITS.max_resolution),
        "guidance_mode": lambda v, name: validate.choice(name, v, ("cfg", "embedded", "true_cfg")),
        "max_sequence_length": lambda v, name: validate.integer(name, v, lo=1, hi=512),
    }
    try:
        for key, check in checks.items():
            if key in d:
                out[key] = check(d[key], name=key)
        if d.get("negative_prompt") is not None and not isinstance(d["negative_prompt"], str):
            raise SettingsError(f"negative_prompt must be a string, got {validate.shown(d['negative_prompt'])}")
    except SettingsError as e:
        raise ModelLoadError(f"{where}: {e}") from None
    return out


def _default_settings(pipe, family: str, denoiser: torch.nn.Module) -> dict:
    """Family defaults, with the resolution the model was configured for."""
    defaults = families.get(family).default_settings(pipe, denoiser)
    if sum(p.numel() for p in denoiser.parameters()) < SMALL_DENOISER_PARAMS:
        defaults["steps"] = 4
    return defaults


def preset_defaults(hub_id: str) -> dict:
    """The model card's steps, guidance and resolution for a preset's Hub id (``pruning.reference``),
    over the family's: SD3.5-large generates at 28 steps and guidance 3.5, SD3.5-medium at 40 and 4.5.

    >>> preset_defaults("stabilityai/stable-diffusion-3.5-large"), preset_defaults("org/other")
    ({'steps': 28, 'guidance': 3.5, 'resolution': 1024}, {})
    """
    from .reference import PIPELINES

    ref = next((p for p in PIPELINES.values() if p["hub_id"] == hub_id), None)
    return {k: ref[k] for k in ("steps", "guidance", "resolution")} if ref else {}


def derived_ref(pipe) -> str:
    """A model ref for a pipeline built in memory: ``pipe:<where it was loaded from, or its class>@``
    and a digest of its denoiser's config and a sample of every weight (names, shapes, dtypes and
    the first 16 values): the same pipeline gives the same ref, other weights another one.

    >>> from pruning.testing import tiny_pipeline
    >>> a, b = derived_ref(tiny_pipeline("sd")), derived_ref(tiny_pipeline("sd", seed=1))
    >>> a.startswith("pipe:StableDiffusionPipeline@"), a == derived_ref(tiny_pipeline("sd")), a == b
    (True, True, False)
    """
    family = families.for_pipe(pipe)
    name = getattr(pipe, "name_or_path", None) or type(pipe).__name__
    h = hashlib.sha256(type(pipe).__name__.encode())
    if family is not None:
        denoiser = getattr(pipe, family.denoiser_name)
        h.update(repr(sorted(dict(denoiser.config).items())).encode())
        for key, t in denoiser.state_dict().items():
            h.update(f"{key}{tuple(t.shape)}{t.dtype}".encode())
            if t.device.type != "meta" and t.numel():
                h.update(t.detach().reshape(-1)[:16].float().cpu().numpy().tobytes())  # any shape -> (n,)
    return f"pipe:{name}@{h.hexdigest()[:16]}"


def handle_from_pipe(pipe, *, model_ref: str | None = None, source: str | None = None,
                     defaults: dict | None = None) -> Handle:
    """Wrap an already built diffusers pipeline (one you loaded, a test's in-memory model) in a
    :class:`Handle`, the object every function of the package takes.

    ``model_ref`` names the weights in plans and exports; without it, one is derived from the
    pipeline (:func:`derived_ref`) and a warning says so. ``defaults`` override the family
    defaults key by key.

    >>> from pruning.testing import tiny_pipeline
    >>> h = handle_from_pipe(tiny_pipeline("sd"), model_ref="tiny:sd", defaults={"guidance": 1.0})
    >>> h.defaults == {"steps": 4, "guidance": 1.0, "resolution": 32}, h.source
    (True, 'tiny:sd')
    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as w:
    ...     warnings.simplefilter("always")
    ...     h = handle_from_pipe(tiny_pipeline("flux"))
    >>> h.model_ref.startswith("pipe:FluxPipeline@"), "derived" in str(w[0].message)
    (True, True)
    """
    if model_ref is None:
        import warnings

        model_ref = derived_ref(pipe)
        warnings.warn(f"model_ref derived from the pipeline: {model_ref!r} (its config and a sample of its "
                      "weights); pass model_ref= to name the weights yourself", UserWarning, stacklevel=2)
    family = family_of(pipe, source or model_ref)
    denoiser = getattr(pipe, families.get(family).denoiser_name)
    param = next(denoiser.parameters())
    where = f"generation defaults of {source or model_ref!r}"
    settings = {**_default_settings(pipe, family, denoiser), **check_defaults(defaults or {}, where)}
    handle = Handle(pipe=pipe, family=family, denoiser=denoiser, model_ref=model_ref,
                    source=source if source is not None else model_ref,
                    device=execution_device(denoiser), dtype=param.dtype, defaults=settings)

    try:
        spec(handle)
    except SettingsError as e:
        raise ModelLoadError(f"{where}: {e}") from None
    return handle


# ---------------------------------------------------------------- content hashes
_FILE_HASHES: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256


def _file_sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _FILE_HASHES:
        _FILE_HASHES[key] = sha256_file(path)
    return _FILE_HASHES[key]


def folder_hash(folder: str | os.PathLike, length: int = 12) -> str:
    """Short sha256 of a diffusers folder's contents: relative paths and file bytes.

    Hidden files and folders are skipped; mtimes play no part (only to cache file digests).

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp()); _ = (d / "model_index.json").write_text("{}")
    >>> a = folder_hash(d); os.utime(d / "model_index.json", (0, 0)); a == folder_hash(d)
    True
    >>> _ = (d / "model_index.json").write_text('{"a": 1}'); a == folder_hash(d)
    False
    """
    root = Path(folder)
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if not path.is_file() or any(part.startswith(".") for part in rel.parts):
            continue
        h.update(rel.as_posix().encode() + b"\0" + _file_sha256(path).encode() + b"\n")
    return h.hexdigest()[:length]


# ---------------------------------------------------------------- loading
def read_class_name(index_file: Path, source: str) -> str:
    """The supported pipeline class named in a ``model_index.json`` (checked before any weight is read)."""
    try:
        data = validate.read_json(index_file, "model_index.json")
        class_name = data["_class_name"]
    except (SettingsError, KeyError, TypeError) as e:
        raise ModelLoadError(f"cannot read '_class_name' from {index_file} (from {source!r}): {e}") from None
    if not isinstance(class_name, str) or class_name not in SUPPORTED_CLASSES:
        raise _unsupported(str(class_name), source)
    return class_name


def read_defaults(folder: Path) -> dict | None:
    """The validated ``pruning_defaults.json`` of a model folder, or None when it has none."""
    path = folder / DEFAULTS_FILE
    if not path.is_file():
        return None
    try:
        data = validate.read_json(path, "generation defaults", limits=DEFAULTS_LIMITS)
    except SettingsError as e:
        raise ModelLoadError(str(e)) from None
    return check_defaults(data, str(path))


@contextlib.contextmanager
def quiet_library_logs():
    """diffusers/transformers log their own line (at error level, e.g. "An error occurred while trying
    to fetch ...") before raising; our error is the one line shown, so only critical logs pass."""
    saved = [(log, log.get_verbosity(), log.is_progress_bar_enabled()) for log in (dlog, tlog)]
    for log, _, _ in saved:
        log.set_verbosity(log.CRITICAL)
        log.disable_progress_bar()
    try:
        yield
    finally:
        for log, level, bars in saved:
            log.set_verbosity(level)
            if bars:
                log.enable_progress_bar()


def pipeline_from_pretrained(name_or_path: str, class_name: str, source: str, dtype, **kwargs):
    """``DiffusionPipeline.from_pretrained`` with safetensors only and no remote code."""
    kwargs.update(families.get(SUPPORTED_CLASSES[class_name]).pipeline_kwargs)
    try:
        with quiet_library_logs():
            return DiffusionPipeline.from_pretrained(
                name_or_path, use_safetensors=True, trust_remote_code=False, dtype=dtype, **kwargs)
    except Exception as e:  # diffusers raises OSError/ValueError/EnvironmentError variously
        msg = " ".join(str(e).split())[:500]
        if "safetensors" in msg and "no file named" in msg:
            msg += " (only safetensors weights are read: pickle files such as .bin are never loaded)"
        raise ModelLoadError(f"failed to load pipeline from {source!r}: {type(e).__name__}: {msg}") from None


def _is_pathlike(source: str) -> bool:
    return (source.startswith((".", "/", "~")) or "\\" in source or source.endswith("/")
            or source.count("/") > 1 or os.path.isabs(source))


def hub_offline() -> bool:
    env = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
    return bool(hc.HF_HUB_OFFLINE) or env in {"1", "ON", "YES", "TRUE"}


def hub_unavailable(repo_id: str) -> str | None:
    """Why files of ``repo_id`` must come from the local cache (offline, or the Hub does not
    answer within ``HUB_TIMEOUT_S``), or None when the Hub answers. Fast: one short request."""
    if hub_offline():
        return "the Hub is offline (HF_HUB_OFFLINE=1)"
    try:
        _model_info(repo_id, None, HUB_TIMEOUT_S)
    except Exception as e:  # connection refused, DNS failure, timeout, unknown repository
        return f"the Hub did not answer ({type(e).__name__})"
    return None


def _model_info(repo_id: str, revision: str | None, timeout: float):
    """Hub metadata (a seam for tests)."""
    return HfApi().model_info(repo_id, revision=revision, timeout=timeout)


def _load_local(folder: Path, source: str, dtype):
    index = folder / "model_index.json"
    if not index.is_file():
        raise ModelLoadError(f"{str(folder)!r} (from {source!r}) is not a diffusers folder: "
                             "no model_index.json")
    class_name = read_class_name(index, source)
    return pipeline_from_pretrained(str(folder), class_name, source, dtype), read_defaults(folder)


def _load_hub(source: str, dtype):
    repo_id, _, revision = source.partition("@")
    revision = revision or None
    if not _HUB_ID.match(repo_id):
        raise ModelLoadError(f"{source!r} is not a valid Hub id ('org/name' or 'org/name@revision')")
    sha, reason = None, None
    if hub_offline():
        reason = "the Hub is offline (HF_HUB_OFFLINE=1)"
    else:
        try:
            sha = _model_info(repo_id, revision, HUB_TIMEOUT_S).sha
        except RevisionNotFoundError as e:
            raise ModelLoadError(f"revision {revision!r} not found for Hub model {repo_id!r} "
                                 f"(from {source!r})") from e
        except GatedRepoError as e:
            raise ModelLoadError(f"Hub model {repo_id!r} is gated: accept its license and log in "
                                 f"(HF_TOKEN) (from {source!r})") from e
        except RepositoryNotFoundError as e:
            raise ModelLoadError(f"unknown Hub model {repo_id!r} (from {source!r}): no such repository, "
                                 "or it is private") from e
        except HfHubHTTPError as e:
            raise ModelLoadError(f"Hub error for {source!r}: {e}") from e
        except Exception as e:  # connection refused, DNS failure, timeout
            reason = f"the Hub is unreachable ({type(e).__name__}: {e})"
    if sha is None:  # offline or unreachable: the local cache is the only option
        cached = try_to_load_from_cache(repo_id, "model_index.json", revision=revision)
        if not isinstance(cached, str):
            raise ModelLoadError(f"{source!r} is not in the local Hugging Face cache and {reason}")
        snapshot = Path(cached).parent  # .../snapshots/<commit sha>/
        class_name = read_class_name(Path(cached), source)
        pipe = pipeline_from_pretrained(repo_id, class_name, source, dtype, revision=revision,
                                        local_files_only=True)
        return pipe, snapshot.name, read_defaults(snapshot)
    try:
        index = hf_hub_download(repo_id, "model_index.json", revision=sha)
    except Exception as e:
        raise ModelLoadError(f"Hub model {source!r} has no model_index.json: not a diffusers "
                             f"pipeline ({type(e).__name__})") from e
    class_name = read_class_name(Path(index), source)
    pipe = pipeline_from_pretrained(repo_id, class_name, source, dtype, revision=sha)
    try:  # optional; most repos have none
        hf_hub_download(repo_id, DEFAULTS_FILE, revision=sha)
    except Exception:
        pass
    return pipe, sha, read_defaults(Path(index).parent)


def load_pipeline(source: str, *, device: str | torch.device | None = None,
                  dtype: torch.dtype | str | None = None, allow_local: bool = True) -> Handle:
    """Load ``source``: a bundled name, a local diffusers folder, or a Hub id ``org/name[@rev]``.

    Weights are loaded from safetensors only; remote code is never run. The class in
    ``model_index.json`` is checked before any weight is read. ``<folder>/pruning_defaults.json``
    (steps, guidance, resolution, ...) overrides the family defaults. Default: CPU, fp32.
    ``allow_local=False`` never reads a local path (a server that must not probe its files).
    """
    if not isinstance(source, (str, os.PathLike)) or not str(source).strip():
        raise ModelLoadError(f"no model given ({source!r}): name a bundled model, a diffusers folder or a Hub id")
    source = str(source).strip()
    device = check_device(device)
    dtype = check_dtype(dtype or torch.float32)
    if source in BUNDLED:
        folder = BUNDLED[source]
        if not (folder / "model_index.json").is_file():
            raise ModelLoadError(
                f"bundled model {source!r} is missing: no diffusers folder at {folder}; train it with "
                f"`python -m pruning.tiny train --arch {TRAIN_ARCH[source]}`")
        pipe, defaults = _load_local(folder, source, dtype)
        model_ref = f"bundled:{source}@{folder_hash(folder)}"
    elif allow_local and (_is_pathlike(source) or os.path.exists(os.path.expanduser(source))):
        if not os.path.exists(os.path.expanduser(source)):
            raise ModelLoadError(f"local folder {source!r} does not exist")
        folder = Path(os.path.expanduser(source)).resolve()
        if not folder.is_dir():
            raise ModelLoadError(f"{source!r} is a file, not a diffusers folder")
        pipe, defaults = _load_local(folder, source, dtype)
        model_ref = f"local:{folder}@{folder_hash(folder)}"
    elif "/" in source and not _is_pathlike(source):
        pipe, sha, defaults = _load_hub(source, dtype)
        model_ref = f"hub:{source.partition('@')[0]}@{sha}"
        defaults = {**preset_defaults(source.partition("@")[0]), **(defaults or {})}
    else:
        raise ModelLoadError(
            f"{source!r} is not a bundled model ({', '.join(sorted(BUNDLED))}), an existing folder "
            "or a Hub id ('org/name' or 'org/name@revision')")
    # diffusers warns that float16 "cannot run" on CPU; it does (torch >= 2.8), only more slowly
    pipe.to(device=device, silence_dtype_warnings=True)
    pipe.set_progress_bar_config(disable=True)
    return handle_from_pipe(pipe, model_ref=model_ref, source=source, defaults=defaults)
