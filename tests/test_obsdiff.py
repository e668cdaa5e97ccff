"""OBS-Diff (pruning.methods.obsdiff): the OBS solver against its closed form and a brute-force
greedy, the registry / CLI / estimator / chunks wiring, the invariants every method keeps
(masked == slim, export and plan-only export reload bit for bit), and reconstruction on its plans
(it starts from OBS-Diff's compensation and is exported / re-applied bit for bit)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from pruning import methods
from pruning.chunks import score_chunk, score_chunked
from pruning.errors import PlanError, SettingsError
from pruning.estimate import estimate
from pruning.export import build, export, load_pruned, load_pruned_denoiser
from pruning.manifest import read_manifest
from pruning.masks import masked
from pruning.methods import obsdiff
from pruning.methods.obsdiff import OBSLayer, Unit, compensated, prepare_hessian, rrf, select
from pruning.reconstruct import ReconstructSettings, reapply, reconstruct, start_record
from pruning.runs import Budget, as_control
from pruning.sampling import generate_latents
from pruning.slim import slim

PROMPTS = ["a red circle", "a blue square"]


def _settings(**kw):  # every unit kind: heads exercise the joint (RRF) and shared-consumer paths
    return obsdiff.METHOD.settings(**{"prompts": PROMPTS, "steps": 2, "kinds": ("head", "neuron", "group"), **kw})


def _layer(out=6, heads=4, head=4, rows=300, seed=0, dead=None):
    g = torch.Generator().manual_seed(seed)
    D = heads * head
    W = torch.randn(out, D, generator=g, dtype=torch.float64)
    X = torch.randn(rows, D, generator=g, dtype=torch.float64) @ torch.randn(D, D, generator=g, dtype=torch.float64)
    if dead is not None:
        X[:, dead] = 0
    return W, X.T @ X / rows


def _heads(n, size, remove, consumers=("c",)):
    cols = torch.arange(n * size).reshape(n, size)  # (units, k)
    return Unit("s", "head", n, remove, {c: cols for c in consumers})


def _loss(W0, H, keep):
    """The OBS objective at its optimum for kept columns ``keep``: tr((W0 - W') H (W0 - W')^T)."""
    d = W0 - compensated(W0, H, keep)
    return float(torch.einsum("od,de,oe->", d, H, d))


def test_compensated_weights_equal_the_closed_form():
    W, H = _layer()
    layer = OBSLayer(W, H, 0.01)
    order, _ = select(_heads(4, 4, 2), {"c": layer}, 60)
    keep = layer.live
    Hd = H + 0.01 * H.diagonal().mean() * torch.eye(16, dtype=torch.float64)  # the same damping
    K = keep.nonzero().flatten()
    closed = W @ Hd[:, K] @ torch.linalg.inv(Hd[K][:, K])
    assert len(order) == 2 and int(keep.sum()) == 8
    assert torch.allclose(layer.final()[:, K], closed, atol=1e-10)
    assert torch.allclose(layer.W[:, K], closed, atol=1e-8)  # the sequential OBS updates reach it too
    assert torch.all(layer.final()[:, ~keep] == 0)


def test_each_removal_picks_the_head_of_least_obs_error():
    W, H = _layer(heads=6, seed=1)
    Hd, W0 = prepare_hessian(H, W, 0.01)
    layer = OBSLayer(W, H, 0.01)
    order, scores = select(_heads(6, 4, 4), {"c": layer}, 60)
    keep = torch.ones(24, dtype=torch.bool)
    for picked in order:  # brute force: the head whose removal raises the optimal loss least
        base = _loss(W0, Hd, keep)
        rise = {}
        for h in range(6):
            if keep[h * 4]:
                k = keep.clone()
                k[h * 4:(h + 1) * 4] = False
                rise[h] = _loss(W0, Hd, k) - base
        assert picked == min(rise, key=rise.get)
        assert scores[picked] == pytest.approx(rise[picked], rel=1e-6)
        keep[picked * 4:(picked + 1) * 4] = False


def test_joint_heads_merge_rankings_and_compensate_each_consumer_with_its_own_h():
    W1, H1 = _layer(seed=2)
    W2, H2 = _layer(seed=3)
    a, b = OBSLayer(W1, H1, 0.01), OBSLayer(W2, H2, 0.01)
    cols = torch.arange(16).reshape(4, 4)
    first = [torch.argsort(x.errors(cols), stable=True).tolist() for x in (a, b)]
    order, _ = select(_heads(4, 4, 1, ("a", "b")), {"a": a, "b": b}, 60)
    assert order == rrf(first, 60)[:1]
    for x, W, H in ((a, W1, H1), (b, W2, H2)):
        Hd, W0 = prepare_hessian(H, W, 0.01)
        assert torch.allclose(x.final(), compensated(W0, Hd, x.live), atol=1e-12)


def test_dead_columns_are_zeroed():
    W, H = _layer(dead=[5])
    layer = OBSLayer(W, H, 0.01)
    assert layer.H[5, 5] > 1 and torch.all(layer.W0[:, 5] == 0)
    select(_heads(4, 4, 1), {"c": layer}, 60)
    assert torch.all(layer.final()[:, 5] == 0)


def test_neurons_are_removed_in_blocks_and_units_never_emptied(tiny_sd):
    rows = obsdiff.targets(tiny_sd, _settings())
    counts, p, reached = obsdiff.allocate(tiny_sd, rows, 0.3)
    assert all(0 < n < u for n, u in zip(counts.values(), rows["units"]) if n) and reached == pytest.approx(0.3, abs=0.02)
    with pytest.raises(PlanError, match="not reachable"):
        obsdiff.allocate(tiny_sd, rows[rows["kind"] == "head"], 0.9)


def test_registered_presets_and_settings():
    assert "obsdiff" in methods.names()
    m = methods.get("obsdiff")
    a = m.settings("authors")
    assert (a.num_prompts, a.steps, a.resolution, a.alpha_first, a.alpha_last, a.damping, a.groups, a.rrf_k) == \
        (100, 25, 512, 1.2, 0.8, 0.01, 4, 60)
    assert a.schedule == "log" and a.skip_last == 1 and a.kinds == ("head", "neuron")
    assert "OBS-Diff" in obsdiff.AUTHORS_SOURCE and m.settings().kinds == ("neuron", "group", "channel")
    with pytest.raises(SettingsError, match="schedule"):
        m.settings(schedule="cosine")
    assert obsdiff.timestep_weights(m.settings(), 3) == pytest.approx([1.2, 1.0, 0.8])
    assert m.settings().allocation == "measured" and a.allocation == "uniform"
    with pytest.raises(SettingsError, match="allocation"):
        m.settings(allocation="greedy")
    with pytest.raises(SettingsError, match="max_fraction"):
        m.settings(max_fraction=1.5)
    with pytest.raises(SettingsError, match="probe_prompts"):
        m.settings(probe_prompts=0)


def test_the_measured_allocation_follows_its_probes_and_its_check(tiny_sd3):
    """Measured: every job probed alone at several fractions; the plan's fractions (recorded in its
    provenance) reach the target within the cap, differ from layer to layer, and the check's joint
    error of the chosen allocation is at most the uniform one's."""
    h = tiny_sd3
    seen = []
    obsdiff._CACHE.clear()
    r = obsdiff.run(h, _settings(kinds=("neuron",)), 0.2, control=as_control(progress=lambda d, n, i: seen.append((d, n))))
    info, prov = r.info, r.plan.provenance
    done, totals = [d for d, _ in seen], {n for _, n in seen}  # one count: the probes, then the groups
    assert done == sorted(done) and len(totals) == 1 and done[-1] == totals.pop()
    assert r.plan.summary(h.denoiser)["params_fraction"] == pytest.approx(0.2, abs=0.01)
    check = info["allocation_check"]
    assert check["chosen"] == "measured" and check["measured"] <= check["uniform"]
    assert prov["allocation"] == "measured per layer" and prov["allocation_check"] == check
    fractions = prov["layer_fractions"]
    assert len(set(fractions.values())) > 1 and max(fractions.values()) <= prov["max_fraction"] + 1e-9
    uniform = obsdiff.allocate(h, obsdiff.targets(h, _settings(kinds=("neuron",))), 0.2)[1]  # its fraction p
    assert prov["max_fraction"] == max(0.75, (1 + uniform) / 2)
    for f, frac in fractions.items():
        units = len(r.table[r.table["fqn"] == f])
        assert frac == pytest.approx((units - len(r.plan.kept_neurons[f])) / units, abs=1e-4), f
    probed = {tuple(p["structures"]) for p in info["probes"]}
    assert {(f,) for f in fractions} == probed and all(p["latent_mse"] >= 0 for p in info["probes"])


