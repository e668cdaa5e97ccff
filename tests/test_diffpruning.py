"""Diff-Pruning: the threshold rule, Taylor importance by hand, recovery, the comparison table."""

from __future__ import annotations

import copy
import threading

import pytest
import torch

from pruning import PruningPlan, RecoverSettings, methods, recover
from pruning.catalog import discover
from pruning.errors import PruningError, SettingsError
from pruning.methods import Scores
from pruning.methods.diffpruning import (
    DiffPruningSettings,
    ThresholdRule,
    _clean_latents,
    _loss_at,
    importance,
    timesteps_used,
)
from pruning.runs import RunControl


def to_plan(handle, df, **kw):
    scores = Scores("diffpruning", "unit", df.rename(columns={"importance": "score"}), df.attrs["model_ref"],
                    df.attrs["settings"])
    return methods.to_plan(handle, scores, **kw)


def test_threshold_rule_on_hand_built_losses():
    # L_max rises to 10 at the second step; 0.4 < 0.05 * 10 stops the run at index 4 (included)
    losses = [6.0, 10.0, 3.0, 0.6, 0.4, 0.1, 20.0]
    assert timesteps_used(losses, thr=0.05) == [0, 1, 2, 3, 4]
    assert timesteps_used(losses, thr=0.0) == list(range(7))  # thr 0: never stops early
    assert timesteps_used([1.0, 0.9, 0.5, 0.2], thr=0.5) == [0, 1, 2, 3]
    rule = ThresholdRule(0.5)
    assert [rule.keep_going(x) for x in (2.0, 1.5, 0.9)] == [True, True, False]
    with pytest.raises(PruningError, match="threshold thr must be a finite number in \\[0, 1\\), got 1.5"):
        ThresholdRule(1.5)


ROW_PROJECTIONS = ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj")  # SD3's context ones too


@pytest.mark.parametrize("family, fqn", [("sd", None), ("sd3", "transformer_blocks.0.attn")],
                         ids=["sd-first-head-structure", "sd3-joint-heads"])
def test_importance_equals_hand_computed_taylor(request, family, fqn):
    """Per head: sum |w * grad| over its rows of the q/k/v projections (+ biases; SD3's joint
    attention adds its context stream's add_q/k/v_proj) and its columns of to_out (SD3: and to_add_out)."""
    handle = request.getfixturevalue(f"tiny_{family}")
    settings = DiffPruningSettings(prompts=["a red circle", "a blue square"], steps=2, stride=1000, kinds=("head",))
    df = importance(handle, settings)
    assert df.attrs["timesteps"] == [0]  # stride 1000: only t = 0
    found = discover(handle.denoiser).structures
    fqn = fqn or next(f for f, s in found.items() if s.kind == "head")
    s = found[fqn]

    # by hand: the same loss on a copy of the model, .backward(), then |w * grad| per head
    model = copy.deepcopy(handle.denoiser)
    twin = copy.copy(handle)
    twin.denoiser = model
    x0, cond = _clean_latents(handle, settings)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(settings.noise_seed))
    _loss_at(twin, x0, noise, cond, 0).backward()
    attn = model.get_submodule(fqn)
    rows_of = [lin for lin in (getattr(attn, n, None) for n in ROW_PROJECTIONS) if lin is not None]
    columns_of = [lin for lin in (attn.to_out[0], getattr(attn, "to_add_out", None)) if lin is not None]
    hd = s.unit_size
    for h in range(s.units):
        rows = slice(h * hd, (h + 1) * hd)
        want = sum((lin.weight[rows] * lin.weight.grad[rows]).abs().sum() for lin in rows_of)
        want = want + sum((lin.bias[rows] * lin.bias.grad[rows]).abs().sum() for lin in rows_of if lin.bias is not None)
        want = want + sum((lin.weight[:, rows] * lin.weight.grad[:, rows]).abs().sum() for lin in columns_of)
        got = df[(df["fqn"] == fqn) & (df["index"] == h)]["importance"].item()
        assert got == pytest.approx(want.item(), rel=1e-4)
    assert all(p.grad is None for p in handle.denoiser.parameters())  # the model got no gradients


