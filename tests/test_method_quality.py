"""The methods work, cheaply: on the bundled tiny-shapes-sd at 20% params removed, every registered
method's plan keeps the final latents of 8 held-out prompts closer to the original's than random
plans of the same rule do (mean of 3); the per-layer cap never empties a layer; the authors' Taylor
preset prunes every layer alike.

The thorough versions (32 prompts, MSE *and* task accuracy; EcoDiff against magnitude and
LD-Pruner; recovery of a 30% plan; LD-Pruner against highest-first removal on two models) are
the C1 row: ``python -m benchmarks C1`` (``benchmarks/checks.py``)."""

from __future__ import annotations

import pytest
import torch

from pruning import methods
from pruning.catalog import UNIT_KINDS, discover
from pruning.compare import CompareSettings, method_settings
from pruning.export import build
from pruning.methods.baselines import magnitude_scores
from pruning.methods.select import DEFAULT_MAX_FRACTION, LayerBudget, plan_from_unit_scores
from pruning.prompts import calibration_prompts
from pruning.quality import latent_mse
from pruning.sampling import generate_latents
from pruning.tiny import heldout_prompts

KINDS = ("head", "neuron", "group")
TARGET = 0.2
N_EVAL = 8
CALIB_STEPS = 5  # the methods score on 5-step trajectories (the evaluation samples the model's 10)
CHEAP = {"ldpruner": {"n_gen": 2}, "obsdiff": {"probe_prompts": 4}}  # OBS-Diff: its measured allocation, cheaper probes


class Bench:
    """The bundled model (read only), held-out evaluation prompts and the original's latents."""

    def __init__(self, h, n: int = N_EVAL):
        self.h = h
        self.prompts = list(heldout_prompts())[:n]
        self.seeds = list(range(n))
        self.ref = generate_latents(h, self.prompts, self.seeds)

    def mse(self, plan) -> float:
        """Latent MSE of the plan built as exported (an OBS-Diff plan with its compensated weights)."""
        return latent_mse(generate_latents(self.h, self.prompts, self.seeds, denoiser=build(self.h, plan)), self.ref)


@pytest.fixture(scope="module")
def bench(shapes_sd):
    """The session's bundled model: scoring must leave its weights as they were."""
    before = {k: v.clone() for k, v in shapes_sd.denoiser.state_dict().items()}
    yield Bench(shapes_sd)
    after = shapes_sd.denoiser.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())


@pytest.fixture(scope="module")
def random_mse(bench):
    """Random plans under the default rule (mean of 3 seeds)."""
    rand = methods.get("random")
    mses = [bench.mse(methods.to_plan(bench.h, rand.score(bench.h, rand.settings(seed=d)), target_sparsity=TARGET))
            for d in range(3)]
    return sum(mses) / len(mses)


@pytest.mark.parametrize("name", [n for n in methods.names() if n != "random"])
def test_every_method_beats_random_at_20_percent(bench, random_mse, name):
    """Plain plans at 20% params removed, the default selection rule, the comparison's calibration
    prompts; cheap settings (5 calibration steps: about 3x below random here, 2-25x)."""
    method = methods.get(name)
    calib = tuple(calibration_prompts(bench.h.model_ref, 8))  # spread over the captions, as compare_methods
    s = method_settings(method, CompareSettings(steps=CALIB_STEPS, method_settings={name: CHEAP.get(name, {})}), calib)
    mse = bench.mse(methods.to_plan(bench.h, method.score(bench.h, s), target_sparsity=TARGET))
    print(f"{name}: {mse:.4f}, random {random_mse:.4f}")
    assert mse < random_mse


def _removed_share(h, plan) -> dict[str, float]:
    found = discover(h.denoiser).structures
    kept = {f: k for kind in UNIT_KINDS for f, k in plan.kept(kind).items()}
    gone = {f: 1.0 for f in found if any(f == op or f.startswith(op + ".") for op in plan.removed_operators)}
    return {**{f: 1 - len(k) / found[f].units for f, k in kept.items()}, **gone}  # an emptied one: removed


def test_the_cap_never_empties_a_layer(shapes_sd):
    """Raw magnitude scores at 30%, uncapped, nearly empty some FFNs (the collapse of issue 22);
    the default cap keeps at least a quarter of every structure's units."""
    h = shapes_sd
    scores = magnitude_scores(h, KINDS)
    uncapped = _removed_share(h, plan_from_unit_scores(h, scores, target_sparsity=0.3,
                                                        budget=LayerBudget(max_fraction=1.0)))
    assert max(uncapped.values()) > 0.95
    capped = _removed_share(h, plan_from_unit_scores(h, scores, target_sparsity=0.3))
    assert max(capped.values()) <= DEFAULT_MAX_FRACTION
    protected = plan_from_unit_scores(h, scores, target_sparsity=0.2, budget=LayerBudget(protect_ends=True))
    ends = [f for f in discover(h.denoiser).structures if f.startswith(("down_blocks.0.", "up_blocks.1."))]
    assert ends and not any(f in _removed_share(h, protected) for f in ends)


def test_the_authors_taylor_preset_prunes_every_layer_alike(shapes_sd):
    from pruning.tiny import train_prompts

    s = methods.get("diffpruning").settings(preset="authors", prompts=list(train_prompts())[:2], stride=250)
    assert s.scope == "local"
    scores = methods.get("diffpruning").score(shapes_sd, s)
    shares = _removed_share(shapes_sd, methods.to_plan(shapes_sd, scores, target_sparsity=0.2))
    neurons = [v for f, v in shares.items() if f.endswith(".ff")]
    assert len(neurons) == 7 and max(neurons) - min(neurons) < 0.02
