"""R5: LD-Pruner's one-step ablation score ("fast" preset) against the full sweep.

On the three bundled models, at "fine" and at "block" granularity, the full sweep (the model's
steps and resolution, N_gen 8) and the fast score (the same N_gen samples, K = 2 recorded
timesteps, weighting "step", ``pruning.methods.ablation``) score every operator. The row reports, per model and
granularity: the Spearman rank correlation of the two score lists, the overlap of their most
prunable quarter, the overlap of the operators each removes at 20% params sparsity, and the
test that matters: both 20% plans, slimmed and evaluated on the 64 held-out prompts (latent MSE
against the original with a 95% interval, mean +- 1.96 standard errors; the shapes accuracy
with a 95% bootstrap interval, as :mod:`pruning.compare` does), and whether the fast plan's
accuracy lies in the full plan's interval. Beside it: the three timestep weightings (step / uniform / denoised,
the same recorded distances), the first-order variant (one backward per recorded step), CPU
time of one thread for the full sweep and the fast score (cold caches: both include their
original rollout), and on one model whether batching ablations (per-sample gates) pays on CPU.

The cost ratio is the estimator's count of denoiser work (calls x samples per call) of the fast
score over the full sweep's, at the default settings, for the real SD 1.5, SDXL and FLUX.1-dev
(operators counted on their meta-device denoisers: nothing is downloaded or run) and for the
bundled models. A full (not ``--quick``) run writes ``pruning/assets/ablation_agreement.json``.
Targets: work ratio <= 0.1 on the three real models, Spearman >= 0.85 on each bundled model at
fine granularity, the fast plan's accuracy within the full plan's 95% interval on each.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone

from . import common

MODELS = ("tiny-shapes-sd", "tiny-shapes-flux", "tiny-shapes-sd3")
GRANULARITIES = ("fine", "block")
REAL = ("sd15", "sdxl", "flux-dev")
K_FRACTION = 0.25
SPARSITY = 0.2
N_GEN = 8
SPEARMAN_TARGET, WORK_TARGET = 0.85, 0.1
ACCURACY = "acc_all"  # every attribute of the caption right


def _cpu(fn):
    t0, c0 = time.perf_counter(), time.thread_time()
    out = fn()
    return out, time.thread_time() - c0, time.perf_counter() - t0


def real_work(name: str, k: int | None = None) -> dict:
    """Denoiser work of the full sweep and of the fast score on a real model at its defaults
    (fine operators, N_gen 8), by the estimator's counting rules."""
    from pruning import families
    from pruning.catalog import catalog
    from pruning.methods import ablation, ldpruner
    from pruning.reference import PIPELINES, meta_denoiser

    p = PIPELINES[name]
    fam = families.get(p["family"])
    ops = catalog(meta_denoiser(name))[0]
    n_ops = int(ops["granularity"].isin(["fine", "both"]).sum())
    mode = fam.default_guidance_mode
    batch = N_GEN * (2 if mode == "cfg" and p["guidance"] > 1 and fam.cfg_doubles_batch else 1)
    per_step = 2 if mode == "true_cfg" else 1
    full = (n_ops + 1) * p["steps"] * per_step * batch
    fast = ablation.fast_calls(n_ops, p["steps"], k or ldpruner.DEFAULT_TIMESTEPS, batch=batch,
                               calls_per_step=per_step)
    return {"operators": n_ops, "steps": p["steps"], "batch": batch, "full_calls": (n_ops + 1) * p["steps"] * per_step,
            "full_work": full, "fast_calls": fast["denoiser calls"], "fast_work": fast["work"],
            "work_ratio": round(fast["work"] / full, 4)}


def _interval(row: dict) -> dict:
    half = 1.96 * row["latent_mse_se"]
    return {"latent_mse": round(row["latent_mse"], 6), "latent_mse_ci": [round(row["latent_mse"] - half, 6),
                                                                         round(row["latent_mse"] + half, 6)],
            "accuracy": round(row[ACCURACY], 4), "accuracy_ci": [round(row[f"{ACCURACY}_lo"], 4),
                                                                  round(row[f"{ACCURACY}_hi"], 4)],
            "params_fraction": None}


def _evaluate_plan(h, plan, prompts, seeds, ref, total) -> dict:
    from pruning.compare import CompareSettings, _evaluate, _row
    from pruning.slim import slim

    row = _row([_evaluate(h, slim(h.denoiser, plan), prompts, seeds, ref, CompareSettings(clip=False), None)[0]])
    out = _interval(row)
    out["params_fraction"] = round(1 - row["params"] / total, 4)
    return out


