"""Issue 22, Q3: settings searched on a validation set, confirmed on the 64 held-out prompts, for
any bundled model (generalizes ``benchmarks.sd3_30_search``, which now runs through this module).

Validation set: 96 training captions spread over the 142 training captions that are NOT among
the calibration prompts ``calibration_prompts(ref, 32)`` (what the methods score with and
reconstruction fits on by default) or ``calibration_prompts(ref, 64)`` (the "more calibration
prompts" runs), seeds 20000..20095 (evaluation uses seeds 0..63, calibration 10000..). Held-out:
``evaluation_prompts(ref, 64)`` with seeds 0..63, as ``compare_methods``.

    python -m benchmarks.q3_search MODEL score [METHOD ...]      # cache unit scores
    python -m benchmarks.q3_search MODEL val NAME JSON           # one configuration, validation set
    python -m benchmarks.q3_search MODEL test NAME JSON          # the same on the held-out prompts
    python -m benchmarks.q3_search table [JSONL]                 # markdown tables of the logged runs

JSON: {"method": "obsdiff", "sparsity": 0.2, "budget": {LayerBudget fields}, "scope": "local",
"settings": {method settings; "n_prompts": how many calibration prompts it scores with},
"caps": {"ff_context": 1.0} (a per-structure cap by name suffix, see ``_patch_caps``),
"recon": {ReconstructSettings fields; "n_prompts": how many calibration prompts} | null (plain)
| a list of those (each evaluated on the same plan, one line each: OBS-Diff calibrates once)}.
Each run appends one line per evaluated model to $Q3_DIR/results.jsonl (default /tmp/q3); unit
scores and the original's outputs per set are cached in $Q3_DIR/MODEL. OBS-Diff's scores are not
cached on disk: its plan is a run at the plan's target (cached in the process), so the score run
is made at that target. Figures: ``benchmarks/results/q3_search.md``.
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

ROOT = Path(os.environ.get("Q3_DIR", "/tmp/q3"))
N_VAL, VAL_SEED = 96, 20_000
FIGURES = ("latent_mse", "latent_mse_se", "acc_all", "acc_all_lo", "acc_all_hi")


def _spread(pool, n):
    return tuple(pool[i * len(pool) // n] for i in range(n))


def validation_set(ref):
    calib = set(calibration_prompts(ref, 64)) | set(calibration_prompts(ref, 32))
    pool = tuple(p for p in train_prompts() if p not in calib)
    prompts = _spread(pool, N_VAL)
    return list(prompts), list(range(VAL_SEED, VAL_SEED + N_VAL))


def test_set(ref):
    return list(evaluation_prompts(ref, 64)), list(range(64))


def method_settings(h, method, extra=None):
    """``method``'s comparison settings (32 calibration prompts, as ``compare_methods``) with
    ``extra`` values; ``extra["n_prompts"]``: that many calibration prompts instead."""
    extra = dict(extra or {})
    m = get(method)
    calib = calibration_prompts(h.model_ref, extra.pop("n_prompts", 32))
    known = {f.name for f in fields(m.Settings)}
    return m.settings(**{**({"prompts": calib} if "prompts" in known else {}), **m.comparison_settings(tuple(calib)),
                         **extra})


def scores(h, method, extra=None, cache: Path | None = None):
    """``method``'s unit scores with ``method_settings(h, method, extra)``, cached in ``cache``."""
    tag = "".join(f"_{k}{v}" for k, v in sorted((extra or {}).items()))
    path = cache / f"{method}{tag}.safetensors" if cache else None
    if path and path.exists():
        return Scores.read(path)
    t0 = time.time()
    sc = get(method).score(h, method_settings(h, method, extra))
    print(f"scored {method} in {time.time() - t0:.0f}s", flush=True)
    if path and sc.level == "unit":
        cache.mkdir(parents=True, exist_ok=True)
        sc.write(path)
    return sc


