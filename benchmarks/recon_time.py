"""Q2's time: a default reconstruction per plan on the bundled models, one thread.

``OMP_NUM_THREADS=1 python -m benchmarks.recon_time [MODEL:METHOD:SPARSITY ...]`` times
``pruning.reconstruct(handle, plan)`` with default ``ReconstructSettings`` (32 calibration prompts,
every layer, 32 groups, each fit checked) on each plan, after the method's scoring (OBS-Diff's
compensated model is cached in the process, as in ``compare_methods``: its seconds are the
re-fit's), and writes ``benchmarks/results/recon_time.json`` (per plan: seconds, passes, layers
re-fitted and undone, the machine's load before and after). The quality tables' ``reconstruct_s``
come from ``compare_methods`` runs that share the machine with other processes; these are the
committed code's on a quiet machine (the load says how quiet). Target (issue 13): under 60 s.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

torch.set_num_threads(1)

import pruning  # noqa: E402
from benchmarks.q3_search import method_settings  # noqa: E402
from pruning.methods import get  # noqa: E402
from pruning.reconstruct import ReconstructSettings, fit_summary, reconstruct  # noqa: E402

OUT = Path(__file__).with_name("results") / "recon_time.json"
PLANS = ("tiny-shapes-sd:magnitude:0.2", "tiny-shapes-sd:ldpruner:0.2", "tiny-shapes-sd:obsdiff:0.2",
         "tiny-shapes-flux:magnitude:0.2", "tiny-shapes-flux:ldpruner:0.3", "tiny-shapes-flux:obsdiff:0.2",
         "tiny-shapes-sd3:magnitude:0.2", "tiny-shapes-sd3:ldpruner:0.2", "tiny-shapes-sd3:diffpruning:0.3",
         "tiny-shapes-sd3:obsdiff:0.3")
TARGET_S = 60


def time_plan(spec: str) -> dict:
    """One plan (``MODEL:METHOD:SPARSITY``) scored with the comparison's settings (32 calibration
    prompts; OBS-Diff at the plan's target), then re-fitted with the default settings, timed."""
    model, method, sparsity = spec.split(":")
    h = pruning.load_pipeline(model)
    m = get(method)
    extra = {"sparsity": float(sparsity)} if "sparsity" in m.Settings.__dataclass_fields__ else {}
    plan = m.to_plan(h, m.score(h, method_settings(h, method, extra)), target_sparsity=float(sparsity))
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    small = reconstruct(h, plan, ReconstructSettings())
    seconds = time.perf_counter() - t0
    f = fit_summary(small.reconstruction)
    return {"plan": spec, "seconds": round(seconds, 1), "passes": small.reconstruction["passes"],
            "refitted": f["refitted"], "undone": f["undone"], "unchanged": len(small.reconstruction.get("unchanged", [])),
            "load_before": round(load, 2), "load_after": round(os.getloadavg()[0], 2)}


def main(argv: list[str]) -> None:
    rows = []
    for spec in argv or PLANS:
        rows.append(time_plan(spec))
        print(json.dumps(rows[-1]), flush=True)
    secs = sorted(r["seconds"] for r in rows)
    out = {"measured_at": time.strftime("%Y-%m-%d"), "threads": 1, "target_s": TARGET_S,
           "median_s": secs[len(secs) // 2], "max_s": secs[-1], "plans": rows}
    OUT.write_text(json.dumps(out, indent=1) + "\n")
    print(f"median {out['median_s']} s, max {out['max_s']} s (target < {TARGET_S} s)")


if __name__ == "__main__":
    main(sys.argv[1:])
