"""Conditioning channels (kind "channel") through the rest of the package: the places that assumed
the three block kinds, or that a structure's cuts live inside its own module."""

from __future__ import annotations

import pytest
import torch

from pruning.catalog import discover
from pruning.export import check_removes_something
from pruning.plan import PruningPlan

FAMILIES = ("sd", "sdxl", "flux", "sd3")


def _channels(h):
    return next(s for s in discover(h.denoiser).structures.values() if s.kind == "channel")


def _plan(h, kept, **kw):
    return PruningPlan(family=h.family, base=h.model_ref, kept_channels={_channels(h).fqn: tuple(kept)}, **kw)


def test_a_plan_that_prunes_channels_only_is_not_empty(tiny_sd3):
    plan = _plan(tiny_sd3, (0, 1))
    assert not plan.is_empty and not plan.normalized(tiny_sd3.denoiser).is_empty
    assert check_removes_something(plan, tiny_sd3).kept_channels  # exportable


@pytest.mark.parametrize("family", FAMILIES)
def test_slim_keeps_every_cut_layers_sizes_in_line_and_rediscovers_the_channels(family, request):
    from pruning.slim import slim

    h = request.getfixturevalue(f"tiny_{family}")
    small = slim(h.denoiser, _plan(h, (0, 1, 2)))
    stale = [n for n, m in small.named_modules() if isinstance(m, torch.nn.Linear)
             and (m.out_features, m.in_features) != tuple(m.weight.shape)]
    assert stale == []  # SDXL's add_embedding.linear_2 (a producer outside time_embedding) was left at 64
    assert _channels(type("H", (), {"denoiser": small})).units == 3  # a slim model's channels are found again


@pytest.mark.parametrize("family", ["sd", "flux"])
def test_early_depth_scale_ignores_the_conditioning_channels(family, request):
    """``early`` scales by depth among the blocks' structures: the first block's get 1 - early, as
    before the channels were a structure (their depth 0, outside every block, stretched the range),
    and the channels, which feed every block, are at no depth (scale 1)."""
    from pruning.methods.select import LayerBudget, _layout

    h = request.getfixturevalue(f"tiny_{family}")
    found = discover(h.denoiser).structures
    scale, _, protected = _layout(h, LayerBudget(early=0.5, protect_ends=True), list(found))
    blocks = [f for f, s in found.items() if s.kind != "channel"]
    assert min(scale[f] for f in blocks) == pytest.approx(0.5) and max(scale[f] for f in blocks) == pytest.approx(1.0)
    assert scale[_channels(h).fqn] == 1.0 and _channels(h).fqn not in protected


def test_the_select_table_builds_a_channel_plan_and_the_kept_plot_shows_it(tiny_sd):
    """The app's structures table: ticking the channel row (kept indices typed in) gives the plan,
    its totals are the summary's, and the kept-fraction plot has a bar for the channels."""
    from app_support.tables import plan_from_table, selection_table, totals, unit_kept_table
    from visual.masks import mask_sparsity_plot

    h, s = tiny_sd, _channels(tiny_sd)
    table = selection_table(h, "structures")
    row = table.index[table["fqn"] == s.fqn][0]
    group = table.index[table["kind"] == "group"][0]
    table.loc[[row, group], "prune"] = True
    table.loc[row, "kept indices"], table.loc[group, "kept indices"] = "0,2,4", "1"
    plan = plan_from_table(h, "structures", table)
    assert plan.kept_channels == {s.fqn: (0, 2, 4)} and len(plan.kept_groups) == 1
    assert totals(h, plan)["params_removed_by_kind"]["channel"] > 0
    kept = unit_kept_table(h, plan)
    assert kept.set_index("fqn").loc[s.fqn, "kept"] == pytest.approx(3 / s.units)
    names = [t.name for t in mask_sparsity_plot(kept).data]
    assert "conditioning channels" in names  # the channel row was dropped from the figure
    assert selection_table(h, "structures", plan).set_index("fqn").loc[s.fqn, "kept indices"] == "0,2,4"


def test_every_kinds_setting_names_the_channel_kind_it_offers():
    """The help the CLI and the app show for a ``kinds`` field names every kind it offers, and
    OBS-Diff's states its real default (it prunes channels by default)."""
    from dataclasses import fields

    from pruning import methods

    for name in ("magnitude", "random", "taylor", "ecodiff", "obsdiff"):
        f = next(x for x in fields(methods.get(name).Settings) if x.name == "kinds")
        assert "channel" in f.metadata["choices"] and "channel" in f.metadata["help"], name
    obs = next(x for x in fields(methods.get("obsdiff").Settings) if x.name == "kinds")
    assert "default neuron and group:" not in obs.metadata["help"] and "channel" in obs.default


