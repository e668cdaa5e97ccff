"""Cost estimates: counted denoiser calls per method, advice when a run will not fit, the CLI's
--estimate that runs nothing."""

from __future__ import annotations

import pytest

from pruning import methods
from pruning.estimate import estimate, estimate_reconstruction, step_cost
from pruning.reconstruct import ReconstructSettings


def test_every_method_has_a_positive_estimate_that_grows_with_its_settings(tiny_sd):
    for name in methods.names():
        e = estimate(tiny_sd, name)
        assert e.seconds > 0 and e.peak_bytes >= step_cost(tiny_sd).weights_bytes, name
    few = estimate(tiny_sd, "ldpruner", methods.get("ldpruner").settings(n_gen=2, steps=2))
    many = estimate(tiny_sd, "ldpruner", methods.get("ldpruner").settings(n_gen=2, steps=4))
    assert many.calls["denoiser calls"] == 2 * few.calls["denoiser calls"]
    one = estimate(tiny_sd, "ldpruner", methods.get("ldpruner").settings(operators=["mid_block.resnets.0"], steps=2))
    assert one.calls["generations"] == 2  # the reference and the one operator
    e1 = estimate(tiny_sd, "ecodiff", methods.get("ecodiff").settings(epochs=1, steps=2))
    e3 = estimate(tiny_sd, "ecodiff", methods.get("ecodiff").settings(epochs=3, steps=2))
    assert e3.calls["optimizer steps"] == 3 * e1.calls["optimizer steps"] and e3.seconds > e1.seconds
    r = estimate_reconstruction(tiny_sd, ReconstructSettings(groups=2, inputs="original"))  # every structure: 2 groups
    assert r.calls["passes"] == 2 and r.seconds > 0


def test_advice_when_a_run_will_not_fit(tiny_sd, monkeypatch):
    import pruning.estimate as est

    e = estimate(tiny_sd, "taylor", budget_s=1e-6)
    assert any("budget" in a and "stride" in a for a in e.advice) and "budget" in e.text()
    monkeypatch.setattr(est, "device_memory", lambda device: 1)
    e = estimate(tiny_sd, "ecodiff")
    assert any("will not fit this device's memory" in a for a in e.advice)


def test_cli_estimate_runs_nothing(capsys, tmp_path):
    from pruning.cli import main

    out = tmp_path / "scores.csv"
    assert main(["taylor", "--model", "tiny-shapes-sd", "--estimate", "--stride", "250"]) == 0
    text = capsys.readouterr().out
    assert "Taylor importance (Diff-Pruning): " in text and "peak memory" in text and "timesteps (at most) 4" in text
    assert not out.exists()
    assert main(["taylor", "--model", "tiny-shapes-sd"]) == 2
    assert "--out is required" in capsys.readouterr().err


@pytest.mark.parametrize("bad", [["--budget", "abc"]])
def test_cli_estimate_bad_budget(capsys, bad):
    from pruning.cli import main

    assert main(["sweep", "--model", "tiny-shapes-sd", "--estimate", *bad]) == 2
    assert "budget" in capsys.readouterr().err


def test_comparison_and_export_estimates_count_their_parts(tiny_sd):
    from pruning.compare import CompareSettings
    from pruning.estimate import estimate_comparison, estimate_export, typical_plan

    s = CompareSettings(eval_prompts=["a red circle", "a blue square"], calib_prompts=["a red circle"], steps=2,
                        random_draws=2)
    one = estimate_comparison(tiny_sd, [0.2], ["magnitude", "random"], s)
    two = estimate_comparison(tiny_sd, [0.2, 0.4], ["magnitude", "random"], s)
    assert one.calls["plans"] == 3 and two.calls["plans"] == 6 and two.seconds > one.seconds
    with_taylor = estimate_comparison(tiny_sd, [0.2], ["magnitude", "random", "taylor"], s)
    assert with_taylor.seconds > one.seconds  # Taylor's scoring and its plan are added
    rebuilt = estimate_comparison(tiny_sd, [0.2], ["magnitude"], CompareSettings(
        eval_prompts=s.eval_prompts, calib_prompts=s.calib_prompts, steps=2, reconstruct=True))
    plain = estimate_comparison(tiny_sd, [0.2], ["magnitude"], s)
    r = estimate_reconstruction(tiny_sd, ReconstructSettings(inputs="original", groups=4), plan=typical_plan(tiny_sd, keep=0.8))
    assert rebuilt.seconds - plain.seconds >= r.seconds > 0  # the plan's re-fit, its calibration passes included
    assert r.calls["passes"] == 4 and r.calls["denoiser calls"] >= 4 * r.calls["passes"]
    tight = estimate_comparison(tiny_sd, [0.2, 0.4], ["taylor"], s, budget_s=1e-4)
    assert tight.chunkable and "chunks of 0.0001 s" in tight.text()
    plain, heavy = estimate_export(tiny_sd), estimate_export(tiny_sd, reconstruct=True, recover_iters=50)
    assert heavy.seconds > plain.seconds > 0 and heavy.calls["recovery iterations"] == 50
    assert "chunks" not in estimate_export(tiny_sd, recover_iters=50, budget_s=1e-4).text()


