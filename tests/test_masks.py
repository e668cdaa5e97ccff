"""Masks are removable: exact restore on exit and on exceptions, nothing in the state_dict."""

from __future__ import annotations

import pytest
import torch

from pruning import masked
from pruning.catalog import discover
from pruning.masks import GateSet, gated
from pruning.metrics import example_inputs
from tests.plans import random_plan


def _snapshot(module):
    hooks = [(n, len(m._forward_hooks), len(m._forward_pre_hooks), "forward" in m.__dict__)
             for n, m in module.named_modules()]
    return hooks, list(module.state_dict())


@torch.no_grad()
def test_masked_restores_exactly(tiny_handle):
    den = tiny_handle.denoiser
    kw = example_inputs(den, batch=1, sample_size=8, text_len=8, generator=torch.Generator().manual_seed(1))
    before, snap = den(**kw)[0], _snapshot(den)
    plan = random_plan(tiny_handle, 5)
    with masked(den, plan):
        assert list(den.state_dict()) == snap[1]  # nothing enters the state_dict
        inside = den(**kw)[0]
    assert not torch.equal(before, inside)
    assert _snapshot(den) == snap
    assert torch.equal(den(**kw)[0], before)


@torch.no_grad()
def test_masked_restores_on_exception(tiny_sd):
    den = tiny_sd.denoiser
    snap = _snapshot(den)
    with pytest.raises(RuntimeError, match="boom"):
        with masked(den, random_plan(tiny_sd, 9)):
            raise RuntimeError("boom")
    assert _snapshot(den) == snap


def test_masked_rejects_bad_plan_before_touching_the_model(tiny_sd):
    from pruning import PruningPlan
    from pruning.errors import PlanError

    snap = _snapshot(tiny_sd.denoiser)
    with pytest.raises(PlanError, match="nope"):
        with masked(tiny_sd.denoiser, PruningPlan(family="sd", base="x", removed_operators=("nope",))):
            pass
    assert _snapshot(tiny_sd.denoiser) == snap


@torch.no_grad()
def test_open_gates_change_nothing(tiny_handle):
    den = tiny_handle.denoiser
    kw = example_inputs(den, batch=1, sample_size=8, text_len=8, generator=torch.Generator().manual_seed(2))
    want = den(**kw)[0]
    ones = {f: torch.ones(s.units) for f, s in discover(den).structures.items()}
    with gated(den, ones):
        got = den(**kw)[0]
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_gates_are_differentiable_and_outside_the_model(tiny_handle):
    den = tiny_handle.denoiser
    gates = GateSet.for_denoiser(den, kinds=("head", "neuron", "group"), gate="sigmoid", init=1.0)
    kw = example_inputs(den, batch=1, sample_size=8, text_len=8, generator=torch.Generator().manual_seed(3))
    keys = list(den.state_dict())
    with gated(den, gates.values()):
        loss = den(**kw)[0].pow(2).mean()
    loss.backward()
    grads = [g.log_alpha.grad for g in gates.gates]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0
    assert list(den.state_dict()) == keys
    den.zero_grad(set_to_none=True)


def test_hard_concrete_noise_and_expected_l0():
    gates = GateSet({"a": 3, "b": 2}, gate="hard_concrete", init=3.0)
    noise = gates.noise(torch.Generator().manual_seed(0))
    vals = gates.values(noise)
    assert set(vals) == {"a", "b"} and all(((v >= 0) & (v <= 1)).all() for v in vals.values())
    assert 4.9 < gates.expected_l0().item() < 5.0  # 5 units, all near open
    with pytest.raises(ValueError, match="nope"):
        GateSet({"a": 1}, gate="nope")


def test_gated_names_unknown_structure(tiny_sd):
    with pytest.raises(KeyError, match="not.a.structure"):
        with gated(tiny_sd.denoiser, {"not.a.structure": torch.ones(1)}):
            pass


def test_bad_fqn_part_way_leaves_no_hooks(tiny_sd):
    den = tiny_sd.denoiser
    snap = _snapshot(den)
    good = next(iter(discover(den).structures))
    ops = [next(iter(discover(den).operators)), "no.such.operator"]
    with pytest.raises(KeyError, match="no.such.operator"):
        with gated(den, {}, skips=ops):
            pass
    with pytest.raises(KeyError, match="bogus"):
        with gated(den, {good: torch.zeros(discover(den).structures[good].units), "bogus": torch.ones(1)}):
            pass
    assert _snapshot(den) == snap
