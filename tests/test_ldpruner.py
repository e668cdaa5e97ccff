"""LD-Pruner: scores recomputed from raw latents, selection, stop/resume, bad input, CLI, and
the method beating random and worst-first removal on the bundled shapes models."""

from __future__ import annotations

import json
import threading

import numpy as np
import pandas as pd
import pytest
import torch

import pruning.methods.ldpruner as ldp
from pruning.catalog import catalog
from pruning.errors import PlanError, PruningError, SettingsError
from pruning.masks import masked
from pruning.methods import Scores
from pruning.methods.ldpruner import SweepSettings, plan_from_scores, sweep
from pruning.plan import PruningPlan
from pruning.runs import RunControl
from pruning.sampling import count_inputs, generate_latents

RES = "mid_block.resnets.0"
ATTN2 = "down_blocks.1.attentions.0.transformer_blocks.0.attn2"
FF = "up_blocks.1.attentions.0.transformer_blocks.0.ff"
ATTN1 = "up_blocks.2.attentions.0.transformer_blocks.0.attn1"
PROMPTS = ("a red circle at the center on a white background", "a blue square at the top left on a black background")


def small(**kw) -> SweepSettings:
    return SweepSettings(**{"prompts": PROMPTS, "n_gen": 3, "steps": 2, **kw})


def frame(df: pd.DataFrame) -> pd.DataFrame:
    return df.reset_index(drop=True).copy()  # compared without attrs


# --------------------------------------------------------------------------- scores


def test_scores_match_latents_recomputed_by_hand(tiny_sd, monkeypatch):
    ldp.clear_cache()
    calls = []
    real = ldp.generate_latents
    monkeypatch.setattr(ldp, "generate_latents", lambda *a, **k: calls.append(1) or real(*a, **k))
    s = small(operators=(RES, ATTN2, FF))
    df = sweep(tiny_sd, s, show_progress=False)
    assert len(calls) == 4  # the originals once, then one batched generation per operator
    ops = catalog(tiny_sd.denoiser)[0]
    assert list(df["fqn"]) == [f for f in ops["fqn"] if f in {RES, ATTN2, FF}]

    prompts = [PROMPTS[i % 2] for i in range(3)]
    kw = dict(steps=2, guidance=tiny_sd.defaults["guidance"], resolution=tiny_sd.defaults["resolution"])
    z0 = generate_latents(tiny_sd, prompts, [0, 1, 2], **kw).double()
    for fqn in (RES, ATTN2, FF):
        plan = PruningPlan(family="sd", base=tiny_sd.model_ref, removed_operators=(fqn,))
        with masked(tiny_sd.denoiser, plan):
            z = generate_latents(tiny_sd, prompts, [0, 1, 2], **kw).double()
        avg = torch.linalg.norm((z0.mean(0) - z.mean(0)).flatten()).item()
        std = torch.linalg.norm((z0.std(0) - z.std(0)).flatten()).item()
        row = df.set_index("fqn").loc[fqn]
        assert row["avg_dist"] == pytest.approx(avg, abs=1e-6)
        assert row["std_dist"] == pytest.approx(std, abs=1e-6)
        assert row["score"] == pytest.approx(avg + std, abs=1e-6)
        assert avg > 0 and std > 0
    assert list(df.sort_values("score")["rank"]) == [1, 2, 3]
    assert df.attrs["partial"] is False
    assert df.attrs["settings"]["seeds"] == [0, 1, 2] and df.attrs["settings"]["steps"] == 2

    calls.clear()  # same model and generation settings, another operator: originals from the cache
    sweep(tiny_sd, small(operators=(ATTN1,)), show_progress=False)
    assert len(calls) == 1


def test_table_columns_and_granularities(tiny_sd, tiny_flux):
    progress = []
    control = RunControl(progress=lambda d, t, info: progress.append((d, t, info["fqn"])))
    df = sweep(tiny_flux, small(granularity="fine"), show_progress=False, control=control)
    assert set(df["kind"]) == {"attn", "ff", "ff_context"} and len(df) == 6
    assert [p[0] for p in progress] == list(range(1, 7)) and {p[1] for p in progress} == {6}
    for col in ("operator", "fqn", "kind", "stage", "level", "block", "depth", "params", "mac_share",
                "avg_dist", "std_dist", "score", "rank"):
        assert col in df.columns, col
    assert sorted(df["rank"]) == list(range(1, 7))
    assert (df["score"] > 0).all() and np.allclose(df["score"], df["avg_dist"] + df["std_dist"])
    blocks = ldp.select_operators(tiny_flux, small(granularity="block"))
    assert set(blocks["kind"]) == {"double_block", "single_block"}
    sd_blocks = ldp.select_operators(tiny_sd, small(granularity="block"))
    assert set(sd_blocks["kind"]) == {"transformer", "resnet"}
    sd_fine = ldp.select_operators(tiny_sd, small())
    assert set(sd_fine["kind"]) == {"attn1", "attn2", "ff", "resnet"}


