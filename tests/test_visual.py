"""visual/: Plotly figures from DataFrames, without torch."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import plotly.graph_objects as go

import visual
from pruning.catalog import catalog


def test_visual_does_not_import_torch():
    code = "import sys, visual; assert 'torch' not in sys.modules, 'visual imported torch'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_operator_heatmap_rows_in_depth_order(tiny_sd):
    ops, _ = catalog(tiny_sd.denoiser)
    df = ops.assign(score=range(len(ops)))
    fig = visual.operator_heatmap(df.sample(frac=1, random_state=0))  # input order must not matter
    heat = fig.data[0]
    assert isinstance(fig, go.Figure) and heat.type == "heatmap" and fig.layout.height == 560
    rows = list(heat.y)
    assert rows[0].startswith("down.0") and rows[-1].startswith("up.2") and any(r.startswith("mid") for r in rows)
    assert rows.index("mid · 0") < rows.index("up.0 · 0")
    assert list(heat.x) == ["resnet", "attn1", "attn2", "ff", "transformer"]
    i, j = rows.index("mid · 0"), list(heat.x).index("resnet")
    assert heat.customdata[i][j][0] == "mid_block.resnets.0" and "params" in heat.hovertemplate
    assert int((~pd.isna(pd.DataFrame(heat.z))).sum().sum()) == len(ops)  # one cell per operator


def test_flux_rows_are_double_then_single(tiny_flux):
    ops, st = catalog(tiny_flux.denoiser)
    fig = visual.operator_heatmap(ops.assign(score=1.0))
    assert list(fig.data[0].y) == ["double.0", "double.1", "single.0", "single.1"]
    per = st.assign(score=1.0)
    assert set(visual.structure_heatmap(per).data[0].x) == set(st["component"])


def test_mask_plots():
    hist = pd.DataFrame({"step": [0, 1, 2], "loss": [1.0, 0.5, 0.2], "recon": [0.9, 0.4, 0.1],
                         "kept_head": [1.0, 0.8, 0.6], "kept_group": [1.0, 0.9, 0.9]})
    fig = visual.loss_plot(hist)
    assert [t.name for t in fig.data] == ["loss", "recon", "expected sparsity (head)", "expected sparsity (group)"]
    assert list(fig.data[2].y) == [0.0, 0.19999999999999996, 0.4]
    kept = pd.DataFrame({"fqn": ["down_blocks.0.resnets.0", "down_blocks.0.attentions.0.transformer_blocks.0.attn1",
                                 "up_blocks.1.resnets.0"], "kind": ["group", "head", "group"],
                         "kept": [0.5, 0.25, 1.0], "depth": [0, 1, 9]})
    fig = visual.mask_sparsity_plot(kept)
    assert {t.name for t in fig.data} == {"resnet channel groups", "attention heads"}
    assert list(fig.layout.xaxis.categoryarray) == ["down.0 · 0", "up.1 · 0"]
    assert visual.loss_plot(pd.DataFrame()).layout.height == 480  # empty history: still a figure


def test_conditioning_channels_are_the_embedding_row(tiny_sd, tiny_flux, tiny_sd3):
    """The conditioning channels' row is a short name, first (they are computed before any block):
    their FQN (``time_text_embed``) was cut off by the heatmap's margin at every width."""
    for h in (tiny_sd, tiny_flux, tiny_sd3):
        _, st = catalog(h.denoiser)
        fig = visual.structure_heatmap(st.assign(score=1.0))
        rows = list(fig.data[0].y)
        assert rows[0] == "embedding" and rows.count("embedding") == 1, (h.family, rows)
        assert max(map(len, rows)) <= len("embedding") or h.family == "sd", rows  # as wide as "double.0"
        assert fig.data[0].customdata[0][list(fig.data[0].x).index("cond")][0] in ("time_text_embed", "time_embedding")


def test_kept_plot_draws_every_unit_kind(tiny_sd3):
    """The kept-fraction plot has a bar for every structure kind of the catalog: a plan that prunes
    the conditioning channels only showed every layer at 100% kept (the channel kind was dropped)."""
    from pruning.catalog import UNIT_KINDS
    from visual.masks import KIND_COLORS, KIND_DASH, KIND_NAMES

    assert set(KIND_COLORS) == set(KIND_DASH) == set(KIND_NAMES) == set(UNIT_KINDS)
    _, st = catalog(tiny_sd3.denoiser)
    cond = st.loc[st["kind"] == "channel", "fqn"].item()
    kept = st[["fqn", "kind", "units", "depth"]].assign(kept=[0.25 if f == cond else 1.0 for f in st["fqn"]])
    fig = visual.mask_sparsity_plot(kept)
    bars = {t.name: t for t in fig.data}
    assert set(bars) == {"attention heads", "FFN neurons", "conditioning channels"}
    ch = bars["conditioning channels"]
    assert list(ch.x) == ["embedding"] and list(ch.y) == [0.25] and ch.customdata[0][0] == cond  # its kept fraction, its FQN on hover
    assert ch.marker.color not in {b.marker.color for n, b in bars.items() if n != ch.name}
    assert fig.layout.legend.orientation == "h" and fig.layout.legend.y < 0  # below: the bars keep a phone's width


def test_quality_vs_sparsity_sorted_per_method():
    df = pd.DataFrame({"method": ["a", "a", "b"], "params_fraction": [0.3, 0.1, 0.2], "psnr": [20.0, 30.0, 25.0]})
    fig = visual.quality_vs_sparsity(df, "psnr", mark=0.25)
    assert [t.name for t in fig.data] == ["a", "b"] and list(fig.data[0].x) == [0.1, 0.3]
    assert "higher is better" in fig.layout.yaxis.title.text and fig.layout.xaxis.range[0] < 0 < 0.25
    assert any("your plan: 25%" in a.text for a in fig.layout.annotations)
    assert len(visual.quality_vs_sparsity(df, "accuracy").data) == 0  # missing metric: empty axes


