"""R3: the cost estimator's error. For each method, the prediction of ``pruning.estimate``
against a measured run, for wall time and for peak memory, on both bundled models (short
settings) and on R1's SD 1.5 setting (the real SD 1.5 UNet config with random weights, fp32,
32x32 latents = 128 px with the tiny VAE's factor 4; guidance 1, so batch = prompts, as R1's
batch-1 forwards).

Each entry is a fresh subprocess (one thread): build the model, compute the estimate (its
timed denoiser calls also warm the model up), release freed heap pages (``malloc_trim``), then
run the method once while sampling RSS every millisecond (``p2_checkpointing.peak_rss``).

* time: predicted seconds / the run's wall seconds;
* memory: the predicted working memory ``peak_bytes - weights_bytes`` (the weights are
  resident before the run) / the peak RSS increase over the RSS just before the run.

The ``reconstruct`` entries run :func:`pruning.reconstruct.reconstruct` against
:func:`pruning.estimate.estimate_reconstruction` (the plan's statistics sizes and one measured call,
:func:`pruning.estimate.reconstruction_cost`): on the bundled model a plan that prunes every structure, 4 prompts,
2 steps; on SD 1.5 a plan that re-fits three layers (the widest conv, ``up_blocks.0.resnets.0``'s
``conv2`` with 11520 inputs and 1.06 GB of float64 statistics; a mid-block FFN; an attention's
``to_out``), one pass each, 2 prompts, 2 steps, on two threads (its float64 solves). These entries
also report the whole peak: ``peak_ratio`` = predicted ``peak_bytes`` / the run's peak RSS (which
also holds Python, torch and the pipeline's other models, about 0.5 GB here).

Judged: time where the run takes >= 0.5 s (shorter runs are per-call overhead), memory where
the measured increase is >= 100 MB (below that, allocator and heap noise: the bundled models'
runs raise RSS by a few MB; those are reported, not judged). Target: every judged ratio within
0.7-1.4; the value is the worst of max(r, 1/r) over them.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import subprocess
import sys
import time

from . import common

BUNDLED = ("tiny-shapes-sd", "tiny-shapes-flux")
SD15 = "sd15-random"
SD15_RESOLUTION = 128  # 32x32 latents, R1's SD 1.5 size
SETTINGS = {"ldpruner": {"n_gen": 4}, "ecodiff": {"epochs": 2}, "taylor": {"stride": 100}, "magnitude": {}}
SD15_SETTINGS = {  # short runs: the whole row stays within about 10 minutes on one CPU thread
    "ldpruner": {"n_gen": 2, "steps": 2, "operators": 2},  # the first 2 fine operators
    "ecodiff": {"epochs": 1, "batch_size": 2, "steps": 2, "prompts": 2},
    "taylor": {"stride": 500, "steps": 2, "prompts": 2},
}
# reconstruction (pruning.reconstruct): the plan's own statistics and one measured call (pruning.estimate)
RECON = "reconstruct"
RECON_SETTINGS = {"prompts": 4, "steps": 2, "batch_size": 4}  # bundled: a plan that prunes every structure
SD15_RECON_SETTINGS = {"prompts": 2, "steps": 2, "batch_size": 2}
SD15_RECON_PLAN = {  # three layers re-fitted, one pass each (groups=4 > 3 layers): the widest conv of SD 1.5
    "kept_groups": ("up_blocks.0.resnets.0", 0.7),  # conv2 reads 1280 x 3 x 3 = 11520 inputs: 1.06 GB of float64 G
    "kept_neurons": ("mid_block.attentions.0.transformer_blocks.0.ff", 0.7),  # net[2]: 5120 inputs, 0.21 GB
    "kept_heads": ("down_blocks.0.attentions.0.transformer_blocks.0.attn1", 0.75),  # to_out: 320 inputs
}
RECON_THREADS = 2  # the SD 1.5 reconstruction's solves are float64 LAPACK work: two threads keep it to minutes
BAND = (0.7, 1.4)
MIN_SECONDS = 0.5
MIN_MEMORY = 100 * 2 ** 20  # bytes of measured increase below which memory is not judged


def _handle(model: str):
    if model == SD15:
        from pruning.loading import handle_from_pipe
        from pruning.testing import real_unet_pipeline

        return handle_from_pipe(real_unet_pipeline("sd15"), model_ref=SD15,
                                defaults={"resolution": SD15_RESOLUTION, "guidance": 1.0})
    from pruning import load_pipeline

    return load_pipeline(model)


def _settings(handle, model: str, name: str, quick: bool):
    from pruning import methods
    from pruning.catalog import catalog
    from pruning.prompts import calibration_prompts
    from pruning.sampling import count_inputs

    m = methods.get(name)
    fields = set(m.Settings.__dataclass_fields__)
    values = dict((SD15_SETTINGS if model == SD15 else SETTINGS)[name])
    if "operators" in values:
        ops = catalog(handle.denoiser, **count_inputs(handle))[0]
        values["operators"] = tuple(ops[ops["granularity"].isin(["fine", "both"])]["fqn"][: values["operators"]])
    n_prompts = values.pop("prompts", 4)
    if "prompts" in fields:
        values["prompts"] = calibration_prompts(handle.model_ref, n_prompts)
    if quick and name != "magnitude":
        values["steps"] = 2
    return m, m.settings(**values)


def _recon(handle, model: str, quick: bool):
    """(plan, settings) of the reconstruction entry."""
    from pruning.catalog import discover
    from pruning.estimate import typical_plan
    from pruning.plan import PruningPlan
    from pruning.prompts import calibration_prompts
    from pruning.reconstruct import ReconstructSettings

    values = dict(SD15_RECON_SETTINGS if model == SD15 else RECON_SETTINGS)
    prompts = calibration_prompts(handle.model_ref, values.pop("prompts"))
    settings = ReconstructSettings(prompts=tuple(prompts), **values)
    if model != SD15:
        return typical_plan(handle), settings
    found = discover(handle.denoiser).structures
    kept = {field: {fqn: tuple(range(round(keep * found[fqn].units)))}
            for field, (fqn, keep) in SD15_RECON_PLAN.items()}
    return PruningPlan(family=handle.family, base=handle.model_ref, **kept), settings


def _trim() -> None:
    """Give freed heap pages back to the OS, so that the RSS before the run is a clean baseline."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _child(model: str, name: str, quick: bool) -> dict:
    from pruning.estimate import LiveBytes, estimate, step_cost

    from .p2_checkpointing import peak_rss

    common.set_threads(RECON_THREADS if (name, model) == (RECON, SD15) else common.THREADS)
    t0 = time.perf_counter()
    h = _handle(model)
    if name == RECON:
        from pruning.estimate import estimate_reconstruction
        from pruning.reconstruct import reconstruct

        plan, settings = _recon(h, model, quick)
        m = type("Recon", (), {"score": staticmethod(lambda handle, s: reconstruct(handle, plan, s))})
    else:
        m, settings = _settings(h, model, name, quick)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    e = estimate_reconstruction(h, settings, plan=plan) if name == RECON else estimate(h, name, settings)
    estimate_s = time.perf_counter() - t0
    weights = step_cost(h, resolution=getattr(settings, "resolution", None)).weights_bytes
    parts = {}
    if name == RECON:  # the estimate's parts (its timings are cached now: no second measurement)
        from pruning.estimate import reconstruction_cost

        c = reconstruction_cost(h, plan, settings)
        parts = {"predicted_seconds_by_part": {k: round(v, 2) for k, v in c.parts.items()},
                 "predicted_mb_by_phase": {k: round(v / 2 ** 20, 1) for k, v in c.phases.items()}}
    _trim()
    load = os.getloadavg()[0]
    live = LiveBytes()

    def go():
        if model == SD15:  # the run's own live-tensor peak too: its per-op cost is ~1% of a real-size call
            with live:
                m.score(h, settings)
        else:
            m.score(h, settings)

    got = peak_rss(go)
    return {**parts, "predicted_peak_bytes": e.peak_bytes, "peak_rss_bytes": got["peak"], "threads": torch_threads(),
            "load_after": round(os.getloadavg()[0], 2),
            "run_tensor_peak_bytes": live.peak if model == SD15 else None, "load_before": round(load, 2),
            "predicted_s": e.seconds, "measured_s": got["seconds"],
            "predicted_bytes": e.peak_bytes - weights, "measured_bytes": got["peak"] - got["before"],
            "weights_bytes": weights, "calls": e.calls, "build_s": round(build_s, 1),
            "estimate_s": round(estimate_s, 1)}


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _measure(model: str, name: str, quick: bool) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.r3_estimator", model, name] + (["quick"] if quick else [])
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"R3 entry {model} {name} failed: {out.stderr.strip()[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _ratio(p: float, m: float) -> float:
    return round(p / max(m, 1e-9), 3)