def test_cli_estimates_for_compare_export_and_recover(capsys, tmp_path):
    from pruning.cli import main

    assert main(["compare", "--model", "tiny-shapes-sd", "--methods", "magnitude", "random", "--sparsities", "0.2",
                 "--estimate", "--budget", "1e-4"]) == 0
    text = capsys.readouterr().out
    assert "Comparison: " in text and "chunks of 0.0001 s" in text and "plans 4" in text  # random: 3 draws
    assert main(["compare", "--model", "tiny-shapes-sd"]) == 2
    assert "--out is required" in capsys.readouterr().err
    assert main(["export", "--model", "tiny-shapes-sd", "--estimate", "--reconstruct"]) == 2  # no --plan
    capsys.readouterr()
    from pruning import load_pipeline
    from pruning.plan import PruningPlan

    h = load_pipeline("tiny-shapes-sd")
    plan = PruningPlan(family=h.family, base=h.model_ref, removed_operators=("mid_block.resnets.0",))
    path = tmp_path / "plan.json"
    path.write_text(plan.to_json())
    assert main(["export", "--model", "tiny-shapes-sd", "--plan", str(path), "--estimate", "--reconstruct"]) == 0
    assert "Export: " in capsys.readouterr().out and not any(tmp_path.glob("*/"))
    assert main(["recover", "--model", "tiny-shapes-sd", "--plan", str(path), "--iters", "30", "--out",
                 str(tmp_path / "rec"), "--estimate"]) == 0
    assert "recovery iterations 30" in capsys.readouterr().out and not (tmp_path / "rec").exists()
    assert main(["export", "--model", "tiny-shapes-sd", "--plan", str(path)]) == 2
    assert "--out is required" in capsys.readouterr().err


def test_working_memory_counts_new_tensors_not_the_weights_autograd_saves():
    """Bytes saved for backward count each layer's weight (already resident) and a tensor once per op
    that saves it; the estimate's working memory counts the storages a call creates, once."""
    import torch

    from pruning.estimate import LiveBytes
    from pruning.metrics import SavedTensorMeter

    layers = torch.nn.ModuleList(torch.nn.Linear(256, 256) for _ in range(3))
    x = torch.ones(2, 256, requires_grad=True)
    weights = sum(f.weight.numel() * 4 for f in layers)
    with LiveBytes() as live, SavedTensorMeter() as saved:
        ys = [f(x) for f in layers]  # x saved by three ops: one storage
        (g,) = torch.autograd.grad(sum(y.sum() for y in ys), [x])
    assert saved.peak >= weights  # the weights, counted as if the run held them again
    assert live.peak < weights / 20 and live.live == 4 * (g.numel() + sum(y.numel() for y in ys))  # all alive


def test_memory_estimates_follow_what_each_run_holds(tiny_sd):
    from pruning.methods.diffpruning import unit_params

    cost = step_cost(tiny_sd)
    weights = cost.weights_bytes
    sweep = estimate(tiny_sd, "ldpruner", methods.get("ldpruner").settings(n_gen=2, steps=2))
    eco = estimate(tiny_sd, "ecodiff", methods.get("ecodiff").settings(epochs=1, steps=2, batch_size=2,
                                                                     prompts=["a", "b"]))
    taylor = estimate(tiny_sd, "taylor", methods.get("taylor").settings(stride=500, steps=2, prompts=["a", "b"]))
    assert weights < sweep.peak_bytes < eco.peak_bytes  # no grad holds less than a backward
    assert cost.working_bytes(2) < cost.working_bytes(2, "input")
    sums = sum(p.numel() * 4 for p in unit_params(tiny_sd, ("head", "neuron", "group")).values())
    assert taylor.peak_bytes >= weights + sums + cost.working_bytes(2, "weights")  # + the float32 gradient sums


def test_taylor_counts_its_weight_sized_passes(tiny_sd):
    """Zeroing, adding into and scoring the fp32 gradient sums scale with the weights, not the calls."""
    cost = step_cost(tiny_sd)
    one, many = cost.sums_seconds(10**8, 1), cost.sums_seconds(10**8, 20)
    assert 0 < one < many and cost.sums_seconds(2 * 10**8, 1) == pytest.approx(2 * one)
    coarse = estimate(tiny_sd, "taylor", methods.get("taylor").settings(stride=500))
    fine = estimate(tiny_sd, "taylor", methods.get("taylor").settings(stride=50))
    assert fine.seconds > coarse.seconds


def test_export_memory_from_tensor_sizes(tiny_sd):
    from pruning.estimate import RUNTIME_BYTES, estimate_export, inplace_slim_bytes, streaming_export_bytes

    weights = sum(p.numel() * p.element_size() for p in tiny_sd.denoiser.parameters())
    largest = max(p.numel() * p.element_size() for p in tiny_sd.denoiser.parameters())
    copy, inplace = estimate_export(tiny_sd), estimate_export(tiny_sd, inplace=True)
    streamed = estimate_export(tiny_sd, streaming=True)
    assert copy.peak_bytes == 2 * weights
    assert inplace.peak_bytes == inplace_slim_bytes(weights, largest) == weights + 2 * largest
    assert streamed.peak_bytes == streaming_export_bytes(largest) == RUNTIME_BYTES + 3 * largest


# The in-place slim's measured peak against this prediction (a 53M-param UNet in a subprocess)
# is a check of the C2 row (python -m benchmarks C2).