def test_one_colour_rule_and_rank_scale():
    """Every heatmap draws the lowest score with the 'prunable' end, whatever the method; an
    outlier does not flatten the other cells."""
    ops = pd.DataFrame({"fqn": [f"down_blocks.0.resnets.{i}" for i in range(4)], "kind": ["resnet"] * 4,
                        "score": [0.2, 17.0, 0.1, 0.3], "depth": range(4)})
    heat = visual.operator_heatmap(ops).data[0]
    z = pd.DataFrame(heat.z).to_numpy().flatten()
    assert heat.colorscale[0][1].lower() == visual.PRUNABLE_COLOR and heat.zmin == 0
    assert z[2] == 0.0 and z[1] == 1.0 and sorted(z) == [0.0, 1 / 3, 2 / 3, 1.0]  # rank, not value
    assert "prune first" in heat.colorbar.ticktext[0]
    st = pd.DataFrame({"fqn": ops["fqn"], "component": ["resnet"] * 4, "score": [5.0, 1.0, 3.0, 4.0]})
    heat = visual.structure_heatmap(st).data[0]
    assert pd.DataFrame(heat.z).to_numpy().flatten()[1] == 0.0 and [list(c) for c in heat.colorscale] == visual.COLORSCALE


# the longest subtitle the app writes: model, method with its settings, prompts, a stop and its reason
LONG_SUB = ("tiny-shapes-sd, float32 · LD-Pruner (fast preset: one-step ablation at 8 timesteps, block granularity, "
            "2 samples) · 16 prompts · STOPPED (time limit of 900 s reached)")
SUB_WIDTH = {"title": visual.theme.TITLE_CHARS, "sup": visual.theme.SUBTITLE_CHARS}


def _every_figure():
    """(name, figure, the subtitle it was given) for every figure builder in visual/, with long texts."""
    ops = pd.DataFrame({"fqn": ["down_blocks.0.resnets.0", "mid_block.resnets.0"], "kind": ["resnet"] * 2,
                        "component": ["resnet"] * 2, "score": [0.1, 0.2], "kept": [0.5, 1.0]})
    hist = pd.DataFrame({"step": [0, 1], "loss": [1.0, 0.5], "recon": [0.9, 0.4], "kept_head": [1.0, 0.8]})
    rows = pd.DataFrame({"method": ["original", "magnitude", "magnitude"], "params_fraction": [0.0, 0.1, 0.2],
                         "label": [None, "Weight magnitude (baseline)", None],
                         **{m: [100.0, 0.5, 0.4] for m in visual.METRICS}})
    yield "operator heatmap", visual.operator_heatmap(ops, subtitle=LONG_SUB), LONG_SUB
    yield "structure heatmap", visual.structure_heatmap(ops, subtitle=LONG_SUB, flat=True), LONG_SUB
    yield "loss", visual.loss_plot(hist, title="Optimization", subtitle=LONG_SUB, target=0.2), LONG_SUB
    yield "kept", visual.mask_sparsity_plot(ops.assign(kind="group"), title="Kept fraction per layer under your plan",
                                            subtitle=f"{LONG_SUB} · EcoDiff at 20% (global)"), LONG_SUB
    for metric in visual.METRICS:  # psnr: the original is left out, and the subtitle says why
        sub = f"{LONG_SUB} · 16 prompts, seeds 0-15"
        yield f"quality {metric}", visual.quality_vs_sparsity(rows, metric, subtitle=sub, mark=0.15), sub
    yield "placeholder", visual.placeholder("No comparison for tiny-shapes-sd, float32 yet. Run the comparison "
                                            "to see quality against sparsity."), ""


def test_every_title_fits_a_phone():
    """Plotly never wraps a title: every line of every figure's title, subtitle and in-plot text must fit
    a 390 px phone (TITLE_CHARS at the title's size, SUBTITLE_CHARS in <sup>, fewer characters at a larger
    size), no word of the subtitle is dropped, and the plot starts below the title's last line."""
    theme = visual.theme
    for name, fig, sub in _every_figure():
        text = fig.layout.title.text or ""
        for line in filter(None, text.split("<br>")):
            width = SUB_WIDTH["sup" if line.startswith("<sup>") else "title"]
            assert len(theme.plain(line)) <= width, (name, line)
        words = lambda t: [w for w in t.split() if w != "·"]  # noqa: E731 - a line break stands for a separator
        assert " ".join(words(sub)) in " ".join(words(theme.plain(text))), (name, text)  # the model and run, every word
        if text:
            assert fig.layout.title.automargin and fig.layout.margin.t >= text.count("<br>") * theme.LINE_PX + 20, name
        for note in fig.layout.annotations:
            size = note.font.size or 12  # plotly's default annotation size
            for line in note.text.split("<br>"):
                assert len(theme.plain(line)) * size <= theme.TITLE_CHARS * theme.TITLE_SIZE, (name, line)
        axis = fig.layout.yaxis.title.text or ""
        assert all(len(line) <= 36 for line in axis.split("<br>")), (name, axis)
    psnr = visual.quality_vs_sparsity(pd.DataFrame({"method": ["original", "a"], "params_fraction": [0, 0.1],
                                                    "psnr": [100.0, 30.0]}), "psnr")
    assert "the original (and any identical result) is not drawn: identical images have no finite PSNR" in \
        theme.plain(psnr.layout.title.text)  # broken over lines, not cut