def test_the_measured_allocation_on_a_unets_channel_groups(tiny_sd):
    h = tiny_sd
    r = obsdiff.run(h, _settings(kinds=("group",), steps=1), 0.1)
    prov = r.plan.provenance
    assert r.plan.summary(h.denoiser)["params_fraction"] == pytest.approx(0.1, abs=0.02)
    chosen = prov["allocation_check"]["chosen"]
    assert prov["allocation"] == {"measured": "measured per layer", "uniform": "uniform per layer"}[chosen]
    assert r.plan.kept_groups and all(len(k) >= 1 for k in r.plan.kept_groups.values())
    kw = dict(steps=1, resolution=h.defaults["resolution"])
    with masked(h.denoiser, r.plan):
        z_masked = generate_latents(h, PROMPTS, [0, 1], **kw)
    assert torch.allclose(z_masked, generate_latents(h, PROMPTS, [0, 1], denoiser=slim(h.denoiser, r.plan), **kw),
                          atol=1e-5)


def test_the_measured_allocation_is_the_same_when_its_statistics_take_several_passes(tiny_sd3):
    """Every probe is calibrated on the original model, so splitting the statistics into passes
    (a small ``max_gram_mb``; the check then calibrates again) changes nothing it measures."""
    h = tiny_sd3
    s = _settings(kinds=("neuron",)).resolved(h)
    rows = obsdiff.targets(h, s)
    one = obsdiff.measure(h, s, rows, 0.2, as_control())
    small = replace(s, max_gram_mb=0.02)
    jobs = obsdiff._jobs(h.denoiser, rows, {f: 0 for f in rows["fqn"]})
    assert len(obsdiff.split_groups(h.denoiser, jobs, 1, small.max_gram_mb)) > 1
    many = obsdiff.measure(h, small, rows, 0.2, as_control())
    assert many["weights"] == pytest.approx(one["weights"], rel=1e-9)
    assert [p["latent_mse"] for p in many["probes"]] == pytest.approx([p["latent_mse"] for p in one["probes"]],
                                                                       rel=1e-9)
    assert many["check"]["chosen"] == one["check"]["chosen"]
    assert [many["check"][k] for k in ("measured", "uniform")] == pytest.approx([one["check"][k] for k in
                                                                                ("measured", "uniform")], rel=1e-9)


