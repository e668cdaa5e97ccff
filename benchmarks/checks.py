"""C1, C2, C3: the thorough checks the test suite used to run, kept here so that the suite stays fast.

Each check asserts its invariant (an ``AssertionError`` names the figures) and returns them; a row
runs every check, prints one line per check, and fails (``python -m benchmarks C1`` exits 1) when
any check does not hold. The suite keeps a cheap version of each (see the tests named in the
docstrings): one "beats random" per method, one multi-process and one fresh-process run.

C1, method quality on the bundled models (``tests/test_method_quality.py`` keeps, per method, a
latent-MSE "beats random" on 8 prompts with cheap settings):

- EcoDiff beats random (mean of 5), weight magnitude and LD-Pruner at 20% params removed;
- Taylor (Diff-Pruning) beats random and magnitude;
- every registered method beats random plans of the default rule (mean of 3) in latent MSE
  *and* task accuracy on 32 held-out prompts, with the comparison's calibration prompts;
- a short recovery finetune (200 iterations) improves a damaged 30% plan;
- LD-Pruner's lowest scores beat random and highest-first removal on tiny-shapes-sd and
  tiny-shapes-flux (MSE and accuracy on 16 held-out prompts).

C2, fresh processes and memory (the suite keeps one real subprocess per entry point):

- the in-place slim of a 53M-param UNet peaks at the estimator's prediction (model plus its
  largest layer, within allocator noise), the copying slim at about twice the model
  (``tests/test_estimate.py`` keeps the arithmetic of the prediction);
- R5 ``--quick`` reports every figure (agreement, plans with intervals, weightings, batching).

C3, the suite's thorough parametrizations, in a child pytest: the readers' fuzzing at the
Hypothesis profile "thorough" (1,000 examples per reader; the suite runs "ci", 25 each) and
``tests/test_dtypes.py`` on every (model, dtype) case (the suite runs each model in one dtype),
and the tests marked ``thorough`` (which the suite skips: FLUX's single-file round trip at real
width, SDXL's real-size native plan and meta-device slim, a 2-process chunk resumed in one
process, two Ctrl-C after an export, LD-Pruner's fast-score work on the real models).
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable

import torch

TARGET = 0.2
KINDS = ("head", "neuron", "group")
CHEAP = {"ecodiff": {"epochs": 4}, "ldpruner": {"n_gen": 4}}  # per-method settings of the every-method check


# --------------------------------------------------------------------------- C1: method quality


class Bench:
    """The bundled tiny-shapes-sd, ``n`` held-out evaluation prompts and the original's latents."""

    def __init__(self, n: int = 16):
        from pruning import load_pipeline
        from pruning.sampling import generate_latents
        from pruning.tiny import heldout_prompts, train_prompts

        self.h = load_pipeline("tiny-shapes-sd")
        self.prompts = list(heldout_prompts())[:n]
        self.seeds = list(range(n))
        self.calib = list(train_prompts())[:8]
        self.ref = generate_latents(self.h, self.prompts, self.seeds)

    def evaluate(self, plan=None, denoiser=None) -> tuple[float, float]:
        """Latent MSE against the original and task accuracy of a plan (built as exported: an
        OBS-Diff plan with its compensated weights) or of a given denoiser."""
        from pruning.export import build
        from pruning.quality import latent_mse, shape_task_accuracy
        from pruning.sampling import decode_latents, generate_latents

        den = denoiser if denoiser is not None else build(self.h, plan)
        z = generate_latents(self.h, self.prompts, self.seeds, denoiser=den)
        return latent_mse(z, self.ref), shape_task_accuracy(decode_latents(self.h, z), self.prompts)["all"]

    def at_target(self, scores, target=TARGET):
        from pruning.methods.select import plan_from_unit_scores

        return plan_from_unit_scores(self.h, scores, target_sparsity=target)


