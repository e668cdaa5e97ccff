"""Zipped exports for download, with a bounded footprint, and the lines that load them.

Each export lives in its own folder under ``EXPORTS`` (``PRUNING_EXPORT_DIR``); folders older
than an hour, beyond ``PRUNING_EXPORT_MAX_MB`` in total (oldest first), or of a session that
has ended are removed. Only folders this module created (they carry a marker file) are ever
deleted. The zip unpacks to ``pruned-model/``, the folder the snippet loads.

The app serves the downloads from ``EXPORTS`` itself (:func:`serve_in_place`: a gradio static
path), so gradio never copies them into its own cache: the bound above is the whole footprint.

>>> from app_support.cache import ModelCache
>>> from pruning.plan import PruningPlan
>>> import tempfile
>>> h = ModelCache().get("tiny-random-sd")
>>> plan = PruningPlan(family="sd", base=h.model_ref, removed_operators=("mid_block.resnets.0",))
>>> out = export_zip(h, plan, session="doc", root=Path(tempfile.mkdtemp()))
>>> import zipfile; sorted(zipfile.ZipFile(out["zip"]).namelist())[0]
'pruned-model/'
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

from pruning.card import install_line, py_str
from pruning.export import export
from pruning.loading import Handle
from pruning.lora import LORA_FILE
from pruning.manifest import MANIFEST
from pruning.plan import PruningPlan

EXPORTS = Path(os.environ.get("PRUNING_EXPORT_DIR", Path(tempfile.gettempdir()) / "pruning-exports"))
MAX_AGE_S = 3600
MAX_BYTES = int(float(os.environ.get("PRUNING_EXPORT_MAX_MB", "2048")) * 2**20)
MARKER = ".pruning-app-export"  # only folders with this file are ever removed
FOLDER = "pruned-model"


def serve_in_place(root: Path = EXPORTS) -> Path:
    """Let gradio serve the files under ``root`` where they are, instead of copying each download
    into its cache (where nothing would bound them). The folder names hold a random 128-bit id."""
    import gradio as gr

    root.mkdir(parents=True, exist_ok=True)
    gr.set_static_paths([root])
    return root.resolve()


def _ours(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted((d for d in root.iterdir() if d.is_dir() and (d / MARKER).is_file()),
                  key=lambda d: d.stat().st_mtime)


def _size(d: Path) -> int:
    return sum(p.stat().st_size for p in d.rglob("*") if p.is_file())


def cleanup(root: Path = EXPORTS, *, max_age_s: float = MAX_AGE_S, max_bytes: int = MAX_BYTES,
            session: str | None = None) -> int:
    """Remove our export folders that are too old, over the size cap (oldest first), or of
    ``session``; returns how many were removed."""
    removed = 0
    folders = _ours(root)
    sizes = {d: _size(d) for d in folders}
    total = sum(sizes.values())
    for d in folders:
        try:
            stale = time.time() - d.stat().st_mtime > max_age_s
            of_session = session is not None and (d / MARKER).read_text().strip() == session
        except FileNotFoundError:  # removed meanwhile (another session's cleanup)
            continue
        if stale or of_session or total > max_bytes:
            shutil.rmtree(d, ignore_errors=True)
            total -= sizes[d]
            removed += 1
    return removed


SNIPPET = """\
# 1. install the loader (the `pruning` package: diffusers, safetensors, no pickles)
{install}
# 2. unzip the download: it holds one folder, {folder}/
unzip {zip_name}
# 3. load and generate
python - <<'PY'
from pruning import generate_images, load_pruned
{load}
PY
"""
LOAD_PIPELINE = """\
pruned = load_pruned("{folder}")  # the pipeline with the slim {denoiser}
image = generate_images(pruned, [{prompt}], [0])[0]
image.save("pruned.png")"""
LOAD_DENOISER = """\
{denoiser} = load_pruned("{folder}")  # the slim {denoiser} alone
pruned = load_pruned("{folder}", base={base})  # with the base model's other components
image = generate_images(pruned, [{prompt}], [0])[0]
image.save("pruned.png")"""
NATIVE_PIPELINE = """
# native export: plain diffusers reads the same folder, without pruning
from diffusers import DiffusionPipeline
pipe = DiffusionPipeline.from_pretrained("{folder}")"""
NATIVE_LOAD = """
# native export: plain diffusers reads the same folder, without pruning
from diffusers import DiffusionPipeline, {cls}
{denoiser} = {cls}.from_pretrained("{folder}", subfolder="{denoiser}")
pipe = DiffusionPipeline.from_pretrained({base}, {denoiser}={denoiser})"""


def public_install_line() -> str:
    """The install line for the person reading it, on their machine (:func:`pruning.card.install_line`:
    ``PRUNING_INSTALL``, the Space's, the remote URL pip installed this package from, else the
    published line): never this server's checkout folder, and never a bare ``pruning==<version>``
    (a name on PyPI that is not this package).

    >>> str(Path(__file__).resolve().parent.parent) in public_install_line()
    False
    """
    return install_line()


def export_zip(handle: Handle, plan: PruningPlan, *, session: str, full_pipeline: bool = True, denoiser=None,
               prompt: str = "a red circle at the top left on a white background", root: Path = EXPORTS,
               lora: str | None = None, native: bool = False) -> dict:
    """Export ``plan`` (with its model card, and ``lora`` sliced for it), zip it, write the bare plan
    JSON; returns {"zip", "plan_json", "snippet", "lora", "card"} ("lora": the export's LoRA report or None;
    "card": what its model card records, quality figures included)."""
    root.mkdir(parents=True, exist_ok=True)
    cleanup(root)
    work = root / f"{session[:12]}-{uuid.uuid4().hex}"  # unguessable: the folder is served by its path
    work.mkdir()
    (work / MARKER).write_text(session)
    try:
        folder = export(handle, plan, work / FOLDER, full_pipeline=full_pipeline, denoiser=denoiser, lora=lora,
                        native=native)
        manifest = json.loads((folder / MANIFEST).read_text())
        report, card = manifest.get("lora"), manifest.get("card") or {}
        zip_path = shutil.make_archive(str(work / FOLDER), "zip", root_dir=work, base_dir=FOLDER)
        plan_json = work / "pruning_plan.json"
        plan_json.write_text(plan.to_json())
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    template = LOAD_PIPELINE if full_pipeline else LOAD_DENOISER
    load = template.format(folder=FOLDER, denoiser=handle.denoiser_name, prompt=py_str(prompt),
                           base=py_str(handle.source))  # user values as inert string literals
    if report:  # before generating: the images are then of the model with its LoRA
        lines = load.splitlines()
        at = next(i for i, line in enumerate(lines) if line.startswith("image ="))
        lines.insert(at, f'pruned.pipe.load_lora_weights("{FOLDER}", subfolder="lora", weight_name="{LORA_FILE}")'
                         "  # the LoRA, sliced for the plan")
        load = "\n".join(lines)
    if native:  # the same folder, read by plain diffusers
        load += NATIVE_LOAD.format(folder=FOLDER, cls=type(handle.denoiser).__name__, denoiser=handle.denoiser_name,
                                   base=py_str(handle.source)) if not full_pipeline else NATIVE_PIPELINE.format(folder=FOLDER)
    snippet = SNIPPET.format(install=public_install_line(), folder=FOLDER, zip_name=Path(zip_path).name, load=load)
    cleanup(root)
    return {"zip": zip_path, "plan_json": str(plan_json), "snippet": snippet, "lora": report, "card": card}
