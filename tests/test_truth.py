"""Issue 23, library side: the same plan gives the same figures everywhere, curves say which
settings they ran with, near-ties are called ties, and the words on screen are honest."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from pruning import labels, ties
from pruning.compare import (
    OWN_PLAN,
    CompareSettings,
    compare_methods,
    computed_on,
    evaluate_plan,
    evaluation_set,
)
from pruning.errors import PlanError, SettingsError
from pruning.methods import Scores, get
from pruning.plan import describe, mark_edited
from pruning.quality import evaluate
from pruning.slim import slim

PROMPTS = ["a red circle at the top left on a white background", "a blue square at the center on a black background"]


def _settings(**kw):
    return CompareSettings(eval_prompts=PROMPTS, calib_prompts=PROMPTS[:1], steps=2, random_draws=1,
                           fewer_steps=False, **kw)


@pytest.fixture(scope="module")
def magnitude_plan(tiny_sd):
    m = get("magnitude")
    return m.to_plan(tiny_sd, m.score(tiny_sd), target_sparsity=0.2)


FIGURES = ["params", "macs", "params_fraction", "latent_mse", "latent_mse_se", "psnr", "ssim"]


# --------------------------------------------------------------------------- item 1: one truth


def test_own_plan_point_equals_a_direct_evaluation(tiny_sd, magnitude_plan, monkeypatch):
    """The comparison's point for the visitor's plan is the plan evaluated alone on the same prompts
    and seeds (evaluate_plan, what Select shows), and a direct evaluation of the slim model."""
    mine = mark_edited(magnitude_plan.__class__(family=magnitude_plan.family, base=magnitude_plan.base,
                                                removed_operators=magnitude_plan.removed_operators,
                                                kept_neurons=dict(list(magnitude_plan.kept_neurons.items())[:1])),
                       magnitude_plan)
    s = _settings(own_plan=mine)
    df = compare_methods(tiny_sd, [0.2], ["magnitude"], settings=s)
    own = df[df["method"] == OWN_PLAN].iloc[0]
    assert own["label"] == "Weight magnitude 20%, edited by hand" == describe(mine)
    assert own["sparsity"] == round(own["params_fraction"], 4) < 0.2  # edited: what it removes, not the target
    assert df.attrs["model"] == "tiny-sd, float32" or df.attrs["model"].endswith(", float32")
    alone = evaluate_plan(tiny_sd, mine, s)
    for k in FIGURES:
        assert own[k] == pytest.approx(alone[k], rel=0, abs=0), k
    prompts, seeds = evaluation_set(tiny_sd, s)
    ref = evaluate(tiny_sd, prompts, seeds, steps=2)
    direct = evaluate(tiny_sd, prompts, seeds, denoiser=slim(tiny_sd.denoiser, mine), reference=ref, steps=2)
    assert own["latent_mse"] == pytest.approx(direct["latent_mse"], rel=1e-9)
    assert own["psnr"] == pytest.approx(direct["psnr"], rel=1e-9)
    assert alone["computed_on"] == df.attrs["computed_on"] == computed_on(tiny_sd, s)
    assert "2 prompts x 1 seed each" in df.attrs["computed_on"] and "2 steps" in df.attrs["computed_on"]


def test_visitor_scores_are_reused_and_labelled(tiny_sd, monkeypatch):
    m = get("magnitude")
    mine = m.score(tiny_sd, m.settings(kinds=("neuron",)))
    monkeypatch.setattr(type(m), "score", lambda *a, **k: pytest.fail("the visitor's scores were re-scored"))
    df = compare_methods(tiny_sd, [0.1], ["magnitude"], settings=_settings(method_scores={"magnitude": mine}))
    row = df[df["method"] == "magnitude"].iloc[0]
    assert row["label"] == "Weight magnitude (defaults, kinds neuron; your scores)"
    assert df.attrs["labels"]["magnitude"] == row["label"] and df.attrs["reused_scores"] == ["magnitude"]
    assert df[df["method"] == "original"].iloc[0]["label"] == "original (2 steps)"


def test_visitor_settings_are_used_and_named(tiny_sd):
    s = _settings(method_settings={"magnitude": {"kinds": ["head"]}})
    df = compare_methods(tiny_sd, [0.1], ["magnitude", "random"], settings=s)
    labels_ = dict(zip(df["method"], df["label"]))
    assert labels_["magnitude"] == "Weight magnitude (defaults, kinds head)"
    assert labels_["random"] == "Random (mean of 1 draw)"


def test_scores_of_another_model_or_method_are_refused(tiny_sd):
    m = get("magnitude")
    x = m.score(tiny_sd)
    other = Scores(x.method, x.level, x.table, "tiny:other@abc", x.settings)
    with pytest.raises(PlanError, match="tiny:other@abc"):
        compare_methods(tiny_sd, [0.1], ["magnitude"], settings=_settings(method_scores={"magnitude": other}))
    with pytest.raises(SettingsError, match="are magnitude scores, not random scores"):
        _settings(method_scores={"random": x})
    assert CompareSettings(method_scores={"magnitude": x.to_dict()}).method_scores["magnitude"].method == "magnitude"


def test_settings_labels():
    assert labels.settings_label("ecodiff", {"beta": 0.5, "regularizer": "l1", "reg_norm": "layer",
                                             "masking_eps": 0.5, "epochs": 3}) == "EcoDiff (authors' configs, 3 epochs)"
    assert labels.settings_label("ecodiff", {}) == "EcoDiff (defaults)"
    assert labels.settings_label("ecodiff", {"prompts": ["x"], "steps": 3}) == "EcoDiff (defaults)"  # shared: said once
    assert labels.settings_label("ldpruner", {"proxy": True}) == "LD-Pruner (proxy preset)"


# --------------------------------------------------------------------------- item 2: near-ties


def _unit_scores(values, method="magnitude"):
    return Scores(method, "unit", pd.DataFrame({"fqn": ["a"] * len(values), "index": range(len(values)),
                                                "score": values}), "tiny:sd", {})


def test_near_ties_are_found_and_named():
    rng = np.random.default_rng(0)
    flat = 1.0 + rng.normal(0, 1e-6, 200)
    t = ties.check_ties(_unit_scores(flat), target_sparsity=0.2)
    assert t.tied and t.flat and t.message == ties.MESSAGE and "scale" in t.reason
    assert t.digits >= 6  # enough digits to tell them apart
    around = np.sort(flat)[20:60]
    assert len({f"{x:.{t.digits}g}" for x in np.unique(around)}) == len(np.unique(around))
    spread = rng.uniform(0, 3, 200)
    assert not ties.check_ties(_unit_scores(spread), target_sparsity=0.2).tied


def test_ecodiff_logits_below_its_floor_are_ties():
    """EcoDiff's scores are gate logits: differences of 1e-4 around a cut are one gate."""
    vals = np.concatenate([np.linspace(-1e-4, 1e-4, 100), [0.09]])
    assert ties.check_ties(_unit_scores(vals, "ecodiff"), target_sparsity=0.2).tied
    assert not ties.check_ties(_unit_scores(vals, "magnitude"), target_sparsity=0.2, rtol=0).tied


