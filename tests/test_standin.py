"""Fitted stand-ins for removed operators (pruning.standin): the map is the closed-form least-squares
solution, merges into a kept 1x1 shortcut, is counted by the plan's summary, and exports / reloads /
re-applies bit for bit."""

from __future__ import annotations

import pytest
import torch

from pruning import PruningPlan, export, load_pruned, load_pruned_denoiser, slim
from pruning.catalog import discover
from pruning.errors import SettingsError
from pruning.loading import handle_from_pipe
from pruning.metrics import example_inputs
from pruning.reconstruct import ReconstructSettings, reapply, reconstruct
from pruning.rollout import prepare, rollout
from pruning.standin import MapStats, channel_rows
from pruning.testing import tiny_pipeline

PROMPTS = ("a red circle", "a blue square on the left", "a green star")
ATTN = "down_blocks.0.attentions.0.transformer_blocks.0.attn1"
RES_PLAIN = "mid_block.resnets.0"  # no conv_shortcut: the map is a new (C, C) weight
RES_SHORTCUT = "up_blocks.0.resnets.0"  # a 1x1 conv_shortcut: the map merges into it


def fresh(family: str = "sd"):
    return handle_from_pipe(tiny_pipeline(family), model_ref=f"tiny:{family}")


def forward(den, seed=0):
    kw = example_inputs(den, generator=torch.Generator().manual_seed(seed), batch=2)
    with torch.no_grad():
        return den(**kw)[0]


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_map_stats_fit_is_the_ridge_least_squares_solution():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 6, generator=g, dtype=torch.float64)
    r = x @ torch.randn(6, 4, generator=g, dtype=torch.float64) + 0.3 + 0.01 * torch.randn(500, 4, generator=g,
                                                                                          dtype=torch.float64)
    st = MapStats(6, 4, "cpu")
    st.add(x[:200], r[:200])
    st.add(x[200:], r[200:])
    xa = torch.cat([x, torch.ones(500, 1, dtype=torch.float64)], 1)  # (rows, 7)
    A, c = st.fit(0.0)
    sol = torch.linalg.lstsq(xa, r).solution.T  # (4, 7)
    assert torch.allclose(A, sol[:, :6], atol=1e-9) and torch.allclose(c, sol[:, 6], atol=1e-9)
    lam = 0.5 * float((x * x).mean(0).mean())  # the ridge is relative to the inputs' mean energy, on A only
    reg = xa.T @ xa / 500
    reg[:6, :6] += lam * torch.eye(6, dtype=torch.float64)
    ridge = torch.linalg.solve(reg, xa.T @ r / 500).T
    A, c = st.fit(0.5)
    assert torch.allclose(A, ridge[:, :6], atol=1e-9) and torch.allclose(c, ridge[:, 6], atol=1e-9)
    _, mean = st.fit(0.0, linear=False)
    assert torch.allclose(mean, r.mean(0), atol=1e-12)


def test_fitted_map_on_a_pipeline_equals_least_squares_on_the_recorded_activations():
    h = fresh()
    plan = PruningPlan(family="sd", base=h.model_ref, removed_operators=(ATTN,))
    s = ReconstructSettings(prompts=PROMPTS, steps=2, standin="linear", standin_ridge=1e-3, check=False, groups=1)
    small = reconstruct(h, plan, s)  # one batch: nothing held out, every row is fitted
    rows = {"x": [], "y": []}

    def hook(m, args, kwargs, out):
        x = args[0] if args else kwargs["hidden_states"]
        rows["x"].append(channel_rows(x).double())
        rows["y"].append(channel_rows(out).double())  # a removed branch's stand-in outputs 0: r = y
    handle = h.denoiser.get_submodule(ATTN).register_forward_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            rollout(h.denoiser, prepare(h, list(PROMPTS), [10_000, 10_001, 10_002], steps=2))
    finally:
        handle.remove()
    x, y = torch.cat(rows["x"]), torch.cat(rows["y"])
    xa = torch.cat([x, torch.ones(len(x), 1, dtype=torch.float64)], 1)
    d = x.shape[1]
    gram = xa.T @ xa / len(x)  # (D+1, D+1); LayerNorm'd inputs are rank-deficient: the ridge makes it unique
    gram[:d, :d] += 1e-3 * float(gram.diagonal()[:d].mean()) * torch.eye(d, dtype=torch.float64)
    sol = torch.linalg.solve(gram, xa.T @ y / len(x)).T  # (D, D+1): the closed-form ridge least squares
    standin = small.get_submodule(ATTN)
    assert torch.allclose(standin.linear[0].double(), sol[:, :-1], rtol=1e-4, atol=1e-5)
    assert torch.allclose(standin.compensation[0].double(), sol[:, -1], rtol=1e-4, atol=1e-5)
    assert small.pruning_plan.reconstruction["settings"]["standin"] == "linear"
    assert small.pruning_plan.compensated == (ATTN,)


def test_merged_map_adds_no_weight_and_the_summary_counts_the_others():
    h = fresh()
    plan = PruningPlan(family="sd", base=h.model_ref, removed_operators=(ATTN, RES_PLAIN, RES_SHORTCUT))
    small = reconstruct(h, plan, ReconstructSettings(prompts=PROMPTS, steps=2, standin="linear"))
    merged = small.get_submodule(RES_SHORTCUT)
    assert "linear" not in merged._modules
    assert not torch.equal(merged.conv_shortcut.weight, h.denoiser.get_submodule(RES_SHORTCUT).conv_shortcut.weight)
    c = h.denoiser.get_submodule(RES_PLAIN).conv1.in_channels
    assert tuple(small.get_submodule(RES_PLAIN).linear[0].shape) == (c, c)
    summ = small.pruning_plan.summary(h.denoiser)
    assert summ["params_removed"] == count(h.denoiser) - count(small)
    assert summ["params_added_by_standins"] == count(small) - count(slim(h.denoiser, plan))
    assert forward(small).isfinite().all() and not torch.equal(forward(small), forward(slim(h.denoiser, plan)))


