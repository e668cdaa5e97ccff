"""Reconstruction: exact where the kept inputs span the consumer's, better than plain pruning on
held-out activations, and exported / reloaded bit for bit with the plan recording it."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
import torch

from pruning import PruningPlan, export, load_pruned_denoiser, masked, slim
from pruning.catalog import discover, unit_view
from pruning.errors import PlanError, RunStopped, SettingsError
from pruning.loading import handle_from_pipe
from pruning.metrics import example_inputs
from pruning.plan import KEPT_FIELDS
from pruning.reconstruct import (
    ReconstructSettings,
    Stats,
    consumers,
    flat_weight,
    layer_inputs,
    reapply,
    reconstruct,
    rel_error,
)
from pruning.runs import RunControl
from pruning.testing import FAMILIES, tiny_pipeline

_WORDS = "red green blue yellow circle square triangle star left right top bottom small big".split()
PROMPTS = tuple(" ".join(random.Random(i).sample(_WORDS, 5)) for i in range(24))  # calibration, not held out
CALIB = ReconstructSettings(prompts=("a red circle", "a blue square on the left", "a green star"), steps=3,
                            ridge=1e-4)


def fresh(family: str):
    return handle_from_pipe(tiny_pipeline(family), model_ref=f"tiny:{family}")


def random_plan(h, seed: int, keep: float = 0.6, operators: int = 0) -> PruningPlan:
    """About ``keep`` of every structure's units (at least one), and ``operators`` removed operators."""
    rng = random.Random(seed)
    found = discover(h.denoiser)
    kept = {kind: {} for kind in KEPT_FIELDS}
    for fqn, s in found.structures.items():
        draw = rng if s.kind != "channel" else random.Random(seed + 1000)  # the others' draws as before channels
        kept[s.kind][fqn] = tuple(sorted(draw.sample(range(s.units), max(1, round(keep * s.units)))))
    ops = tuple(rng.sample(sorted(o for o, op in found.operators.items() if op.granularity != "block"), operators))
    return PruningPlan(family=h.family, base=h.model_ref, removed_operators=ops,
                       **{KEPT_FIELDS[k]: v for k, v in kept.items()})


def forward(den, h, seed=0):
    kw = example_inputs(den, generator=torch.Generator().manual_seed(seed), batch=2)
    with torch.no_grad():
        return den(**kw)[0]


def silence(h, plan):
    """Zero every producer slice of the units ``plan`` removes, so their activations are 0."""
    found = discover(h.denoiser)
    params = dict(h.denoiser.named_parameters())
    with torch.no_grad():
        for kind in KEPT_FIELDS:
            for fqn, kept in plan.kept(kind).items():
                s = found.structures[fqn]
                gone = [u for u in range(s.units) if u not in kept]
                for cut in s.cuts:
                    if cut.dim == 0:
                        unit_view(params[cut.param].data, cut, s)[gone] = 0.0  # (units, unit_size * rest) view


# The original model's inputs on every family: thorough only (the suite keeps SD's, the same code path).
@pytest.mark.parametrize("inputs, family", [*(("pruned", f) for f in FAMILIES), ("original", "sd"),
                                            *(pytest.param("original", f, marks=pytest.mark.thorough)
                                              for f in FAMILIES if f != "sd")])
def test_exact_when_the_removed_units_are_silent(family, inputs):
    h = fresh(family)
    plan = random_plan(h, seed=1)
    silence(h, plan)
    with masked(h.denoiser, plan):
        want = forward(h.denoiser, h)
    plain = forward(slim(h.denoiser, plan), h)
    assert torch.allclose(plain, want, atol=1e-5)  # plain slim already equals masked here
    small = reconstruct(h, plan, replace(CALIB, inputs=inputs))
    got = forward(small, h)
    assert (got - want).abs().max().item() < 1e-5, (family, (got - want).abs().max().item())
    layers = small.reconstruction["layers"]
    assert layers and all(r["rel_error_after"] < 1e-6 for r in layers.values()), layers