def measure(model: str, granularity: str, *, quick: bool = False, reference=None) -> dict:
    """One model at one granularity (see the module docstring). ``reference``: the original's
    evaluation (computed when None), returned under ``"_reference"`` for reuse."""
    from pruning import load_pipeline, methods
    from pruning.compare import EVAL_PROMPTS, CompareSettings, _evaluate, _row
    from pruning.estimate import estimate
    from pruning.methods import ablation, ldpruner, proxy
    from pruning.prompts import evaluation_prompts

    h = load_pipeline(model)
    m = methods.get("ldpruner")
    values = {"n_gen": 2, "steps": 4} if quick else {}
    full_s = m.settings(granularity=granularity, **values)
    fast_s = m.settings(preset="fast", granularity=granularity, **values)
    ldpruner.clear_cache()
    ablation.clear_cache()
    full, full_cpu, full_wall = _cpu(lambda: ldpruner.sweep(h, full_s, show_progress=False))
    fast, fast_cpu, fast_wall = _cpu(lambda: ldpruner.sweep(h, fast_s, show_progress=False))
    fqns = list(full["fqn"])
    if list(fast["fqn"]) != fqns:
        raise RuntimeError(f"{model}: the full sweep and the fast score scored different operators")
    n = len(fqns)
    k = max(1, round(K_FRACTION * n))
    agree = proxy.rank_agreement(full["score"], fast["score"], k=k)
    # the other weighting and the first-order variant, on the same recording
    rs = fast_s.resolved(h)
    rec = ablation.recording(h, rs)
    dist = ablation.ablation_distances(h, rec, fqns)
    variants = {}
    for w in ablation.TARGETS:
        sc = [ablation.aggregate(dist[f], w)["score"] for f in fqns]
        variants[w] = proxy.rank_agreement(full["score"], sc, k=k)["spearman"]
        fo, fo_cpu, _ = _cpu(lambda w=w: ablation.first_order_scores(h, rec, fqns, weighting=w))
        variants[f"first_order_{w}"] = proxy.rank_agreement(full["score"], [fo[f] for f in fqns], k=k)["spearman"]
        variants[f"first_order_{w}_s"] = round(fo_cpu, 3)
    plans = {name: ldpruner.plan_from_scores(h, df, target_sparsity=SPARSITY) for name, df in (("full", full), ("fast", fast))}
    removed = {name: p.removed_operators for name, p in plans.items()}
    # the plans, evaluated as the comparison does
    n_eval = 8 if quick else EVAL_PROMPTS
    prompts = list(evaluation_prompts(h.model_ref, n_eval))
    seeds = list(range(len(prompts)))
    if reference is None:
        base, out = _evaluate(h, h.denoiser, prompts, seeds, None, CompareSettings(clip=False), None)
        reference = {"latents": out["latents"], "images": out["images"], "row": _row([base])}
    total = reference["row"]["params"]
    evals = {"full": _evaluate_plan(h, plans["full"], prompts, seeds, reference, total)}
    same = set(removed["full"]) == set(removed["fast"])
    evals["fast"] = evals["full"] if same else _evaluate_plan(h, plans["fast"], prompts, seeds, reference, total)
    lo, hi = evals["full"]["accuracy_ci"]
    e_full, e_fast = estimate(h, "ldpruner", full_s), estimate(h, "ldpruner", fast_s)
    return {"model_ref": h.model_ref, "granularity": granularity, "operators": n,
            "settings": {"full": {k2: full.attrs["settings"][k2] for k2 in ("n_gen", "steps", "resolution")},
                         "fast": {k2: fast.attrs["settings"][k2] for k2 in ("n_gen", "steps", "resolution", "timesteps",
                                                                            "weighting", "ablation_batch")}},
            **agree, "sparsity": SPARSITY, "removed_overlap": proxy.set_overlap(removed["full"], removed["fast"]),
            "removed": {"full": len(removed["full"]), "fast": len(removed["fast"])}, "same_plan": same,
            "plans": {"full": evals["full"], "fast": evals["fast"], "original_accuracy": round(reference["row"][ACCURACY], 4),
                      "eval_prompts": len(prompts)},
            "fast_accuracy_within_full_ci": bool(lo <= evals["fast"]["accuracy"] <= hi),
            "fast_accuracy_not_below_full_ci": bool(lo <= evals["fast"]["accuracy"]),
            "weightings": variants,
            "full_s": round(full_cpu, 2), "fast_s": round(fast_cpu, 2), "time_ratio": round(full_cpu / fast_cpu, 2),
            "wall_time_ratio": round(full_wall / fast_wall, 2),
            "estimator": {"full_calls": e_full.calls["denoiser calls"], "full_work": e_full.calls["work"],
                          "fast_calls": e_fast.calls["denoiser calls"], "fast_work": e_fast.calls["work"],
                          "work_ratio": round(e_fast.calls["work"] / e_full.calls["work"], 4)},
            "_reference": reference}