def test_a_scale_shift_resnet_counts_its_time_emb_proj_once():
    """A resnet with ``time_embedding_norm="scale_shift"`` cuts its ``time_emb_proj`` rows twice per
    channel ([scale | shift]); the summary subtracted the overlap with the conditioning channels'
    columns once, so it overstated what slim removes (params and MACs)."""
    from diffusers import UNet2DConditionModel

    from pruning.metrics import count_params, total_macs
    from pruning.slim import slim
    from pruning.testing import tiny_pipeline

    config = {k: v for k, v in tiny_pipeline("sd").unet.config.items() if not k.startswith("_")}
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**{**config, "resnet_time_scale_shift": "scale_shift"})
    found = discover(unet).structures
    group = next(f for f, s in found.items() if s.kind == "group")
    assert unet.get_submodule(group).time_embedding_norm == "scale_shift"
    plan = PruningPlan(family="sd", base="tiny:sd", kept_groups={group: (0,)},
                       kept_channels={"time_embedding": (0, 1)})
    small, s = slim(unet, plan), plan.summary(unet, sample_size=8, text_len=8)
    assert count_params(small) == s["params_total"] - s["params_removed"]
    assert total_macs(small, sample_size=8, text_len=8) == s["macs_total"] - s["macs_removed"]


def test_the_apps_glossary_explains_every_structure_kind_the_model_tab_lists(tiny_flux):
    """The Model tab's "What can be pruned, by kind" lists a ``channel`` row; the glossary beside
    it says what that is."""
    from app_support.guide import glossary
    from pruning.facts import denoiser_facts

    assert "channel" in denoiser_facts(tiny_flux.denoiser, sample_size=8, text_len=8)["structures"]
    text = glossary(None)
    assert "conditioning channels" in text and "`channel`" in text


def test_a_lora_on_the_consumers_of_emptied_channels_is_dropped_not_written_with_no_inputs(tiny_flux, tmp_path):
    """With every conditioning channel pruned, each AdaLN ``linear`` reads nothing: its LoRA factors
    (``B @ A`` = 0) are dropped and reported, not written with a rank-r x 0 ``lora_A`` that our own
    reader (and ``fuse_lora`` on the pruned model) refuses."""
    from pruning.lora import read_lora, slice_lora
    from pruning.testing import tiny_pipeline
    from tests.test_lora import _make_lora

    path = _make_lora(tiny_pipeline("flux"), ["linear", "to_q"], tmp_path, 0)
    plan = _plan(tiny_flux, ())
    lora = slice_lora(tiny_flux, plan, read_lora(tiny_flux, path))
    assert all(A.shape[1] > 0 for A, _, _ in lora.layers.values())
    assert "transformer.norm_out.linear (all its inputs pruned)" in lora.dropped
    assert any(k.endswith("to_q") for k in lora.layers)  # the others stay


@pytest.mark.parametrize("family", ["sd", "flux"])
def test_a_model_exported_with_every_channel_pruned_loads_and_catalogs(family, request, tmp_path):
    """An emptied channel structure (the Select table's channel row ticked with no kept indices) is a
    legal plan; its export must load and describe itself (the catalog divided by a zero width)."""
    from pruning.catalog import catalog
    from pruning.export import export, load_pruned
    from pruning.facts import model_facts

    h = request.getfixturevalue(f"tiny_{family}")
    out = export(h, _plan(h, ()), tmp_path / "all-channels", evaluate=False, card=False)
    pruned = load_pruned(out, base=h)
    catalog(pruned.denoiser)  # a 0-unit channel structure divided by zero here
    assert not [s for s in discover(pruned.denoiser).structures.values() if s.kind == "channel"]
    assert "channel" not in model_facts(pruned)["structures"]


@pytest.mark.parametrize("kind", ["kept_heads", "kept_neurons"])
def test_a_flux_model_slimmed_with_an_emptied_single_block_structure_catalogs(tiny_flux, kind):
    """The same for the other structures that may be emptied without being an operator (a FLUX single
    block's heads or MLP): the slim model's discovery met an EmptyAttention, or a 0-wide MLP."""
    from pruning.catalog import catalog
    from pruning.slim import slim

    fqn = "single_transformer_blocks.0." + ("attn" if kind == "kept_heads" else "proj_mlp")
    small = slim(tiny_flux.denoiser, PruningPlan(family="flux", base=tiny_flux.model_ref, **{kind: {fqn: ()}}))
    catalog(small)
    found = discover(small).structures
    assert fqn not in found and "single_transformer_blocks.1.attn" in found