def held_out_errors(h, plan, small, prompts=("a yellow triangle at the top", "a big blue circle")):
    """Per consumer: relative output error against the original layer on held-out activations
    (the original model's inputs on held-out prompts and seeds): plain pruning vs ``small``."""
    from pruning.reconstruct import _calibrate, _trajectories, record_calls

    s = ReconstructSettings(prompts=prompts, seeds=(77, 78), steps=3).resolved(h)
    items = consumers(h.denoiser, plan.normalized(h.denoiser))
    recorded = record_calls(h.denoiser, _trajectories(h, s, RunControl()), RunControl())
    stats = _calibrate(h, None, recorded, items, RunControl(), "held-out")
    out = {}
    for c in items:
        layer, new = h.denoiser.get_submodule(c.fqn), small.get_submodule(c.fqn)
        W, b = flat_weight(layer), None if layer.bias is None else layer.bias.detach().double()
        if c.rows is not None:  # a consumer that loses rows too (a resnet's time_emb_proj): its kept outputs
            W, b = W[c.rows], None if b is None else b[c.rows]
        bk = None if new.bias is None else new.bias.detach().double()
        out[c.fqn] = (rel_error(W, b, stats[c.fqn], W[:, c.keep], b),
                      rel_error(W, b, stats[c.fqn], flat_weight(new), bk))
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_lowers_held_out_layer_error_on_a_random_plan(family):
    h = fresh(family)
    plan = random_plan(h, seed=2, keep=0.5, operators=1)
    small = reconstruct(h, plan, ReconstructSettings(prompts=PROMPTS, steps=3, inputs="original",
                                                     compensate_operators=True))
    errors = held_out_errors(h, plan, small)
    assert errors
    worse = {f: e for f, e in errors.items() if not e[1] < e[0]}
    assert not worse, worse
    assert small.pruning_plan.compensated == plan.removed_operators  # the removed operator got a bias
    assert small.reconstruction["operators"][plan.removed_operators[0]]["bias_norm"] > 0


def test_conv_consumer_inputs_are_the_exact_im2col():
    conv = torch.nn.Conv2d(3, 5, 3, padding=1)
    x = torch.randn(2, 3, 6, 6)
    rows = layer_inputs(conv, x)  # (B*L, C*k*k)
    y = (rows.double() @ flat_weight(conv).T + conv.bias.double()).reshape(2, 36, 5).transpose(1, 2)
    assert torch.allclose(y.reshape(2, 5, 6, 6).float(), conv(x), atol=1e-5)
    st = Stats(rows.shape[1], 4, "cpu")
    st.add(rows, rows[:, :4])
    assert st.rows == 72 and st.means()[0][-1, -1].item() == 1.0


def test_export_reloads_bit_identically_and_the_plan_records_it(tmp_path):
    h = fresh("sd")
    plan = random_plan(h, seed=3, keep=0.5, operators=2)
    small = reconstruct(h, plan, ReconstructSettings(prompts=CALIB.prompts, steps=2, compensate_operators=True))
    rec = small.pruning_plan.reconstruction
    assert rec["settings"]["ridge"] == ReconstructSettings().ridge and rec["settings"]["prompts"] == list(CALIB.prompts)
    out = export(h, small.pruning_plan, tmp_path / "exp", denoiser=small)
    back = load_pruned_denoiser(out)
    assert back.pruning_plan.reconstruction == rec
    a, b = small.state_dict(), back.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(".compensation." in k for k in a)
    assert torch.equal(forward(small, h), forward(back, h))
    # the plan file alone re-applies it to the base weights: the same reconstruction, bit for bit
    again = reapply(h, small.pruning_plan)
    assert all(torch.equal(a[k], again.state_dict()[k]) for k in a)
    plain = slim(h.denoiser, plan)
    assert not torch.equal(forward(plain, h), forward(small, h))


def test_export_refuses_a_reconstructed_model_with_the_plain_plan(tmp_path):
    h = fresh("sd")
    plan = random_plan(h, seed=4, operators=1)
    small = reconstruct(h, plan, ReconstructSettings(prompts=("a red circle",), steps=2))
    with pytest.raises(PlanError, match="reconstruct"):
        export(h, plan, tmp_path / "exp", denoiser=small)
    assert not (tmp_path / "exp").exists()


