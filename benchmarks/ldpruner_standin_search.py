"""Issue 22, LD-Pruner's operator plans: stand-in settings for the removed operators, chosen on a
validation set, confirmed on the 64 held-out prompts (the approach of ``benchmarks.sd3_30_search``).

Validation set: ``sd3_30_search.validation_set`` per model (96 training captions outside
``calibration_prompts(ref, 32 | 64)``, seeds 20000..20095); held-out: ``evaluation_prompts(ref, 64)``,
seeds 0..63, as ``compare_methods``.

    python -m benchmarks.ldpruner_standin_search MODEL SET JSON [JSON ...]

each JSON: {"name": ..., "sparsity": 0.2, "recon": {ReconstructSettings fields; "n_prompts"} | null}.
The original's outputs are cached in $LDREC_DIR/MODEL (default /tmp/ldrec);
each run appends a line to $LDREC_DIR/results.jsonl. Figures: ``results/ldpruner_standin_experiments.md``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import fields
from pathlib import Path

import torch

torch.set_num_threads(1)

import pruning  # noqa: E402
from benchmarks import sd3_30_search as base  # noqa: E402
from pruning.compare import _evaluate, _row  # noqa: E402
from pruning.export import build as build_model  # noqa: E402
from pruning.methods import get  # noqa: E402
from pruning.prompts import calibration_prompts  # noqa: E402
from pruning.reconstruct import ReconstructSettings, reconstruct  # noqa: E402

ROOT = Path(os.environ.get("LDREC_DIR", "/tmp/ldrec"))


def run(model, which, cfgs):
    base.CACHE = ROOT / model  # scores and the original's outputs per model
    h = pruning.load_pipeline(model)
    prompts, seeds = (base.validation_set if which == "val" else base.test_set)(h.model_ref)
    ref, s = base.reference(h, which, prompts, seeds)
    m = get("ldpruner")
    calib = calibration_prompts(h.model_ref, 32)  # as base.scores (and compare_methods) score
    known = {f.name for f in fields(m.Settings)}
    st = m.settings(**{**({"prompts": calib} if "prompts" in known else {}), **m.comparison_settings(tuple(calib))})
    sc = m.score(h, st)  # seconds; operator scores have no unit-score file to cache
    for cfg in cfgs:
        plan = m.to_plan(h, sc, target_sparsity=cfg["sparsity"])
        t0 = time.time()
        recon = dict(cfg.get("recon") or {})
        if "n_prompts" in recon:
            recon["prompts"] = calibration_prompts(h.model_ref, recon.pop("n_prompts"))
        small = reconstruct(h, plan, ReconstructSettings(**recon)) if cfg.get("recon") is not None \
            else build_model(h, plan)
        fit_s = time.time() - t0
        chosen = (getattr(small, "pruning_plan", None) and (small.pruning_plan.reconstruction or {})
                  .get("settings", {}).get("standin"))
        ev, _ = _evaluate(h, small, prompts, seeds, {"latents": ref["latents"], "images": ref["images"]}, s, None)
        row = _row([ev])
        per = [float(v) for v in ev["samples"]["latent_mse"]]  # per caption: which ones diverge
        worst = sorted(range(len(per)), key=per.__getitem__)[-3:][::-1]
        out = {"model": model, "set": which, **cfg, "chosen": chosen, "fit_s": fit_s,
               "params_fraction": 1 - row["params"] / ref["row"]["params"],
               **{k: row[k] for k in ("latent_mse", "latent_mse_se", "acc_all", "acc_all_lo", "acc_all_hi")},
               "original_acc_all": ref["row"]["acc_all"], "eval_s": time.time() - t0 - fit_s,
               "worst": [(prompts[i], seeds[i], per[i]) for i in worst]}
        ROOT.mkdir(parents=True, exist_ok=True)
        with open(ROOT / "results.jsonl", "a") as f:
            f.write(json.dumps(out) + "\n")
        print(f"{model} {which} {cfg['name']}: params {out['params_fraction']:.3f} mse {row['latent_mse']:.4f}"
              f"±{row['latent_mse_se']:.4f} acc_all {row['acc_all']:.3f} [{row['acc_all_lo']:.3f}, "
              f"{row['acc_all_hi']:.3f}] chosen {chosen} fit {fit_s:.0f}s eval {out['eval_s']:.0f}s "
              f"worst {[(p, round(v, 4)) for p, _, v in out['worst']]}", flush=True)


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2], [json.loads(a) for a in sys.argv[3:]])
