"""Conditioning channels (unit kind "channel"): the channels of the time / text embedding that every
modulation layer reads (AdaLN ``linear`` on FLUX and SD3, a resnet's ``time_emb_proj`` on UNets).

Discovery finds exactly the layers that read it; masked == slim and the plan's accounting equals
the slim model's, alone and with the units and operators that share its layers; OBS-Diff ranks
them by their summed OBS error (one input, many consumers) and its plans export and reload bit
for bit; reconstruction re-fits a consumer that loses rows and columns; plans without channels
serialize as before."""

from __future__ import annotations

import json

import pytest
import torch

from pruning import methods
from pruning.catalog import catalog, discover, double_cuts
from pruning.errors import PlanError
from pruning.export import build, export, load_pruned, load_pruned_denoiser
from pruning.manifest import read_manifest
from pruning.masks import masked
from pruning.methods.obs import OBSLayer, Unit, _order, compensated, prepare_hessian, select
from pruning.metrics import example_inputs
from pruning.plan import PruningPlan
from pruning.reconstruct import ReconstructSettings, reconstruct
from pruning.runs import as_control
from pruning.sampling import generate_latents
from pruning.slim import slim
from pruning.specs import consumers_of

FAMILIES = ("sd", "sdxl", "flux", "sd3")
PROMPTS = ["a red circle", "a blue square"]


def _channels(h):
    found = [s for s in discover(h.denoiser).structures.values() if s.kind == "channel"]
    assert len(found) == 1
    return found[0]


