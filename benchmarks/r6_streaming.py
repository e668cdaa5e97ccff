"""R6: big models on a small machine. Export of the real FLUX.1-dev transformer (11.9 B params, bf16)
straight from its files, and SDXL fp32 slimmed in place, with peak memory measured.

1. **Streaming export.** The real FLUX.1-dev transformer config (``pruning.reference``) is built on
   the meta device and written tensor by tensor as a diffusers folder of sharded bf16 safetensors
   (23.8 GB, shards of at most 10 GB as the Hub's; random values, a slice of one 256 MB random pool
   per tensor, so writing needs no memory either). A uniform plan keeping 70% of every head and
   FFN/MLP neuron (``keep=0.7``) is exported by ``pruning.materialize`` in a subprocess (one thread):
   its peak RSS (``VmHWM``, reset after the imports), wall time (the base's content hash, which
   the plan check needs, included) and the bytes written. Then every exported tensor is read back
   lazily and compared with the plan's slice of the base tensor (``torch.equal``), and the exported
   names and shapes with the slim model's (``slim`` on meta).
2. **In-place slim.** The real SDXL UNet config in fp32 (10.3 GB, random weights) with a uniform
   ``keep=0.7`` plan: peak RSS of ``slim(inplace=True)``, and of the in-place and the copying ``slim``
   of SD 1.5 (3.4 GB), each in its own subprocess; peaks are relative to the process before the model
   was built (``VmRSS``), over the model's own bytes. The copying slim of SDXL needs twice its
   10.3 GB: on this shared 24 GiB machine it was killed for memory at 16.3 GB RSS (not run again).

The predictions of ``pruning.estimate`` (``streaming_export_bytes``, ``inplace_slim_bytes``) are
checked against both measured peaks. Targets: streaming peak RSS <= 3 GB with every tensor
checked; in-place slim peak <= 1.15x the model's bytes.

Needs about 42 GB free under ``/work/r6_tmp`` (the base and the export; deleted afterwards) and
about 30 minutes here (the disk writes about 100 MB/s); ``quick`` runs the same steps on the tiny
FLUX and SD configs in a temporary folder.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from . import common

ROOT = Path("/work/r6_tmp")  # never inside the repository
NEED_FREE = 45 * 2 ** 30
KEEP = 0.7  # a 30% plan: 70% of every head and neuron kept
TARGET_STREAM_BYTES = 3 * 10 ** 9
TARGET_INPLACE_RATIO = 1.15
POOL = 2 ** 27  # random bf16 values every base tensor is a slice of (256 MB)


# ----------------------------------------------------------------------------- memory of this process


def _status() -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` of this process, in bytes."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


def _reset_peak() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux >= 4.0: ``clear_refs`` 5); False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


# ----------------------------------------------------------------------------- the models


def _config(name: str) -> tuple[str, dict]:
    """``(family, config)``: a reference config (``pruning.reference``), ``tiny-<family>`` (quick runs) or
    ``mid`` (the 53M-param UNet of ``common.MID_CONFIG``: the tests' measured check)."""
    if name == "mid":
        return "sd", dict(common.MID_CONFIG)
    if name.startswith("tiny-"):
        from pruning.testing import tiny_pipeline

        family = name.removeprefix("tiny-")
        pipe = tiny_pipeline(family)
        return family, dict((pipe.unet if hasattr(pipe, "unet") else pipe.transformer).config)
    from pruning.reference import PIPELINES, REFERENCE_CONFIGS

    return PIPELINES[name]["family"], dict(REFERENCE_CONFIGS[name])


def meta_model(name: str) -> tuple[str, torch.nn.Module]:
    from pruning import families

    family, config = _config(name)
    return family, families.get(family).meta_denoiser(config)


def real_model(name: str) -> tuple[str, torch.nn.Module]:
    """fp32, random weights (seeded)."""
    from pruning import families

    family, config = _config(name)
    torch.manual_seed(0)
    return family, families.get(family).denoiser_class.from_config(config).eval()


# ----------------------------------------------------------------------------- the base on disk


def write_base(folder: Path, name: str, *, dtype=torch.bfloat16, max_shard_size="10GB") -> dict:
    """The reference denoiser ``name`` with random weights as a diffusers folder, written tensor by tensor."""
    from pruning import families
    from pruning.loading import _FILE_HASHES
    from pruning.shards import nbytes, write_sharded

    family, meta = meta_model(name)
    den = families.get(family).denoiser_name
    target = folder / den
    target.mkdir(parents=True)
    meta.save_config(target)
    specs = {k: (tuple(t.shape), dtype) for k, t in meta.state_dict().items()}
    pool = torch.empty(POOL, dtype=dtype).normal_(std=0.02, generator=torch.Generator().manual_seed(0))
    order = {k: i for i, k in enumerate(specs)}

    def tensor(key: str) -> torch.Tensor:
        shape, _ = specs[key]
        n = nbytes(shape, torch.uint8)
        start = (order[key] * 7919) % max(POOL - n, 1)  # a different slice per tensor
        return pool[start:start + n].reshape(shape)  # (numel,) -> the tensor's shape

    t0 = time.perf_counter()
    files = write_sharded(specs, tensor, target, max_shard_size=max_shard_size, metadata={"format": "pt"})
    for f, sha in files.items():  # the writer hashed them: spare the plan check a re-read in this process
        st = (target / f).stat()
        _FILE_HASHES[(str(target / f), st.st_size, st.st_mtime_ns)] = sha
    return {"bytes": sum(nbytes(*s) for s in specs.values()), "files": len(files), "tensors": len(specs),
            "write_s": round(time.perf_counter() - t0, 1)}


# ----------------------------------------------------------------------------- subprocess parts


def _child(*args: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "benchmarks.r6_streaming", *args], env=env, capture_output=True,
                          text=True, cwd=Path(__file__).resolve().parent.parent)
    if done.returncode != 0:
        why = "killed (out of memory?)" if done.returncode == -9 else done.stderr.strip()[-2000:]
        raise RuntimeError(f"R6 part {' '.join(args[:3])} failed (exit {done.returncode}): {why}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _export_part(plan_file: str, base: str, out: str, max_shard_size: str) -> dict:
    torch.set_num_threads(1)
    from pruning.materialize import materialize

    before = _status()["VmRSS"]
    reset = _reset_peak()
    t0 = time.perf_counter()
    materialize(plan_file, base, out, max_shard_size=max_shard_size)
    return {"wall_s": round(time.perf_counter() - t0, 1), "rss_before": before, "peak_rss": _status()["VmHWM"],
            "peak_reset": reset}


def _slim_part(name: str, inplace: str) -> dict:
    torch.set_num_threads(1)
    from pruning.slim import slim

    before = _status()["VmRSS"]
    t0 = time.perf_counter()
    family, model = real_model(name)
    build_s = time.perf_counter() - t0
    model_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    largest = max(p.numel() * p.element_size() for p in model.parameters())
    plan = common.uniform_plan(model, KEEP, family=family)
    gc.collect()
    built = _status()["VmRSS"]
    reset = _reset_peak()
    t0 = time.perf_counter()
    small = slim(model, plan, inplace=inplace == "inplace")
    seconds = time.perf_counter() - t0
    slim_bytes = sum(t.numel() * t.element_size() for t in small.state_dict().values())
    return {"inplace": inplace == "inplace", "build_s": round(build_s, 1), "slim_s": round(seconds, 1),
            "rss_before": before, "rss_built": built, "peak_rss": _status()["VmHWM"], "peak_reset": reset,
            "model_bytes": model_bytes, "largest_param_bytes": largest, "slim_bytes": slim_bytes}


# ----------------------------------------------------------------------------- the row


def streaming(root: Path, name: str, max_shard_size: str, base_shard: str) -> dict:
    """Write the base, export it by streaming in a subprocess, check every tensor; returns the figures."""
    from pruning import families
    from pruning.catalog import discover
    from pruning.estimate import streaming_export_bytes
    from pruning.loading import folder_hash
    from pruning.shards import INDEX, LazyWeights
    from pruning.slim import keep_masks, slice_tensor, slim

    base, out = root / f"{name}-base", root / f"{name}-export"
    written = write_base(base, name, max_shard_size=base_shard)
    family, meta = meta_model(name)
    den = families.get(family).denoiser_name
    plan = common.uniform_plan(meta, KEEP, family=family, base=f"local:{base.resolve()}@{folder_hash(base)}")
    summary = plan.summary(meta, sample_size=16, text_len=16)
    plan_file = root / f"{name}-plan.json"
    plan_file.write_text(plan.to_json())
    run = _child("export", str(plan_file), str(base), str(out), max_shard_size)
    got, src = LazyWeights(out / den), LazyWeights(base / den)
    predicted = streaming_export_bytes(src.largest_tensor_bytes())
    # check every tensor: the exported one equals the plan's slice of the base one, read back lazily
    norm = plan.normalized(meta)
    masks = keep_masks(meta, discover(meta).structures, norm)
    want = {k: tuple(t.shape) for k, t in slim(meta, norm, inplace=True).state_dict().items()}
    t0 = time.perf_counter()
    bad = [k for k in want if k not in got or got.shape(k) != want[k]]
    checked = 0
    for key in want:
        if key in bad:
            continue
        base_t = src.get(key)
        expected = slice_tensor(base_t, masks[key]) if key in masks else base_t
        if not torch.equal(got.get(key), expected):
            bad.append(key)
        checked += 1
    exported_bytes = sum(p.stat().st_size for p in (out / den).glob("*.safetensors"))
    shards = len(list((out / den).glob("*.safetensors")))
    return {"model": name, "base_bytes": written["bytes"], "base_write_s": written["write_s"],
            "base_files": written["files"], "tensors": written["tensors"],
            "plan_keep": KEEP, "params_fraction_removed": round(summary["params_fraction"], 4),
            "export_wall_s": run["wall_s"], "export_peak_rss": run["peak_rss"], "rss_before_export": run["rss_before"],
            "peak_reset": run["peak_reset"], "exported_bytes": exported_bytes, "exported_shards": shards,
            "sharded_index": (out / den / INDEX).is_file(), "tensors_checked": checked, "tensors_expected": len(want),
            "mismatches": bad[:5], "check_s": round(time.perf_counter() - t0, 1), "predicted_peak": predicted,
            "predicted_over_measured": round(predicted / run["peak_rss"], 3)}


def slim_peak(name: str, kind: str) -> dict:
    """One slim (``kind``: inplace | copy) of the real-size ``name`` in its own subprocess."""
    from pruning.estimate import inplace_slim_bytes

    r = _child("slim", name, kind)
    r["peak_over_model"] = round((r["peak_rss"] - r["rss_before"]) / r["model_bytes"], 3)
    predicted = r["rss_before"] + (inplace_slim_bytes(r["model_bytes"], r["largest_param_bytes"]) if kind == "inplace"
                                   else 2 * r["model_bytes"])
    r.update(predicted_peak=predicted, predicted_over_measured=round(predicted / r["peak_rss"], 3))
    return r


def _save(partial: Path | None, detail: dict) -> None:
    if partial is not None:  # what is measured so far survives a later failure
        partial.write_text(json.dumps(detail, indent=1))


# slims measured (model, kind): SDXL's copy needs twice its 10.3 GB and was killed for memory here
SLIMS = (("sdxl", "inplace"), ("sd15", "inplace"), ("sd15", "copy"))
QUICK_SLIMS = (("tiny-sd", "inplace"), ("tiny-sd", "copy"))


def run(quick: bool = False) -> dict:
    """Headline: the streaming export's peak RSS (GB) of the FLUX.1-dev transformer."""
    threads = common.set_threads()
    detail = {"threads": threads, "quick": quick, "target_inplace_peak_over_model": TARGET_INPLACE_RATIO,
              "slim": {}, "errors": []}
    partial = None if quick else ROOT.parent / "r6_partial.json"
    for name, kind in QUICK_SLIMS if quick else SLIMS:
        try:
            detail["slim"][f"{name}-{kind}"] = slim_peak(name, kind)
        except RuntimeError as e:
            detail["errors"].append(str(e))
        _save(partial, detail)
    if quick:
        root = Path(tempfile.mkdtemp(prefix="r6-"))
        names, shard, base_shard = "tiny-flux", "200KB", "300KB"
    else:
        ROOT.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(ROOT).free
        if free < NEED_FREE:
            raise RuntimeError(f"R6 needs {NEED_FREE / 2 ** 30:.0f} GB free under {ROOT}, has {free / 2 ** 30:.0f} GB")
        root = Path(tempfile.mkdtemp(prefix="run-", dir=ROOT))
        names, shard, base_shard = "flux-dev", "5GB", "10GB"
    try:
        stream = detail["streaming"] = streaming(root, names, shard, base_shard)
    finally:
        shutil.rmtree(root, ignore_errors=True)  # our own temporary folder only
    _save(partial, detail)
    inplace = [r for k, r in detail["slim"].items() if k.endswith("inplace")]
    ok = (stream["export_peak_rss"] <= TARGET_STREAM_BYTES and not stream["mismatches"]
          and stream["tensors_checked"] == stream["tensors_expected"] and not detail["errors"] and inplace
          and inplace[0]["peak_over_model"] <= TARGET_INPLACE_RATIO)
    slims = ", ".join(f"{k} {r['peak_over_model']}x" for k, r in detail["slim"].items())
    return {"value": round(stream["export_peak_rss"] / 1e9, 2), "target": TARGET_STREAM_BYTES / 1e9, "ok": bool(ok),
            "unit": f"GB peak RSS, streaming export of {names} (bf16, {stream['base_bytes'] / 1e9:.3g} GB on disk); "
                    f"fp32 slim peak over the model's bytes: {slims}", "detail": detail}


if __name__ == "__main__":  # the subprocess parts: one JSON line on stdout
    part, *rest = sys.argv[1:]
    print(json.dumps(_export_part(*rest) if part == "export" else _slim_part(*rest)))