def test_measured_shares_that_cannot_reach_the_target_fall_back_to_the_uniform_allocation(tiny_sd3, monkeypatch):
    """Shares that leave layers out (here all but one) and cannot carry the target within the cap: the
    run keeps the uniform allocation and says why, instead of failing; the app's slider ends at
    OBS-Diff's own reach (all but one unit of each layer), not the generic selection's 75% cap."""
    h = tiny_sd3
    s = _settings(kinds=("neuron",), seeds=(11, 12))
    monkeypatch.setattr(obsdiff, "share", lambda curves, params, need: {j: float(j == 0) for j in curves})
    r = obsdiff.run(h, s, 0.3)
    check = r.info["allocation_check"]
    assert check["chosen"] == "uniform" and "not reachable" in check["why"]
    assert r.plan.summary(h.denoiser)["params_fraction"] == pytest.approx(0.3, abs=0.01)
    assert r.plan.provenance["allocation"] == "uniform per layer"
    monkeypatch.undo()
    top = obsdiff.reach(h, s.resolved(h))
    scores = methods.get("obsdiff").score(h, s)
    own = methods.get("obsdiff").reach(h, scores)
    assert own[0] == pytest.approx(top) and "all but one" in own[1]
    pytest.importorskip("gradio")
    from app_support.results import slider_max

    most, why = slider_max(h, scores)
    assert most == pytest.approx(min(0.95, math.floor(top * 100 - 1e-9) / 100)) and "all but one" in why


