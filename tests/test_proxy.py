"""LD-Pruner's fast proxy: the preset's settings, plans cut with the model's own MACs, the
measured agreement asset and where users see it (the CLI; the app is in test_app.py)."""

from __future__ import annotations

import json

import pytest

from pruning import load_pipeline, methods
from pruning.errors import SettingsError
from pruning.methods import ldpruner, proxy
from pruning.methods.ldpruner import SweepSettings, plan_from_scores, sweep
from pruning.sampling import count_inputs, spec

ATTN1 = "up_blocks.2.attentions.0.transformer_blocks.0.attn1"
RES = "mid_block.resnets.0"
PROMPTS = ("a red circle at the center on a white background", "a blue square at the top left on a black background")


def test_proxy_preset_halves_steps_and_resolution_and_values_win(tiny_sd, tiny_flux):
    m = methods.get("ldpruner")
    assert m.presets == ("full", "proxy", "fast") and m.settings(preset="full") == SweepSettings() == m.settings()
    for h in (tiny_sd, tiny_flux):
        d, p = spec(h), m.settings(preset="proxy", family=h.family).resolved(h)
        assert p.proxy and p.steps == max(2, (d.steps + 1) // 2) < d.steps
        assert p.resolution == d.resolution // 2  # tiny: 32 px -> 16 px, a multiple for both families
    given = m.settings(preset="proxy", steps=3, resolution=24).resolved(tiny_sd)
    assert (given.steps, given.resolution) == (3, 24)  # values given override the preset
    one = m.settings(preset="proxy", steps=3).resolved(tiny_sd)
    assert (one.steps, one.resolution) == (3, spec(tiny_sd).resolution // 2)
    with pytest.raises(SettingsError, match="preset must be one of .*'fast'"):
        m.settings(preset="fastest")
    with pytest.raises(SettingsError, match="proxy must be true or false, got 'yes'"):
        SweepSettings(proxy="yes")
    assert "proxy" not in {f["name"] for f in methods.base.settings_fields(SweepSettings)}  # chosen by preset


def test_proxy_plans_count_macs_at_the_models_resolution(tiny_sd):
    s = methods.get("ldpruner").settings(preset="proxy", prompts=PROMPTS, n_gen=2, operators=(ATTN1, RES))
    df = sweep(tiny_sd, s, show_progress=False)
    assert df.attrs["settings"]["proxy"] is True and df.attrs["settings"]["resolution"] == 16
    native = count_inputs(tiny_sd)
    at_proxy = count_inputs(tiny_sd, 16)
    plan = plan_from_scores(tiny_sd, df, operators=[ATTN1])
    model_macs = plan.summary(tiny_sd.denoiser, **native)["macs_fraction"]
    proxy_macs = plan.summary(tiny_sd.denoiser, **at_proxy)["macs_fraction"]
    assert model_macs != pytest.approx(proxy_macs)  # attention's share depends on the resolution
    assert plan.provenance["selection"]["macs_fraction"] == pytest.approx(model_macs)
    from pruning.catalog import catalog

    macs = catalog(tiny_sd.denoiser, **native)[0].set_index("fqn")["macs"]
    assert df.set_index("fqn")["macs"].to_dict() == {f: macs[f] for f in (ATTN1, RES)}  # the table: the model's
    cut = plan_from_scores(tiny_sd, df, target_macs=model_macs / 2)
    assert cut.provenance["selection"]["macs_fraction"] >= model_macs / 2


def test_the_estimate_follows_the_proxy(tiny_sd):
    from pruning.estimate import estimate

    m = methods.get("ldpruner")
    full = estimate(tiny_sd, "ldpruner", m.settings(n_gen=2, operators=(RES,)))
    fast = estimate(tiny_sd, "ldpruner", m.settings(preset="proxy", n_gen=2, operators=(RES,)))
    assert fast.calls["denoiser calls"] * 2 == full.calls["denoiser calls"]  # tiny: 4 steps -> 2


def test_agreement_asset_is_complete_and_read_per_model():
    data = json.loads(proxy.AGREEMENT_FILE.read_text())
    assert data["format"] == proxy.FORMAT and set(data["models"]) == {"tiny-shapes-sd", "tiny-shapes-flux"}
    for name, entry in data["models"].items():
        proxy.check_entry(name, entry)
        h_ref = load_pipeline(name).model_ref
        got = ldpruner.proxy_agreement(h_ref)
        assert got == {"model": name, **entry}
        assert -1 <= entry["spearman"] <= 1 and 0 <= entry["top_k_overlap"] <= 1 and entry["time_ratio"] > 0
        assert entry["proxy"]["steps"] < entry["full"]["steps"] and entry["proxy"]["resolution"] < entry["full"]["resolution"]
        note = ldpruner.proxy_note(h_ref)
        assert f"Measured on {name}" in note and f"Spearman {entry['spearman']:.2f}" in note
    other = ldpruner.proxy_note("hub:org/other@abc")
    assert "not measured on this model" in other and all(n in other for n in data["models"])
    with pytest.raises(SettingsError, match="'tiny-shapes-sd' has no 'spearman'"):
        proxy.check_entry("tiny-shapes-sd", {k: v for k, v in data["models"]["tiny-shapes-sd"].items() if k != "spearman"})


def test_a_missing_asset_says_so(tmp_path):
    assert proxy.proxy_agreement("bundled:tiny-shapes-sd@x", tmp_path / "none.json") is None
    assert "has not been measured" in proxy.proxy_note("bundled:tiny-shapes-sd@x", tmp_path / "none.json")
    with pytest.raises(SettingsError, match="k must be in 1..3"):
        proxy.rank_agreement([1, 2, 3], [1, 2, 3], k=4)


def test_cli_proxy_sweep_prints_the_agreement(tmp_path, capsys):
    from pruning.cli import main

    out = tmp_path / "scores.csv"
    code = main(["sweep", "--model", "tiny-shapes-sd", "--preset", "proxy", "--n-gen", "2", "--steps", "2",
                 "--operators", RES, "--prompts", *PROMPTS, "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    lines = capsys.readouterr().out.splitlines()
    note = [ln for ln in lines if ln.startswith("proxy ")]
    assert len(note) == 1 and "Measured on tiny-shapes-sd" in note[0] and "Spearman" in note[0]
    settings = methods.Scores.read(out).settings
    assert settings["proxy"] is True and settings["steps"] == 2 and settings["resolution"] == 32