def batching(model: str = "tiny-shapes-sd", sizes=(1, 4, 8), *, quick: bool = False) -> dict:
    """CPU time of the fast score's ablations one operator per call against several per call
    (per-sample gates), on the same recording, and the largest score difference."""
    import numpy as np

    from pruning import load_pipeline, methods
    from pruning.methods import ablation
    from pruning.methods.ldpruner import select_operators

    h = load_pipeline(model)
    s = methods.get("ldpruner").settings(preset="fast", **({"n_gen": 2, "steps": 4} if quick else {})).resolved(h)
    rec = ablation.recording(h, s)
    fqns = list(select_operators(h, s)["fqn"])
    out, base = {}, None
    for b in sizes:
        d, cpu, wall = _cpu(lambda b=b: ablation.ablation_distances(h, rec, fqns, batch=b))
        scores = np.array([ablation.aggregate(d[f], s.weighting)["score"] for f in fqns])
        base = scores if base is None else base
        out[str(b)] = {"cpu_s": round(cpu, 3), "wall_s": round(wall, 3),
                       "max_rel_diff": float(np.max(np.abs(scores - base) / np.abs(base)))}
    return {"model": model, "operators": len(fqns), "by_batch": out,
            "pays_on_cpu": bool(min(v["cpu_s"] for k2, v in out.items() if k2 != "1") < out["1"]["cpu_s"])}


def write_asset(models: dict, real: dict, threads: int) -> dict:
    from pruning.files import atomic_write
    from pruning.methods import ablation

    data = {"format": ablation.FORMAT, "measured_at": datetime.now(timezone.utc).date().isoformat(),
            "by": "python -m benchmarks R5 (benchmarks/r5_ablation.py)", "threads": threads,
            "top_k": f"the {K_FRACTION:.0%} lowest-scoring operators", "time": "CPU time of one thread",
            "accuracy": "shapes task, every attribute right, 64 held-out prompts, 95% bootstrap interval",
            "models": models, "real_models": real}
    for name, entry in models.items():
        ablation.check_entry(name, entry)
    with atomic_write(ablation.AGREEMENT_FILE) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")
    return data


def run(quick: bool = False) -> dict:
    threads = common.set_threads()
    real = {name: real_work(name) for name in REAL}
    models: dict[str, dict] = {}
    for name in (MODELS[:1] if quick else MODELS):
        ref = None
        entry = {}
        for gran in (GRANULARITIES[:1] if quick else GRANULARITIES):
            r = measure(name, gran, quick=quick, reference=ref)
            ref = r.pop("_reference")
            entry[gran] = r
        models[name] = {**entry["fine"], "block": entry.get("block")}
    batch = batching(quick=quick)
    if not quick:
        write_asset(models, real, threads)
    worst_rho = min(e["spearman"] for e in models.values())
    worst_work = max(r["work_ratio"] for r in real.values())
    within = all(e["fast_accuracy_within_full_ci"] for e in models.values())
    within_block = all((e.get("block") or e)["fast_accuracy_within_full_ci"] for e in models.values())
    not_below = all(e["fast_accuracy_not_below_full_ci"] for e in models.values())
    ok = worst_rho >= SPEARMAN_TARGET and worst_work <= WORK_TARGET and within
    return {"value": worst_rho, "target": f"Spearman >= {SPEARMAN_TARGET} (fine), work <= {WORK_TARGET} of the sweep, "
                                          "fast 20% plan's accuracy in the full plan's 95% interval",
            "ok": bool(ok), "unit": "Spearman, fast score vs full sweep (worst bundled model, fine)",
            "detail": {"models": models, "real_models": real, "worst_work_ratio": worst_work,
                       "accuracy_within_interval": within, "accuracy_not_below_interval": not_below,
                       "accuracy_within_interval_block": within_block, "batching": batch, "threads": threads,
                       "asset": None if quick else "pruning/assets/ablation_agreement.json"}}
