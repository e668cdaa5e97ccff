"""Issue 22, LD-Pruner's operator plans: stand-in settings for the removed operators, chosen on a
validation set, confirmed on the 64 held-out prompts (the approach of ``benchmarks.q3_search``).

Validation set: ``q3_search.validation_set`` per model (96 training captions outside
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
from pathlib import Path

import torch

torch.set_num_threads(1)

import pruning  # noqa: E402
from benchmarks import q3_search as base  # noqa: E402
from pruning.methods import get  # noqa: E402

ROOT = Path(os.environ.get("LDREC_DIR", "/tmp/ldrec"))


def run(model, which, cfgs):
    h = pruning.load_pipeline(model)
    prompts, seeds = (base.validation_set if which == "val" else base.test_set)(h.model_ref)
    ref, s = base.reference(h, which, prompts, seeds, ROOT / model)  # the original's outputs per model
    m = get("ldpruner")
    sc = base.scores(h, "ldpruner")  # seconds; operator scores have no unit-score file to cache
    for cfg in cfgs:
        plan = m.to_plan(h, sc, target_sparsity=cfg["sparsity"])
        small, fit_s = base.fit(h, plan, cfg.get("recon"))
        chosen = (getattr(small, "pruning_plan", None) and (small.pruning_plan.reconstruction or {})
                  .get("settings", {}).get("standin"))
        figures, ev = base.evaluate(h, small, prompts, seeds, ref, s)
        per = [float(v) for v in ev["samples"]["latent_mse"]]  # per caption: which ones diverge
        worst = sorted(range(len(per)), key=per.__getitem__)[-3:][::-1]
        out = {"model": model, "set": which, **cfg, "chosen": chosen, "fit_s": fit_s, **figures,
               "worst": [(prompts[i], seeds[i], per[i]) for i in worst]}
        base.log(out, ROOT)
        print(f"  chosen {chosen} worst {[(p, round(v, 4)) for p, _, v in out['worst']]}", flush=True)

if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2], [json.loads(a) for a in sys.argv[3:]])
