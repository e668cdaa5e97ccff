"""After a run in the Score tab, the Select tab's target range is the method that ran: its reach on
the slider and in the note (a run's end sets the store and the pre-fill choice at once, and the
store's event used to read the choice it replaced, so the default method's reach stayed on screen:
5 sessions in 6 after an OBS-Diff run)."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import open_page
from tests.e2e.test_journey import run_and_wait, tab

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # a real browser
NAME = "Optimal Brain Surgeon (OBS-Diff)"


@pytest.fixture
def one_thread():
    """Served as ``python app.py`` serves on a CPU (one torch thread): the timing the race showed in."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_the_target_range_is_the_method_that_just_ran(browser, app_url, one_thread):
    for _ in range(2):  # a race (5 sessions in 6 before the fix): fresh sessions; the run is computed once, then cached
        ctx, page = open_page(browser, 1440, 900)
        try:
            page.goto(app_url)
            expect(page.locator("#model-status")).to_contain_text("Loaded tiny-shapes-sd", timeout=120_000)
            tab(page, "2 Score")
            page.get_by_label(NAME).check()
            page.locator("#settings-obsdiff").get_by_text("more settings").click()  # the uniform allocation: a
            page.locator("#set-obsdiff-allocation").get_by_label("uniform").check()  # quick run (the race is after it)
            run_and_wait(page, "Run", "#score-status", "units scored")
            tab(page, "3 Select")
            expect(page.get_by_label("pre-fill from")).to_have_value(NAME)
            expect(page.locator("#target-note")).to_contain_text(f"{NAME} can remove at most")
            page.wait_for_timeout(2000)  # the stale range, when it came, came last
            note = page.locator("#target-note").inner_text()
            assert note.startswith(f"{NAME} can remove at most"), note
            top = float(page.locator("#target-slider [data-testid=max-value]").inner_text())
            assert f"at most {top:.0%} of the params" in note, (top, note)  # the slider ends where the note says
            assert not page.errors, page.errors
        finally:
            ctx.close()