def test_stop_returns_partial_then_full_sweep_equals_uninterrupted(tiny_sd):
    s = small(operators=(RES, ATTN2, FF, ATTN1))
    full = sweep(tiny_sd, s, show_progress=False)
    stop = threading.Event()
    part = sweep(tiny_sd, s, show_progress=False,
                 control=RunControl(stop, progress=lambda done, total, info: done == 2 and stop.set()))
    assert part.attrs["partial"] is True and len(part) == 2
    assert list(part["fqn"]) == list(full["fqn"][:2])
    assert sorted(part["rank"]) == [1, 2] and part["score"].notna().all()
    pd.testing.assert_frame_equal(frame(part.drop(columns="rank")), frame(full.drop(columns="rank")[:2]))
    again = sweep(tiny_sd, s, show_progress=False)
    assert again.attrs["partial"] is False
    pd.testing.assert_frame_equal(frame(again), frame(full))
    resumed = sweep(tiny_sd, s, resume=part, show_progress=False)
    pd.testing.assert_frame_equal(frame(resumed), frame(full))
    stop.set()  # set before the start: nothing scored
    empty = sweep(tiny_sd, s, control=RunControl(stop), show_progress=False)
    assert empty.attrs["partial"] is True and len(empty) == 0


# --------------------------------------------------------------------------- selection


def _fake_scores(handle, granularity="all", seed=0):
    ops = ldp.select_operators(handle, small(granularity=granularity))
    rng = np.random.default_rng(seed)
    df = ops.assign(score=rng.permutation(len(ops)).astype(float))
    df.attrs["settings"] = small(granularity=granularity).resolved(handle).to_dict()
    return df


def test_plan_from_scores_greedy_to_target(tiny_sd):
    scores = _fake_scores(tiny_sd)
    plan = plan_from_scores(tiny_sd, scores, target_sparsity=0.2)
    removed = list(plan.removed_operators)
    frac = plan.summary(tiny_sd.denoiser)["params_fraction"]
    assert frac >= 0.2
    assert plan.provenance["method"] == "ldpruner" and plan.provenance["settings"]["steps"] == 2
    assert plan.provenance["selection"]["params_fraction"] == pytest.approx(frac)
    for a in removed:  # nothing nested
        assert not any(b.startswith(a + ".") for b in removed)
    # the greedy order: every removed operator scores below the first skipped-for-budget one,
    # and without the last one added the target is not met
    order = scores.sort_values("score")["fqn"].tolist()
    last = max(order.index(f) for f in removed)
    taken = [f for f in order[: last + 1] if f in removed]
    before = PruningPlan(family="sd", base="x", removed_operators=tuple(taken[:-1]))
    assert before.summary(tiny_sd.denoiser)["params_fraction"] < 0.2
    skipped = [f for f in order[:last] if f not in removed]
    assert all(any(f.startswith(r + ".") or r.startswith(f + ".") for r in removed) for f in skipped)

    macs_plan = plan_from_scores(tiny_sd, scores, target_macs=0.3)
    assert macs_plan.summary(tiny_sd.denoiser, **count_inputs(tiny_sd))["macs_fraction"] >= 0.3
    manual = plan_from_scores(tiny_sd, scores, operators=[RES, FF])
    assert manual.removed_operators == tuple(sorted([RES, FF]))
    assert manual.provenance["selection"]["mode"] == "manual"


def test_bad_input_names_the_problem(tiny_sd):
    with pytest.raises(PlanError, match="unknown operator 'mid_block.nope'"):
        sweep(tiny_sd, small(operators=("mid_block.nope",)), show_progress=False)
    with pytest.raises(PruningError, match="prompts is empty") as e:
        SweepSettings(prompts=[], n_gen=4)
    assert isinstance(e.value, ValueError)
    with pytest.raises(PruningError, match="N_gen must be at least 2"):
        SweepSettings(prompts=PROMPTS, n_gen=1)
    with pytest.raises(PruningError, match="granularity must be one of .*'coarse'"):
        SweepSettings(prompts=PROMPTS, n_gen=2, granularity="coarse")
    with pytest.raises(PruningError, match="n_gen=3 but 2 seeds"):
        SweepSettings(prompts=PROMPTS, n_gen=3, seeds=[0, 1])
    scores = _fake_scores(tiny_sd, "fine")
    for bad in (0, 1, 1.5, -0.1, float("nan"), "abc"):
        with pytest.raises(SettingsError, match=r"target_sparsity must be a fraction between 0 and 1, like 0.2"):
            plan_from_scores(tiny_sd, scores, target_sparsity=bad)
    two = scores[scores["fqn"].isin([ATTN2, ATTN1])]
    reach = PruningPlan(family="sd", base="x", removed_operators=(ATTN2, ATTN1)).summary(tiny_sd.denoiser)
    with pytest.raises(PlanError, match=f"at most {reach['params_fraction']:.4f}"):
        plan_from_scores(tiny_sd, two, target_sparsity=0.5)
    with pytest.raises(PlanError, match="unknown operator 'up_blocks.9.resnets.0'"):
        plan_from_scores(tiny_sd, scores, operators=["up_blocks.9.resnets.0"])
    with pytest.raises(SettingsError, match="exactly one of"):
        plan_from_scores(tiny_sd, scores, target_sparsity=0.2, target_macs=0.2)
    with pytest.raises(PlanError, match="unknown operator 'transformer_blocks.0.attn'"):
        plan_from_scores(tiny_sd, _fake_scores(_tiny_flux_handle(), "fine"), target_sparsity=0.1)


