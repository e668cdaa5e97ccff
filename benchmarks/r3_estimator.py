"""R3: the cost estimator's error. For each method on both bundled models (short settings), the
predicted wall time (``pruning.estimate``) against the measured one, in this process, one
thread. Target: predicted / measured within 0.7-1.4 for every entry; the value is the entry
farthest from 1 (as max(r, 1/r)). Peak memory is not measured here (a CPU has no allocator
peak to read); the estimate's memory is an upper bound from the bytes saved for backward.
"""

from __future__ import annotations

import time

from . import common

MODELS = ("tiny-shapes-sd", "tiny-shapes-flux")
SETTINGS = {"ldpruner": {"n_gen": 4}, "ecodiff": {"epochs": 2}, "taylor": {"stride": 100},
            "magnitude": {}}
BAND = (0.7, 1.4)


def run(quick: bool = False) -> dict:
    from pruning import load_pipeline, methods
    from pruning.estimate import estimate
    from pruning.prompts import calibration_prompts

    threads = common.set_threads()
    entries = {}
    for model in MODELS[:1] if quick else MODELS:
        h = load_pipeline(model)
        prompts = calibration_prompts(h.model_ref, 4)
        for name, values in SETTINGS.items():
            m = methods.get(name)
            extra = {"prompts": prompts} if "prompts" in {f for f in m.Settings.__dataclass_fields__} else {}
            settings = m.settings(**values, **extra, **({"steps": 2} if quick and name != "magnitude" else {}))
            predicted = estimate(h, name, settings).seconds
            t0 = time.perf_counter()
            m.score(h, settings)
            measured = time.perf_counter() - t0
            entries[f"{model} {name}"] = {"predicted_s": round(predicted, 3), "measured_s": round(measured, 3),
                                          "ratio": round(predicted / measured, 3)}
    timed = {k: v for k, v in entries.items() if v["measured_s"] >= 0.5}  # sub-second runs: overhead only
    worst = max((max(v["ratio"], 1 / v["ratio"]) for v in timed.values()), default=1.0)
    ok = all(BAND[0] <= v["ratio"] <= BAND[1] for v in timed.values())
    return {"value": round(worst, 3), "target": f"predicted / measured in {BAND[0]}-{BAND[1]}", "ok": bool(ok),
            "unit": "x (worst of max(r, 1/r), wall time)",
            "detail": {"entries": entries, "judged": sorted(timed), "threads": threads,
                       "memory": "not measured on this CPU (upper bound from saved-for-backward bytes)"}}