def test_table_precision_collisions_are_ties():
    vals = [0.9999, 1.0, 1.00001, 1.00002, 1.00003, 1.00004, 2.0, 3.0]
    t = ties.check_ties(vals, target_sparsity=0.4, rtol=0, atol=0)
    assert t.tied and "look equal at 4 digits" in t.reason and t.digits == 6


def test_magnitude_scores_of_a_trained_model_are_not_ties(shapes_sd):
    m = get("magnitude")
    x = m.score(shapes_sd)
    for target in (0.1, 0.2, 0.5):
        assert not ties.check_ties(x, target_sparsity=target).tied


def test_ecodiff_scores_are_the_gate_logit(tiny_sd):
    """What EcoDiff ranks by is lambda itself (not sigmoid(lambda), which saturates at 1)."""
    from pruning.methods.ecodiff import EcoDiffSettings, optimize

    st = optimize(tiny_sd, EcoDiffSettings(prompts=PROMPTS, steps=2, epochs=1, batch_size=2))
    x = st.to_scores()
    f = next(iter(st.lambdas))
    assert x.unit_scores()[f].tolist() == pytest.approx(st.lambdas[f].tolist())
    assert float(x.table["score"].max()) > 1.0  # a logit (init 3), not a probability


# --------------------------------------------------------------------------- items 4, 6, 10: words