@pytest.mark.parametrize("family, mode", [("sd", "linear"), ("flux", "linear"), ("sd3", "sequential")])
def test_linear_standins_export_reload_and_reapply_bit_for_bit(family, mode, tmp_path):
    h = fresh(family)
    found = discover(h.denoiser)
    ops = [o for o, op in found.operators.items() if op.granularity != "block"][:1]
    ops += [o for o, op in found.operators.items() if op.granularity == "block"
            and not any(o.startswith(x + ".") or x.startswith(o + ".") for x in ops)][:1]
    plan = PruningPlan(family=family, base=h.model_ref, removed_operators=tuple(ops))
    small = reconstruct(h, plan, ReconstructSettings(prompts=PROMPTS, steps=2, standin=mode))
    assert any(".linear." in k for k in small.state_dict())
    a = small.state_dict()
    back = load_pruned_denoiser(export(h, small.pruning_plan, tmp_path / "full", denoiser=small, card=False))
    b = back.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(forward(small), forward(back))
    only = load_pruned(export(h, small.pruning_plan, tmp_path / "plan", denoiser=small, plan_only=True, card=False),
                       base=h)
    c = only.pipe.components[h.denoiser_name].state_dict() if hasattr(only, "pipe") else only.state_dict()
    assert all(torch.equal(a[k], c[k]) for k in a)
    again = reapply(h, small.pruning_plan).state_dict()
    assert all(torch.equal(a[k], again[k]) for k in a)


def test_auto_keeps_the_best_held_out_choice_and_none_is_plain():
    h = fresh()
    plan = PruningPlan(family="sd", base=h.model_ref, removed_operators=(ATTN, RES_PLAIN))
    prompts = tuple(f"a {c} {s}" for c in ("red", "blue", "green", "yellow") for s in ("circle", "square"))
    small = reconstruct(h, plan, ReconstructSettings(prompts=prompts, steps=2, batch_size=2, standin="auto"))
    rep = small.reconstruction["standin"]
    errors = rep["candidates"]
    assert set(errors) == {"none", "bias", "linear"} and rep["chosen"] == min(errors, key=errors.get)
    assert small.pruning_plan.reconstruction["settings"]["standin"] == rep["chosen"]
    none = reconstruct(h, plan, ReconstructSettings(prompts=prompts, steps=2, batch_size=2, standin="none"))
    assert none.pruning_plan.compensated == () and not any(".compensation." in k for k in none.state_dict())


def test_sequential_fits_each_map_on_the_pruned_models_inputs():
    h = fresh()
    plan = PruningPlan(family="sd", base=h.model_ref, removed_operators=(ATTN, RES_PLAIN))
    s = dict(prompts=PROMPTS, steps=2, check=False)
    lin = reconstruct(h, plan, ReconstructSettings(**s, standin="linear"))
    seq = reconstruct(h, plan, ReconstructSettings(**s, standin="sequential"))
    # the first operator in depth order sees the same inputs either way; the later one does not
    assert torch.allclose(lin.get_submodule(ATTN).linear[0], seq.get_submodule(ATTN).linear[0], atol=1e-6)
    assert not torch.allclose(lin.get_submodule(RES_PLAIN).linear[0], seq.get_submodule(RES_PLAIN).linear[0])
    assert seq.pruning_plan.summary(h.denoiser)["params_added_by_standins"] == \
        lin.pruning_plan.summary(h.denoiser)["params_added_by_standins"]


def test_older_records_and_the_older_switch_mean_the_bias():
    assert ReconstructSettings.from_record({"compensate_operators": True}).standin == "bias"
    assert ReconstructSettings.from_record({}).standin == "none"  # recorded before stand-ins: nothing compensated
    assert ReconstructSettings(compensate_operators=True).standin == "bias"
    assert ReconstructSettings().standin == "none"
    with pytest.raises(SettingsError, match="standin"):
        ReconstructSettings(standin="cubic")
    with pytest.raises(SettingsError, match="standin_ridge"):
        ReconstructSettings(standin_ridge=-1)


@pytest.mark.parametrize("mode", ["linear", "sequential"])
def test_a_stop_while_fitting_stand_ins_names_them_and_changes_nothing(monkeypatch, mode):
    from pruning import standin
    from pruning.errors import RunStopped
    from pruning.runs import RunControl

    h = fresh()
    before = {k: v.clone() for k, v in h.denoiser.state_dict().items()}
    plan = PruningPlan(family="sd", base=h.model_ref, removed_operators=(ATTN, RES_PLAIN))
    control = RunControl()
    walk = standin._walk

    def stop_then_walk(*a, **k):  # the Stop arrives once the stand-ins' pass has started
        control.stop()
        return walk(*a, **k)

    monkeypatch.setattr(standin, "_walk", stop_then_walk)
    with pytest.raises(RunStopped, match=r"operators' stand-ins \((batch|operator) 1 of"):
        reconstruct(h, plan, ReconstructSettings(prompts=PROMPTS, steps=2, check=False, standin=mode),
                    control=control)
    assert all(torch.equal(v, before[k]) for k, v in h.denoiser.state_dict().items())