def test_plan_json_round_trip_and_bad_records():
    plan = PruningPlan(family="sd", base="x", removed_operators=("a.b",),
                       reconstruction={"settings": {"ridge": 0.1}, "compensated": ["a.b"]})
    assert PruningPlan.from_json(plan.to_json()) == plan and plan.compensated == ("a.b",)
    assert "reconstruction" not in PruningPlan(family="sd", base="x").to_dict()  # old plans stay as they were
    for bad, word in [({"settings": {}}, "compensated"), ({"settings": 1, "compensated": []}, "settings"),
                      ({"settings": {}, "compensated": "a.b"}, "compensated"), ([], "reconstruction")]:
        with pytest.raises(PlanError, match=word):
            PruningPlan(family="sd", base="x", reconstruction=bad)
    h = fresh("sd")
    stray = PruningPlan(family="sd", base=h.model_ref, reconstruction={"settings": {}, "compensated": ["mid_block.resnets.0"]})
    with pytest.raises(PlanError, match="mid_block.resnets.0"):
        stray.validate(h.denoiser)


@pytest.mark.parametrize("kw, word", [({"ridge": -1}, "ridge"), ({"ridge": float("nan")}, "ridge"),
                                      ({"max_gram_mb": 0.0}, "max_gram_mb"), ({"batch_size": 0}, "batch_size"),
                                      ({"compensate_operators": "yes"}, "compensate_operators"),
                                      ({"steps": 0}, "steps")])
def test_bad_settings_name_the_field(kw, word):
    with pytest.raises(SettingsError, match=word):
        ReconstructSettings(**kw)


@pytest.mark.slow
def test_memory_is_bounded_by_groups_and_the_result_does_not_depend_on_them():
    h = fresh("sd")
    plan = random_plan(h, seed=5)
    # with the original model's inputs the layers are independent: grouping changes nothing
    one = reconstruct(h, plan, ReconstructSettings(prompts=CALIB.prompts, steps=2, inputs="original", groups=1))
    many = reconstruct(h, plan, ReconstructSettings(prompts=CALIB.prompts, steps=2, inputs="original", groups=1,
                                                    max_gram_mb=0.05))
    assert one.reconstruction["passes"] == 1 and many.reconstruction["passes"] > 2
    assert many.reconstruction["gram_mb"] < one.reconstruction["gram_mb"]
    a, b = one.state_dict(), many.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit for bit: each layer's statistics are summed in the same order


def test_stop_changes_nothing():
    h = fresh("sd")
    before = {k: v.clone() for k, v in h.denoiser.state_dict().items()}
    c = RunControl()
    c.stop()
    with pytest.raises(RunStopped, match="nothing was changed"):
        reconstruct(h, random_plan(h, seed=6), ReconstructSettings(prompts=CALIB.prompts, steps=2), control=c)
    assert all(torch.equal(before[k], v) for k, v in h.denoiser.state_dict().items())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in h.denoiser.modules())


@pytest.mark.slow
def test_compare_reports_both_with_intervals(tiny_sd):
    from pruning.compare import CompareSettings, compare_methods

    s = CompareSettings(eval_prompts=["a red circle", "a blue square", "a green star"], calib_prompts=["a red circle"],
                        random_draws=2, reconstruct=True, reconstruct_settings={"steps": 2, "prompts": list(PROMPTS[:4])})
    df = compare_methods(tiny_sd, [0.3], ["magnitude", "random"], settings=s)
    assert df[["method", "reconstructed"]].values.tolist()[:5] == [
        ["original", False], ["magnitude", False], ["magnitude", True], ["random", False], ["random", True]]
    assert set(df["method"][5:]) == {"fewer steps"}
    rec = df[df["reconstructed"].fillna(False).astype(bool)]
    assert (rec["reconstruct_s"] > 0).all() and rec["latent_mse_se"].notna().all()
    plain = df[(df["method"] == "magnitude") & ~df["reconstructed"]].iloc[0]
    assert plain["params"] == rec.iloc[0]["params"]  # the same plan: the same shapes
    assert 0 < plain["latent_mse_se"] < plain["latent_mse"] and -1 <= plain["ssim"] <= 1
    assert "clip_score" not in df.columns and df.attrs["clip"].startswith("not computed")  # offline here