def test_a_worse_measured_allocation_falls_back_to_the_uniform_one(tiny_sd3, monkeypatch):
    """The check keeps the uniform allocation when the measured one's joint error is higher: here a
    sharing that puts the whole cut on one layer."""
    first = obsdiff.discover(tiny_sd3.denoiser).structures

    def lopsided(curves, params, need):
        return {j: (1.0 if j == 0 else 0.05) for j in curves}

    monkeypatch.setattr(obsdiff, "share", lopsided)
    r = obsdiff.run(tiny_sd3, _settings(kinds=("neuron",), seeds=(5, 6)), 0.2)
    check = r.info["allocation_check"]
    assert check["chosen"] == "uniform" and check["measured"] > check["uniform"]
    assert r.plan.provenance["allocation"] == "uniform per layer"
    uniform = obsdiff.run(tiny_sd3, _settings(kinds=("neuron",), seeds=(5, 6), allocation="uniform"), 0.2)
    assert all(r.plan.kept(k) == uniform.plan.kept(k) for k in ("head", "neuron", "group")) and first


@pytest.mark.parametrize("family", ["sd", "flux", "sd3"])
def test_a_probe_in_place_equals_the_slim_model(family, request):
    """A probe writes a job's compensated weights into the model (a removed unit's consumer columns
    are zero) instead of slimming a copy: the same final latents as the slim model, and the model
    is given back bit for bit. sd: channel groups (a GroupNorm between conv1 and conv2); flux: heads
    and MLP neurons sharing a single block's ``proj_out``; sd3: joint heads (two consumers)."""
    h = request.getfixturevalue(f"tiny_{family}")
    s = _settings(steps=1).resolved(h)
    rows = obsdiff.targets(h, s)
    counts, _, _ = obsdiff.allocate(h, rows, 0.2)
    jobs = obsdiff._jobs(h.denoiser, rows, counts)
    trajs = obsdiff._trajectories(h, s, as_control())
    names = sorted({c for job in jobs for u in job for c in u.cols})
    H = obsdiff.calibrate(h.denoiser, trajs, names, s, as_control(), "test")
    before = {k: v.clone() for k, v in h.denoiser.state_dict().items()}
    kinds = {"sd": "group", "flux": "neuron", "sd3": "head"}
    job = next(j for j in jobs if any(u.kind == kinds[family] for u in j) and len({c for u in j for c in u.cols}) >= 1)
    kept, weights = obsdiff._solve(h, s, [job], H, counts)
    slim_model = obsdiff._apply(h.denoiser, obsdiff._plan(h, kept, {"settings": {"method": "obsdiff"},
                                                                    "compensated": []}), weights)
    want = obsdiff.final_latents(slim_model, trajs, as_control(), "test")
    with obsdiff._swapped(h.denoiser, weights):
        got = obsdiff.final_latents(h.denoiser, trajs, as_control(), "test")
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-4) for a, b in zip(got, want))
    assert all(torch.equal(v, before[k]) for k, v in h.denoiser.state_dict().items())


def test_a_stop_during_a_probe_gives_the_model_back(tiny_sd3):
    from pruning.errors import RunStopped
    from pruning.runs import RunControl

    h = tiny_sd3
    before = {k: v.clone() for k, v in h.denoiser.state_dict().items()}
    stop = RunControl(progress=lambda d, n, i: i.get("probe") == 3 and stop.stop("stopped by the test"))
    obsdiff._CACHE.clear()
    with pytest.raises(RunStopped):
        obsdiff.run(h, _settings(kinds=("neuron",), seeds=(7, 8)), 0.2, control=stop)
    assert all(torch.equal(v, before[k]) for k, v in h.denoiser.state_dict().items())


def test_a_plan_recorded_before_the_allocation_setting_exports_as_it_was_made(tiny_sd3, tmp_path):
    """An OBS-Diff plan whose record predates ``allocation`` (and its two settings) was allocated
    uniformly: it rebuilds to the uniform run's weights, keeps its own record, and exports."""
    h = tiny_sd3
    m = methods.get("obsdiff")
    plan = m.to_plan(h, m.score(h, _settings(allocation="uniform")), target_sparsity=0.2)
    want = build(h, plan).state_dict()
    rec = {k: v for k, v in plan.reconstruction["settings"].items()
           if k not in ("allocation", "probe_prompts", "max_fraction")}
    old = plan.__class__.from_dict({**plan.to_dict(), "reconstruction": {"settings": rec, "compensated": []}})
    obsdiff._CACHE.clear()
    small = build(h, old)
    assert small.pruning_plan.reconstruction == old.reconstruction
    assert all(torch.equal(v, want[k]) for k, v in small.state_dict().items())
    again = load_pruned_denoiser(export(h, old, tmp_path / "old", card=False))
    assert all(torch.equal(v, want[k]) for k, v in again.state_dict().items())