def test_plan_provenance_in_words(magnitude_plan):
    assert describe(magnitude_plan) == "Weight magnitude 20%"
    edited = mark_edited(magnitude_plan.__class__(family="sd", base=magnitude_plan.base), magnitude_plan)
    assert edited.provenance["method"] == "magnitude" and edited.provenance["edited_by_hand"] is True
    assert edited.provenance["target_sparsity"] == 0.2
    assert describe(mark_edited(magnitude_plan, magnitude_plan)) == "Weight magnitude 20%"  # unchanged: not edited
    assert describe(mark_edited(magnitude_plan, {"method": "manual"})) == "chosen by hand"


def test_model_name_has_no_hash(tiny_sd):
    from types import SimpleNamespace

    h = SimpleNamespace(source="tiny-shapes-sd", dtype=torch.float32, model_ref="bundled:tiny-shapes-sd@198809365b02")
    assert labels.model_name(h) == "tiny-shapes-sd, float32"
    assert "19880936" in labels.model_tooltip(h) and "19880936" not in labels.model_name(h)
    local = SimpleNamespace(source="/srv/upload/tmp123/my-model", dtype=torch.float16,
                            model_ref="local:/srv/upload/tmp123/my-model@abcdef123456")
    assert labels.model_name(local) == "my-model, float16"
    assert "/srv" not in labels.model_tooltip(local)


def test_intervals_and_latency_do_not_overclaim():
    assert labels.interval_text(0.0, 0.0, 0.0, n=4) == "0.0% (an interval needs >= 10 prompts, got 4)"
    assert "[" in labels.interval_text(0.5, 0.4, 0.6, n=64)
    assert labels.latency_change([0.01] * 2, [0.009] * 2) is None  # too few timings: no latency at all
    noisy = labels.latency_change([1.0, 1.05, 0.95, 1.1], [1.02, 0.93, 1.07, 0.98])
    assert not noisy["significant"] and noisy["text"].startswith("no measurable change")
    assert labels.psnr_text(100.0) == "identical"


# --------------------------------------------------------------------------- items 3, 4: the export's card


def test_install_line_is_never_a_server_path(monkeypatch):
    from pruning import card

    monkeypatch.delenv("PRUNING_INSTALL", raising=False)
    monkeypatch.delenv("SPACE_ID", raising=False)
    line = card.install_line()
    assert line.startswith("pip install") and str(card.Path(card.__file__).resolve().parent.parent) not in line
    assert "/work" not in line and "/tmp" not in line
    monkeypatch.setenv("SPACE_ID", "someone/pruning-demo")
    assert card.install_line() == 'pip install "pruning @ git+https://huggingface.co/spaces/someone/pruning-demo"'
    monkeypatch.setenv("SPACE_ID", "../../etc")  # not a Space id: not used
    assert card.install_line() in (card.PUBLISHED_INSTALL, card._installed_from())
    monkeypatch.setenv("PRUNING_INSTALL", "pip install my-pruning==1.0")
    assert card.install_line() == "pip install my-pruning==1.0"


