"""The conditioning channels (unit kind "channel": the time / text embedding every modulation layer
reads) in a real browser, at 1440 px and on a phone: named in the guide and the Model tab, their
heatmap row whole on screen, their kept fraction drawn in the Select tab's plot (it showed every layer
100% kept for a plan that cut 65% of them), and counted apart in the Export tab's summary."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import open_page
from tests.e2e.test_journey import run_and_wait, shot, tab

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # a real browser
COND = "time_text_embed"  # FLUX's conditioning channels


def _tick_labels_inside(page, elem: str) -> list[dict]:
    """The heatmap's y tick labels as drawn: their text, and whether each lies inside the plot."""
    return page.locator(f"{elem} .js-plotly-plot").evaluate("""g => {
        const box = g.getBoundingClientRect();
        return [...g.querySelectorAll('.ytick text')].map(t => { const r = t.getBoundingClientRect();
            return {text: t.textContent, inside: r.left >= box.left - 0.5 && r.right <= box.right + 0.5}; }); }""")


def _kept_traces(page) -> dict:
    return page.locator("#kept-plot .js-plotly-plot").evaluate(
        "g => Object.fromEntries(g._fullData.map(d => [d.name, {x: Array.from(d.x), y: Array.from(d.y)}]))")


def _row(page, fqn: str) -> list[str]:
    """The selection table's cells of the row whose FQN is ``fqn``, as drawn."""
    return page.locator("#selection").evaluate("""(t, f) => {
        const c = [...t.querySelectorAll('[role=gridcell][data-col="2"]')].find(c => c.innerText.trim() === f);
        return c ? [...t.querySelectorAll(`[role=gridcell][data-row="${c.dataset.row}"]`)].map(x => x.innerText.trim())
                 : []; }""", fqn)


def test_conditioning_channels_read_the_same_on_every_tab(browser, app_url):
    """At 1440 px, then the same page at a 390 px phone's width (the heatmap's row name must fit there)."""
    ctx, page = open_page(browser, 1440, 900)
    config = "channels-1440-light"
    try:
        page.goto(app_url)
        expect(page.locator("#model-status")).to_contain_text("Loaded tiny-shapes-sd", timeout=120_000)
        expect(page.locator("#glossary")).to_contain_text("conditioning channels")  # the word, before it shows
        box = page.get_by_label("model", exact=True)
        box.fill("tiny-shapes-flux")
        box.press("Enter")
        page.get_by_role("button", name="Load", exact=True).click()
        expect(page.locator("#model-status")).to_contain_text("Loaded tiny-shapes-flux", timeout=120_000)
        expect(page.locator("#model-info")).to_contain_text(re.compile(r"conditioning channels \d+\.\d%"))

        tab(page, "2 Score")  # magnitude on the conditioning channels only
        page.get_by_label("Weight magnitude (baseline)").check()
        units = page.locator("#settings-magnitude").first
        for kind in ("head", "neuron", "group"):
            units.get_by_label(kind, exact=True).uncheck()
        units.get_by_label("channel", exact=True).check()
        run_and_wait(page, "Run", "#score-status", "units scored")
        expect(page.locator("#score-plot")).to_contain_text("embedding")
        labels = _tick_labels_inside(page, "#score-plot")
        assert [t["text"] for t in labels] == ["embedding"] and all(t["inside"] for t in labels), labels
        shot(page, config, "score-heatmap", page.locator("#score-plot"))

        tab(page, "3 Select")
        expect(page.locator("#target-note")).to_contain_text("Weight magnitude (baseline) can remove at most")
        expect(page.locator("#target input")).to_have_value("0.2")  # the default target, within its reach
        page.get_by_role("button", name="Pre-fill the table").click()
        expect(page.locator("#target-note")).to_contain_text("Your plan (Weight magnitude 20%)")
        row = _row(page, COND)
        assert row and row[3] == "channel", row
        kept, units_n = map(int, re.fullmatch(r"(\d+) of (\d+)", row[4]).groups())
        assert 0 < kept < units_n
        traces = _kept_traces(page)
        assert traces["conditioning channels"]["x"] == ["embedding"], traces
        assert traces["conditioning channels"]["y"] == [pytest.approx(kept / units_n)], (traces, row)
        shot(page, config, "kept-plot", page.locator("#kept-plot"))

        tab(page, "5 Export")
        expect(page.locator("#export-summary")).to_contain_text(
            f"0 operators removed, 0 layers slimmed and {units_n - kept} of {units_n} conditioning channels removed")
        expect(page.locator("#export-summary")).to_contain_text("pruned by your plan (Weight magnitude 20%)")
        shot(page, config, "export-summary", page.locator("#export-summary"))

        page.set_viewport_size({"width": 390, "height": 844})  # the same figures on a phone
        tab(page, "2 Score")
        page.wait_for_function("() => document.querySelector('#score-plot .main-svg').getBoundingClientRect()"
                               ".width <= 390")  # redrawn at the phone's width
        labels = _tick_labels_inside(page, "#score-plot")
        assert [t["text"] for t in labels] == ["embedding"] and all(t["inside"] for t in labels), labels
        shot(page, "channels-390-light", "score-heatmap", page.locator("#score-plot"))
        tab(page, "3 Select")
        page.evaluate("window.dispatchEvent(new Event('resize'))")  # a plot hidden in its tab redraws when shown
        page.wait_for_function("() => document.querySelector('#kept-plot .main-svg').getBoundingClientRect()"
                               ".width <= 390")
        shot(page, "channels-390-light", "kept-plot", page.locator("#kept-plot"))
        assert not page.errors, page.errors
    finally:
        ctx.close()


