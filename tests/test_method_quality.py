"""The methods work: on the bundled tiny-shapes-sd, at 20% param sparsity, EcoDiff and Taylor
plans keep the final latents closer to the original's than random plans (mean of 5) and
than the weight-magnitude plan (EcoDiff also beats the LD-Pruner plan); a short recovery
finetune helps a 30% plan."""

from __future__ import annotations

import pytest
import torch

from pruning import load_pipeline, methods, recover, slim
from pruning.loading import BUNDLED
from pruning.methods import diffpruning, ecodiff, ldpruner
from pruning.methods.baselines import magnitude_scores, random_scores
from pruning.methods.select import plan_from_unit_scores
from pruning.quality import latent_mse, shape_task_accuracy
from pruning.recover import RecoverSettings
from pruning.sampling import decode_latents, generate_latents
from pruning.tiny import heldout_prompts, train_prompts

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not (BUNDLED["tiny-shapes-sd"] / "model_index.json").is_file(),
                                reason="bundled tiny-shapes-sd is missing (python -m pruning.tiny train --arch sd)")]
KINDS = ("head", "neuron", "group")
TARGET = 0.2


class Bench:
    """The bundled model, held-out evaluation prompts and the original's latents."""

    def __init__(self):
        self.h = load_pipeline("tiny-shapes-sd")
        self.prompts = list(heldout_prompts())[:16]
        self.seeds = list(range(16))
        self.calib = list(train_prompts())[:8]
        self.ref = generate_latents(self.h, self.prompts, self.seeds)

    def evaluate(self, plan=None, denoiser=None) -> tuple[float, float]:
        den = denoiser if denoiser is not None else slim(self.h.denoiser, plan)
        z = generate_latents(self.h, self.prompts, self.seeds, denoiser=den)
        return latent_mse(z, self.ref), shape_task_accuracy(decode_latents(self.h, z), self.prompts)["all"]

    def at_target(self, scores, target=TARGET):
        return plan_from_unit_scores(self.h, scores, target_sparsity=target)


@pytest.fixture(scope="module")
def bench():
    torch.manual_seed(0)
    return Bench()


@pytest.fixture(scope="module")
def baselines(bench):
    rand = [bench.evaluate(bench.at_target(random_scores(bench.h, KINDS, seed=d)))[0] for d in range(5)]
    return {"random": sum(rand) / len(rand),
            "magnitude": bench.evaluate(bench.at_target(magnitude_scores(bench.h, KINDS)))[0]}


def test_ecodiff_beats_random_magnitude_and_ldpruner(bench, baselines):
    scores = methods.get("ecodiff").score(bench.h, ecodiff.EcoDiffSettings(prompts=bench.calib, kinds=KINDS, epochs=6))
    plan = methods.to_plan(bench.h, scores, target_sparsity=TARGET)
    mse, acc = bench.evaluate(plan)
    sweep = ldpruner.sweep(bench.h, ldpruner.SweepSettings(prompts=tuple(bench.calib), n_gen=8), show_progress=False)
    ld_mse, _ = bench.evaluate(ldpruner.plan_from_scores(bench.h, sweep, target_sparsity=TARGET))
    print(f"ecodiff {mse:.4f} (acc {acc:.2f}) ldpruner {ld_mse:.4f} {baselines}")
    assert mse < baselines["random"] and mse < baselines["magnitude"] and mse < ld_mse


def test_taylor_beats_random_and_magnitude(bench, baselines):
    scores = methods.get("taylor").score(bench.h, diffpruning.TaylorSettings(prompts=bench.calib))
    mse, acc = bench.evaluate(methods.to_plan(bench.h, scores, target_sparsity=TARGET))
    print(f"taylor {mse:.4f} (acc {acc:.2f}) {baselines}")
    assert mse < baselines["random"] and mse < baselines["magnitude"]


def test_recovery_helps_a_30_percent_plan(bench):
    scores = methods.get("taylor").score(bench.h, diffpruning.TaylorSettings(prompts=bench.calib))
    plan = methods.to_plan(bench.h, scores, target_sparsity=0.3)
    before_mse, before_acc = bench.evaluate(plan)
    teach = list(train_prompts())[:32]  # the original's trajectories for 32 training prompts
    small = recover(bench.h, plan, RecoverSettings(prompts=teach, iters=200, lr=1e-4))
    after_mse, after_acc = bench.evaluate(denoiser=small)
    print(f"recovery: mse {before_mse:.4f} -> {after_mse:.4f}, acc {before_acc:.2f} -> {after_acc:.2f}")
    assert after_mse < before_mse and after_acc >= before_acc
