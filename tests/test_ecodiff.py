"""EcoDiff: checkpointed gradients equal naive ones, O(1) memory in T, binarization, bad input."""

from __future__ import annotations

import threading

import pytest
import torch

from pruning import methods
from pruning.errors import PlanError, RunDiverged, SettingsError
from pruning.masks import GateSet
from pruning.methods import Scores
from pruning.methods.ecodiff import EcoDiffSettings, MaskState, optimize, recon_grads
from pruning.methods.select import plan_from_unit_scores
from pruning.metrics import SavedTensorMeter
from pruning.rollout import prepare, rollout
from pruning.runs import RunControl

PROMPTS = ["a red circle at the top left", "a blue square at the bottom right"]


def to_plan(handle, state: MaskState, **kw):
    return methods.to_plan(handle, state.to_scores(), **kw)


def _gates(handle, seed=0):
    gates = GateSet.for_denoiser(handle.denoiser, kinds=("head", "neuron", "group"), gate="sigmoid", init=1.0)
    g = torch.Generator().manual_seed(seed)
    for gate in gates.gates:
        gate.log_alpha.data += torch.randn(gate.log_alpha.shape, generator=g)  # gates well inside (0, 1)
    return gates


def _grads(handle, traj, target, checkpointing):
    gates = _gates(handle)
    noise = [gates.noise() for _ in range(traj.steps)]
    loss = recon_grads(handle.denoiser, traj, target, gates, noise, checkpointing)
    return loss, torch.cat([g.log_alpha.grad for g in gates.gates])


@pytest.mark.parametrize("family", ["sd", "flux", "sd3"])
@pytest.mark.parametrize("steps", [2, 5])
def test_checkpointed_gradients_equal_naive(request, family, steps):
    handle = request.getfixturevalue(f"tiny_{family}")
    traj = prepare(handle, PROMPTS, [0, 1], steps=steps)
    with torch.no_grad():
        target = traj.unpack(rollout(handle.denoiser, traj)[-1]) + 0.05  # a loss with real gradients
    flags = [p.requires_grad for p in handle.denoiser.parameters()]
    for p in handle.denoiser.parameters():
        p.requires_grad_(False)
    try:
        loss_naive, naive = _grads(handle, traj, target, "none")
        loss_ckpt, ckpt = _grads(handle, traj, target, "timestep")
    finally:
        for p, f in zip(handle.denoiser.parameters(), flags):
            p.requires_grad_(f)
    assert loss_naive == pytest.approx(loss_ckpt, rel=1e-6)
    assert naive.abs().max() > 0
    torch.testing.assert_close(ckpt, naive, rtol=1e-4, atol=1e-4 * naive.abs().max().item())


def test_saved_memory_is_constant_in_T(tiny_sd):
    def peak(steps, checkpointing):
        traj = prepare(tiny_sd, PROMPTS[:1], [0], steps=steps)
        target = torch.zeros_like(traj.unpack(traj.z0))
        gates = _gates(tiny_sd)
        with SavedTensorMeter() as meter:
            recon_grads(tiny_sd.denoiser, traj, target, gates, [None] * steps, checkpointing)
        return meter.peak

    c2, c8, n8 = peak(2, "timestep"), peak(8, "timestep"), peak(8, "none")
    assert c8 <= 1.05 * c2  # one step of activations, whatever T
    assert n8 >= 6 * c8  # naive autograd keeps every step


def test_settings_are_checked():
    """Frozen settings check every value when they are made (the caller cannot forget to)."""
    for bad, match in ((dict(prompts=[]), "prompts is empty"),
                       (dict(steps=0), r"steps T must be an integer in 1\.\.1000"),
                       (dict(kinds=()), "kinds must name at least one"),
                       (dict(kinds=("channels",)), "'channels'"),
                       (dict(regularizer="l2"), "regularizer must be one of .*'l2'"),
                       (dict(lr=float("nan")), "lr must be a finite number"),
                       (dict(epochs=0), "epochs must be an integer in 1..100"),
                       (dict(seeds=[0, 1, 2]), "3 seeds for 2 prompts")):
        with pytest.raises(SettingsError, match=match):
            EcoDiffSettings(**{"prompts": PROMPTS, **bad})
    with pytest.raises(Exception, match="frozen|cannot assign"):
        EcoDiffSettings(prompts=PROMPTS).lr = 1.0


