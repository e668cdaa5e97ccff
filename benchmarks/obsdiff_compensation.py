"""What OBS-Diff's own compensation buys: its plans (default settings, the quality tables' 32
calibration prompts) slimmed with and without the compensated weights, on the 64 held-out prompts
(seeds 0..63), latent MSE and task accuracy against the original.

    OMP_NUM_THREADS=1 python -m benchmarks.obsdiff_compensation [model ...]

Writes ``benchmarks/results/obsdiff_compensation.json`` (uses the ``q3_search`` harness; the
original's outputs are cached in ``$Q3_DIR``).
"""

from __future__ import annotations

import json
import sys

import torch

from benchmarks import q3_search as q

MODELS = ("tiny-shapes-sd", "tiny-shapes-flux", "tiny-shapes-sd3")
OUT = q.Path(__file__).with_name("results") / "obsdiff_compensation.json"


def check(model: str) -> dict:
    import pruning
    from pruning.methods import obsdiff
    from pruning.slim import slim

    torch.set_num_threads(1)
    h = pruning.load_pipeline(model)
    prompts, seeds = q.test_set(h.model_ref)
    ref, s = q.reference(h, "test", prompts, seeds, q.ROOT / model)
    out = {}
    for target in (0.2, 0.3):
        r = obsdiff.run(h, q.method_settings(h, "obsdiff", {"sparsity": target}), target)
        plain = q.evaluate(h, slim(h.denoiser, r.plan), prompts, seeds, ref, s)[0]
        comp = q.evaluate(h, r.build(h), prompts, seeds, ref, s)[0]
        out[f"{target:.0%}"] = {"uncompensated": {k: plain[k] for k in ("latent_mse", "acc_all")},
                                "compensated": {k: comp[k] for k in ("latent_mse", "acc_all")},
                                "ratio": comp["latent_mse"] / plain["latent_mse"]}
        print(model, target, json.dumps(out[f"{target:.0%}"]), flush=True)
    return out


if __name__ == "__main__":
    results = json.loads(OUT.read_text()) if OUT.is_file() else {}
    for m in sys.argv[1:] or MODELS:
        results[m] = check(m)
        OUT.write_text(json.dumps(results, indent=2) + "\n")
