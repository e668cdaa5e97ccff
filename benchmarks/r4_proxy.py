"""R4: LD-Pruner's fast proxy against the full sweep. On both bundled models, the full sweep (the
model's steps and resolution, N_gen 8, granularity "fine") and the "proxy" preset (about half
the steps and half the resolution) score every operator; the row reports the Spearman rank
correlation of the two score lists, the overlap of their most prunable quarter of operators,
the overlap of the operators each removes at 20% params sparsity, and the time ratio
full / proxy (CPU time of this thread, one torch thread: steadier than wall time on a shared
machine; the wall-time ratio is beside it). Each sweep is timed from a cold latent cache, so
both include generating the original latents.

A full (not ``--quick``) run also writes the figures to ``pruning/assets/proxy_agreement.json``,
which the library reads to tell users what the proxy costs in agreement
(:func:`pruning.methods.proxy.proxy_note`). Target: Spearman >= 0.8 on both models.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone

from . import common

MODELS = ("tiny-shapes-sd", "tiny-shapes-flux")
K_FRACTION = 0.25  # the most prunable quarter of the operators
SPARSITY = 0.2  # params fraction removed for the removed-set overlap
SPEARMAN_TARGET = 0.8


def _timed(fn):
    t0, c0 = time.perf_counter(), time.thread_time()
    out = fn()
    return out, time.perf_counter() - t0, time.thread_time() - c0


def measure(model: str, *, quick: bool = False) -> dict:
    """The agreement figures of one bundled model (see the module docstring)."""
    from pruning import load_pipeline, methods
    from pruning.methods import ldpruner, proxy

    h = load_pipeline(model)
    m = methods.get("ldpruner")
    quick_values = {"full": {"n_gen": 2, "steps": 4}, "proxy": {"n_gen": 2, "steps": 2}}  # a smoke test only
    runs = {}
    for preset in ldpruner.PRESETS:  # full, proxy
        settings = m.settings(preset=preset, granularity="fine", **(quick_values[preset] if quick else {}))
        ldpruner.clear_cache()
        df, wall, cpu = _timed(lambda s=settings: ldpruner.sweep(h, s, show_progress=False))
        removed = ldpruner.plan_from_scores(h, df, target_sparsity=SPARSITY).removed_operators
        runs[preset] = {"df": df, "wall": wall, "cpu": cpu, "removed": removed}
    full, fast = runs["full"], runs["proxy"]
    if list(full["df"]["fqn"]) != list(fast["df"]["fqn"]):
        raise RuntimeError(f"{model}: the full and proxy sweeps scored different operators")
    n = len(full["df"])
    agree = proxy.rank_agreement(full["df"]["score"], fast["df"]["score"], k=max(1, round(K_FRACTION * n)))
    pick = lambda df: {k: df.attrs["settings"][k] for k in ("steps", "resolution")}  # noqa: E731
    return {"model_ref": h.model_ref, "full": pick(full["df"]), "proxy": pick(fast["df"]),
            "n_gen": int(full["df"].attrs["settings"]["n_gen"]), "granularity": "fine", "operators": n,
            **agree, "sparsity": SPARSITY,
            "removed_overlap": proxy.set_overlap(full["removed"], fast["removed"]),
            "removed": {"full": len(full["removed"]), "proxy": len(fast["removed"])},
            "full_s": round(full["cpu"], 2), "proxy_s": round(fast["cpu"], 2),
            "time_ratio": round(full["cpu"] / fast["cpu"], 2),
            "wall_time_ratio": round(full["wall"] / fast["wall"], 2)}


def write_asset(models: dict, threads: int) -> dict:
    """Write the measured figures where the library reads them (atomically)."""
    from pruning.files import atomic_write
    from pruning.methods import proxy

    for name, entry in models.items():
        proxy.check_entry(name, entry)
    data = {"format": proxy.FORMAT, "measured_at": datetime.now(timezone.utc).date().isoformat(),
            "by": "python -m benchmarks R4 (benchmarks/r4_proxy.py)", "threads": threads,
            "top_k": f"the {K_FRACTION:.0%} lowest-scoring operators", "time": "CPU time of one thread",
            "models": models}
    with atomic_write(proxy.AGREEMENT_FILE) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")
    return data


def run(quick: bool = False) -> dict:
    threads = common.set_threads()
    models = {name: measure(name, quick=quick) for name in (MODELS[:1] if quick else MODELS)}
    if not quick:
        write_asset(models, threads)
    worst = min(e["spearman"] for e in models.values())
    return {"value": worst, "target": f">= {SPEARMAN_TARGET}", "ok": bool(worst >= SPEARMAN_TARGET),
            "unit": "Spearman, proxy vs full sweep (worst model)",
            "detail": {"models": models, "threads": threads, "asset": None if quick else "pruning/assets/proxy_agreement.json"}}
