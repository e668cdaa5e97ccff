"""Browser fixtures: Debian's chromium driven by Playwright (browsers are never downloaded).

Skips cleanly when /usr/bin/chromium or the playwright package is missing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("PRUNING_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic"]
ARTIFACTS = Path(__file__).parent / "artifacts"


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no chromium at {CHROMIUM} (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


def open_page(browser, width: int = 1400, height: int = 1000, scheme: str = "light"):
    """A page in a fresh context (its own gradio session) with the given viewport and colour scheme."""
    ARTIFACTS.mkdir(exist_ok=True)
    ctx = browser.new_context(viewport={"width": width, "height": height}, accept_downloads=True,
                              color_scheme=scheme)
    pg = ctx.new_page()
    pg.set_default_timeout(60_000)
    pg.artifacts = ARTIFACTS  # where the test's screenshots go
    pg.errors = []
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    return ctx, pg


@pytest.fixture
def page(browser, app_url):
    ctx, pg = open_page(browser)
    yield pg
    ctx.close()
