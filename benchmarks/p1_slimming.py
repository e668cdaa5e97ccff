"""P1 "slimming is real": latency of the slim denoiser / the original, beside its MAC ratio.

Plans keep a uniform fraction of the heads, FFN neurons and resnet channel groups of every
structure, chosen so the predicted MAC reduction is near 20%, 30% and 50%. Efficiency is
(1 - latency ratio) / (1 - MAC ratio); the target is >= 0.8 on the mid-size UNet.
"""

from __future__ import annotations

from . import common

TARGETS = (0.2, 0.3, 0.5)
TARGET_EFFICIENCY = 0.8


def _check(plan, original, small) -> dict:
    """Predicted (plan.summary) against measured (metrics) params and MACs; asserts they match."""
    from pruning.metrics import count_params, total_macs

    s = plan.summary(original)
    pred_p, pred_m = s["params_total"] - s["params_removed"], s["macs_total"] - s["macs_removed"]
    meas_p, meas_m = count_params(small), total_macs(small)
    assert meas_p == pred_p, f"params: predicted {pred_p}, measured {meas_p}"
    assert abs(meas_m - pred_m) <= 1e-6 * s["macs_total"], f"MACs: predicted {pred_m}, measured {meas_m}"
    return {"params_predicted": pred_p, "params_measured": meas_p, "macs_predicted": pred_m,
            "macs_measured": meas_m, "param_ratio": meas_p / s["params_total"],
            "mac_ratio": meas_m / s["macs_total"], "keep": plan.provenance["keep"]}


def measure(name: str, targets=TARGETS, repeats: int = 9) -> dict:
    """Every plan of one model: predicted vs measured cost, interleaved latencies, efficiency."""
    from pruning.metrics import count_params, total_macs
    from pruning.slim import slim

    original = common.MODELS[name]()
    plans = [common.plan_for_target(original, t) for t in targets]
    smalls = [slim(original, p).eval() for p in plans]
    rows = [{"target_mac_reduction": t, **_check(p, original, m)} for t, p, m in zip(targets, plans, smalls)]
    kw = common.inputs(original)
    times = common.interleaved([common.forward(m, kw) for m in (original, *smalls)], repeats=repeats)
    for i, row in enumerate(rows, start=1):
        for clock, t in times.items():
            ratio = common.paired_ratio(t[i], t[0])
            row[f"latency_{clock}_s"] = common.median(t[i])
            row[f"latency_ratio_{clock}"] = ratio
            row[f"latency_ratio_{clock}_of_mins"] = min(t[i]) / min(t[0])  # a second, outlier-free estimate
            row[f"efficiency_{clock}"] = (1 - ratio) / (1 - row["mac_ratio"])
        row["latency_ratio"] = row[f"latency_ratio_{common.CLOCK}"]
        row["efficiency"] = row[f"efficiency_{common.CLOCK}"]
    return {"params_original": count_params(original), "macs_original": total_macs(original),
            **{f"latency_original_{c}_s": common.median(t[0]) for c, t in times.items()}, "plans": rows}


def run(quick: bool = False) -> dict:
    """Headline: the worst efficiency over the mid-size plans (``quick``: one tiny plan, 3 rounds)."""
    threads = common.set_threads()
    models = ("tiny",) if quick else ("tiny", "mid")
    targets = (0.3,) if quick else TARGETS
    repeats = 3 if quick else common.REPEATS
    detail = {name: measure(name, targets, repeats) for name in models}
    head = models[-1]
    value = min(r["efficiency"] for r in detail[head]["plans"])
    detail.update(threads=threads, batch=common.BATCH, clock=common.CLOCK, headline_model=head, repeats=repeats,
                  mid_config={k: list(v) if isinstance(v, tuple) else v for k, v in common.MID_CONFIG.items()})
    return {"value": round(value, 3), "target": TARGET_EFFICIENCY, "ok": value >= TARGET_EFFICIENCY,
            "unit": "min (1-latency ratio)/(1-MAC ratio)", "detail": detail}
