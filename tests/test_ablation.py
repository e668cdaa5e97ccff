"""LD-Pruner's fast score (one-step ablation, ``pruning.methods.ablation``): per family it equals
a naive per-operator recomputation; chunked equals one run; several ablations per call (per-sample
gates) equal one per call; the estimator counts its denoiser calls; it works with the proxy's
resolution and sharded over 2 processes; its measured agreement ships and is shown."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pruning import methods
from pruning.catalog import catalog
from pruning.chunks import score_chunked
from pruning.errors import SettingsError
from pruning.estimate import estimate
from pruning.masks import masked
from pruning.methods import ablation, ldpruner
from pruning.methods.ldpruner import SweepSettings, ldpruner_score, sweep
from pruning.plan import PruningPlan
from pruning.rollout import advance, guided, prepare, raw_outputs, rollout
from pruning.runs import Budget
from pruning.sampling import spec

PROMPTS = ("a red circle at the center on a white background", "a blue square at the top left on a black background")


def _ops(h, n_fine: int = 2, n_block: int = 1) -> tuple[str, ...]:
    """A few operators of each kind: fine ones and a whole block (which contains fine ones)."""
    ops = catalog(h.denoiser)[0]
    fine = ops[ops["granularity"].isin(["fine", "both"])]["fqn"].tolist()
    block = ops[ops["granularity"] == "block"]["fqn"].tolist()
    return tuple(fine[:n_fine] + block[:n_block])


def _settings(h, **kw) -> SweepSettings:
    values = dict(prompts=PROMPTS, n_gen=3, steps=4, operators=_ops(h), fast=True)
    return SweepSettings(**{**values, **kw})


@torch.no_grad()
def _naive(h, s: SweepSettings) -> dict[str, float]:
    """Each operator from scratch: the original rollout to each recorded step, the masked model's
    raw outputs there, LD-Pruner's distance on the guided prediction ("uniform") or on the next
    latent it steps to ("step"), the mean over the steps."""
    s = s.resolved(h)
    after = (lambda i, z, p: p) if s.weighting == "uniform" else (lambda i, z, p: advance(traj, i, z, p))
    prompts, seeds = s.samples()
    traj = prepare(h, prompts, seeds, steps=s.steps, guidance=s.guidance, resolution=s.resolution)
    zs = rollout(h.denoiser, traj)
    out = {}
    for fqn in s.operators:
        total = 0.0
        for i in ablation.recorded_steps(s.steps, s.timesteps):
            p0 = after(i, zs[i], guided(traj, raw_outputs(h.denoiser, traj, i, zs[i])))
            with masked(h.denoiser, PruningPlan(family=h.family, base=h.model_ref, removed_operators=(fqn,))):
                p1 = after(i, zs[i], guided(traj, raw_outputs(h.denoiser, traj, i, zs[i])))
            total += ldpruner_score(p0, p1)["score"]
        out[fqn] = total / s.timesteps
    return out


def test_fast_score_equals_a_naive_recomputation(tiny_handle):
    h = tiny_handle
    ablation.clear_cache()
    for weighting in ("step", "uniform"):
        s = _settings(h, weighting=None if weighting == "step" else weighting)
        df = sweep(h, s, show_progress=False)
        naive = _naive(h, s)
        assert sorted(df["fqn"]) == sorted(s.operators) and not df.attrs["partial"]
        np.testing.assert_allclose(df["score"], [naive[f] for f in df["fqn"]], rtol=1e-9, atol=0)
        assert (df["score"] > 0).all() and list(df["score"]) == list(df["avg_dist"] + df["std_dist"])
        assert df.attrs["settings"]["fast"] and df.attrs["settings"]["timesteps"] == ldpruner.DEFAULT_TIMESTEPS
        assert df.attrs["settings"]["weighting"] == weighting


def test_several_ablations_per_call_equal_one_per_call(tiny_handle):
    h = tiny_handle
    s = _settings(h).resolved(h)
    rec = ablation.record(h, s)
    ops = list(s.operators)
    one = ablation.ablation_distances(h, rec, ops, batch=1)
    for b in (2, len(ops)):  # a partial last group, and all in one call
        many = ablation.ablation_distances(h, rec, ops, batch=b)
        for f in ops:
            np.testing.assert_allclose(many[f], one[f], rtol=1e-4, atol=1e-6)


def test_per_sample_gates_give_the_masked_models_outputs_row_by_row(tiny_sd):
    """Two copies of the batch, an operator removed in the second only: the first copy is the
    original's output, the second the masked model's (to batch-size rounding)."""
    h = tiny_sd
    s = _settings(h).resolved(h)
    rec = ablation.record(h, s)
    fqn = s.operators[0]
    [outs] = ablation._batched_outputs(h.denoiser, rec, 0, [fqn])
    both = {}
    args, kwargs = rec.calls[0][0]
    b = ablation._call_batch(args, kwargs)
    gates = {fqn: torch.arange(2 * b) < b}  # keep in copy 0, remove in copy 1
    with torch.no_grad(), ablation.removed_per_sample(h.denoiser, gates):
        out = h.denoiser(*[ablation._repeat(a, 2, b) for a in args],
                         **{n: ablation._repeat(v, 2, b, n) for n, v in kwargs.items()})[0]
    both["kept"], both["removed"] = out[:b], out[b:]
    torch.testing.assert_close(both["kept"], rec.outs[0][0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(both["removed"], outs[0], rtol=1e-4, atol=1e-5)
    with torch.no_grad(), masked(h.denoiser, PruningPlan(family=h.family, base=h.model_ref, removed_operators=(fqn,))):
        torch.testing.assert_close(both["removed"], h.denoiser(*args, **kwargs)[0], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(both["kept"], both["removed"])


def test_chunked_equals_one_run_and_resumes_from_the_recorded_latents(tiny_sd, tmp_path):
    h = tiny_sd
    m = methods.get("ldpruner")
    s = _settings(h, operators=_ops(h, 3, 1))
    ablation.clear_cache()
    single = m.score(h, s)

    def fresh_process(fn, *args):  # each chunk without the in-process recording: it resumes from the state
        ablation.clear_cache()
        return fn(*args)

    run = score_chunked(h, "ldpruner", s, budget=Budget(units=1), call=fresh_process)
    assert run.chunks == 4 and not run.result.partial
    assert list(run.result.table["score"]) == list(single.table["score"])  # bit for bit
    # a state saved to a file (another process) resumes too
    ablation.clear_cache()
    part, state = ldpruner.METHOD.run(h, s, control=_units(2))
    assert part.partial and state is not None and tuple(state.tensors["originals"].shape[:2]) == (2, 3)
    path = state.save(tmp_path / "fast.safetensors")
    ablation.clear_cache()
    done, none = ldpruner.METHOD.run(h, s, state=type(state).load(path))
    assert none is None and list(done.table["score"]) == list(single.table["score"])


def _units(n: int):
    from pruning.runs import RunControl

    c = RunControl()
    c.begin_chunk(Budget(units=n))
    return c


def _count_calls(h):
    calls = []
    hook = h.denoiser.register_forward_pre_hook(
        lambda _m, args, kwargs: calls.append(int((args[0] if args else kwargs.get("hidden_states",
                                                                                  kwargs.get("sample"))).shape[0])),
        with_kwargs=True)
    return calls, hook


@pytest.mark.parametrize("batch", [1, 2])
def test_the_estimator_counts_the_fast_scores_calls(tiny_handle, batch):
    h = tiny_handle
    s = _settings(h, ablation_batch=batch, steps=5, timesteps=2)
    e = estimate(h, "ldpruner", s)
    ablation.clear_cache()
    calls, hook = _count_calls(h)
    try:
        sweep(h, s, show_progress=False)
    finally:
        hook.remove()
    assert e.calls["denoiser calls"] == len(calls)
    assert e.calls["work"] == sum(calls)
    assert e.calls["recording calls"] + e.calls["ablation calls"] == len(calls)
    full = estimate(h, "ldpruner", SweepSettings(prompts=PROMPTS, n_gen=3, steps=5, operators=s.operators))
    assert full.calls["work"] == full.calls["denoiser calls"] * full.calls["batch"] > e.calls["work"]


@pytest.mark.thorough  # also R5's worst_work_ratio (target <= 0.1)
def test_the_work_on_real_models_is_at_most_a_tenth_of_the_sweeps():
    from benchmarks.r5_ablation import real_work

    figures = {name: real_work(name) for name in ("sd15", "sdxl", "flux-dev")}
    assert {n: f["operators"] for n, f in figures.items()} == {"sd15": 70, "sdxl": 227, "flux-dev": 57}
    assert {n: f["full_calls"] for n, f in figures.items()} == {"sd15": 3550, "sdxl": 6840, "flux-dev": 1624}
    assert all(f["work_ratio"] <= 0.1 for f in figures.values()), figures


def test_fast_settings_and_presets(tiny_sd):
    m = methods.get("ldpruner")
    assert m.presets == ("full", "proxy", "fast")
    f = m.settings(preset="fast")
    assert f.fast and not f.proxy and f.timesteps == ldpruner.DEFAULT_TIMESTEPS and f.weighting == "step"
    assert m.settings(preset="fast", timesteps=3, ablation_batch=4).ablation_batch == 4
    with pytest.raises(SettingsError, match="apply to the fast score only"):
        SweepSettings(timesteps=3)
    with pytest.raises(SettingsError, match="weighting must be one of"):
        SweepSettings(fast=True, weighting="late")
    with pytest.raises(SettingsError, match="at most the 2 denoising steps, got 3"):
        SweepSettings(fast=True, steps=2, timesteps=3, prompts=PROMPTS).resolved(tiny_sd)
    with pytest.raises(SettingsError, match="ablation_batch"):
        SweepSettings(fast=True, ablation_batch=0)


def test_fast_at_the_proxys_resolution(tiny_flux):
    h = tiny_flux
    s = _settings(h, proxy=True, steps=None)
    r = s.resolved(h)
    assert r.resolution == spec(h).resolution // 2 and r.steps < spec(h).steps
    df = sweep(h, s, show_progress=False)
    assert len(df) == len(s.operators) and (df["score"] > 0).all()
    np.testing.assert_allclose(df["score"], [_naive(h, s)[f] for f in df["fqn"]], rtol=1e-9)


def test_first_order_variant_scores_every_operator_with_one_backward_per_step(tiny_sd):
    h = tiny_sd
    s = _settings(h).resolved(h)
    rec = ablation.record(h, s)
    flags = [p.requires_grad for p in h.denoiser.parameters()]
    calls, hook = _count_calls(h)
    try:
        fo = ablation.first_order_scores(h, rec, list(s.operators))
    finally:
        hook.remove()
    assert len(calls) == s.timesteps  # one forward (and its backward) per recorded step
    assert set(fo) == set(s.operators) and all(np.isfinite(v) and v > 0 for v in fo.values())
    assert [p.requires_grad for p in h.denoiser.parameters()] == flags  # restored


def test_measured_agreement_ships_and_the_cli_prints_it(capsys):
    from pruning import load_pipeline
    from pruning.cli import main

    data = ablation.measured()
    assert data is not None and set(data["models"]) == {"tiny-shapes-sd", "tiny-shapes-flux", "tiny-shapes-sd3"}
    for name, e in data["models"].items():
        ablation.check_entry(name, e)
        assert e["block"]["granularity"] == "block"
    h = load_pipeline("tiny-shapes-flux")
    note = ablation.fast_note(h.model_ref)
    assert "measured on tiny-shapes-flux" in note and "Spearman" in note
    code = main(["sweep", "--model", "tiny-shapes-flux", "--preset", "fast", "--estimate"])
    out = capsys.readouterr().out
    assert code == 0 and "Fast score (one-step ablation" in out and "ablation calls" in out


# Sharded over 2 processes: tests/test_dist.py (the fast score runs in the shared launch there).


# R5 --quick reporting every figure is a check of the C2 row (python -m benchmarks C2).
