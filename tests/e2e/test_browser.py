"""What a new user does, in a real (headless) browser: load, score, tick, compare, export, err.

Screenshots of each stage go to tests/e2e/artifacts/ (ignored by git).
"""

from __future__ import annotations

import zipfile

import pytest

pytestmark = pytest.mark.e2e
SOURCE = "tiny-shapes-sd"


def shot(page, name):
    page.screenshot(path=str(page.artifacts / f"{name}.png"), full_page=True)


def load(page, source):
    box = page.get_by_label("model", exact=True)
    box.fill(source)
    box.press("Enter")
    page.get_by_role("button", name="Load", exact=True).click()


def test_new_user_flow(page, app_url, tmp_path):
    from pruning import load_pruned

    page.goto(app_url)
    page.get_by_text("family `sd`").or_(page.get_by_text("family sd")).first.wait_for()
    shot(page, "1-model")

    page.get_by_role("tab", name="2 · Score").click()
    page.get_by_label("Operator sweep (LD-Pruner)").check()
    page.get_by_label("steps", exact=True).first.fill("2")
    page.get_by_label("block", exact=True).check()
    page.get_by_role("button", name="Run", exact=True).click()
    page.get_by_text("operators scored").first.wait_for()
    page.locator(".heatmaplayer image").first.wait_for(state="attached")
    shot(page, "2-score")

    page.get_by_role("tab", name="3 · Select and compare").click()
    table = page.locator("#selection")
    boxes = table.get_by_test_id("checkbox")  # nth(0) is the header's "select all"
    boxes.nth(1).wait_for()
    for i in (1, 3):
        boxes.nth(i).click()
        page.wait_for_timeout(300)
    from playwright.sync_api import expect

    totals = page.locator(".block").filter(has_text="your plan removes").last
    expect(totals).to_contain_text("MACs per denoiser call", timeout=60_000)
    shot(page, "3-select")

    page.get_by_role("button", name="Generate original vs pruned").click()
    page.get_by_text("latent MSE vs original").wait_for()
    page.locator("#img-pruned img").wait_for()
    shot(page, "4-compare")

    page.get_by_role("tab", name="5 · Export").click()
    page.get_by_role("button", name="Export", exact=True).click()
    dl = page.get_by_role("button", name="Download the model (.zip)")
    dl.wait_for()
    with page.expect_download() as info:
        dl.click()
    zip_path = tmp_path / "model.zip"
    info.value.save_as(zip_path)
    with zipfile.ZipFile(zip_path) as z:
        z.extractall(tmp_path)
    pruned = load_pruned(tmp_path / "pruned-model")
    assert pruned.family == "sd"
    shot(page, "5-export")

    page.get_by_role("tab", name="1 · Model").click()
    load(page, "no-such-model")
    page.get_by_text("is not a bundled model").first.wait_for()
    shot(page, "6-error")