def test_install_line_from_a_remote_install(monkeypatch):
    from pruning import card

    class Dist:
        def __init__(self, text):
            self.text = text

        def read_text(self, name):
            return self.text

    import importlib.metadata as md

    cases = {'{"url": "https://github.com/o/pruning", "vcs_info": {"vcs": "git", "commit_id": "0123abc"}}':
             'pip install "pruning @ git+https://github.com/o/pruning@0123abc"',
             '{"url": "file:///srv/checkout", "dir_info": {"editable": true}}': None,
             '{"url": "https://user:token@github.com/o/pruning", "vcs_info": {"vcs": "git"}}': None}
    for text, want in cases.items():
        monkeypatch.setattr(md, "distribution", lambda name, t=text: Dist(t))
        assert card._installed_from() == want


def test_card_names_the_method_and_edit_and_shows_quality_rows(shapes_sd, tmp_path):
    from pruning.card import CARD, front_matter, quality_rows, quality_table
    from pruning.export import export
    from pruning.manifest import MANIFEST

    m = get("magnitude")
    base = m.to_plan(shapes_sd, m.score(shapes_sd), target_sparsity=0.2)
    edited = mark_edited(base.__class__(family="sd", base=base.base, removed_operators=("mid_block.resnets.0",),
                                        provenance={"created_at": "x"}), base)
    out = export(shapes_sd, edited, tmp_path / "pruned-model")
    text = (out / CARD).read_text()
    tags = front_matter(text)["tags"]
    assert "pruning-magnitude" in tags and "hand-edited" in tags and "pruning-manual" not in tags
    assert "Method: **Weight magnitude 20%, edited by hand**" in text
    assert "1 operator removed: `mid_block.resnets.0`." in text
    import json

    c = json.loads((out / MANIFEST).read_text())["card"]
    assert c["method"] == "magnitude" and c["method_text"] == "Weight magnitude 20%, edited by hand"
    rows = quality_rows(c["quality"])
    assert [r["figure"] for r in rows][:2] == ["latent MSE (lower is better)", "SSIM (higher is better)"]
    assert rows[2]["figure"].startswith("shapes task accuracy")
    assert list(quality_table(c["quality"]).columns) == ["figure", "original", "pruned", "meaning"]
    for r in rows:
        assert f"| {r['figure']} | {r['original']} | {r['pruned']} |" in text
    assert quality_rows(None) == []


# --------------------------------------------------------------------------- item 9: plain words


def test_sparsity_errors_say_what_a_target_is():
    from pruning.compare import check_sparsities
    from pruning.validate import fraction

    with pytest.raises(SettingsError, match=r"^target sparsities are fractions between 0 and 1, like 0.2 .*"
                                            r"sparsities\[0\] is 150% \(write 20% as 0.2\)$"):
        check_sparsities(["150%"])
    with pytest.raises(SettingsError, match=r"sparsities\[1\] is 5 \(write 5% as 0.05\)$"):  # 5%, typed as 5?
        check_sparsities([0.1, 5.0])
    with pytest.raises(SettingsError, match=r"sparsities\[0\] is 150$"):  # no percentage either
        check_sparsities([150])
    with pytest.raises(SettingsError, match="^target sparsity must be a fraction between 0 and 1, like 0.2, got '0.9x'$"):
        fraction("target sparsity", 0.9) and fraction("target sparsity", "0.9x")


def test_a_file_that_is_no_lora_is_explained_by_its_base_name(tiny_sd, tmp_path):
    from safetensors.torch import save_file

    from pruning.lora import read_lora

    folder = tmp_path / "gradio-upload-1234"
    folder.mkdir()
    path = folder / "not-a-lora.safetensors"
    save_file({"embeddings.position_embedding.weight": torch.zeros(4, 4)}, str(path))
    with pytest.raises(SettingsError) as e:
        read_lora(tiny_sd, path)
    msg = str(e.value)
    assert "'not-a-lora.safetensors' is not a LoRA" in msg and "'embeddings.position_embedding.weight'" in msg
    assert "low-rank" in msg and str(tmp_path) not in msg and "gradio-upload" not in msg
    with pytest.raises(SettingsError) as e:
        read_lora(tiny_sd, folder / "x.bin")
    assert "'x.bin'" in str(e.value) and str(folder) not in str(e.value)