@pytest.mark.parametrize("family, allocation", [("sd", "uniform"), ("sdxl", "uniform"), ("flux", "measured"),
                                                ("sd3", "measured")])  # the UNets' many probes: measured on sd3/flux
def test_plan_masked_equals_slim_and_compensation_is_recorded(family, allocation, request):
    h = request.getfixturevalue(f"tiny_{family}")
    m = methods.get("obsdiff")
    scores = m.score(h, _settings(allocation=allocation))
    assert set(scores.table["kind"]) <= {"head", "neuron", "group"} and (scores.table["score"] >= 0).all()
    plan = m.to_plan(h, scores, target_sparsity=0.2)
    assert plan.summary(h.denoiser)["params_fraction"] == pytest.approx(0.2, abs=0.01)
    assert plan.reconstruction["settings"]["method"] == "obsdiff"
    assert start_record(plan) == plan.reconstruction["settings"]  # reconstruct starts from OBS-Diff's model
    kw = dict(steps=2, resolution=h.defaults["resolution"])
    plain = slim(h.denoiser, plan)
    with masked(h.denoiser, plan):
        z_masked = generate_latents(h, PROMPTS, [0, 1], **kw)
    z_slim = generate_latents(h, PROMPTS, [0, 1], denoiser=plain, **kw)
    assert torch.allclose(z_masked, z_slim, atol=1e-5)
    small = build(h, plan)
    assert small.pruning_plan.reconstruction == plan.reconstruction
    changed = [k for k, v in small.state_dict().items() if not torch.equal(v, plain.state_dict()[k])]
    assert changed and all(k.endswith("weight") for k in changed)  # consumer weights only


def test_export_and_plan_only_export_reload_bit_for_bit(tiny_sd3, tmp_path):
    h = tiny_sd3
    m = methods.get("obsdiff")
    plan = m.to_plan(h, m.score(h, _settings()), target_sparsity=0.2)
    small = build(h, plan)
    kw = dict(steps=2, resolution=h.defaults["resolution"])
    z = generate_latents(h, PROMPTS, [0, 1], denoiser=small, **kw)
    full = load_pruned_denoiser(export(h, plan, tmp_path / "full", denoiser=small, card=False))
    assert torch.equal(generate_latents(h, PROMPTS, [0, 1], denoiser=full, **kw), z)
    again = load_pruned_denoiser(export(h, plan, tmp_path / "built", card=False))  # export builds it from the plan
    assert torch.equal(generate_latents(h, PROMPTS, [0, 1], denoiser=again, **kw), z)
    only = load_pruned(export(h, plan, tmp_path / "plan", plan_only=True, card=False), base=h)
    assert torch.equal(generate_latents(only, PROMPTS, [0, 1], **kw), z)


def test_rebuild_without_the_cache_is_deterministic(tiny_sd3, monkeypatch):
    """Without the cache a plan is rebuilt from its own allocation (a measured one is not measured
    again: the probes are never run) and OBS-Diff's selection, bit for bit; an edited plan is refused."""
    h = tiny_sd3
    m = methods.get("obsdiff")
    plan = m.to_plan(h, m.score(h, _settings(sparsity=0.3)), target_sparsity=0.3)
    assert plan.provenance["allocation"] == "measured per layer"
    first = build(h, plan).state_dict()
    obsdiff._CACHE.clear()
    monkeypatch.setattr(obsdiff, "measure", lambda *a, **k: pytest.fail("a rebuild measured the allocation again"))
    second = build(h, plan).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    edited = plan.__class__.from_dict({**plan.to_dict(), "kept_heads": {}})
    with pytest.raises(PlanError, match="edited"):
        build(h, edited)
    uniform = m.to_plan(h, m.score(h, _settings(sparsity=0.3, allocation="uniform")), target_sparsity=0.3)
    moved = {f: k[1:] for f, k in uniform.kept_neurons.items()}  # one more neuron gone in each layer
    with pytest.raises(PlanError, match="differ"):
        build(h, uniform.__class__.from_dict({**uniform.to_dict(), "kept_neurons": moved}))