def reference(h, which, prompts, seeds, cache: Path):
    """The original's latents and images on this set (cached as tensors; its figures as JSON)."""
    path, meta = cache / f"ref_{which}.pt", cache / f"ref_{which}.json"
    s = CompareSettings(eval_prompts=prompts, eval_seeds=seeds, clip=False)
    if path.exists() and meta.exists():
        ref = torch.load(path, weights_only=True)
        ref["images"] = ref["images"].numpy()  # quality.evaluate's images are numpy uint8
        return {**ref, "row": json.loads(meta.read_text())}, s
    ev, out = _evaluate(h, h.denoiser, prompts, seeds, None, s, None)
    ref = {"latents": torch.as_tensor(out["latents"]), "images": torch.as_tensor(out["images"])}
    row = {k: float(v) for k, v in _row([ev]).items()}
    cache.mkdir(parents=True, exist_ok=True)
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


def fit(h, plan, recon):
    """The slim model of ``plan``: plain (``recon`` None) or re-fitted with those
    ``ReconstructSettings`` values (``n_prompts``: that many calibration prompts); and its seconds."""
    t0 = time.time()
    if recon is None:
        return build_model(h, plan), time.time() - t0
    recon = dict(recon)
    if "n_prompts" in recon:  # more calibration prompts (seeds 10000.. as the default)
        recon["prompts"] = calibration_prompts(h.model_ref, recon.pop("n_prompts"))
    return reconstruct(h, plan, ReconstructSettings(**recon)), time.time() - t0


def evaluate(h, small, prompts, seeds, ref, s) -> tuple[dict, dict]:
    """``small``'s figures on the set (against the original's cached outputs ``ref``), and the
    evaluation itself (per-sample figures under ``"samples"``); ``wrong``: the images (indices into
    the set) that fail the task accuracy."""
    t0 = time.time()
    ev, _ = _evaluate(h, small, prompts, seeds, {"latents": ref["latents"], "images": ref["images"]}, s, None)
    row = _row([ev])
    return {"params_fraction": 1 - row["params"] / ref["row"]["params"], **{k: row[k] for k in FIGURES},
            "original_acc_all": ref["row"]["acc_all"], "eval_s": time.time() - t0,
            "wrong": [i for i, ok in enumerate(ev["samples"]["acc_all"]) if ok < 1]}, ev


def log(out: dict, root: Path) -> None:
    """One line in ``root/results.jsonl`` and one on stdout."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "results.jsonl", "a") as f:
        f.write(json.dumps(out) + "\n")
    print(f"{out.get('model', '')} {out['set']} {out['name']}: params {out['params_fraction']:.3f} mse "
          f"{out['latent_mse']:.4f}±{out['latent_mse_se']:.4f} acc_all {out['acc_all']:.3f} "
          f"[{out['acc_all_lo']:.3f}, {out['acc_all_hi']:.3f}] (original {out['original_acc_all']:.3f}) "
          f"fit {out['fit_s']:.0f}s eval {out['eval_s']:.0f}s", flush=True)


def run(model, which, name, cfg, root: Path = ROOT, cache: Path | None = None):
    """Evaluate one configuration (each of its ``recon`` variants) on the ``which`` set."""
    cache = cache or root / model
    h = pruning.load_pipeline(model)
    prompts, seeds = (validation_set if which == "val" else test_set)(h.model_ref)
    ref, s = reference(h, which, prompts, seeds, cache)
    if cfg.get("caps"):  # experiment: per-structure caps by name suffix, e.g. {"ff_context": 1.0}
        _patch_caps(cfg["caps"], (cfg.get("budget") or {}).get("max_fraction", 0.75))
    if cfg["method"] == "original":  # the original itself: which images it gets wrong
        out = {"model": model, "set": which, "name": name, "cfg": cfg, "plan_s": 0.0, "fit_s": 0.0,
               **evaluate(h, h.denoiser, prompts, seeds, ref, s)[0]}
        return log(out, root)
    m = get(cfg["method"])
    t0 = time.time()
    if m.name == "obsdiff":  # its plan is its run at the target: score there (cached in the process)
        sc = scores(h, m.name, {**(cfg.get("settings") or {}), "sparsity": cfg["sparsity"]})
    else:
        sc = scores(h, m.name, cfg.get("settings"), cache)
    plan = m.to_plan(h, sc, target_sparsity=cfg["sparsity"], budget=cfg.get("budget"), scope=cfg.get("scope"))
    plan_s = time.time() - t0
    variants = cfg.get("recon")
    for recon in variants if isinstance(variants, list) else [variants]:
        small, fit_s = fit(h, plan, recon)
        tag = "plain" if recon is None else "recon" + ("" if not recon else json.dumps(recon, sort_keys=True))
        out = {"model": model, "set": which, "name": f"{name} {tag}" if isinstance(variants, list) else name,
               "cfg": {**cfg, "recon": recon}, "plan_s": plan_s, "fit_s": fit_s,
               **evaluate(h, small, prompts, seeds, ref, s)[0]}
        log(out, root)


def _describe(cfg) -> str:
    """A configuration in words: what differs from the comparison's defaults."""
    if cfg["method"] == "original":
        return "the original"
    parts = [cfg["method"]]
    parts += [f"{k}={v}" for k, v in sorted((cfg.get("settings") or {}).items())]
    parts += [f"budget {k}={v}" for k, v in sorted((cfg.get("budget") or {}).items())]
    parts += [f"scope {cfg['scope']}"] if cfg.get("scope") else []
    parts += [f"{k} cap {v}" for k, v in sorted((cfg.get("caps") or {}).items())]
    parts.append(f"target {cfg['sparsity']}")
    recon = cfg.get("recon")
    parts.append("plain" if recon is None else "+ recon (" + (", ".join(f"{k}={v}" for k, v in sorted(recon.items()))
                                                               or "defaults") + ")")
    return "; ".join(parts)