class _Lazy:
    """The benches and baselines, computed on first use and shared by the checks of one run."""

    def __init__(self):
        self._cache: dict[str, object] = {}

    def get(self, key: str, make: Callable[[], object]):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def bench(self) -> Bench:
        return self.get("bench", lambda: (torch.manual_seed(0), Bench())[1])

    def baselines(self) -> dict:
        from pruning.methods.baselines import magnitude_scores, random_scores

        def make():
            b = self.bench()
            rand = [b.evaluate(b.at_target(random_scores(b.h, KINDS, seed=d)))[0] for d in range(5)]
            return {"random": sum(rand) / len(rand), "magnitude": b.evaluate(b.at_target(magnitude_scores(b.h, KINDS)))[0]}

        return self.get("baselines", make)

    def bench32(self) -> Bench:
        return self.get("bench32", lambda: Bench(32))  # one image is 3 points of accuracy, not 6

    def random_at_20(self) -> tuple[float, float]:
        """Random plans under the default rule (mean of 3): latent MSE and task accuracy."""
        from pruning import methods

        def make():
            b, rand = self.bench32(), methods.get("random")
            res = [b.evaluate(methods.to_plan(b.h, rand.score(b.h, rand.settings(seed=d)), target_sparsity=TARGET))
                   for d in range(3)]
            return sum(r[0] for r in res) / 3, sum(r[1] for r in res) / 3

        return self.get("random_at_20", make)


def ecodiff_beats_random_magnitude_and_ldpruner(ctx: _Lazy) -> dict:
    from pruning import methods
    from pruning.methods import ecodiff, ldpruner

    b, base = ctx.bench(), ctx.baselines()
    scores = methods.get("ecodiff").score(b.h, ecodiff.EcoDiffSettings(prompts=b.calib, kinds=KINDS, epochs=6))
    mse, acc = b.evaluate(methods.to_plan(b.h, scores, target_sparsity=TARGET))
    sweep = ldpruner.sweep(b.h, ldpruner.SweepSettings(prompts=tuple(b.calib), n_gen=8), show_progress=False)
    ld_mse, _ = b.evaluate(ldpruner.plan_from_scores(b.h, sweep, target_sparsity=TARGET))
    out = {"ecodiff_mse": mse, "ecodiff_acc": acc, "ldpruner_mse": ld_mse, **base}
    assert mse < base["random"] and mse < base["magnitude"] and mse < ld_mse, out
    return out


def taylor_beats_random_and_magnitude(ctx: _Lazy) -> dict:
    from pruning import methods
    from pruning.methods import diffpruning

    b, base = ctx.bench(), ctx.baselines()
    scores = methods.get("diffpruning").score(b.h, diffpruning.DiffPruningSettings(prompts=b.calib))
    mse, acc = b.evaluate(methods.to_plan(b.h, scores, target_sparsity=TARGET))
    out = {"taylor_mse": mse, "taylor_acc": acc, **base}
    assert mse < base["random"] and mse < base["magnitude"], out
    return out


def every_method_beats_random_at_20_percent(ctx: _Lazy) -> dict:
    """Latent MSE and task accuracy, plain plans at 20% params removed, the default selection rule."""
    from pruning import methods
    from pruning.compare import CompareSettings, method_settings
    from pruning.prompts import calibration_prompts

    b, (r_mse, r_acc) = ctx.bench32(), ctx.random_at_20()
    calib = tuple(calibration_prompts(b.h.model_ref, 8))  # spread over the captions, as compare_methods
    out, losers = {"random": {"mse": r_mse, "acc": r_acc}}, []
    for name in methods.names():
        if name == "random":
            continue
        method = methods.get(name)
        s = method_settings(method, CompareSettings(method_settings={name: CHEAP.get(name, {})}), calib)
        mse, acc = b.evaluate(methods.to_plan(b.h, method.score(b.h, s), target_sparsity=TARGET))
        out[name] = {"mse": mse, "acc": acc}
        if not (mse < r_mse and acc > r_acc):
            losers.append(name)
    assert not losers, (losers, out)
    return out


def recovery_helps_a_30_percent_plan(ctx: _Lazy) -> dict:
    from pruning import methods, recover
    from pruning.methods import diffpruning
    from pruning.methods.select import LayerBudget
    from pruning.recover import RecoverSettings
    from pruning.tiny import train_prompts

    b = ctx.bench()
    scores = methods.get("diffpruning").score(b.h, diffpruning.DiffPruningSettings(prompts=b.calib))
    # the uncapped rule: a damaged 30% plan that recovery has to repair
    plan = methods.to_plan(b.h, scores, target_sparsity=0.3, budget=LayerBudget(max_fraction=1.0))
    before_mse, before_acc = b.evaluate(plan)
    teach = list(train_prompts())[:32]  # the original's trajectories for 32 training prompts
    small = recover(b.h, plan, RecoverSettings(prompts=teach, iters=200, lr=1e-4))
    after_mse, after_acc = b.evaluate(denoiser=small)
    out = {"mse_before": before_mse, "mse_after": after_mse, "acc_before": before_acc, "acc_after": after_acc}
    assert after_mse < before_mse and after_acc >= before_acc, out
    return out