_FLUX = {}


def _tiny_flux_handle():
    if "h" not in _FLUX:
        from pruning.loading import handle_from_pipe
        from pruning.testing import tiny_pipeline

        _FLUX["h"] = handle_from_pipe(tiny_pipeline("flux"), model_ref="tiny:flux")
    return _FLUX["h"]


# --------------------------------------------------------------------------- CLI


def test_cli_sweep_then_prune(tmp_path, capsys):
    from pruning.cli import main
    from pruning.testing import tiny_pipeline

    folder = tmp_path / "sd"
    tiny_pipeline("sd").save_pretrained(folder, safe_serialization=True)
    out = tmp_path / "scores.csv"
    code = main(["sweep", "--model", str(folder), "--out", str(out), "--n-gen", "2", "--steps", "1",
                 "--prompts", *PROMPTS, "--granularity", "block"])
    assert code == 0, capsys.readouterr().err
    scores = Scores.read(out)
    df = scores.table
    assert len(df) == 18 and set(df["kind"]) == {"transformer", "resnet"}
    assert scores.settings["n_gen"] == 2 and scores.partial is False and scores.method == "ldpruner"
    plan_path = tmp_path / "plan.json"
    assert main(["prune", "--model", str(folder), "--scores", str(out), "--target-sparsity", "0.2",
                 "--out", str(plan_path)]) == 0
    plan = PruningPlan.from_dict(json.loads(plan_path.read_text()))
    assert plan.provenance["method"] == "ldpruner" and plan.provenance["settings"]["granularity"] == "block"
    assert plan.provenance["selection"]["params_fraction"] >= 0.2
    assert "removed" in capsys.readouterr().out
    code = main(["prune", "--model", str(folder), "--scores", str(out), "--target-sparsity", "0.99",
                 "--out", str(plan_path)])
    err = capsys.readouterr().err
    assert code == 2 and "not reachable" in err and "at most" in err
    assert main(["sweep", "--model", str(folder), "--out", str(out), "--n-gen", "1"]) == 2
    assert "N_gen must be at least 2" in capsys.readouterr().err


# --------------------------------------------------------------------------- the method works
# LD-Pruner's lowest scores beating random and highest-first removal on tiny-shapes-sd and
# tiny-shapes-flux (MSE and accuracy, 16 held-out prompts) is a check of the C1 row
# (``python -m benchmarks C1``); tests/test_method_quality.py keeps its cheap "beats random".


def test_cli_prune_from_ecodiff_mask(tmp_path, capsys):
    from pruning.catalog import discover
    from pruning.cli import main
    from pruning.loading import load_pipeline
    from pruning.methods.ecodiff import MaskState
    from pruning.testing import tiny_pipeline

    folder = tmp_path / "sd"
    tiny_pipeline("sd").save_pretrained(folder, safe_serialization=True)
    h = load_pipeline(str(folder))
    gen = torch.Generator().manual_seed(0)
    structs = discover(h.denoiser).structures
    state = MaskState(lambdas={f: torch.randn(s.units, generator=gen) for f, s in structs.items()},
                      kinds={f: s.kind for f, s in structs.items()}, history=pd.DataFrame({"loss": [0.0]}),
                      model_ref=h.model_ref, family="sd", settings={})
    mask = state.to_scores().write(tmp_path / "mask.safetensors")
    out = tmp_path / "plan.json"
    assert main(["prune", "--model", str(folder), "--mask", str(mask), "--target-sparsity", "0.3",
                 "--out", str(out)]) == 0, capsys.readouterr().err
    plan = PruningPlan.from_json(out.read_text())
    assert plan.provenance["method"] == "ecodiff"
    assert plan.summary(h.denoiser)["params_fraction"] == pytest.approx(0.3, abs=0.01)
    assert main(["prune", "--model", str(folder), "--mask", str(mask), "--target-macs", "0.3",
                 "--out", str(out)]) == 2
    assert "cut them with --target-sparsity" in capsys.readouterr().err
