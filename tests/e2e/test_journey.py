"""A first-time visitor's whole journey in a real browser (headless Debian chromium), at
1440x900 (light): read the guide, score, see what can go, select, compare, ask how much can be
pruned, export, hit an error, switch models; at 390x844 (dark) the steps whose look depends on
the width or the theme (``python -m tests.e2e.shots`` runs the whole journey at all four).

It asserts what a person would check, and saves a screenshot per finding of issue 12 under
tests/e2e/artifacts/ (git-ignored), named <config>-<NN>-<finding>.png.
"""

from __future__ import annotations

import re
import time
import zipfile
from pathlib import Path

import pytest
from playwright.sync_api import expect

from app_support.wiring import toast_seconds
from tests.e2e.conftest import open_page
from visual.theme import plain

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # a real browser
CONFIGS = [(1440, 900, "light"), (390, 844, "dark")]  # all four: python -m tests.e2e.shots
TABS = ("1 Model", "2 Score", "3 Select", "4 How much?", "5 Export")
ROOT = Path(__file__).resolve().parents[2]
PRUNABLE = "#e4572e"  # visual.PRUNABLE_COLOR: the lowest scores, in every heatmap


def _lora_file(tmp_path):
    """A small peft LoRA for tiny-shapes-sd (attention queries and resnet convs), saved as diffusers does."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from pruning import load_pipeline

    pipe = load_pipeline("tiny-shapes-sd").pipe
    pipe.unet.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "conv1"], init_lora_weights=False))
    type(pipe).save_lora_weights(tmp_path / "lora-in", unet_lora_layers=get_peft_model_state_dict(pipe.unet))
    return tmp_path / "lora-in" / "pytorch_lora_weights.safetensors"


def shot(page, config: str, name: str, locator=None) -> None:
    if locator is not None:
        locator.scroll_into_view_if_needed()
    page.screenshot(path=str(page.artifacts / f"{config}-{name}.png"))


def tab(page, name: str) -> None:
    button = page.get_by_role("tab", name=name)
    expect(button).to_be_visible()  # reachable without any overflow menu, at every width
    button.click()


COUNT = re.compile(r"(?<![\d.])(?<!queue: )(\d+)\s*/\s*(\d+)(?![\d.]*s\b)")


def counts(text: str) -> list[tuple[int, int]]:
    """The run's "done/total" counts in a status text, not Gradio's own "queue: 1/1" or its
    "1.1/6.9s" elapsed / expected seconds.

    >>> counts("processing | 1.1/6.9s")
    []
    >>> counts("queue: 1/1 | 0.5s")
    []
    >>> counts("evaluating magnitude at 20%: 3/9")
    [(3, 9)]
    """
    return [(int(a), int(b)) for a, b in COUNT.findall(text)]


def wait_for_count(page, status: str, at_least: int = 0, timeout_s: float = 60) -> tuple[int, int]:
    """Wait until the run reports its own progress count in ``status`` (done >= ``at_least``;
    Gradio's queue and timer texts are no count), and return it."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        found = [c for c in counts(page.locator(status).inner_text()) if c[1] > 1 and c[0] >= at_least]
        if found:
            return found[-1]
        page.wait_for_timeout(100)
    raise AssertionError(f"no progress count >= {at_least} in {status} within {timeout_s} s: "
                         f"{page.locator(status).inner_text()!r}")


def record_texts(page, elem: str) -> None:
    """Keep every text ``elem`` shows from now on (a MutationObserver in the page: polling from
    here misses the updates of a short run on a loaded machine); read them with :func:`recorded`."""
    page.evaluate("""sel => { const el = document.querySelector(sel); window.__texts = window.__texts || {};
        const seen = window.__texts[sel] = [el.innerText];
        new MutationObserver(() => seen.push(el.innerText)).observe(el, {subtree: true, childList: true,
                                                                           characterData: true}); }""", elem)


def recorded(page, elem: str) -> list[str]:
    return page.evaluate("sel => (window.__texts || {})[sel] || []", elem)


def run_and_wait(page, button: str, status: str, text: str) -> None:
    page.get_by_role("button", name=button, exact=True).click()
    expect(page.locator(status)).to_contain_text(text, timeout=120_000)


def heatmap(page, elem: str) -> dict:
    """The drawn heatmap's values, hover data and colour scale (as Plotly holds them)."""
    return page.locator(f"{elem} .js-plotly-plot").evaluate(
        """g => { const d = g._fullData[0];
                  return {z: Array.from(d.z, r => Array.from(r)), custom: d.customdata,
                          colorscale: d.colorscale, zmin: d.zmin, title: g._fullLayout.title.text}; }""")


def title_fits(page, elem: str) -> None:
    """The plot's drawn title lies inside the plot, left to right (Plotly cuts off, never wraps, a
    title wider than the figure), and below the plot's label (gradio draws it over the figure)."""
    title, plot, label = page.locator(elem).evaluate(
        """e => [e.querySelector('.g-gtitle').getBoundingClientRect().toJSON(),
                 e.querySelector('.js-plotly-plot').getBoundingClientRect().toJSON(),
                 (l => l && l.getBoundingClientRect().toJSON())(e.querySelector('[data-testid=block-label]'))]""")
    assert title["width"] > 0 and plot["left"] <= title["left"] and title["right"] <= plot["right"] + 0.5, (title, plot)
    assert label is None or label["bottom"] <= title["top"], (label, title)


def image_boxes(page) -> list[dict]:
    page.wait_for_function("""() => ['#img-original img', '#img-pruned img'].every(s => {
        const i = document.querySelector(s); return i && i.complete && i.naturalWidth > 0 &&
        i.getBoundingClientRect().width > 0; })""")
    return [page.locator(f"{elem} img").bounding_box() for elem in ("#img-original", "#img-pruned")]


@pytest.mark.parametrize("width, height, scheme", CONFIGS, ids=[f"{w}-{s}" for w, _, s in CONFIGS])
def test_visitor_journey(browser, app_url, tmp_path, width, height, scheme):
    """The whole journey at 1440x900; at 390x844 (dark) the steps whose look depends on the width or the
    theme (the shots script runs the whole journey at all four configurations)."""
    journey(browser, app_url, tmp_path, width, height, scheme, full=width > 1000)


def journey(browser, app_url, tmp_path, width: int, height: int, scheme: str, full: bool = True) -> None:
    """The visitor's journey; ``full=False`` keeps what a narrow or dark page can get wrong (onboarding,
    every tab reachable, a heatmap on the dark page, the selection table, the aligned comparison and the
    error toast, the export options) and leaves out what the width and theme do not change (the LD-Pruner
    and EcoDiff runs, the estimate, hand edits, measuring the plan, the How much? comparison, the export
    itself, the model switch)."""
    from pruning import load_pruned

    config = f"{width}-{scheme}"
    ctx, page = open_page(browser, width, height, scheme)
    try:
        page.goto(app_url + ("?__theme=dark" if scheme == "dark" else ""))
        expect(page.locator("#model-status")).to_contain_text("Loaded tiny-shapes-sd", timeout=120_000)
        # 4. onboarding: what this is, the four steps, the words, run times on this device
        expect(page.get_by_text("The five steps")).to_be_visible()
        expect(page.get_by_text("low = prunable").first).to_be_visible()
        expect(page.get_by_text("Weight magnitude (baseline) under a second").first).to_be_visible()
        expect(page.locator("#guide-steps")).to_contain_text("tiny-shapes-sd is loaded")
        shot(page, config, "04-onboarding")
        for name in TABS:  # 10. every step is reachable at this width
            expect(page.get_by_role("tab", name=name)).to_be_visible()

        # 2. score: the LD-Pruner sweep (weight magnitude where the run is not the point), coloured by one rule
        tab(page, "2 Score")
        if full:
            page.get_by_label("Operator sweep (LD-Pruner)").check()
            page.get_by_label("steps", exact=True).first.fill("2")
            page.get_by_label("block", exact=True).check()
            run_and_wait(page, "Run", "#score-status", "operators scored")
        else:
            page.get_by_label("Weight magnitude (baseline)").check()
            run_and_wait(page, "Run", "#score-status", "units scored")
        method = "LD-Pruner" if full else "Weight magnitude"
        h = heatmap(page, "#score-plot")
        scores = [(c[1], z) for row_c, row_z in zip(h["custom"], h["z"]) for c, z in zip(row_c, row_z)
                  if c and c[0] is not None]
        lowest = min(scores)
        assert lowest[1] == 0 and h["zmin"] == 0  # the lowest score sits at the bottom of the scale...
        assert h["colorscale"][0][1].lower() == PRUNABLE  # ...which is the 'prunable' colour
        assert "tiny-shapes-sd" in plain(h["title"]) and method in plain(h["title"])  # whose plot it is
        title_fits(page, "#score-plot")  # wrapped to the width of a phone
        shot(page, config, "05-colours-heatmap", page.locator("#score-plot"))
        if scheme == "dark":  # the page's dark theme shows through every plot
            bg = page.locator("#score-plot .js-plotly-plot").evaluate("g => g._fullLayout.paper_bgcolor")
            assert bg in ("rgba(0, 0, 0, 0)", "rgba(0,0,0,0)"), bg

        if full:
            # issue 23 item 7: the estimate names the method it was asked for, and goes when the method changes
            page.get_by_role("button", name="Estimate the cost").first.click()
            expect(page.locator("#score-estimate")).to_contain_text("LD-Pruner", timeout=60_000)
            # issue 23 item 2: a near-tie (EcoDiff whose gates barely moved) warns and flattens the colours
            page.get_by_label("Mask optimization (EcoDiff)").check()
            expect(page.locator("#score-estimate")).not_to_contain_text("LD-Pruner")
            eco = page.locator("#settings-ecodiff")
            for name, value in (("epochs", "1"), ("learning rate", "0.000001")):
                box = eco.get_by_label(f"number input for {name}") if eco.get_by_label(
                    f"number input for {name}").count() else eco.get_by_label(name, exact=True)
                box.fill(value)
                box.press("Enter")
            run_and_wait(page, "Run", "#score-status", "scores barely differ: this ranking is unreliable")
            tied = heatmap(page, "#score-plot")
            assert len({c.lower() for _, c in tied["colorscale"]}) == 1, tied["colorscale"]  # one flat colour
            shot(page, config, "11-near-tie", page.locator("#score-plot"))
            page.get_by_label("Operator sweep (LD-Pruner)").check()  # back to its own result
            expect(page.locator("#score-status")).to_contain_text("operators scored")

        # 9. select: pre-filled from the method that just ran, most prunable first
        tab(page, "3 Select")
        if full:
            expect(page.get_by_label("pre-fill from")).to_have_value("Mask optimization (EcoDiff)")  # the last run
            page.get_by_label("pre-fill from").click()
            page.get_by_role("option", name="Operator sweep (LD-Pruner)").click()
        else:
            expect(page.get_by_label("pre-fill from")).to_have_value("Weight magnitude (baseline)")
        expect(page.locator("#target-note")).to_contain_text("can remove at most")
        target = page.locator("#target input")  # the typed box (the slider's own box is hidden)
        target.fill("0.1")
        target.press("Enter")
        page.get_by_role("button", name="Pre-fill the table").click()
        totals = page.locator(".block").filter(has_text="your plan removes").last
        expect(totals).to_contain_text("%")
        shot(page, config, "09-selection-table", page.locator("#selection"))
        shot(page, config, "06-numbers-totals", totals)
        if full:  # a hand edit, and the plan measured on the How much? prompts
            expect(page.locator("#target-note")).to_contain_text("LD-Pruner 10%")
            before = page.locator("#target-note").inner_text()
            page.locator("#selection input[type=checkbox]:checked").first.click()  # a hand edit: one row less
            expect(page.locator("#target-note")).to_contain_text("LD-Pruner 10%, edited by hand")  # recomputed
            assert page.locator("#target-note").inner_text() != before
            page.get_by_role("button", name="Measure the plan on the How much? prompts").click()
            expect(page.locator("#plan-eval")).to_contain_text("Computed on", timeout=120_000)
            measured = re.search(r"latent MSE \*?\*?([0-9.e+-]+)", page.locator("#plan-eval").inner_text()).group(1)

        # 1. original vs pruned: the same size, aligned to the pixel, large enough to judge
        page.get_by_role("button", name="Generate original vs pruned").click()
        expect(page.locator("#gen-status")).to_contain_text("seed 0", timeout=120_000)
        a, b = image_boxes(page)
        assert abs(a["width"] - b["width"]) <= 1 and abs(a["height"] - b["height"]) <= 1
        assert abs(a["y"] - b["y"]) <= 1 and a["width"] >= (300 if width > 1000 else 140)
        sources = [page.locator(f"{e} img").get_attribute("src") for e in ("#img-original", "#img-pruned")]
        shot(page, config, "01-comparison-aligned", page.locator("#pair"))

        # 3. an error is a toast, and the previous comparison stays on screen
        page.locator("#prompt textarea").fill("")
        page.get_by_role("button", name="Generate original vs pruned").click()
        toast = page.locator(".toast-body.error").filter(has_text="Give at least one prompt")
        expect(toast).to_be_in_viewport()
        toast.evaluate("""t => new Promise(done => { const faded = () => getComputedStyle(t).opacity === '1' ?
                          done() : requestAnimationFrame(faded); faded(); })""")  # faded in: the shot shows it
        shot(page, config, "03-error-keeps-outputs")
        assert [page.locator(f"{e} img").get_attribute("src") for e in ("#img-original", "#img-pruned")] == sources
        expect(page.locator("#img-original img")).to_be_visible()
        expect(page.locator("#gen-status")).to_contain_text("seed 0")  # the caption of what is shown stays
        expect(page.locator("#gen-status").get_by_text("Error", exact=True)).to_be_hidden()
        duration = toast_seconds("Give at least one prompt (one per line).")  # the app's time, not gradio's 10 s
        assert toast.locator(".timer").evaluate("t => getComputedStyle(t).animationDuration") == f"{duration:g}s"

        if full:  # (the narrow page checks its dark plot on the heatmap above)
            # "How much can I prune?": quality against sparsity, the visitor's plan marked; the metric redraws
            tab(page, "4 How much?")
            page.get_by_label("target sparsities").fill("0.2")  # one target: each method a point, beside the plan's
            record_texts(page, "#quality-status")
            page.get_by_role("button", name="Compare", exact=True).click()
            expect(page.locator("#quality-status")).to_contain_text("plans evaluated", timeout=120_000)
            seen = [d / t for text in recorded(page, "#quality-status") for d, t in counts(text) if t > 0]
            assert seen and seen == sorted(seen), seen  # item 8: one bar, never backwards
            expect(page.locator("#quality-status")).to_contain_text("Computed on: latent MSE")  # what it is computed on
            plot = page.locator("#quality-plot .js-plotly-plot")
            traces = plot.evaluate("g => g._fullData.map(t => ({name: t.name, mode: t.mode, y: Array.from(t.y)}))")
            own = [t for t in traces if t["name"].startswith("your plan")]
            assert len(own) == 1 and "LD-Pruner 10%, edited by hand" in own[0]["name"], traces
            assert f"{own[0]['y'][0]:.4g}" == f"{float(measured):.4g}", (own, measured)  # the same figure as Select's
            for t in traces:  # every curve names its settings
                assert t["mode"] == "markers" or "(" in t["name"], t["name"]
            status = page.locator("#quality-status").inner_text()
            page.get_by_label("show").click()
            page.get_by_role("option", name="PSNR vs the original (dB)").click()
            expect(page.locator("#quality-plot")).to_contain_text("PSNR")  # redrawn from the stored table...
            assert page.locator("#quality-status").inner_text() == status  # ...without running it again
            title_fits(page, "#quality-plot")  # the longer PSNR title and its "not drawn" note too
            shot(page, config, "07-controls-metric-redraw", page.locator("#quality-plot"))
            if scheme == "dark":
                bg = plot.evaluate("g => g._fullLayout.paper_bgcolor")
                assert bg in ("rgba(0, 0, 0, 0)", "rgba(0,0,0,0)")  # the page's dark theme shows through
                shot(page, config, "10-dark-plots", page.locator("#quality-plot"))

        # export: says what it exports, and the snippet works on the zip as downloaded
        tab(page, "5 Export")
        expect(toast).to_have_count(0, timeout=2_000)  # a tab's error toast does not follow the visitor to the next tab
        expect(page.locator("#export-summary")).to_contain_text("of the params")
        if full:
            expect(page.locator("#export-summary")).to_contain_text("LD-Pruner 10%, edited by hand")
            page.locator("#exp-lora input[type=file]").set_input_files(str(_lora_file(tmp_path)))
            expect(page.locator("#exp-lora")).to_contain_text(re.compile(r"pytorch_lora_weights\s*\.safetensors"))  # name and extension: two spans
            page.get_by_role("button", name="Export", exact=True).click()
            expect(page.locator("#export-status")).to_contain_text("with the LoRA sliced", timeout=120_000)
            dl = page.get_by_role("button", name="Download the model (.zip)")
            with page.expect_download() as info:
                dl.click()
            zip_path = tmp_path / "model.zip"
            info.value.save_as(zip_path)
            with zipfile.ZipFile(zip_path) as z:
                assert {"pruned-model/README.md", "pruned-model/grid.png",
                        "pruned-model/lora/pytorch_lora_weights.safetensors"} <= set(z.namelist())  # card, grid, LoRA
                z.extractall(tmp_path)
            assert load_pruned(tmp_path / "pruned-model").family == "sd"  # the folder the snippet loads
            expect(page.get_by_text("pip install").first).to_be_visible()
            snippet = page.locator("#snippet").inner_text()
            assert "pip install" in snippet and str(ROOT) not in snippet and "/work" not in snippet  # never a server path
            expect(page.locator("#export-quality-line")).to_contain_text("LD-Pruner 10%, edited by hand")
            expect(page.locator("#export-quality")).to_contain_text("shapes task accuracy")  # the card's own table
        shot(page, config, "10-export", page.locator("#export-options"))  # one option per line on a phone
        options = [page.locator(f"#{e}").bounding_box() for e in ("exp-recon", "exp-native")]
        assert (options[0]["y"] + options[0]["height"] <= options[1]["y"] + 1) == (width < 600), options  # stacked

        if full:
            # 2. another model: nothing of the previous one stays on screen unlabelled
            tab(page, "1 Model")
            box = page.get_by_label("model", exact=True)
            box.fill("tiny-shapes-flux")
            box.press("Enter")
            page.get_by_role("button", name="Load", exact=True).click()
            expect(page.locator("#model-status")).to_contain_text("Loaded tiny-shapes-flux", timeout=120_000)
            for name, elem in (("2 Score", "#score-plot"), ("4 How much?", "#quality-plot")):
                tab(page, name)
                expect(page.locator(elem)).to_contain_text("tiny-shapes-flux")
                expect(page.locator(elem)).not_to_contain_text("tiny-shapes-sd")
            tab(page, "3 Select")
            expect(page.locator("#selection")).to_contain_text("transformer_blocks")
            expect(page.get_by_label("pre-fill from")).to_have_value("Weight magnitude (baseline)")
            expect(page.locator("#target-note")).not_to_contain_text("LD-Pruner")
            expect(page.locator("#img-original img")).to_have_count(0)
            for elem in ("#guide-steps", "#score-status", "#score-estimate", "#target-note", "#gen-status", "#plan-eval",
                         "#quality-status", "#quality-estimate", "#export-summary", "#export-status", "#snippet"):
                assert "tiny-shapes-sd" not in page.locator(elem).inner_text(), elem  # item 7: nothing stale
            expect(page.locator("#guide-steps")).to_contain_text("tiny-shapes-flux is loaded")
            shot(page, config, "02-model-switch")
        assert not page.errors, page.errors
    finally:
        ctx.close()


def sweep_settings(page, app_url, steps: int) -> None:
    """A fresh page on the default model, at the Score tab with LD-Pruner chosen at ``steps``."""
    page.goto(app_url)
    expect(page.locator("#model-status")).to_contain_text("Loaded", timeout=120_000)
    tab(page, "2 Score")
    page.get_by_label("Operator sweep (LD-Pruner)").check()
    page.get_by_label("steps", exact=True).first.fill(str(steps))


def test_stop_says_stopped_and_shows_what_finished(browser, app_url):
    ctx, page = open_page(browser, 1440, 900)
    try:
        sweep_settings(page, app_url, steps=40)
        page.get_by_label("all", exact=True).check()
        page.get_by_role("button", name="Run", exact=True).click()
        wait_for_count(page, "#score-status", at_least=1)  # stop once an operator is done: k/36, k >= 1
        page.get_by_role("button", name="Stop", exact=True).first.click()
        expect(page.locator("#score-status")).to_contain_text("Stopped", timeout=60_000)
        expect(page.locator("#score-status")).to_contain_text("the finished part is shown")
        h = heatmap(page, "#score-plot")
        assert "STOPPED" in h["title"]
        shot(page, "1440-light", "08-stop", page.locator("#score-plot"))
    finally:
        ctx.close()


def test_a_model_switch_during_a_run_says_it_waits_then_what_it_dropped(browser, app_url):
    """Issue 23 item 5: loading another model while a run holds the current one says whose run it
    waits for; once loaded, it says that run's finished result was cleared, and Score shows the new
    model."""
    ctx, page = open_page(browser, 1440, 900)
    try:
        sweep_settings(page, app_url, steps=40)  # long enough to be running when Load is pressed
        page.get_by_role("button", name="Run", exact=True).click()
        wait_for_count(page, "#score-status")  # the run holds the model (its own count, not Gradio's timer)
        tab(page, "1 Model")
        box = page.get_by_label("model", exact=True)
        box.fill("tiny-shapes-flux")
        box.press("Enter")
        page.get_by_role("button", name="Load", exact=True).click()
        expect(page.locator("#model-status")).to_contain_text(
            "Waiting for the LD-Pruner run on tiny-shapes-sd, float32 to finish", timeout=30_000)
        tab(page, "2 Score")  # "press Stop in its tab to load now"
        page.get_by_role("button", name="Stop", exact=True).first.click()
        tab(page, "1 Model")
        expect(page.locator("#model-status")).to_contain_text("Loaded tiny-shapes-flux", timeout=120_000)
        expect(page.locator("#model-status")).to_contain_text("cleared with the switch")
        tab(page, "2 Score")
        expect(page.locator("#score-status")).to_contain_text("Ready: tiny-shapes-flux")
    finally:
        ctx.close()


def test_estimate_then_a_chunked_run_with_one_progress_bar(browser, app_url, monkeypatch):
    """The estimate is on screen before the run; a run split into one-operator chunks (as on a
    Space, where each chunk is one GPU call) shows one progress count over the whole run."""
    from app_support import wiring
    from pruning.runs import Budget

    monkeypatch.setattr(wiring, "CHUNK", Budget(units=1))
    ctx, page = open_page(browser, 1440, 900)
    try:
        sweep_settings(page, app_url, steps=2)
        page.get_by_label("block", exact=True).check()  # whole blocks: a dozen one-operator chunks
        page.get_by_role("button", name="Estimate the cost").first.click()
        estimate = page.locator("#score-estimate")
        expect(estimate).to_contain_text("Operator sweep (LD-Pruner): ", timeout=60_000)
        expect(estimate).to_contain_text("peak memory about")
        asked = estimate.inner_text()
        status = page.locator("#score-status")
        record_texts(page, "#score-status")
        page.get_by_role("button", name="Run", exact=True).click()
        expect(status).to_contain_text("chunks of at most 1 unit of work", timeout=60_000)
        seen = [c for text in recorded(page, "#score-status") for c in counts(text)]
        chunks = int(re.search(r"ran in (\d+) chunks", status.inner_text()).group(1))
        shot(page, "1440-light", "09-chunked-run", status)
        bar = [(d, t) for d, t in seen if t > 1]  # (0, 1): the estimate's own report
        assert chunks >= 2 and len({d for d, _ in bar}) >= 3, (chunks, seen)
        assert len({t for _, t in bar}) == 1, seen  # one total: one bar over the whole run
        done = [d for d, _ in bar]
        assert done == sorted(done), seen  # never goes back at a chunk boundary
        assert chunks >= bar[0][1]  # one operator per chunk
        expect(estimate).to_have_text(asked)  # the estimate stays on screen
    finally:
        ctx.close()


def test_journey_on_tiny_shapes_sd3(browser, app_url, tmp_path):
    """The fourth family end to end in the browser: load tiny-shapes-sd3, score (LD-Pruner, whole
    blocks), pre-fill a plan, compare images, export and load the zip back."""
    from pruning import load_pruned

    ctx, page = open_page(browser, 1440, 900)
    try:
        page.goto(app_url)
        expect(page.locator("#model-status")).to_contain_text("Loaded", timeout=120_000)
        box = page.get_by_label("model", exact=True)
        box.fill("tiny-shapes-sd3")
        box.press("Enter")
        page.get_by_role("button", name="Load", exact=True).click()
        expect(page.locator("#model-status")).to_contain_text("Loaded tiny-shapes-sd3", timeout=120_000)
        tab(page, "2 Score")
        page.get_by_label("Operator sweep (LD-Pruner)").check()
        page.get_by_label("steps", exact=True).first.fill("2")
        page.get_by_label("block", exact=True).check()
        run_and_wait(page, "Run", "#score-status", "operators scored")
        h = heatmap(page, "#score-plot")
        assert "tiny-shapes-sd3" in h["title"] and "LD-Pruner" in h["title"]
        shot(page, "sd3-1440-light", "05-heatmap", page.locator("#score-plot"))
        tab(page, "3 Select")
        expect(page.locator("#selection")).to_contain_text("transformer_blocks")
        target = page.locator("#target input")  # the typed box (the slider's own box is hidden)
        target.fill("0.1")
        target.press("Enter")
        page.get_by_role("button", name="Pre-fill the table").click()
        expect(page.locator(".block").filter(has_text="your plan removes").last).to_contain_text("%")
        page.get_by_role("button", name="Generate original vs pruned").click()
        expect(page.locator("#gen-status")).to_contain_text("seed 0", timeout=120_000)
        a, b = image_boxes(page)
        assert abs(a["width"] - b["width"]) <= 1 and a["width"] >= 300
        shot(page, "sd3-1440-light", "01-comparison", page.locator("#pair"))
        tab(page, "5 Export")
        page.get_by_role("button", name="Export", exact=True).click()
        dl = page.get_by_role("button", name="Download the model (.zip)")
        expect(dl).to_be_visible(timeout=120_000)
        with page.expect_download() as info:
            dl.click()
        zip_path = tmp_path / "model.zip"
        info.value.save_as(zip_path)
        with zipfile.ZipFile(zip_path) as z:
            z.extractall(tmp_path)
        assert load_pruned(tmp_path / "pruned-model").family == "sd3"
        assert not page.errors, page.errors
    finally:
        ctx.close()
