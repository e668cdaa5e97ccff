"""The core invariant: masking a plan and slimming with it give the same output."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pruning import masked, slim
from pruning.catalog import discover
from pruning.metrics import count_params, example_inputs, total_macs
from pruning.plan import PruningPlan
from pruning.sampling import generate_latents
from tests.plans import random_plan

N_PLANS = 20
SMALL = {"sample_size": 8, "text_len": 8}  # MAC accounting at a small size keeps FLUX cheap


def _inputs(handle):
    return example_inputs(handle.denoiser, batch=2, sample_size=8, text_len=8,
                          generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def test_slim_equals_masked_on_random_plans(tiny_handle):
    den = tiny_handle.denoiser
    kw = _inputs(tiny_handle)
    reference = den(**kw)[0].clone()
    state = {k: v.clone() for k, v in den.state_dict().items()}
    for seed in range(N_PLANS):
        plan = random_plan(tiny_handle, seed)
        with masked(den, plan):
            want = den(**kw)[0]
        small = slim(den, plan)
        got = small(**kw)[0]
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5, msg=f"plan seed {seed}")
        summary = plan.summary(den, **SMALL)
        assert count_params(small) == summary["params_total"] - summary["params_removed"], seed
        if seed % 4 == 0:  # MAC counting costs ~0.5 s a call; a fifth of the plans is enough
            assert total_macs(small, **SMALL) == summary["macs_total"] - summary["macs_removed"], seed
    # the input is never mutated: same weights, same output
    assert all(torch.equal(state[k], v) for k, v in den.state_dict().items())
    torch.testing.assert_close(den(**kw)[0], reference, rtol=0, atol=0)


@pytest.mark.parametrize("seed", [101, 102])
def test_generation_same_with_mask_and_slim(tiny_handle, seed):
    plan = random_plan(tiny_handle, seed)
    prompts, seeds = ["a red circle", "a blue square"], [0, 1]
    with masked(tiny_handle.denoiser, plan):
        want = generate_latents(tiny_handle, prompts, seeds, steps=4)
    got = generate_latents(tiny_handle, prompts, seeds, steps=4, denoiser=slim(tiny_handle.denoiser, plan))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
    from pruning.sampling import decode_latents
    a = np.stack([np.asarray(im, dtype=np.int16) for im in decode_latents(tiny_handle, want)])
    b = np.stack([np.asarray(im, dtype=np.int16) for im in decode_latents(tiny_handle, got)])
    assert np.abs(a - b).max() <= 1  # uint8 rounding of values within 1e-4


def test_slim_updates_module_attributes(tiny_sd, tiny_flux):
    den = tiny_sd.denoiser
    found = discover(den)
    attn = next(f for f, s in found.structures.items() if s.kind == "head" and s.units > 1)
    ff = next(f for f, s in found.structures.items() if s.component == "ff")
    res = next(f for f, s in found.structures.items() if s.kind == "group")
    plan = PruningPlan(family="sd", base="tiny:sd", kept_heads={attn: [0]}, kept_neurons={ff: [0, 1, 2]},
                       kept_groups={res: [0, 1]})
    small = slim(den, plan)
    a = small.get_submodule(attn)
    assert a.heads == 1 and a.to_q.out_features == a.inner_dim == found.structures[attn].unit_size
    assert a.to_out[0].in_features == a.inner_dim
    f = small.get_submodule(ff)
    assert f.net[2].in_features == 3 and f.net[0].proj.out_features == 6  # GEGLU: both halves
    r = small.get_submodule(res)
    assert r.norm2.num_groups == 2 and r.conv1.out_channels == r.conv2.in_channels == r.norm2.num_channels
    assert r.time_emb_proj.out_features == r.conv1.out_channels

    block = "single_transformer_blocks.0"
    fplan = PruningPlan(family="flux", base="tiny:flux", kept_heads={f"{block}.attn": [1]},
                        kept_neurons={f"{block}.proj_mlp": [0, 5]})
    b = slim(tiny_flux.denoiser, fplan).get_submodule(block)
    assert b.attn.heads == 1 and b.mlp_hidden_dim == 2
    assert b.proj_out.in_features == b.attn.head_dim + 2


def test_removed_operators_become_standins(tiny_sd, tiny_flux):
    from pruning.replacements import IdentityFluxBlock, IdentityTransformer, ResnetShortcut, ZeroBranch

    ops = discover(tiny_sd.denoiser).operators
    pick = {k: next(f for f, o in ops.items() if o.kind == k) for k in ("transformer", "resnet")}
    pick["attn2"] = next(f for f, o in ops.items() if o.kind == "attn2" and not f.startswith(pick["transformer"] + "."))
    small = slim(tiny_sd.denoiser, PruningPlan(family="sd", base="x", removed_operators=tuple(pick.values())))
    assert isinstance(small.get_submodule(pick["attn2"]), ZeroBranch)  # an attn2 outside the removed block
    assert isinstance(small.get_submodule(pick["transformer"]), IdentityTransformer)
    assert isinstance(small.get_submodule(pick["resnet"]), ResnetShortcut)
    fsmall = slim(tiny_flux.denoiser, PruningPlan(family="flux", base="x",
                                                  removed_operators=("single_transformer_blocks.1",)))
    assert isinstance(fsmall.single_transformer_blocks[1], IdentityFluxBlock)