def test_estimator_counts_its_calibration_and_it_runs_in_one_chunk(tiny_sd):
    s = _settings(allocation="uniform")
    e = estimate(tiny_sd, "obsdiff", s)
    assert e.calls["passes"] == 4 and e.calls["denoiser calls"] == 4 * 2 and e.seconds > 0.05
    assert e.calls["gram_mb"] > 0 and not e.chunkable
    m = estimate(tiny_sd, "obsdiff", _settings())  # measured: a calibration of the original and every probe's run
    jobs, parts = obsdiff.probe_passes(tiny_sd, _settings())
    assert m.calls["probes"] == jobs * len(obsdiff.LEVELS) + 3 and len(parts) == 1
    assert m.calls["denoiser calls"] == 4 * 2 + 2 + 2 * m.calls["probes"] and m.seconds > e.seconds
    assert m.peak_bytes > e.peak_bytes  # the check's weights
    one = estimate(tiny_sd, "obsdiff", _settings(batch_size=1, max_gram_mb=0.05))  # 2 prompts: 2 batches a probe
    jobs, parts = obsdiff.probe_passes(tiny_sd, _settings(max_gram_mb=0.05))
    den = tiny_sd.denoiser

    def mb(names):  # float64 Grams of these consumers, in MB
        return sum(8 * (den.get_submodule(c).weight[0].numel() + 1) ** 2 for c in names) / 2 ** 20

    together = mb({c for part in parts for c in part})
    biggest = max(mb(part) for part in parts + obsdiff.passes(tiny_sd, _settings(max_gram_mb=0.05)))
    assert len(parts) > 1 and one.calls["gram_mb"] == round(biggest, 1) < together  # one pass at a time
    groups = len(obsdiff.passes(tiny_sd, _settings(max_gram_mb=0.05)))
    assert one.calls["denoiser calls"] == groups * 2 * 2 + 2 * len(parts) * 2 * 2 + one.calls["probes"] * 2 * 2
    scores, state = score_chunk(tiny_sd, "obsdiff", s, budget=Budget(units=1))
    assert state is None and not scores.partial
    assert score_chunked(tiny_sd, "obsdiff", s, budget=Budget(units=1)).chunks == 1
    with pytest.raises(SettingsError, match="one chunk"):
        methods.get("obsdiff").run(tiny_sd, s, state=object())


def test_the_estimate_counts_the_calls_a_measured_run_makes(tiny_sd3):
    """Every denoiser call of a measured run (batches of one prompt, statistics in several passes),
    counted: the estimate's, less the probes the run skipped as repeats of a fraction it had tried."""
    h = tiny_sd3
    s = _settings(batch_size=1, max_gram_mb=0.01, kinds=("head", "neuron"))
    e = estimate(h, "obsdiff", s)
    calls = []
    hook = h.denoiser.register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        obsdiff._CACHE.clear()
        r = obsdiff.run(h, s, s.sparsity)
    finally:
        hook.remove()
    jobs, parts = obsdiff.probe_passes(h, s)
    per_probe = 2 * 2  # two prompts in batches of one, two steps each
    skipped = jobs * len(obsdiff.LEVELS) - len(r.info["probes"])
    assert len(parts) > 1 and len(calls) == e.calls["denoiser calls"] - skipped * per_probe


def test_cli_lists_it(capsys):
    from pruning.cli import main

    try:
        code = main(["score", "obsdiff", "--help"])
    except SystemExit as e:  # argparse's --help
        code = e.code
    assert code == 0
    out = capsys.readouterr().out
    assert "--damping" in out and "--rrf-k" in out and "authors" in out


@pytest.mark.slow
def test_cli_scores_and_plans_a_bundled_model(tmp_path):
    from pruning.cli import main

    scores, plan = tmp_path / "s.csv", tmp_path / "plan.json"
    assert main(["score", "obsdiff", "--model", "tiny-shapes-sd", "--prompt", "a red circle", "--steps", "2",
                 "--out", str(scores)]) == 0
    assert main(["prune", "--model", "tiny-shapes-sd", "--scores", str(scores), "--target-sparsity", "0.2",
                 "--out", str(plan)]) == 0
    assert '"method": "obsdiff"' in plan.read_text()