def test_compare_settings_are_checked_up_front():
    from pruning.compare import CompareSettings

    with pytest.raises(SettingsError, match="ridge"):
        CompareSettings(reconstruct=True, reconstruct_settings={"ridge": -1})
    with pytest.raises(SettingsError, match="reconstruct"):
        CompareSettings(reconstruct="yes")


def test_clip_fails_fast_and_clearly_offline():
    import time

    from pruning.clipscore import load_clip
    from pruning.errors import ModelLoadError

    t0 = time.perf_counter()
    with pytest.raises(ModelLoadError, match="CLIP model 'openai/clip-vit-base-patch16'.*offline"):
        load_clip()
    assert time.perf_counter() - t0 < 10


def test_the_guard_rail_falls_back_to_plain_slimming_where_a_fit_raises_held_out_error():
    """A fit that cannot generalise (huge negative ridge is refused, so: a pure least-squares fit on
    one calibration batch of a single prompt) is judged on the held-out batch; every layer whose
    held-out error the fit raised keeps the plain slim weights, and every kept fit lowered it."""
    h = fresh("sd")
    plan = random_plan(h, seed=5, keep=0.3)
    prompts = ("red",) * 3 + PROMPTS[:1]  # three batches of one prompt to fit, the fourth held out
    s = ReconstructSettings(prompts=prompts, steps=2, ridge=0.0, batch_size=1, guard=True, inputs="pruned",
                            groups=2, timestep_weights="linear", check=False)  # the layer guard alone
    small = reconstruct(h, plan, s)
    plain = slim(h.denoiser, plan)
    layers = small.reconstruction["layers"]
    assert layers and all("fallback" in r for r in layers.values())
    for fqn, r in layers.items():
        same = torch.equal(small.get_submodule(fqn).weight, plain.get_submodule(fqn).weight)
        assert same == r["fallback"], fqn
        assert r["fallback"] == (r["held_out_after"] > r["held_out_before"])
    assert small.reconstruction["passes"] >= 2  # sequential: one pass per group


def test_a_sequential_reconstruction_exports_and_reloads_bit_identically(tmp_path):
    h = fresh("sd")
    plan = random_plan(h, seed=6, keep=0.5)
    s = ReconstructSettings(prompts=PROMPTS[:8], steps=2, batch_size=2, inputs="pruned", groups=3,
                            timestep_weights="linear", guard=True)
    small = reconstruct(h, plan, s)
    back = load_pruned_denoiser(export(h, small.pruning_plan, tmp_path / "exp", denoiser=small))
    a, b = small.state_dict(), back.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_record_without_the_newer_settings_means_the_legacy_values():
    rec = {k: v for k, v in CALIB.__dict__.items() if k not in ("groups", "timestep_weights", "guard")}
    s = ReconstructSettings.from_record({**rec, "prompts": list(CALIB.prompts)})
    assert (s.groups, s.timestep_weights, s.guard) == (1, "flat", False)


def test_the_fewer_steps_baseline_spends_each_plans_macs_per_image(tiny_sd):
    from pruning.compare import CompareSettings, compare_methods, matched_steps

    assert [matched_steps(20, f) for f in (0.0, 0.2, 0.24, 0.26, 1.0)] == [20, 16, 15, 15, 1]
    s = CompareSettings(eval_prompts=["a red circle", "a blue square"], calib_prompts=["a red circle"], steps=10,
                        random_draws=1)
    df = compare_methods(tiny_sd, [0.3], ["magnitude"], settings=s)
    orig = df[df["method"] == "original"].iloc[0]
    plan = df[df["method"] == "magnitude"].iloc[0]
    few = df[df["method"] == "fewer steps"]
    assert len(few) == 1 and few["steps_full"].iloc[0] == 10
    assert few["steps"].iloc[0] == round(10 * plan["macs"] / orig["macs"]) < 10
    assert few["params_fraction"].iloc[0] == 0 and few["plans"].iloc[0] == "magnitude"
    assert 0 < few["latent_mse"].iloc[0]  # fewer steps is not the original