@pytest.fixture(scope="module")
def state(tiny_sd):
    s = EcoDiffSettings(prompts=PROMPTS * 2, steps=3, epochs=2, batch_size=2, kinds=("head", "neuron", "group"))
    return optimize(tiny_sd, s)


def test_optimize_history_and_no_mutation(tiny_sd, state):
    hist = state.history
    assert len(hist) == 4 and {"step", "loss", "recon", "reg", "kept_head", "kept_neuron", "kept_group"} <= set(hist)
    assert (hist["kept_head"] <= 1).all() and not state.partial
    assert all(p.requires_grad for p in tiny_sd.denoiser.parameters())  # flags restored
    assert all(p.grad is None for p in tiny_sd.denoiser.parameters())  # nothing accumulated in the model


@pytest.mark.parametrize("scope", ["global", "local"])
@pytest.mark.parametrize("target", [0.1, 0.3])
def test_to_plan_hits_target(tiny_sd, state, scope, target):
    from pruning import slim
    from pruning.metrics import count_params

    plan = to_plan(tiny_sd, state, target_sparsity=target, scope=scope)
    measured = 1 - count_params(slim(tiny_sd.denoiser, plan)) / count_params(tiny_sd.denoiser)
    assert abs(measured - target) <= 0.01
    assert plan.provenance["method"] == "ecodiff"


def test_threshold_cut(tiny_sd, state):
    lowest = min(v.min().item() for v in state.lambdas.values())
    assert plan_from_unit_scores(tiny_sd, state.lambdas, threshold=lowest - 1).is_empty
    assert not plan_from_unit_scores(tiny_sd, state.lambdas, threshold=1e9).is_empty


def test_to_plan_bad_input(tiny_sd, tiny_flux, state):
    for bad in (0, 1, -0.1, 1.5):
        with pytest.raises(SettingsError, match=f"target sparsity must be a fraction between 0 and 1, like 0.2, got {bad:g}"):
            to_plan(tiny_sd, state, target_sparsity=bad)
    heads_only = MaskState({f: v for f, v in state.lambdas.items() if state.kinds[f] == "head"},
                           state.kinds, state.history, state.model_ref, "sd", state.settings)
    with pytest.raises(PlanError, match=r"not reachable with kinds \['head'\]"):
        to_plan(tiny_sd, heads_only, target_sparsity=0.9)
    other = MaskState({"down_blocks.7.attn1": torch.zeros(2)}, {"down_blocks.7.attn1": "head"},
                      state.history, state.model_ref, "sd", {})
    with pytest.raises(PlanError, match="down_blocks.7.attn1"):
        to_plan(tiny_sd, other, target_sparsity=0.2)
    with pytest.raises(PlanError, match="computed on 'tiny:sd', not on 'tiny:flux'"):
        to_plan(tiny_flux, state, target_sparsity=0.2)
    with pytest.raises(SettingsError, match="scope must be one of"):
        to_plan(tiny_sd, state, target_sparsity=0.2, scope="per-layer")


@pytest.mark.parametrize("suffix", [".safetensors", ".csv"])
def test_scores_round_trip(state, tmp_path, suffix):
    scores = state.to_scores()
    path = scores.write(tmp_path / f"mask{suffix}")
    again = Scores.read(path)
    assert again.model_ref == state.model_ref and again.method == "ecodiff" and again.level == "unit"
    got = again.unit_scores()
    assert all(torch.equal(got[k], v) for k, v in state.lambdas.items())  # float32 lambdas, bit for bit
    assert len(again.info["history"]) == len(state.history)
    path.write_bytes(b"garbage")
    with pytest.raises(SettingsError, match=f"mask{suffix}"):
        Scores.read(path)