def test_a_plan_of_conditioning_channels_by_hand(browser, app_url):
    """Tick the conditioning channels' row in the structures table and type the channels to keep: the
    row, the totals, the plot and the plan agree; switching the table to operators says the plan went."""
    ctx, page = open_page(browser, 1440, 900)
    try:
        page.goto(app_url)
        expect(page.locator("#model-status")).to_contain_text("Loaded tiny-shapes-sd", timeout=120_000)
        tab(page, "3 Select")
        page.get_by_label("structures", exact=True).check()
        expect(page.locator("#selection")).to_contain_text("time_embedding")
        cond = "time_embedding"  # a UNet's conditioning channels: first in depth order
        cell = page.locator('#selection [role=gridcell][data-row="0"]')
        assert _row(page, cond)[2:5] == [cond, "channel", "128 of 128"]
        cell.locator("input[type=checkbox]").check()
        expect(page.locator("#plan-totals")).to_contain_text("6.5%")  # every channel: 69.8 k of 1.08 M params
        cell.nth(7).dblclick()
        box = cell.nth(7).locator("textarea, input").first
        box.fill("0,1,2,3,4,5,6,7")
        box.press("Enter")
        expect(page.locator('#selection [role=gridcell][data-row="0"][data-col="4"]')).to_have_text("8 of 128")
        expect(page.locator("#plan-totals")).to_contain_text("6.1%")
        assert _kept_traces(page)["conditioning channels"] == {"x": ["embedding"], "y": [8 / 128]}
        page.locator("#plan-row").get_by_text("plan (JSON)").click()
        expect(page.locator("#plan-row")).to_contain_text("kept_channels")
        shot(page, "channels-by-hand", "kept-plot", page.locator("#kept-plot"))

        page.get_by_label("operators", exact=True).check()  # a plan is one table's ticks: said, not silent
        expect(page.locator("#target-note")).to_contain_text(
            "The table now lists operators, so your plan (chosen by hand, 6.1% of the params) was cleared")
        page.get_by_label("structures", exact=True).check()  # a plan by hand reads as one on the Export tab
        expect(page.locator("#selection")).to_contain_text(cond)  # the structures table is back before a tick
        expect(page.locator('#selection [role=gridcell][data-row="0"][data-col="4"]')).to_have_text("128 of 128")
        page.locator('#selection [role=gridcell][data-row="0"] input[type=checkbox]').check()
        expect(page.locator("#plan-totals")).to_contain_text("6.5%")
        tab(page, "5 Export")
        expect(page.locator("#export-summary")).to_contain_text(
            "pruned by your plan (chosen by hand): 0 operators removed, 0 layers slimmed and 128 of 128 conditioning "
            "channels removed")
        assert not page.errors, page.errors
    finally:
        ctx.close()
