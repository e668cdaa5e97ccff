"""Issue 22, tiny-shapes-sd3 at 30% params removed: selection budgets / reconstruction settings /
methods, chosen on a validation set, confirmed on the 64 held-out prompts.

Validation set: 96 training captions spread over the 142 training captions that are NOT among
the 64 calibration prompts ``calibration_prompts(ref, 64)`` (which hold the 32 the methods score
with and reconstruction fits on by default, and the 64 a "more calibration prompts" run uses),
seeds 20000..20095 (the evaluation uses seeds 0..63, calibration
10000..). The held-out test set: ``evaluation_prompts(ref, 64)`` with seeds 0..63, as
``compare_methods``.

    python -m benchmarks.sd3_30_search score            # cache Taylor / EcoDiff / magnitude scores
    python -m benchmarks.sd3_30_search val NAME JSON    # one configuration on the validation set
    python -m benchmarks.sd3_30_search test NAME JSON   # the same on the held-out prompts

JSON: {"method": "diffpruning", "sparsity": 0.3, "budget": {LayerBudget fields}, "scope": "local",
"settings": {method settings; "n_prompts": how many calibration prompts it scores with},
"caps": {"ff_context": 1.0} (a per-structure cap by name suffix, see ``_patch_caps``),
"recon": {ReconstructSettings fields; "n_prompts": how many calibration prompts} | null (plain)}.
Each run appends one line to $SD3Q_DIR/results.jsonl (default /tmp/sd3q); scores and the
original's outputs per set are cached there. The figures and what they showed:
``benchmarks/results/sd3_30_experiments.md``.
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
from pruning.compare import CompareSettings, _evaluate, _row  # noqa: E402
from pruning.export import build as build_model  # noqa: E402
from pruning.methods import Scores, get  # noqa: E402
from pruning.prompts import calibration_prompts, evaluation_prompts, train_prompts  # noqa: E402
from pruning.reconstruct import ReconstructSettings, reconstruct  # noqa: E402

MODEL = "tiny-shapes-sd3"
CACHE = Path(os.environ.get("SD3Q_DIR", "/tmp/sd3q"))
N_VAL, VAL_SEED = 96, 20_000


def _spread(pool, n):
    return tuple(pool[i * len(pool) // n] for i in range(n))


def validation_set(ref):
    calib = set(calibration_prompts(ref, 64)) | set(calibration_prompts(ref, 32))
    pool = tuple(p for p in train_prompts() if p not in calib)
    prompts = _spread(pool, N_VAL)
    return list(prompts), list(range(VAL_SEED, VAL_SEED + N_VAL))


def test_set(ref):
    return list(evaluation_prompts(ref, 64)), list(range(64))


def scores(h, method, extra=None):
    extra = dict(extra or {})
    tag = "".join(f"_{k}{v}" for k, v in sorted(extra.items()))
    path = CACHE / f"{method}{tag}.safetensors"
    if path.exists():
        return Scores.read(path)
    m = get(method)
    calib = calibration_prompts(h.model_ref, extra.pop("n_prompts", 32))
    known = {f.name for f in fields(m.Settings)}
    st = m.settings(**{**({"prompts": calib} if "prompts" in known else {}), **m.comparison_settings(tuple(calib)),
                       **extra})
    t0 = time.time()
    sc = m.score(h, st)
    print(f"scored {method} in {time.time() - t0:.0f}s", flush=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    sc.write(path)
    return sc


def reference(h, which, prompts, seeds):
    """The original's latents and images on this set (cached as tensors; its figures as JSON)."""
    path, meta = CACHE / f"ref_{which}.pt", CACHE / f"ref_{which}.json"
    s = CompareSettings(eval_prompts=prompts, eval_seeds=seeds, clip=False)
    if path.exists() and meta.exists():
        ref = torch.load(path, weights_only=True)
        ref["images"] = ref["images"].numpy()  # quality.evaluate's images are numpy uint8
        return {**ref, "row": json.loads(meta.read_text())}, s
    ev, out = _evaluate(h, h.denoiser, prompts, seeds, None, s, None)
    ref = {"latents": torch.as_tensor(out["latents"]), "images": torch.as_tensor(out["images"])}
    row = {k: float(v) for k, v in _row([ev]).items()}
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.save(ref, path)
    meta.write_text(json.dumps(row))
    return {**ref, "images": out["images"], "row": row}, s


def _patch_caps(caps, max_fraction):
    """Scale the per-structure depth factor so that a structure whose name ends with a key of
    ``caps`` gets that cap (the ranking divides its scores by the same factor: only lower)."""
    from pruning.methods import select

    layout = select._layout

    def patched(handle, budget, fqns):
        scale, params, protected = layout(handle, budget, fqns)
        for f in fqns:
            for suffix, cap in caps.items():
                if f.endswith("." + suffix):
                    scale[f] *= cap / max_fraction
        return scale, params, protected

    select._layout = patched


def run(which, name, cfg):
    h = pruning.load_pipeline(MODEL)
    prompts, seeds = (validation_set if which == "val" else test_set)(h.model_ref)
    ref, s = reference(h, which, prompts, seeds)
    if cfg.get("caps"):  # experiment: per-structure caps by name suffix, e.g. {"ff_context": 1.0}
        _patch_caps(cfg["caps"], (cfg.get("budget") or {}).get("max_fraction", 0.75))
    m = get(cfg["method"])
    sc = scores(h, m.name, cfg.get("settings"))
    plan = m.to_plan(h, sc, target_sparsity=cfg["sparsity"], budget=cfg.get("budget"),
                     scope=cfg.get("scope"))
    t0 = time.time()
    recon = dict(cfg.get("recon") or {})
    if "n_prompts" in recon:  # more calibration prompts (seeds 10000.. as the default)
        recon["prompts"] = calibration_prompts(h.model_ref, recon.pop("n_prompts"))
    small = reconstruct(h, plan, ReconstructSettings(**recon)) if cfg.get("recon") is not None \
        else build_model(h, plan)
    fit_s = time.time() - t0
    ev, _ = _evaluate(h, small, prompts, seeds, {"latents": ref["latents"], "images": ref["images"]}, s, None)
    row = _row([ev])
    frac = 1 - row["params"] / ref["row"]["params"]
    out = {"set": which, "name": name, "cfg": cfg, "params_fraction": frac, "fit_s": fit_s,
           **{k: row[k] for k in ("latent_mse", "latent_mse_se", "acc_all", "acc_all_lo", "acc_all_hi")},
           "original_acc_all": ref["row"]["acc_all"]}
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "results.jsonl", "a") as f:
        f.write(json.dumps(out) + "\n")
    print(f"{which} {name}: params {frac:.3f} mse {row['latent_mse']:.4f}±{row['latent_mse_se']:.4f} "
          f"acc_all {row['acc_all']:.3f} [{row['acc_all_lo']:.3f}, {row['acc_all_hi']:.3f}] "
          f"(original {ref['row']['acc_all']:.3f}) fit {fit_s:.0f}s", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "score":
        h = pruning.load_pipeline(MODEL)
        for meth in sys.argv[2:] or ["diffpruning"]:
            scores(h, meth)
    else:
        run(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]))
