"""Screenshots of the visitor's journey at all four configurations (1440x900 and 390x844, light
and dark), the whole journey at each, for people to look at; the test suite runs it whole at 1440x900
(light) and the width- and theme-dependent steps at 390x844 (dark) (tests/e2e/test_journey.py).

    python -m tests.e2e.shots [OUT_DIR]      # default tests/e2e/artifacts/shots (or PRUNING_SHOTS)

Launches the app as ``python app.py`` does and drives Debian's chromium; writes
``<width>-<scheme>-<NN>-<finding>.png`` and a full-page ``<width>-<scheme>-page-<tab>.png`` per tab.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

CONFIGS = [(1440, 900, "light"), (1440, 900, "dark"), (390, 844, "light"), (390, 844, "dark")]
TABS = ("1 Model", "2 Score", "3 Select", "4 How much?", "5 Export")


def main(out: str | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from playwright.sync_api import sync_playwright

    import app
    from tests.e2e import conftest
    from tests.e2e import test_journey as journey

    default = Path(__file__).resolve().parent / "artifacts" / "shots"  # ignored by git, like the suite's shots
    target = Path(out or os.environ.get("PRUNING_SHOTS", default))
    target.mkdir(parents=True, exist_ok=True)
    conftest.ARTIFACTS = target  # the journey's shots go here
    url = app.launch(prevent_thread_lock=True, quiet=True)
    failures = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=conftest.CHROMIUM, args=conftest.ARGS, headless=True)
        for width, height, scheme in CONFIGS:
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    journey.journey(browser, url, Path(tmp), width, height, scheme, full=True)
                except Exception as e:  # keep the other configurations' shots
                    failures.append(f"{width}-{scheme}: {type(e).__name__}: {str(e)[:300]}")
            ctx, page = conftest.open_page(browser, width, height, scheme)
            try:  # each tab as a whole page, after a fresh load
                page.goto(url + ("?__theme=dark" if scheme == "dark" else ""))
                page.locator("#model-status").get_by_text("Loaded").wait_for(timeout=120_000)
                for name in TABS:
                    page.get_by_role("tab", name=name).click()
                    page.wait_for_timeout(500)
                    page.screenshot(path=str(target / f"{width}-{scheme}-page-{name.split()[0]}.png"), full_page=True)
            finally:
                ctx.close()
        browser.close()
    app.demo.close()
    print(f"screenshots in {target}")
    for f in failures:
        print("journey failed:", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:2]))