def test_the_apps_comparison_shows_the_compensated_model(tiny_sd3):
    """The Select tab's side-by-side view of an OBS-Diff plan generates with its compensated weights
    (what export writes), not with the plain masked model."""
    pytest.importorskip("gradio")
    from app_support.comparison import compare_images

    h = tiny_sd3
    m = methods.get("obsdiff")
    plan = m.to_plan(h, m.score(h, _settings()), target_sparsity=0.2)
    out = compare_images(h, plan, PROMPTS[0], 0, steps=2, latency=False)
    z = generate_latents(h, PROMPTS[:1], [0], steps=2, denoiser=build(h, plan))
    with masked(h.denoiser, plan):
        z_plain = generate_latents(h, PROMPTS[:1], [0], steps=2)
    z_orig = generate_latents(h, PROMPTS[:1], [0], steps=2)
    from pruning.quality import latent_mse

    assert out["metrics"]["latent_mse"] == pytest.approx(latent_mse(z_orig, z), rel=1e-6)
    assert latent_mse(z_orig, z) != pytest.approx(latent_mse(z_orig, z_plain), rel=1e-3)


RECON_PROMPTS = ("a red circle", "a blue square on the left", "a green star", "a small yellow triangle")


def _obsdiff_plan(h, target=0.2, allocation="uniform"):  # uniform: the UNets' measured allocation probes many jobs
    m = methods.get("obsdiff")
    return m.to_plan(h, m.score(h, _settings(sparsity=target, allocation=allocation)), target_sparsity=target)


def test_reconstruct_starts_from_the_compensation_and_a_huge_ridge_keeps_it(tiny_sd):
    """The analogue of "a huge ridge gives plain slim": on an OBS-Diff plan it gives OBS-Diff's
    compensated weights (the biases, not pulled, take the mean correction), every other tensor as
    OBS-Diff's model has it; the plan records both, nested."""
    h = tiny_sd
    plan = _obsdiff_plan(h)
    start = build(h, plan)
    s = ReconstructSettings(prompts=RECON_PROMPTS, steps=2, ridge=1e6, batch_size=1, check=False)
    small = reconstruct(h, plan, s)
    rec = small.pruning_plan.reconstruction
    assert rec["settings"]["start"] == plan.reconstruction["settings"] and rec["settings"]["ridge"] == 1e6
    assert small.reconstruction["start"] == "obsdiff" and start_record(small.pruning_plan) == start_record(plan)
    a, b = start.state_dict(), small.state_dict()
    layers = small.reconstruction["layers"]
    assert a.keys() == b.keys() and layers
    for k in a:
        fqn, name = k.rsplit(".", 1)
        if fqn in layers and name == "weight":
            assert torch.allclose(a[k], b[k], rtol=0, atol=1e-6), k
        elif fqn not in layers:
            assert torch.equal(a[k], b[k]), k
    for fqn, r in layers.items():  # measured from OBS-Diff's weights, not from plain slimming
        assert r["rel_error_after"] <= r["rel_error_before"] + 1e-12, fqn
    plain = slim(h.denoiser, plan).state_dict()
    assert any(not torch.equal(plain[k], b[k]) for k in b if k.endswith("weight"))


def test_the_guard_and_the_check_fall_back_to_the_compensated_weights(tiny_sd):
    """Fits on batches of one prompt, judged on a held-out batch: every layer whose held-out error
    the fit raised keeps OBS-Diff's weights (and bias), bit for bit, and the others are re-fitted;
    with the check, a group it rejected keeps them too."""
    h = tiny_sd
    plan = _obsdiff_plan(h)
    start = build(h, plan)
    guard = reconstruct(h, plan, ReconstructSettings(prompts=RECON_PROMPTS, steps=2, batch_size=1, guard=True,
                                                     check=False, groups=2, layers="consumers"))
    layers = guard.reconstruction["layers"]
    assert any(r["fallback"] for r in layers.values()) and not all(r["fallback"] for r in layers.values())
    for fqn, r in layers.items():
        assert r["fallback"] == (r["held_out_after"] > r["held_out_before"])
        same = [torch.equal(getattr(start.get_submodule(fqn), t), getattr(guard.get_submodule(fqn), t))
                for t in ("weight", "bias")]
        assert same == [r["fallback"]] * 2, fqn
    checked = reconstruct(h, plan, ReconstructSettings(prompts=RECON_PROMPTS * 2, steps=2, ridge=0.0, batch_size=1,
                                                       groups=3, layers="consumers", check_by="group"))
    for fqn, r in checked.reconstruction["layers"].items():
        same = torch.equal(start.get_submodule(fqn).weight, checked.get_submodule(fqn).weight)
        assert same == (not r["kept_by_check"]), fqn
    errors = [c["final_error"] for c in checked.reconstruction["check"]]
    assert all(e2 <= e1 or not c["kept"] for e1, e2, c in zip(errors, errors[1:], checked.reconstruction["check"][1:]))


