"""PruningPlan: JSON round trip, validation errors that name the culprit, normalization, summary."""

from __future__ import annotations

import json

import pytest

from pruning import PruningPlan
from pruning.catalog import discover
from pruning.errors import PlanError
from tests.plans import random_plan


def _first(handle, kind):
    return next(f for f, s in discover(handle.denoiser).structures.items() if s.kind == kind)


def test_json_round_trip(tiny_handle):
    plan = random_plan(tiny_handle, 7).with_provenance(method="manual", settings={"target": 0.2})
    again = PruningPlan.from_json(plan.to_json())
    assert again == plan
    assert json.loads(plan.to_json())["schema_version"] == 1
    assert again.provenance["method"] == "manual" and "created_at" in again.provenance


def test_plan_is_frozen():
    plan = PruningPlan(family="sd", base="x", kept_heads={"a": [0]})
    with pytest.raises(AttributeError):
        plan.family = "flux"
    with pytest.raises(TypeError):
        plan.kept_heads["a"] = (1,)


@pytest.mark.parametrize("bad, culprit", [
    ({"removed_operators": ["down_blocks.9.resnets.0"]}, "down_blocks.9.resnets.0"),
    ({"kept_heads": {"mid_block.nope": [0]}}, "mid_block.nope"),
])
def test_unknown_fqn_is_named(tiny_sd, bad, culprit):
    plan = PruningPlan(family="sd", base="x", **bad)
    with pytest.raises(PlanError, match=culprit.replace(".", r"\.")):
        plan.validate(tiny_sd.denoiser)


def test_index_out_of_range_is_named(tiny_sd):
    fqn = _first(tiny_sd, "head")
    units = discover(tiny_sd.denoiser).structures[fqn].units
    with pytest.raises(PlanError, match=rf"{fqn}.*index {units} out of range"):
        PruningPlan(family="sd", base="x", kept_heads={fqn: [0, units]}).validate(tiny_sd.denoiser)
    with pytest.raises(PlanError, match="duplicate"):
        PruningPlan(family="sd", base="x", kept_heads={fqn: [0, 0]}).validate(tiny_sd.denoiser)


def test_structure_of_wrong_kind_is_named(tiny_sd):
    fqn = _first(tiny_sd, "group")  # a resnet, given as an attention
    with pytest.raises(PlanError, match=fqn):
        PruningPlan(family="sd", base="x", kept_heads={fqn: [0]}).validate(tiny_sd.denoiser)


def test_family_mismatch(tiny_sd, tiny_flux):
    plan = PruningPlan(family="flux", base="tiny:flux")
    with pytest.raises(PlanError, match="flux"):
        plan.validate(tiny_sd.denoiser)
    with pytest.raises(PlanError, match="'sd'"):
        PruningPlan(family="sd", base="x").validate(tiny_flux.denoiser)
    with pytest.raises(PlanError, match="'sdxl'"):
        PruningPlan(family="sd", base="x").validate(tiny_sd.denoiser, family="sdxl")


@pytest.mark.parametrize("bad, culprit", [
    ({"schema_version": 99, "family": "sd", "base": "x"}, "99"),
    ({"schema_version": 1, "family": "dalle", "base": "x"}, "dalle"),
    ({"schema_version": 1, "family": "sd"}, "base"),
    ({"schema_version": 1, "family": "sd", "base": "x", "extra": 1}, "extra"),
])
def test_bad_plan_dicts(bad, culprit):
    with pytest.raises(PlanError, match=culprit):
        PruningPlan.from_dict(bad)


def test_bad_json_text():
    with pytest.raises(PlanError, match="not valid JSON"):
        PruningPlan.from_json("{nope")


def test_emptied_structure_becomes_operator_removal(tiny_sd):
    fqn = _first(tiny_sd, "neuron")  # an ff: also an operator
    inner = [f for f in discover(tiny_sd.denoiser).structures if f.startswith(fqn.rsplit(".", 1)[0])]
    plan = PruningPlan(family="sd", base="x", kept_neurons={fqn: []}).normalized(tiny_sd.denoiser)
    assert fqn in plan.removed_operators and fqn not in plan.kept_neurons
    assert inner  # sanity: the block has structures


def test_normalized_drops_entries_inside_removed_operators(tiny_sd):
    ops = discover(tiny_sd.denoiser).operators
    block = next(f for f, o in ops.items() if o.kind == "transformer")
    attn = f"{block}.transformer_blocks.0.attn1"
    plan = PruningPlan(family="sd", base="x", removed_operators=(block, attn), kept_heads={attn: [0]})
    norm = plan.normalized(tiny_sd.denoiser)
    assert norm.removed_operators == (block,) and not norm.kept_heads


def test_fully_kept_structure_is_dropped(tiny_sd):
    fqn = _first(tiny_sd, "head")
    units = discover(tiny_sd.denoiser).structures[fqn].units
    norm = PruningPlan(family="sd", base="x", kept_heads={fqn: range(units)}).normalized(tiny_sd.denoiser)
    assert norm.is_empty


def test_summary_fractions(tiny_handle):
    plan = random_plan(tiny_handle, 3)
    s = plan.summary(tiny_handle.denoiser)
    assert 0 <= s["params_fraction"] < 1 and 0 <= s["macs_fraction"] < 1
    assert s["params_removed"] == sum(s["params_removed_by_kind"].values())
    empty = PruningPlan(family=tiny_handle.family, base="x").summary(tiny_handle.denoiser)
    assert empty["params_removed"] == 0 and empty["macs_removed"] == 0


def test_a_single_fqn_string_is_one_operator(tiny_sd):
    op = next(iter(discover(tiny_sd.denoiser).operators))
    assert PruningPlan(family="sd", base="x", removed_operators=op).removed_operators == (op,)