def table(lines) -> str:
    """Markdown tables (one per model and set: validation first; rows in run order) of results.jsonl lines (a repeated
    model, set and name: its last line).

    >>> line = json.dumps({"model": "m", "set": "val", "name": "a", "params_fraction": 0.2, "latent_mse": 0.001,
    ...                    "cfg": {"method": "obsdiff", "sparsity": 0.2, "settings": {"skip_last": 1}, "recon": None},
    ...                    "latent_mse_se": 0.0001, "acc_all": 0.9, "acc_all_lo": 0.8, "acc_all_hi": 0.95,
    ...                    "original_acc_all": 0.92})
    >>> print(table([line, line]).splitlines()[-1])  # the repeated line: one row
    | 1 | a | obsdiff; skip_last=1; target 0.2; plain | 0.200 | 0.0010 ± 0.0001 | 0.900 [0.800, 0.950] | 2.0 |
    """
    runs = [json.loads(x) for x in lines if x.strip()]
    runs = list({(r.get("model", ""), r["set"], r["name"]): r for r in runs}.values())
    out = []
    for key in sorted(dict.fromkeys((r.get("model", ""), r["set"]) for r in runs), key=lambda k: (k[0], k[1] != "val")):
        rows = [r for r in runs if (r.get("model", ""), r["set"]) == key]
        out += [f"### {key[0]}, {'validation' if key[1] == 'val' else 'held-out'} (original acc_all "
                f"{rows[0]['original_acc_all']:.3f})", "",
                "| # | name | configuration | params removed | latent MSE ± se | acc_all [95%] | gap (points) |",
                "|---|---|---|---|---|---|---|"]
        out += [f"| {i} | {r['name']} | {_describe(r['cfg'])} | {r['params_fraction']:.3f} | {r['latent_mse']:.4f} ± "
                f"{r['latent_mse_se']:.4f} | {r['acc_all']:.3f} [{r['acc_all_lo']:.3f}, {r['acc_all_hi']:.3f}] | "
                f"{100 * (r['original_acc_all'] - r['acc_all']):.1f} |" for i, r in enumerate(rows, 1)]
        out.append("")
    return "\n".join(out)


def main(argv, root: Path = ROOT, cache: Path | None = None):
    if argv[0] == "table":  # python -m benchmarks.q3_search table [results.jsonl]
        print(table(Path(argv[1] if len(argv) > 1 else root / "results.jsonl").read_text().splitlines()))
        return
    model, cmd, *rest = argv
    if cmd == "score":
        h = pruning.load_pipeline(model)
        for meth in rest or ["diffpruning"]:
            scores(h, meth, None, cache or root / model)
    else:
        run(model, cmd, rest[0], json.loads(rest[1]), root, cache)


if __name__ == "__main__":
    main(sys.argv[1:])