def test_a_reconstructed_obsdiff_plan_exports_reloads_and_reapplies_bit_for_bit(tiny_sd3, tmp_path):
    h = tiny_sd3
    plan = _obsdiff_plan(h, allocation="measured")
    small = reconstruct(h, plan, ReconstructSettings(prompts=RECON_PROMPTS, steps=2, batch_size=2, groups=2))
    done = small.pruning_plan
    assert done.reconstruction["settings"]["start"]["method"] == "obsdiff"
    want = small.state_dict()
    plain = slim(h.denoiser, plan).state_dict()
    assert {k: v.shape for k, v in want.items()} == {k: v.shape for k, v in plain.items()}  # slim's shapes

    def same(den):
        got = den.state_dict()
        return got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)

    assert same(reapply(h, done)) and same(build(h, done))  # re-applied from the plan alone
    full = load_pruned_denoiser(export(h, done, tmp_path / "full", denoiser=small, card=False))
    assert same(full) and full.pruning_plan.reconstruction == done.reconstruction
    assert same(load_pruned_denoiser(export(h, done, tmp_path / "built", card=False)))  # export re-fits it
    only = load_pruned(export(h, done, tmp_path / "plan", plan_only=True, card=False), base=h)
    assert same(only.denoiser)
    written, _ = read_manifest(tmp_path / "plan")
    assert written.reconstruction == done.reconstruction and start_record(written) == start_record(plan)


def test_the_reconstruction_estimate_counts_obsdiffs_rebuild_unless_it_is_held(tiny_sd3):
    """A reconstruction starting from OBS-Diff's compensation rebuilds it first: the estimate adds
    that run (its groups at the plan's counts, no probes) when the run is not cached."""
    from pruning.estimate import estimate_reconstruction, reconstruction_cost, step_cost

    h = tiny_sd3
    plan = _obsdiff_plan(h, allocation="measured")
    s = ReconstructSettings(prompts=RECON_PROMPTS, steps=2, batch_size=2, groups=2)
    held = reconstruction_cost(h, plan, s)
    assert "the start's rebuild" not in held.parts  # cached by the run that made the plan
    obsdiff._CACHE.clear()
    cold = reconstruction_cost(h, plan, s)
    rebuild = obsdiff.METHOD.cost(h, obsdiff.OBSDiffSettings.from_dict(
        {**{k: v for k, v in plan.reconstruction["settings"].items() if k not in ("method", "target_sparsity")},
         "allocation": "uniform"}), step_cost(h, resolution=s.resolved(h).resolution))
    assert cold.calls["denoiser calls"] == held.calls["denoiser calls"] + rebuild.calls["denoiser calls"]
    assert cold.parts["the start's rebuild"] > 0 and "probes" not in rebuild.calls
    assert estimate_reconstruction(h, s, plan=plan).calls["denoiser calls"] == cold.calls["denoiser calls"]


def test_a_bad_reconstruction_start_names_the_field_or_the_method(tiny_sd):
    """A plan's ``reconstruction.settings.start`` is read through the plan's checks: not a method's
    record is a PlanError naming the field; an unregistered method is an UnknownName naming it."""
    from pruning.errors import UnknownName
    from pruning.plan import PruningPlan

    base = PruningPlan(family="sd", base=tiny_sd.model_ref,
                       kept_heads={"down_blocks.0.attentions.0.transformer_blocks.0.attn1": (0,)})
    for start in ({"ridge": 0.01}, "obsdiff", {"method": ""}):
        with pytest.raises(PlanError, match=r"reconstruction\.settings\.start must be the settings of a method"):
            PruningPlan.from_dict({**base.to_dict(), "reconstruction": {"settings": {"start": start},
                                                                        "compensated": []}})
    odd = PruningPlan.from_dict({**base.to_dict(), "reconstruction": {"settings": {"start": {"method": "nope"}},
                                                                      "compensated": []}})
    with pytest.raises(UnknownName, match="nope"):
        reapply(tiny_sd, odd)