def test_importance_table_and_plan(tiny_handle):
    df = importance(tiny_handle, DiffPruningSettings(prompts=["a red circle", "a blue square"], steps=2, stride=250))
    found = discover(tiny_handle.denoiser).structures
    assert len(df) == sum(s.units for s in found.values() if s.kind != "channel")  # its default kinds
    assert (df["importance"] >= 0).all() and df["importance"].sum() > 0
    assert 1 <= len(df.attrs["timesteps"]) <= 4 and len(df.attrs["losses"]) == len(df.attrs["timesteps"])
    plan = to_plan(tiny_handle, df, target_sparsity=0.2)
    assert abs(plan.summary(tiny_handle.denoiser)["params_fraction"] - 0.2) <= 0.01
    assert plan.provenance["method"] == "diffpruning"


def test_importance_stop_and_bad_input(tiny_sd):
    stop = threading.Event()
    df = importance(tiny_sd, DiffPruningSettings(prompts=["a red circle"], steps=2, stride=100, thr=0.0),
                    control=RunControl(stop, progress=lambda done, total, info: stop.set()))
    assert df.attrs["partial"] and df.attrs["timesteps"] == [0] and df.attrs["stopped"] == "stopped"
    with pytest.raises(SettingsError, match="timestep stride must be an integer in 1..1000, got 0"):
        DiffPruningSettings(prompts=["a"], stride=0)
    with pytest.raises(SettingsError, match="'rows'"):
        DiffPruningSettings(prompts=["a"], kinds=("rows",))
    with pytest.raises(SettingsError, match="thr must be a finite number"):
        DiffPruningSettings(prompts=["a"], thr=float("nan"))


def test_importance_from_user_images(tiny_sd, tmp_path):
    from PIL import Image

    for i, color in enumerate([(255, 0, 0), (0, 0, 255)]):
        Image.new("RGB", (32, 32), color).save(tmp_path / f"{i}.png")
    df = importance(tiny_sd, DiffPruningSettings(images=str(tmp_path), stride=500, kinds=("neuron",)))
    assert set(df["kind"]) == {"neuron"} and df["importance"].sum() > 0
    with pytest.raises(PruningError, match="no PNG/JPEG images"):
        importance(tiny_sd, DiffPruningSettings(images=str(tmp_path / "empty")))


def test_recover_trains_only_the_copy(tiny_sd):
    fqn = next(f for f, s in discover(tiny_sd.denoiser).structures.items() if s.kind == "neuron")
    plan = PruningPlan(family="sd", base=tiny_sd.model_ref, kept_neurons={fqn: [0, 1]})
    before = {k: v.clone() for k, v in tiny_sd.denoiser.state_dict().items()}
    small = recover(tiny_sd, plan, RecoverSettings(prompts=["a red circle", "a blue square"], steps=2, iters=20,
                                                   lr=1e-3))
    assert small.recovery["iters"] == 20 and not small.recovery["partial"]
    assert all(torch.equal(before[k], v) for k, v in tiny_sd.denoiser.state_dict().items())
    losses = small.recovery["losses"]
    assert sum(losses[-5:]) < sum(losses[:5])  # distillation makes progress
    assert all(p.grad is None for p in small.parameters())


def test_cli_taylor_then_prune(tiny_sd, tmp_path):
    import json

    from pruning.cli import main

    folder = tmp_path / "model"
    tiny_sd.pipe.save_pretrained(folder, safe_serialization=True)
    table, plan = tmp_path / "taylor.csv", tmp_path / "plan.json"
    assert main(["taylor", "--model", str(folder), "--prompt", "a red circle", "--prompt", "a blue square",
                 "--steps", "2", "--stride", "500", "--out", str(table)]) == 0
    assert main(["prune", "--model", str(folder), "--taylor", str(table), "--target-sparsity", "0.2",
                 "--out", str(plan)]) == 0
    assert json.loads(plan.read_text())["provenance"]["method"] == "diffpruning"  # the older command, the one name
    assert main(["prune", "--model", str(folder), "--taylor", str(plan), "--target-sparsity", "0.2",
                 "--out", str(tmp_path / "x.json")]) == 2  # not a scores file: a clean error