def _ldpruner_beats_random_and_highest(name: str) -> dict:
    """Lowest LD-Pruner scores first against random operators (mean of 5) and highest first, at
    (at least) the same param budget: final-latent MSE and task accuracy on 16 held-out prompts."""
    import numpy as np

    from pruning.loading import load_pipeline
    from pruning.masks import masked
    from pruning.methods.ldpruner import SweepSettings, plan_from_scores, sweep
    from pruning.quality import latent_mse, shape_task_accuracy
    from pruning.sampling import decode_latents, generate_latents
    from pruning.tiny import heldout_prompts, train_prompts

    h = load_pipeline(name)
    prompts, seeds = list(heldout_prompts()[:16]), list(range(100, 116))
    scores = sweep(h, SweepSettings(prompts=tuple(train_prompts()[::26]), n_gen=8), show_progress=False)

    def evaluate(plan=None):
        if plan is None:
            z = generate_latents(h, prompts, seeds)
        else:
            with masked(h.denoiser, plan):
                z = generate_latents(h, prompts, seeds)
        return z, shape_task_accuracy(decode_latents(h, z), prompts)["all"]

    z0, _ = evaluate()
    best = plan_from_scores(h, scores, target_sparsity=TARGET)
    budget = best.provenance["selection"]["params_fraction"]
    worst = plan_from_scores(h, scores.assign(score=-scores["score"]), target_sparsity=budget)
    rng = np.random.default_rng(0)
    randoms = [plan_from_scores(h, scores.assign(score=rng.permutation(len(scores)).astype(float)),
                                target_sparsity=budget) for _ in range(5)]
    r = {}
    for key, plans in (("ldpruner", [best]), ("random", randoms), ("worst", [worst])):
        res = [evaluate(p) for p in plans]
        r[key] = {"mse": float(np.mean([latent_mse(z, z0) for z, _ in res])),
                  "acc": float(np.mean([a for _, a in res])),
                  "params_fraction": float(np.mean([p.provenance["selection"]["params_fraction"] for p in plans]))}
    assert r["ldpruner"]["params_fraction"] >= TARGET, r
    assert r["random"]["params_fraction"] >= r["ldpruner"]["params_fraction"] - 1e-12, r
    assert r["worst"]["params_fraction"] >= r["ldpruner"]["params_fraction"] - 1e-12, r
    assert r["ldpruner"]["mse"] < r["random"]["mse"] and r["ldpruner"]["mse"] < r["worst"]["mse"], r
    assert r["ldpruner"]["acc"] > r["random"]["acc"] and r["ldpruner"]["acc"] > r["worst"]["acc"], r
    return r


def ldpruner_beats_random_and_highest_sd(ctx: _Lazy) -> dict:
    return _ldpruner_beats_random_and_highest("tiny-shapes-sd")


def ldpruner_beats_random_and_highest_flux(ctx: _Lazy) -> dict:
    return _ldpruner_beats_random_and_highest("tiny-shapes-flux")


C1 = (ecodiff_beats_random_magnitude_and_ldpruner, taylor_beats_random_and_magnitude,
      every_method_beats_random_at_20_percent, recovery_helps_a_30_percent_plan,
      ldpruner_beats_random_and_highest_sd, ldpruner_beats_random_and_highest_flux)


# --------------------------------------------------------------------------- C2: fresh processes and memory


def inplace_slim_memory_measured_against_prediction(ctx: _Lazy) -> dict:
    """A 53M-param UNet (fp32) slimmed in a subprocess: the in-place peak is the prediction (model plus
    its largest layer) within allocator noise, the copying one about twice the model."""
    from benchmarks.r6_streaming import _child
    from pruning.estimate import inplace_slim_bytes

    ip, cp = _child("slim", "mid", "inplace"), _child("slim", "mid", "copy")
    measured = ip["peak_rss"] - ip["rss_before"]
    predicted = inplace_slim_bytes(ip["model_bytes"], ip["largest_param_bytes"])
    out = {"inplace_peak_mb": measured / 2**20, "predicted_mb": predicted / 2**20,
           "copy_peak_mb": (cp["peak_rss"] - cp["rss_before"]) / 2**20, "slim_mb": ip["slim_bytes"] / 2**20}
    assert ip["peak_reset"] and cp["peak_reset"], (ip, cp)
    assert measured <= predicted + 64 * 2 ** 20, out
    assert cp["peak_rss"] - cp["rss_before"] > measured + 0.4 * ip["slim_bytes"], out
    return out