def test_stop_returns_partial_state(tiny_sd):
    stop = threading.Event()
    s = EcoDiffSettings(prompts=PROMPTS * 2, steps=2, epochs=3, batch_size=2)
    state = optimize(tiny_sd, s, control=RunControl(stop, progress=lambda done, total, row: stop.set()))
    assert state.partial and len(state.history) == 1 and state.stopped == "stopped"
    again = optimize(tiny_sd, s)  # the next run works and completes
    assert not again.partial and len(again.history) == 6


def test_cli_ecodiff_then_prune(tiny_sd, tmp_path):
    from pruning.cli import main

    folder = tmp_path / "model"
    tiny_sd.pipe.save_pretrained(folder, safe_serialization=True)
    mask = tmp_path / "mask.safetensors"
    assert main(["ecodiff", "--model", str(folder), "--prompt", "a red circle", "--prompt", "a blue square",
                 "--steps", "2", "--epochs", "1", "--batch-size", "2", "--out", str(mask)]) == 0
    assert Scores.read(mask).method == "ecodiff"


def test_mask_from_other_weights_is_refused(tiny_sd, state):
    other = MaskState(state.lambdas, state.kinds, state.history, "local:/elsewhere@0123456789ab", "sd", {})
    with pytest.raises(PlanError, match="elsewhere"):
        to_plan(tiny_sd, other, target_sparsity=0.2)


def test_a_diverging_run_stops_with_the_last_finite_gates(tiny_sd, monkeypatch):
    import pruning.methods.ecodiff as eco

    calls, real = [], eco.recon_grads

    def diverges_at_step_2(*a, **k):  # a loss that turns NaN, as a too-high learning rate does
        calls.append(1)
        loss = real(*a, **k)
        return float("nan") if len(calls) == 2 else loss
    monkeypatch.setattr(eco, "recon_grads", diverges_at_step_2)
    s = EcoDiffSettings(prompts=PROMPTS, steps=2, epochs=3, batch_size=2)
    with pytest.raises(RunDiverged, match="diverged at step 2") as e:
        optimize(tiny_sd, s)
    last = e.value.result
    assert last.partial and len(last.history) == 1
    assert all(torch.isfinite(v).all() for v in last.lambdas.values())


def test_the_authors_preset_and_its_regulariser(tiny_sd, tmp_path, capsys):
    from pruning.cli import main
    from pruning.methods.ecodiff import regularizer

    m = methods.get("ecodiff")
    flux, unet = m.settings(preset="authors", family="flux"), m.settings(preset="authors", family="sd", lr=0.1)
    assert (flux.masking_eps, flux.beta, flux.regularizer, flux.reg_norm) == (0.1, 0.01, "l1", "layer")
    assert (unet.masking_eps, unet.beta, unet.lr) == (0.5, 0.5, 0.1)  # values given override the preset
    assert m.settings(preset="ours") == EcoDiffSettings()
    with pytest.raises(SettingsError, match="preset"):
        m.settings(preset="theirs")
    gates = GateSet.for_denoiser(tiny_sd.denoiser, kinds=("head", "neuron"))
    from pruning.catalog import discover

    kinds = {f: discover(tiny_sd.denoiser).structures[f].kind for f in gates.fqns}
    per_unit = regularizer(gates, "l0")
    per_layer = regularizer(gates, "l0", "layer", kinds)
    heads = [g.log_alpha.numel() for f, g in zip(gates.fqns, gates.gates) if kinds[f] == "head"]
    neurons = [g.log_alpha.numel() for f, g in zip(gates.fqns, gates.gates) if kinds[f] == "neuron"]
    ratio = sum(heads) / len(heads) + sum(neurons) / len(neurons)  # mean units per layer, per kind, summed
    assert float(per_layer / per_unit) == pytest.approx(ratio, rel=1e-5)
    out = tmp_path / "mask.safetensors"
    assert main(["ecodiff", "--model", "tiny-shapes-sd", "--preset", "authors", "--steps", "2", "--epochs", "1",
                 "--prompts", "a red circle at the top left on a white background", "--out", str(out)]) == 0
    scores = Scores.read(out)
    assert scores.settings["masking_eps"] == 0.5 and scores.settings["reg_norm"] == "layer"
    capsys.readouterr()
