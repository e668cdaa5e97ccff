"""``slim(inplace=True)`` gives the copying ``slim``'s model, tensor for tensor and latent for latent."""

from __future__ import annotations

import pytest
import torch

from pruning import slim
from pruning.catalog import discover
from pruning.errors import SettingsError
from pruning.loading import handle_from_pipe
from pruning.memory import enable_memory_savers, plain_copy
from pruning.plan import PruningPlan
from pruning.sampling import generate_latents
from pruning.testing import FAMILIES, tiny_pipeline
from tests.plans import random_plan


def _one_kind_plan(handle, kind: str) -> PruningPlan:
    """Every structure of ``kind`` keeps its even units (a unit kind the family lacks gives an empty plan)."""
    kept = {fqn: list(range(0, s.units, 2)) for fqn, s in discover(handle.denoiser).structures.items()
            if s.kind == kind}
    key = {"head": "kept_heads", "neuron": "kept_neurons", "group": "kept_groups"}[kind]
    return PruningPlan(family=handle.family, base=handle.model_ref, **{key: kept})


def _plans(handle):
    yield from (_one_kind_plan(handle, k) for k in ("head", "neuron", "group"))
    yield from (random_plan(handle, seed) for seed in (3, 4, 5))


def _assert_same(a: torch.nn.Module, b: torch.nn.Module, what) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb), what
    for k in sa:
        assert sa[k].shape == sb[k].shape and sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), (what, k)
    for (na, ma), (nb, mb) in zip(a.named_modules(), b.named_modules(), strict=True):
        assert na == nb and type(ma) is type(mb), (what, na)
        for attr in ("heads", "inner_dim", "in_features", "out_features", "num_groups", "num_channels",
                     "in_channels", "out_channels", "mlp_hidden_dim"):
            assert getattr(ma, attr, None) == getattr(mb, attr, None), (what, na, attr)


@pytest.mark.parametrize("family", FAMILIES)
def test_inplace_equals_copy(family):
    handle = handle_from_pipe(tiny_pipeline(family), model_ref=f"tiny:{family}")
    base = handle.denoiser
    for i, plan in enumerate(_plans(handle)):
        want = slim(base, plan)
        mine = plain_copy(base)  # a model of our own to slim in place
        got = slim(mine, plan, inplace=True)
        assert got is mine
        _assert_same(got, want, (family, i))
        assert discover(got).structures.keys() == discover(want).structures.keys()  # no stale cache
        if i in (0, 3):  # generation through the in-place model: the same latents
            a = generate_latents(handle, ["a red circle"], [0], steps=2, denoiser=want)
            b = generate_latents(handle, ["a red circle"], [0], steps=2, denoiser=got)
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_inplace_frees_what_it_cuts(tiny_sd):
    plan = _one_kind_plan(tiny_sd, "neuron")
    mine = plain_copy(tiny_sd.denoiser)
    before = {k: v.data_ptr() for k, v in mine.state_dict().items()}
    slim(mine, plan, inplace=True)
    cut = [k for k, v in mine.state_dict().items() if v.data_ptr() != before[k]]
    assert cut and all(mine.state_dict()[k].numel() < tiny_sd.denoiser.state_dict()[k].numel() for k in cut)


def test_inplace_refuses_offloaded_model():
    h = handle_from_pipe(tiny_pipeline("sd"), model_ref="tiny:sd")
    h = enable_memory_savers(h, offload="sequential", device="cpu")
    with pytest.raises(SettingsError, match="offload hooks"):
        slim(h.denoiser, _one_kind_plan(h, "head"), inplace=True)


def test_inplace_on_loaded_weights_computes_bit_for_bit(sd_folder):
    """Weights loaded from safetensors sit unaligned; the in-place model still computes as the copy."""
    from pruning.loading import load_pipeline

    h = load_pipeline(str(sd_folder))  # ours: nobody else holds it
    plan = random_plan(h, 11)
    want = slim(h.denoiser, plan)
    a = generate_latents(h, ["a red circle"], [0], steps=2, denoiser=want)
    got = slim(h.denoiser, plan, inplace=True)
    assert got is h.denoiser
    _assert_same(got, want, "loaded")
    torch.testing.assert_close(generate_latents(h, ["a red circle"], [0], steps=2), a, rtol=0, atol=0)
