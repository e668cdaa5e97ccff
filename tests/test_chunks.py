"""Chunked runs equal uninterrupted ones: the sweep and Taylor bit for bit, EcoDiff too (the
optimizer state and the gate-noise RNG are carried exactly), through memory and through a
saved state file; a budget in seconds really splits a run; a state from another run is refused."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from pruning import methods
from pruning.chunks import score_chunk, score_chunked
from pruning.errors import SettingsError
from pruning.loading import handle_from_pipe
from pruning.runs import Budget, RunControl, RunState
from pruning.testing import tiny_pipeline

PROMPTS = ["a red circle at the center", "a blue square at the top left", "a green triangle at the bottom"]
OPS = ("mid_block.resnets.0", "down_blocks.0.attentions.0.transformer_blocks.0.attn2",
       "up_blocks.1.attentions.0.transformer_blocks.0.ff")

SETTINGS = {
    "ldpruner": dict(prompts=PROMPTS[:2], n_gen=2, steps=2, operators=OPS),
    "taylor": dict(prompts=PROMPTS[:2], steps=2, stride=200, thr=0.0),
    "ecodiff": dict(prompts=PROMPTS, steps=2, epochs=2, batch_size=2),
}


@pytest.fixture(scope="module")
def h():
    return handle_from_pipe(tiny_pipeline("sd"), model_ref="tiny:sd")


def _same(a, b):
    assert a.partial is False and b.partial is False
    pd.testing.assert_frame_equal(a.table, b.table, check_exact=True)
    assert a.info == b.info and a.settings == b.settings


@pytest.mark.parametrize("method", ["ldpruner", "taylor", "ecodiff"])
def test_one_unit_chunks_equal_the_uninterrupted_run(h, method):
    m = methods.get(method)
    s = m.settings(**SETTINGS[method])
    whole = m.score(h, s)
    reports = []
    run = score_chunked(h, method, s, budget=Budget(units=1),
                        control=RunControl(progress=lambda d, t, info: reports.append((d, t))))
    expected = {"ldpruner": 3, "taylor": 1 + 5, "ecodiff": 2 + 4}[method]  # units; one per chunk, +1 finishing
    assert run.chunks in (expected, expected + 1)
    assert run.state is None
    _same(run.result, whole)
    done = [d for d, _ in reports]
    assert done == sorted(done) and len({t for _, t in reports}) == 1  # one progress count over the whole run


@pytest.mark.parametrize("method", ["ldpruner", "taylor", "ecodiff"])
def test_a_saved_state_resumes_in_a_fresh_run(h, method, tmp_path):
    """Each chunk's state goes through a safetensors file, as between two processes."""
    m = methods.get(method)
    s = m.settings(**SETTINGS[method])
    whole = m.score(h, s)
    state, n = None, 0
    while True:
        scores, state = score_chunk(h, method, s, state, Budget(units=2))
        n += 1
        if state is None:
            break
        assert scores.partial and scores.info["stopped"] == "chunk ended"
        state = RunState.load(state.save(tmp_path / f"{n}.safetensors"))
    assert n >= 2
    _same(scores, whole)


def test_a_budget_in_seconds_splits_the_run(h):
    s = methods.get("taylor").settings(**{**SETTINGS["taylor"], "stride": 100})
    whole = methods.get("taylor").score(h, s)
    run = score_chunked(h, "taylor", s, budget=Budget(seconds=0.05))
    assert run.chunks >= 2
    _same(run.result, whole)


def test_ecodiff_gates_and_optimizer_state_round_trip(h, tmp_path):
    from pruning.methods.ecodiff import optimize

    s = methods.get("ecodiff").settings(**SETTINGS["ecodiff"])
    control = RunControl(chunk=Budget(units=3))  # both targets and one optimizer step
    part = optimize(h, s, control=control)
    assert part.partial and len(part.history) == 1
    st = RunState.load(part.resume.save(tmp_path / "eco.safetensors"))
    assert st.data["targets"] == 2 and {"rng", "target.0", "target.1"} <= set(st.tensors)
    assert any(k.startswith("adam.") and k.endswith(".exp_avg_sq") for k in st.tensors)
    rest = optimize(h, s, state=st)
    whole = optimize(h, s)
    for f in whole.lambdas:
        assert torch.equal(rest.lambdas[f], whole.lambdas[f]), f
    pd.testing.assert_frame_equal(rest.history, whole.history, check_exact=True)


def test_a_stopped_run_keeps_its_state(h):
    s = methods.get("ldpruner").settings(**SETTINGS["ldpruner"])
    control = RunControl()
    control.report = lambda done, total, **info: control.stop("Stop pressed") if done == 1 else None
    run = score_chunked(h, "ldpruner", s, control=control)
    assert run.result.partial and run.result.info["stopped"] == "Stop pressed"
    assert run.state is not None and len(run.state.data["rows"]) == 1
    finished = score_chunked(h, "ldpruner", s, state=run.state)
    _same(finished.result, methods.get("ldpruner").score(h, s))


def test_a_state_from_another_run_is_refused(h, tmp_path):
    s = methods.get("taylor").settings(**SETTINGS["taylor"])
    _, state = score_chunk(h, "taylor", s, None, Budget(units=2))
    other = methods.get("taylor").settings(**{**SETTINGS["taylor"], "stride": 300})
    with pytest.raises(SettingsError, match="stride differ"):
        score_chunk(h, "taylor", other, state)
    with pytest.raises(SettingsError, match="state is of a diffpruning run, not ecodiff"):
        score_chunk(h, "ecodiff", methods.get("ecodiff").settings(**SETTINGS["ecodiff"]), state)
    with pytest.raises(SettingsError, match="magnitude runs in one chunk"):
        score_chunk(h, "magnitude", None, state)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a state")
    with pytest.raises(SettingsError, match="bad.safetensors"):
        RunState.load(bad)
    with pytest.raises(SettingsError, match="chunk budget"):
        Budget(seconds=-1)


@pytest.mark.slow
def test_a_chunked_comparison_equals_the_uninterrupted_one(h, tmp_path):
    from pruning.chunks import compare_chunked
    from pruning.compare import CompareSettings, compare_chunk, compare_methods

    s = CompareSettings(eval_prompts=PROMPTS[:2], calib_prompts=PROMPTS[:2], steps=2, random_draws=1, clip=False,
                        method_settings={"taylor": {"stride": 300}})
    chosen, sps = ["taylor", "random"], [0.1, 0.3]
    whole = compare_methods(h, sps, chosen, settings=s)
    run = compare_chunked(h, sps, chosen, settings=s, budget=Budget(units=1))
    assert run.chunks >= 7 and run.state is None  # original, Taylor's timesteps, 2 scorings, 4 plans
    assert run.result.attrs["partial"] is False
    pd.testing.assert_frame_equal(run.result, whole, check_exact=True)
    df, state = compare_chunk(h, sps, chosen, settings=s, control=RunControl(chunk=Budget(units=3)))
    assert df.attrs["partial"] and df.attrs["stopped"] == "chunk ended" and state.data["inner"]  # inside Taylor
    state = RunState.load(state.save(tmp_path / "cmp.safetensors"))
    rest = compare_chunked(h, sps, chosen, settings=s, state=state)
    pd.testing.assert_frame_equal(rest.result, whole, check_exact=True)