def test_a_comparison_with_the_visitors_plan_and_scores_resumes(tiny_sd, magnitude_plan, tmp_path):
    """The own plan and the reused scores are part of a chunked comparison's state (saved and checked)."""
    from pruning.chunks import Budget, compare_chunked
    from pruning.compare import compare_chunk
    from pruning.runs import RunControl, RunState

    m = get("magnitude")
    s = _settings(own_plan=magnitude_plan, method_scores={"magnitude": m.score(tiny_sd)})
    whole = compare_methods(tiny_sd, [0.1], ["magnitude"], settings=s)
    assert list(whole["method"]) == ["original", OWN_PLAN, "magnitude"]
    df, state = compare_chunk(tiny_sd, [0.1], ["magnitude"], settings=s, control=RunControl(chunk=Budget(units=2)))
    assert df.attrs["partial"] and list(df["method"]) == ["original", OWN_PLAN]
    state = RunState.load(state.save(tmp_path / "cmp.safetensors"))
    rest = compare_chunked(tiny_sd, [0.1], ["magnitude"], settings=s, state=state)
    pd.testing.assert_frame_equal(rest.result, whole, check_exact=True)
    other = _settings(own_plan=magnitude_plan)  # not the same comparison: refused
    with pytest.raises(SettingsError, match="made with other settings"):
        compare_chunked(tiny_sd, [0.1], ["magnitude"], settings=other, state=state)


@pytest.mark.slow
def test_ecodiff_authors_preset_on_the_shapes_model_is_called_a_tie(shapes_sd):
    """The authors' preset (L1 on the logits) leaves every gate logit at about the same value on
    tiny-shapes-sd (measured: the 149 scores around a 20% cut span 7e-4 with 4 epochs); our preset
    spreads them (-0.9..6.3) and is not called a tie."""
    m = get("ecodiff")
    authors = m.score(shapes_sd, m.settings(preset="authors", family=shapes_sd.family))
    ours = m.score(shapes_sd, m.settings(preset="ours", family=shapes_sd.family))
    for target in (0.1, 0.2, 0.3):
        t = ties.check_ties(authors, target_sparsity=target)
        assert t.tied and t.message == ties.MESSAGE, target
        assert not ties.check_ties(ours, target_sparsity=target).tied, target


def test_comparison_progress_is_one_monotone_count_with_the_phase_named(tiny_sd, magnitude_plan):
    """Item 8's library side: a method's own progress (EcoDiff's optimizer steps) stays inside the
    comparison's count instead of replacing it ("6/9" then "2/4")."""
    from pruning.runs import RunControl

    reports = []
    control = RunControl(progress=lambda d, t, info: reports.append((d, t, dict(info))))
    s = _settings(own_plan=magnitude_plan, method_settings={"ecodiff": {"epochs": 2, "batch_size": 1}})
    compare_methods(tiny_sd, [0.1, 0.2], ["ecodiff", "magnitude"], settings=s, control=control)
    done = [d for d, _, _ in reports]
    fraction = [i["fraction"] for _, _, i in reports]
    assert done == sorted(done) and fraction == sorted(fraction) and fraction[-1] == 1.0
    assert len({t for _, t, _ in reports}) == 1 and done[-1] == reports[0][1]  # one count, finished
    inner = [i for _, _, i in reports if "inner" in i]
    assert inner and all(i["phase"].startswith("scoring with EcoDiff") for i in inner)
    phases = [i["phase"] for _, _, i in reports]
    assert any(p.startswith("evaluating your plan") for p in phases)
    assert "Weight magnitude (defaults) at 20% evaluated" in phases
