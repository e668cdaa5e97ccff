"""OBS-Diff on the bundled models: its plans at 20% and 30% params removed, evaluated as every
Q row is (``compare_methods``: the 64 held-out prompts and seeds, latent MSE and task accuracy
with 95% intervals), its wall time per run (target < 2 min on this CPU) and the estimator's
prediction against it (R3's band 0.7-1.4).

``python -m benchmarks.obsdiff_check [model ...]`` writes ``benchmarks/results/obsdiff_<model>.csv``
and ``benchmarks/results/obsdiff.json`` (one entry per model, merged with earlier ones).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

MODELS = ("tiny-shapes-sd", "tiny-shapes-flux", "tiny-shapes-sd3")
SPARSITIES = (0.2, 0.3)
OUT = Path(__file__).with_name("results")


def check(model: str) -> dict:
    from pruning import compare_methods, load_pipeline
    from pruning.compare import CompareSettings
    from pruning.estimate import estimate
    from pruning.methods import obsdiff

    torch.set_num_threads(1)
    h = load_pipeline(model)
    s = obsdiff.OBSDiffSettings()
    predicted = estimate(h, "obsdiff", s)
    seconds = {}
    run = obsdiff._run

    def timed(handle, settings, target, control, *given):  # the wall time of each (uncached) run
        t0 = time.perf_counter()
        out = run(handle, settings, target, control, *given)
        seconds[target] = round(time.perf_counter() - t0, 1)
        return out

    obsdiff._CACHE.clear()
    obsdiff._run = timed
    try:  # the defaults' kinds: compare_methods gives every method all unit kinds unless told
        df = compare_methods(h, SPARSITIES, ["obsdiff"],
                             settings=CompareSettings(method_settings={"obsdiff": {"kinds": list(s.kinds)}}))
    finally:
        obsdiff._run = run
    OUT.mkdir(exist_ok=True)
    df.to_csv(OUT / f"obsdiff_{model}.csv", index=False)
    rows = df[df["method"] == "obsdiff"].set_index("sparsity")
    return {"estimate_s": round(predicted.seconds, 1), "run_s": seconds,
            "estimate_ratio": round(predicted.seconds / seconds[s.sparsity], 2),
            "threads": torch.get_num_threads(),
            **{f"{t:.0%}": {k: float(rows.loc[t, k]) for k in ("params_fraction", "latent_mse", "latent_mse_se",
                                                                  "acc_all", "acc_all_lo", "acc_all_hi")}
               for t in SPARSITIES},
            "original_acc_all": float(df.loc[df["method"] == "original", "acc_all"].iloc[0])}


def main(models=MODELS) -> dict:
    path = OUT / "obsdiff.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    for m in models:
        results[m] = check(m)
        print(m, json.dumps(results[m]), flush=True)
        path.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main(tuple(sys.argv[1:]) or MODELS)