def r5_quick_reports_every_figure(ctx: _Lazy) -> dict:
    from benchmarks.r5_ablation import run
    from pruning.methods import ablation

    r = run(quick=True)
    e = r["detail"]["models"]["tiny-shapes-sd"]
    for key in ("spearman", "top_k_overlap", "removed_overlap", "time_ratio", "fast_accuracy_within_full_ci"):
        assert key in e, (key, sorted(e))
    for plan in ("full", "fast"):
        lo, hi = e["plans"][plan]["accuracy_ci"]
        assert lo <= e["plans"][plan]["accuracy"] <= hi, e["plans"]
    assert set(e["weightings"]) >= set(ablation.TARGETS) and r["detail"]["worst_work_ratio"] <= 0.1, r["detail"]
    assert set(r["detail"]["batching"]["by_batch"]) == {"1", "4", "8"}, r["detail"]["batching"]
    return {"spearman": e["spearman"], "worst_work_ratio": r["detail"]["worst_work_ratio"]}


C2 = (inplace_slim_memory_measured_against_prediction, r5_quick_reports_every_figure)


# --------------------------------------------------------------------------- C3: the suite's thorough parametrizations


def fuzz_and_dtypes_thoroughly(ctx: _Lazy) -> dict:
    """tests/abuse/test_fuzz.py under the Hypothesis profile "thorough" (tests/conftest.py: 1,000
    examples per reader; ``PRUNING_FUZZ_EXAMPLES`` sets another count) and tests/test_dtypes.py on
    all 14 (model, dtype) cases (``PRUNING_THOROUGH=1``), then every test marked ``thorough``, in
    child pytests; the suite runs the profile "ci", 7 cases, and skips the marked ones."""
    import json
    import os
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "counts.json"
        env = {**os.environ, "HYPOTHESIS_PROFILE": "thorough", "PRUNING_THOROUGH": "1",
               "PRUNING_FUZZ_REPORT": str(report), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/abuse/test_fuzz.py",
                            "tests/test_dtypes.py"], cwd=root, env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stdout[-3000:]
        marked = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "thorough",
                                 "tests"], cwd=root, env=env, capture_output=True, text=True)
        counts = json.loads(report.read_text()) if report.is_file() else {}
    assert marked.returncode == 0, marked.stdout[-3000:]
    return {"examples": counts, "summary": r.stdout.strip().splitlines()[-1],
            "thorough_marked": marked.stdout.strip().splitlines()[-1]}


C3 = (fuzz_and_dtypes_thoroughly,)


# --------------------------------------------------------------------------- the rows


def run_checks(checks, unit: str = "checks passed") -> dict:
    """Run ``checks`` in order (one thread, as the suite), print a line each; raise if any failed."""
    torch.set_num_threads(1)
    ctx, detail, failed = _Lazy(), {}, {}
    for check in checks:
        t0 = time.perf_counter()
        try:
            figures = check(ctx)
        except AssertionError as e:
            failed[check.__name__] = f"{e}"[:2000]
            print(f"{check.__name__}: FAILED ({time.perf_counter() - t0:.1f} s): {e}", flush=True)
            continue
        except Exception:
            failed[check.__name__] = traceback.format_exc(limit=3)[-2000:]
            print(f"{check.__name__}: ERROR ({time.perf_counter() - t0:.1f} s)\n{failed[check.__name__]}", flush=True)
            continue
        detail[check.__name__] = {"seconds": round(time.perf_counter() - t0, 1), "figures": figures}
        print(f"{check.__name__}: ok ({detail[check.__name__]['seconds']} s) {figures}", flush=True)
    if failed:
        raise AssertionError(f"{len(failed)} of {len(checks)} checks failed: {sorted(failed)}")
    return {"value": len(detail), "target": len(checks), "ok": True, "unit": unit,
            "detail": {"checks": detail, "threads": torch.get_num_threads()}}


def run_c1() -> dict:
    return run_checks(C1)


def run_c2() -> dict:
    return run_checks(C2)


def run_c3() -> dict:
    return run_checks(C3)