def run(quick: bool = False) -> dict:
    """R3: the methods' estimates (the reconstruction entries are row R7, :func:`run_reconstruction`)."""
    todo = [(model, name) for model in (BUNDLED[:1] if quick else BUNDLED) for name in SETTINGS]
    if not quick:
        todo += [(SD15, name) for name in SD15_SETTINGS]
    return _judged(todo, quick)


def run_reconstruction(quick: bool = False) -> dict:
    """R7: reconstruction's estimate against its run, on the bundled SD model and (not quick) at SD 1.5
    size; judged in R3's band, the same way."""
    return _judged([(BUNDLED[0], RECON)] + ([] if quick else [(SD15, RECON)]), quick)


def _judged(todo: list[tuple[str, str]], quick: bool) -> dict:
    threads = common.set_threads()
    entries = {}
    for model, name in todo:  # one at a time: an SD 1.5 entry holds several GB
        r = _measure(model, name, quick)
        entries[f"{model} {name}"] = {
            "predicted_s": round(r["predicted_s"], 3), "measured_s": round(r["measured_s"], 3),
            "time_ratio": _ratio(r["predicted_s"], r["measured_s"]),
            "predicted_mb": round(r["predicted_bytes"] / 2 ** 20, 1),
            "measured_mb": round(r["measured_bytes"] / 2 ** 20, 1),
            "memory_ratio": _ratio(r["predicted_bytes"], max(r["measured_bytes"], 1)),
            "weights_mb": round(r["weights_bytes"] / 2 ** 20, 1), "calls": r["calls"],
            "predicted_peak_mb": round(r["predicted_peak_bytes"] / 2 ** 20, 1),
            "peak_rss_mb": round(r["peak_rss_bytes"] / 2 ** 20, 1),
            "peak_ratio": _ratio(r["predicted_peak_bytes"], r["peak_rss_bytes"]), "threads": r["threads"],
            **{k: r[k] for k in ("predicted_seconds_by_part", "predicted_mb_by_phase") if k in r},
            "build_s": r["build_s"], "estimate_s": r["estimate_s"], "load_avg_1min": r["load_before"], "load_avg_1min_after": r["load_after"],
            **({"run_tensor_peak_mb": round(r["run_tensor_peak_bytes"] / 2 ** 20, 1)}
               if r["run_tensor_peak_bytes"] is not None else {})}
    judged_time = sorted(k for k, v in entries.items() if v["measured_s"] >= MIN_SECONDS)
    judged_memory = sorted(k for k, v in entries.items() if v["measured_mb"] * 2 ** 20 >= MIN_MEMORY)
    ratios = [entries[k]["time_ratio"] for k in judged_time] + [entries[k]["memory_ratio"] for k in judged_memory]
    worst = max((max(r, 1 / r) for r in ratios), default=1.0)
    ok = bool(ratios) and all(BAND[0] <= r <= BAND[1] for r in ratios)
    misses = [f"{k} {what}" for what, keys in (("time", judged_time), ("memory", judged_memory)) for k in keys
              if not BAND[0] <= entries[k][f"{what}_ratio"] <= BAND[1]]
    return {"value": round(worst, 3), "target": f"predicted / measured in {BAND[0]}-{BAND[1]}", "ok": ok,
            "unit": "x (worst of max(r, 1/r), wall time and working memory)",
            "detail": {"entries": entries, "judged_time": judged_time, "judged_memory": judged_memory,
                       "misses": misses, "threads": threads,
                       "judged_if": f"time: run >= {MIN_SECONDS} s; memory: measured RSS increase >= "
                                    f"{MIN_MEMORY // 2 ** 20} MB",
                       "memory": "predicted peak_bytes - weights_bytes vs peak RSS increase over the RSS "
                                 "just before the run (fresh subprocess per entry, after malloc_trim); "
                                 "run_tensor_peak_mb (SD 1.5): the run's peak live tensor bytes "
                                 "(pruning.estimate.LiveBytes), what the estimate models; the RSS adds "
                                 "the allocator's heap and the kernels' scratch",
                       "load_avg": "1-minute load average of this shared 2-core machine before and after each run",
                       "sd15": f"real SD 1.5 UNet config, random weights, fp32, {SD15_RESOLUTION} px "
                               f"({SD15_RESOLUTION // 4}x{SD15_RESOLUTION // 4} latents), guidance 1"}}


if __name__ == "__main__":
    print(json.dumps(_child(sys.argv[1], sys.argv[2], len(sys.argv) > 3 and sys.argv[3] == "quick"),
                     default=str))