def _offloaded_twins():
    """(plain handle, model-offloaded handle, sequentially offloaded handle): the same weights.
    On this CPU-only machine the hooks compute on the CPU (see tests/test_offload.py)."""
    import copy

    from accelerate import cpu_offload

    pipe = tiny_pipeline("sd")
    model, seq = copy.deepcopy(pipe), copy.deepcopy(pipe)
    model.enable_model_cpu_offload(device="cpu")
    cpu_offload(seq.unet, execution_device="cpu")  # weights on meta between calls, held by the hooks
    return [handle_from_pipe(p, model_ref="tiny:sd") for p in (pipe, model, seq)]


@pytest.mark.parametrize("inputs", ["original", "pruned"])
def test_offloaded_reconstruction_is_bit_identical(inputs):
    plain, model, seq = _offloaded_twins()
    assert next(seq.denoiser.parameters()).is_meta
    s = ReconstructSettings(prompts=PROMPTS[:4], steps=1, batch_size=1, groups=2, inputs=inputs)  # batch 4 is held out: checked
    found = discover(plain.denoiser).structures
    plan = PruningPlan(family="sd", base="tiny:sd", **{f"kept_{k}s": {fqn: (0,)} for k, fqn in (
        ("head", "down_blocks.0.attentions.0.transformer_blocks.0.attn1"), ("neuron", "mid_block.attentions.0.transformer_blocks.0.ff"),
        ("group", "up_blocks.0.resnets.0"))})
    assert all(fqn in found for kept in (plan.kept_heads, plan.kept_neurons, plan.kept_groups) for fqn in kept)
    ref = reconstruct(plain, plan, s)
    assert ref.reconstruction["check"]  # the end-to-end check ran (on the offloaded slim model too)
    for h in (model, seq):
        got = reconstruct(h, plan, s)
        a, b = ref.state_dict(), got.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        assert got.reconstruction["layers"] == ref.reconstruction["layers"]


def test_only_the_current_groups_statistics_are_alive(monkeypatch):
    import sys
    import weakref

    rec = sys.modules["pruning.reconstruct"]  # the module (the package exports the function by that name)

    h = fresh("sd")
    plan = random_plan(h, seed=5)
    alive, worst = weakref.WeakSet(), [0]
    init = rec.Stats.__init__

    def counted(self, *a, **kw):
        init(self, *a, **kw)
        alive.add(self)
        worst[0] = max(worst[0], sum(st.nbytes for st in alive))

    monkeypatch.setattr(rec.Stats, "__init__", counted)
    s = ReconstructSettings(prompts=CALIB.prompts, steps=2, groups=1, max_gram_mb=0.05, check=False, inputs="original")
    small = reconstruct(h, plan, s)
    groups = rec.sequential_groups(consumers(h.denoiser, plan.normalized(h.denoiser)), 0.05 * 2 ** 20, n=1)
    largest = max(sum(c.gram_bytes() for c in g) for g in groups)
    assert small.reconstruction["passes"] == len(groups) > 2
    assert worst[0] <= largest  # never two groups' statistics at once
    assert len(alive) == 0  # and none kept by the result


def test_the_memory_estimate_counts_what_the_run_holds():
    """The estimate's working memory (pruning.estimate) against the live tensor bytes of the run
    it estimates (the same code path as R3's SD 1.5 entry, where RSS is measured)."""
    from pruning.estimate import LiveBytes, reconstruction_cost, typical_plan

    h = fresh("sd")
    plan = typical_plan(h)
    for s in (ReconstructSettings(prompts=PROMPTS[:2], steps=2, groups=2),
              ReconstructSettings(prompts=PROMPTS[:2], steps=2, groups=2, inputs="pruned")):
        cost = reconstruction_cost(h, plan, s)
        with LiveBytes() as meter:
            reconstruct(h, plan, s)
        assert 0.7 <= meter.peak / cost.peak_working <= 1.4, (s.inputs, meter.peak, cost.phases)