def _count(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("family", FAMILIES)
def test_discovery_finds_every_layer_that_reads_the_embedding(family, request):
    h = request.getfixturevalue(f"tiny_{family}")
    den, s = h.denoiser, _channels(h)
    emb = "time_embedding" if family in ("sd", "sdxl") else "time_text_embed"
    producers = [c.param for c in s.cuts if c.dim == 0 and c.param.endswith("weight")]
    assert s.fqn == emb and s.component == "cond" and len(producers) == {"sd": 1, "sdxl": 2, "flux": 3, "sd3": 2}[family]
    seen = {}
    linears = {n: m for n, m in den.named_modules() if isinstance(m, torch.nn.Linear) and m.in_features == s.units}
    hooks = [m.register_forward_pre_hook(lambda _m, a, n=n: seen.setdefault(n, a[0].detach())) for n, m in
             linears.items()]
    try:
        with torch.no_grad():
            den(**example_inputs(den, generator=torch.Generator().manual_seed(0)))
    finally:
        for k in hooks:
            k.remove()
    readers = set(consumers_of(s))
    first = seen[next(iter(readers))]
    for n, x in seen.items():  # every layer that reads the embedding (through its activation) is a consumer
        if x.shape == first.shape and torch.equal(x, first):
            assert n in readers, n
    assert readers <= set(seen) and all(torch.equal(seen[n], first) for n in readers)


@pytest.mark.parametrize("family", FAMILIES)
def test_masked_equals_slim_and_the_summary_counts_what_slim_removes(family, request):
    h = request.getfixturevalue(f"tiny_{family}")
    den, s = h.denoiser, _channels(h)
    found = discover(den)
    kw = example_inputs(den, generator=torch.Generator().manual_seed(1))
    ops = [o for o, op in sorted(found.operators.items()) if op.granularity != "block"][:1]
    groups = {f: (0,) for f, x in found.structures.items() if x.kind == "group"}
    for plan in (PruningPlan(family=family, base=h.model_ref, kept_channels={s.fqn: tuple(range(0, s.units, 3))}),
                 PruningPlan(family=family, base=h.model_ref, kept_channels={s.fqn: ()}),  # all of it
                 PruningPlan(family=family, base=h.model_ref, kept_channels={s.fqn: (1, 2)}, kept_groups=groups,
                             removed_operators=tuple(ops))):
        with torch.no_grad():
            with masked(den, plan):
                want = den(**kw)[0]
            small = slim(den, plan)
            got = small(**kw)[0]
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
        summary = plan.summary(den)
        assert _count(small) == summary["params_total"] - summary["params_removed"]
        assert PruningPlan.from_json(plan.to_json()) == plan


def test_a_weight_cut_along_both_dims_is_counted_once(tiny_sd):
    den = tiny_sd.denoiser
    param, rows, cols, per = double_cuts(den)[0]
    assert param.endswith("time_emb_proj.weight") and per == discover(den).structures[rows].unit_size
    plan = PruningPlan(family="sd", base=tiny_sd.model_ref, kept_groups={rows: (0,)}, kept_channels={cols: (0,)})
    s = plan.summary(den)
    assert _count(slim(den, plan)) == s["params_total"] - s["params_removed"]


def test_plans_without_channels_serialize_as_before_and_bad_ones_name_the_field(tiny_sd3):
    plan = PruningPlan(family="sd3", base="tiny:sd3", kept_neurons={"transformer_blocks.0.ff": (0, 1)})
    assert "kept_channels" not in json.loads(plan.to_json())
    with_channels = PruningPlan(family="sd3", base="tiny:sd3", kept_channels={"time_text_embed": (0,)})
    assert json.loads(with_channels.to_json())["kept_channels"] == {"time_text_embed": [0]}
    with pytest.raises(PlanError, match="kept_channels: unknown channel structure FQN 'norm_out'"):
        PruningPlan(family="sd3", base="tiny:sd3", kept_channels={"norm_out": (0,)}).validate(tiny_sd3.denoiser)
    with pytest.raises(PlanError, match=r"kept_channels\['time_text_embed'\]: index 999"):
        PruningPlan(family="sd3", base="tiny:sd3", kept_channels={"time_text_embed": (999,)}).validate(
            tiny_sd3.denoiser)
    assert "conditioning channels pruned" in " ".join(__import__("pruning.native", fromlist=["x"]).blockers(
        tiny_sd3.denoiser, with_channels))


def test_obs_ranks_channels_by_their_summed_error_over_consumers_that_share_one_input():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(400, 8, generator=g, dtype=torch.float64) @ torch.randn(8, 8, generator=g, dtype=torch.float64)
    H = X.T @ X / 400
    Ws = [torch.randn(o, 8, generator=g, dtype=torch.float64) for o in (3, 12)]
    layers = {str(i): OBSLayer(W, H, 0.01) for i, W in enumerate(Ws)}
    unit = Unit("emb", "channel", 8, 1, {c: torch.arange(8)[:, None] for c in layers})  # cols: (units, 1)
    ranked, total = _order(unit, layers, list(range(8)), 60)
    Hd, Wd = prepare_hessian(H, torch.cat(Ws), 0.01)  # the consumers stacked: one layer, one H

    def rise(u):  # brute force on the stacked layer: the optimal loss with channel u removed
        keep = torch.ones(8, dtype=torch.bool)
        keep[u] = False
        d = Wd - compensated(Wd, Hd, keep)
        return float(torch.einsum("od,de,oe->", d, Hd, d))

    assert ranked == sorted(range(8), key=rise)
    assert [total[u] for u in range(8)] == pytest.approx([rise(u) for u in range(8)], rel=1e-8)
    order, _ = select(unit, layers, 60)
    assert order == ranked[:1]
    for c, layer in layers.items():  # each consumer compensated with the shared H
        Hc, Wc = prepare_hessian(H, Ws[int(c)], 0.01)
        assert torch.allclose(layer.final(), compensated(Wc, Hc, layer.live), atol=1e-12)


@pytest.mark.parametrize("family", ["sd", "sd3"])
def test_obsdiff_prunes_channels_and_its_plan_exports_and_reloads_bit_for_bit(family, request, tmp_path):
    h = request.getfixturevalue(f"tiny_{family}")
    m = methods.get("obsdiff")
    s = m.settings(prompts=PROMPTS, steps=2, allocation="uniform")
    assert "channel" in s.kinds
    scores = m.score(h, s)
    assert ("group" in m.reach(h, scores)[1]) == (family == "sd")  # the note names the kinds the model has
    plan = m.to_plan(h, scores, target_sparsity=0.2)
    assert plan.kept_channels and plan.summary(h.denoiser)["params_fraction"] == pytest.approx(0.2, abs=0.01)
    kw = dict(steps=2, resolution=h.defaults["resolution"])
    with masked(h.denoiser, plan):
        z_masked = generate_latents(h, PROMPTS, [0, 1], **kw)
    assert torch.allclose(z_masked, generate_latents(h, PROMPTS, [0, 1], denoiser=slim(h.denoiser, plan), **kw),
                          atol=1e-5)
    small = build(h, plan)
    z = generate_latents(h, PROMPTS, [0, 1], denoiser=small, **kw)
    folder = export(h, plan, tmp_path / "full", denoiser=small, card=False)
    # the manifest counts parameters, as the plan does (SD3's pos_embed buffer is saved but is no parameter)
    assert read_manifest(folder)[1]["params"] == _count(small) == \
        plan.summary(h.denoiser)["params_total"] - plan.summary(h.denoiser)["params_removed"]
    full = load_pruned_denoiser(folder)
    assert torch.equal(generate_latents(h, PROMPTS, [0, 1], denoiser=full, **kw), z)
    only = load_pruned(export(h, plan, tmp_path / "plan", plan_only=True, card=False), base=h)
    assert torch.equal(generate_latents(only, PROMPTS, [0, 1], **kw), z)


def test_reconstruct_refits_a_consumer_that_loses_rows_and_columns(tiny_sd):
    h = tiny_sd
    found = discover(h.denoiser)
    s = _channels(h)
    resnet = next(f for f, x in found.structures.items() if x.kind == "group")
    plan = PruningPlan(family="sd", base=h.model_ref, kept_channels={s.fqn: tuple(range(0, s.units, 2))},
                       kept_groups={resnet: (0,)})
    small = reconstruct(h, plan, ReconstructSettings(prompts=tuple(PROMPTS * 3), steps=3, inputs="original"))
    layer = f"{resnet}.time_emb_proj"
    report = small.reconstruction["layers"][layer]
    assert report["inputs_kept"] == s.units // 2 and report["rel_error_after"] < report["rel_error_before"]
    assert small.get_submodule(layer).weight.shape == (found.structures[resnet].unit_size, s.units // 2)


def test_score_only_methods_take_channels_when_asked(tiny_flux):
    m = methods.get("magnitude")
    assert "channel" not in m.settings().kinds
    scores = m.score(tiny_flux, m.settings(kinds=("channel",)))
    plan = m.to_plan(tiny_flux, scores, target_sparsity=0.1)
    assert list(plan.kept_channels) == ["time_text_embed"] and not plan.kept_neurons
    st = catalog(tiny_flux.denoiser)[1].set_index("fqn")
    assert st.loc["time_text_embed", "block"] == "other"


def test_obsdiff_selects_channels_on_a_surrogate_equal_to_every_consumer_stacked(tiny_sd3):
    from pruning.methods import obsdiff
    from pruning.reconstruct import flat_weight

    h, s = tiny_sd3, obsdiff.METHOD.settings(prompts=PROMPTS, steps=2)
    rows = obsdiff.targets(h, s)
    ch = rows[rows["kind"] == "channel"]
    counts = {f: 0 for f in rows["fqn"]}
    counts[ch["fqn"].item()] = int(ch["units"].item()) // 2
    job = next(j for j in obsdiff._jobs(h.denoiser, rows, counts) if j[0].kind == "channel")
    every = list(job[0].cols)
    assert obsdiff.recorded(job[0]) == every[:1]  # one Gram for all readers
    trajs = obsdiff._trajectories(h, s.resolved(h), as_control(None))
    H = obsdiff.calibrate(h.denoiser, trajs, every, s, as_control(None), "test")
    assert all(torch.equal(H[c], H[every[0]]) for c in every)  # they do read one input
    kept, scores, weights, info = obsdiff.solve_job(h.denoiser, job, {every[0]: H[every[0]]}, s)
    layers = {c: OBSLayer(flat_weight(h.denoiser.get_submodule(c)), H[c], s.damping) for c in every}
    order, direct = select(job[0], layers, s.rrf_k)  # every consumer in float64, errors summed
    assert kept[job[0].fqn] == sorted(set(range(job[0].units)) - set(order))
    assert scores[job[0].fqn] == pytest.approx(direct, rel=1e-6)
    for c in every:
        assert torch.allclose(weights[c].double(), layers[c].final(), atol=1e-6)
        assert weights[c].dtype == h.denoiser.get_submodule(c).weight.dtype and 0 < info[c]["obs_rel_error"] < 1


def test_the_model_card_names_the_conditioning_channels(tiny_sd3, tmp_path):
    from pruning.card import write_card

    plan = PruningPlan(family="sd3", base=tiny_sd3.model_ref, kept_channels={"time_text_embed": tuple(range(10))})
    write_card(tmp_path, tiny_sd3, plan, slim(tiny_sd3.denoiser, plan), full_pipeline=False, plan_only=True,
               evaluate=False)
    text = (tmp_path / "README.md").read_text()
    assert "| conditioning channels |" in text and "`time_text_embed` (conditioning channels)" in text


@pytest.mark.parametrize("family", FAMILIES)
def test_every_sliced_layer_states_its_new_size(family, request):
    """slim brings the sizes of every layer a structure cuts in line with its weights, also the layers
    outside the structure's own module (the conditioning channels' embedders and readers)."""
    from tests.plans import random_plan

    h = request.getfixturevalue(f"tiny_{family}")
    for seed in range(3):
        for n, m in slim(h.denoiser, random_plan(h, seed)).named_modules():
            if isinstance(m, torch.nn.Linear):
                assert (m.out_features, m.in_features) == tuple(m.weight.shape), n
            elif isinstance(m, torch.nn.Conv2d):
                assert (m.out_channels, m.in_channels) == tuple(m.weight.shape[:2]), n
            elif isinstance(m, torch.nn.GroupNorm) and m.weight is not None:
                assert m.num_channels == m.weight.shape[0], n
