"""Catalog facts at full size (meta device, no download) and on the tiny pipelines."""

from __future__ import annotations

import pytest

from pruning import catalog, slim
from pruning.catalog import discover, kind_shares
from pruning.metrics import count_params
from pruning.plan import PruningPlan
from pruning.reference import meta_denoiser

# DESIGN.md section 3: total params (M) and module-type shares.
FACTS = {
    "sd15": (859.5, {"attention": 0.109, "ffn": 0.173, "resnet": 0.626}),
    "sdxl": (2567.5, {"attention": 0.372, "ffn": 0.479, "resnet": 0.128}),
    "flux-dev": (11901.4, {"attention": 0.211, "ffn": 0.241, "proj_mlp": 0.121}),
}


@pytest.fixture(scope="module", params=sorted(FACTS))
def reference(request):
    return request.param, meta_denoiser(request.param)


def test_reference_totals_and_shares(reference):
    name, den = reference
    total_m, shares = FACTS[name]
    assert round(count_params(den) / 1e6, 1) == total_m
    got = kind_shares(den)
    for kind, share in shares.items():
        assert round(got[kind], 3) == share, (name, kind, got[kind])


def test_reference_operator_counts(reference):
    name, den = reference
    ops, structs = catalog(den)
    counts = ops["kind"].value_counts().to_dict()
    if name == "flux-dev":
        assert counts["double_block"] == 19 and counts["single_block"] == 38
        assert counts["attn"] == counts["ff"] == counts["ff_context"] == 19
        assert (structs["component"] == "proj_mlp").sum() == 38
        assert (structs["component"] == "single_attn").sum() == 38
    else:
        n_blocks = {"sd15": 16, "sdxl": 70}[name]
        assert counts["attn1"] == counts["attn2"] == counts["ff"] == n_blocks
        assert counts["resnet"] == (structs["kind"] == "group").sum()
    # every row has a position and a share; shares of disjoint fine operators stay below 1
    assert ops["depth"].min() >= 0 and structs["depth"].min() >= 0
    assert 0.3 < ops.loc[ops["granularity"] != "block", "mac_share"].sum() <= 1.0
    assert set(ops.columns) >= {"fqn", "kind", "stage", "level", "block", "depth", "params", "mac_share"}


@pytest.mark.thorough  # real-size SDXL on the meta device; R1 slims the real SD 1.5 and SDXL
def test_meta_sdxl_slim_20_percent_without_allocating():
    den = meta_denoiser("sdxl")
    found = discover(den)
    # keep 75% of heads and FFN neurons in every transformer block: about 20% of all params
    kept_heads = {f: list(range(max(1, int(s.units * 0.75)))) for f, s in found.structures.items() if s.kind == "head"}
    kept_neurons = {f: list(range(int(s.units * 0.75))) for f, s in found.structures.items()
                    if s.kind == "neuron"}
    plan = PruningPlan(family="sdxl", base="meta:sdxl", kept_heads=kept_heads, kept_neurons=kept_neurons)
    summary = plan.summary(den)
    assert 0.15 < summary["params_fraction"] < 0.3
    small = slim(den, plan)
    assert all(p.device.type == "meta" for p in small.parameters())
    assert count_params(small) == summary["params_total"] - summary["params_removed"]


def test_tiny_catalog_columns(tiny_handle):
    ops, structs = catalog(tiny_handle.denoiser)
    assert len(ops) == len(discover(tiny_handle.denoiser).operators)
    assert (structs["units"] >= 1).all() and (structs["unit_params"] > 0).all()
    assert (structs["params"] == structs["units"] * structs["unit_params"]).all()
    assert ops["fqn"].is_unique and structs["fqn"].is_unique
