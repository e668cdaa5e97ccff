"""Stable Diffusion 3 / 3.5 (MMDiT), the fourth family: real configs at full size on the meta
device, and what is SD3-specific on the tiny pipeline (joint heads over both streams, the
context_pre_only last block, RMS q/k norms, the dual-attention attn2, the batched CFG replay).

The generic invariants (masked == slim on 20 random plans, summary == measured, export reloads
bit-identically, ...) run for SD3 through the family-parametrized fixtures (``tiny_handle``);
the hand-computed Taylor score of its joint heads is ``test_diffpruning``'s (parametrized over SD and SD3).
"""

from __future__ import annotations

import json

import pytest
import torch

from pruning import families
from pruning.catalog import catalog, discover
from pruning.cli import main
from pruning.masks import masked
from pruning.metrics import count_params, example_inputs
from pruning.plan import PruningPlan
from pruning.reference import PIPELINES, meta_denoiser
from pruning.rollout import prepare, rollout
from pruning.sampling import generate_latents
from pruning.slim import slim

# params of the public transformer configs (DESIGN.md: SD3.5-large 8056.6M; OBS-Diff reports 8.06B)
TOTALS = {"sd3-medium": 2_028_328_000, "sd35-medium": 2_243_171_520, "sd35-large": 8_056_627_520}
LAST = "transformer_blocks.2"  # the tiny SD3's context_pre_only block


@pytest.mark.parametrize("name", sorted(TOTALS))
def test_real_configs_on_meta(name):
    den = meta_denoiser(name)
    assert count_params(den) == TOTALS[name]
    assert all(p.device.type == "meta" for p in den.parameters())
    ops, structs = catalog(den, sample_size=8, text_len=8)  # counts do not depend on the input size
    counts = ops["kind"].value_counts().to_dict()
    n = den.config.num_layers
    assert counts["joint_block"] == counts["attn"] == counts["ff"] == n
    assert counts["ff_context"] == n - 1  # the last block is context_pre_only
    assert counts.get("attn2", 0) == len(den.config.dual_attention_layers)
    heads = structs[structs["kind"] == "head"]
    assert heads["units"].sum() == n * den.config.num_attention_heads + counts.get("attn2", 0) * \
        den.config.num_attention_heads
    assert PIPELINES[name]["family"] == "sd3" and PIPELINES[name]["resolution"] == 1024


def test_sd35_large_matches_design_table():
    assert round(TOTALS["sd35-large"] / 1e6, 1) == 8056.6
    assert len(meta_denoiser("sd35-large").transformer_blocks) == 38
    assert (PIPELINES["sd35-large"]["steps"], PIPELINES["sd35-large"]["guidance"]) == (28, 3.5)
    assert (PIPELINES["sd35-medium"]["steps"], PIPELINES["sd35-medium"]["guidance"]) == (40, 4.5)
    assert (PIPELINES["sd3-medium"]["steps"], PIPELINES["sd3-medium"]["guidance"]) == (28, 7.0)


def test_info_reference_shows_params_macs_and_parts(capsys):
    main(["info", "--reference", "sd35-medium", "--sample-size", "16", "--json"])
    f = json.loads(capsys.readouterr().out)
    assert f["family"] == "sd3" and f["params"] == TOTALS["sd35-medium"] and f["macs"] > 1e11
    assert set(f["operators"]) == {"joint_block", "attn", "attn2", "ff", "ff_context"}
    assert set(f["structures"]) == {"head", "neuron", "channel"}


def test_family_is_one_registered_unit():
    fam = families.get("sd3")
    assert families.REGISTRY["sd3"] == "pruning.families.sd3:SD3"
    assert fam.pipeline_class.__name__ == "StableDiffusion3Pipeline"
    assert set(fam.references) == {"sd3-medium", "sd35-medium", "sd35-large"}


def test_joint_heads_span_both_streams_and_the_last_block_has_no_text_output(tiny_sd3):
    found = discover(tiny_sd3.denoiser)
    joint = found.structures["transformer_blocks.0.attn"]
    params = {c.param.rsplit(".", 2)[-2] + "." + c.param.rsplit(".", 1)[-1] + f"@{c.dim}" for c in joint.cuts}
    assert {"to_q.weight@0", "add_q_proj.weight@0", "add_v_proj.bias@0", "0.weight@1", "to_add_out.weight@1"} <= params
    last = found.structures[f"{LAST}.attn"]
    assert not any("to_add_out" in c.param for c in last.cuts)  # context_pre_only: no to_add_out
    assert any("add_k_proj" in c.param for c in last.cuts)  # its heads still read the text tokens
    assert f"{LAST}.ff_context" not in found.operators and f"{LAST}.ff_context" not in found.structures
    assert found.structures["transformer_blocks.0.attn2"].component == "attn2"
    assert "transformer_blocks.1.attn2" not in found.structures  # only block 0 has dual attention


@torch.no_grad()
def test_head_removal_keeps_rms_norms_and_matches_the_mask(tiny_sd3):
    den = tiny_sd3.denoiser
    kept = {"transformer_blocks.0.attn": (1, 3), "transformer_blocks.0.attn2": (0,), f"{LAST}.attn": (2,)}
    plan = PruningPlan(family="sd3", base="tiny:sd3", kept_heads=kept,
                       kept_neurons={"transformer_blocks.1.ff_context": tuple(range(0, 128, 3))})
    small = slim(den, plan)
    a = small.get_submodule("transformer_blocks.0.attn")
    assert a.heads == 2 and a.to_q.out_features == a.add_q_proj.out_features == 16
    assert a.to_out[0].in_features == a.to_add_out.in_features == 16
    assert a.norm_q.weight.shape == a.norm_added_k.weight.shape == (8,)  # per head dim: unchanged
    assert torch.equal(a.norm_q.weight, den.get_submodule("transformer_blocks.0.attn").norm_q.weight)
    assert small.get_submodule(f"{LAST}.attn").heads == 1
    kw = example_inputs(den, batch=2, generator=torch.Generator().manual_seed(0))
    with masked(den, plan):
        want = den(**kw)[0]
    torch.testing.assert_close(small(**kw)[0], want, rtol=0, atol=1e-5)


@torch.no_grad()
def test_rollout_replays_the_pipeline_with_batched_cfg(tiny_sd3):
    prompts, seeds = ["a red circle", "a blue square"], [0, 1]
    traj = prepare(tiny_sd3, prompts, seeds, steps=3, guidance=3.0)
    assert traj.mode == "cfg" and traj.cond["encoder_hidden_states"].shape[0] == 4  # [uncond | cond]
    assert type(traj.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"
    z = traj.unpack(rollout(tiny_sd3.denoiser, traj)[-1])
    torch.testing.assert_close(z, generate_latents(tiny_sd3, prompts, seeds, steps=3, guidance=3.0),
                               rtol=0, atol=1e-5)


def test_removed_blocks_pass_both_streams(tiny_sd3):
    ops = discover(tiny_sd3.denoiser).operators
    plan = PruningPlan(family="sd3", base="tiny:sd3",
                       removed_operators=(LAST, "transformer_blocks.0.attn2", "transformer_blocks.1.attn"))
    kw = example_inputs(tiny_sd3.denoiser, batch=1, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        with masked(tiny_sd3.denoiser, plan):
            want = tiny_sd3.denoiser(**kw)[0]
        small = slim(tiny_sd3.denoiser, plan)
        torch.testing.assert_close(small(**kw)[0], want, rtol=0, atol=1e-5)
    assert ops[LAST].kind == "joint_block" and ops[LAST].granularity == "block"
    assert count_params(small) < count_params(tiny_sd3.denoiser)
