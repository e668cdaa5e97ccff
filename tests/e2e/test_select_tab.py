"""The Select tab in a real browser (issue 23 items 9 and 11): a typed target out of range is said
in plain words and what stays on screen is the target used; the selection table's operator names
read in full on a phone, without scrolling sideways, and on one line at 1440 px (checked on the
typed-target test's page)."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import open_page
from tests.e2e.test_journey import shot, tab

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # a real browser


def _select_tab(page, app_url: str, scheme: str = "light") -> None:
    page.goto(app_url + ("?__theme=dark" if scheme == "dark" else ""))
    expect(page.locator("#model-status")).to_contain_text("Loaded tiny-shapes-sd", timeout=120_000)
    tab(page, "3 Select")
    expect(page.locator("#target-note")).to_contain_text("can remove at most")  # the default method's reach


def toast(page, text):
    return page.locator(".toast-body").filter(has_text=text).last


def _type(page, value: str, key: str) -> None:
    box = page.locator("#target input")
    box.fill(value)
    box.press(key)


def test_a_typed_target_out_of_range_says_so_and_shows_the_target_used(browser, app_url):
    ctx, page = open_page(browser, 1440, 900)
    try:
        _select_tab(page, app_url)
        box, note = page.locator("#target input"), page.locator("#target-note")
        rng = page.locator("#target-slider input[type=range]")
        top = float(page.locator("#target-slider [data-testid=max-value]").inner_text())
        assert 0.2 < top < 0.95  # the slider ends at what magnitude can reach on this model...
        assert f"can remove at most {top:.0%}" in note.inner_text()  # ...and the note says so
        expect(page.locator("#target-slider input[type=number]")).to_be_hidden()  # its own box clamps silently

        _type(page, "5", "Enter")  # not a fraction (5%?): the target stays, and the toast says how to write it
        expect(toast(page, "got 5 (write 5% as 0.05). The target stays at 0.2.")).to_be_visible()
        expect(box).to_have_value("0.2")
        expect(note).to_contain_text("The target stays at 0.2.")
        assert float(rng.input_value()) == 0.2

        _type(page, "0.95", "Tab")  # beyond what the method can reach: the target is its end, in words
        expect(toast(page, "Target 0.95 is out of reach on tiny-shapes-sd")).to_be_visible()
        expect(box).to_have_value(f"{top:g}")
        expect(note).to_contain_text(f"The target is now {top:g}.")
        expect(note).to_contain_text(f"can remove at most {top:.0%}")
        assert float(rng.input_value()) == top  # the slider shows the same target

        _type(page, "150", "Enter")  # no percentage hint for 150
        expect(toast(page, re.compile(rf"got 150\. The target stays at {top:g}\."))).to_be_visible()
        expect(box).to_have_value(f"{top:g}")
        shot(page, "select-1440-light", "23-9-typed-target", page.locator("#target"))

        page.get_by_role("button", name="Pre-fill the table").click()  # the target used is the one shown
        expect(note).to_contain_text(f"Your plan (Weight magnitude {top:.0%})")

        _type(page, "0.3", "Enter")  # a target in range is used as typed, and the note says it
        expect(note).to_contain_text("Target 0.3.")
        assert float(rng.input_value()) == 0.3
        rng.focus()
        rng.press("ArrowLeft")  # dragging (here by key) moves the box and the note with it
        expect(box).to_have_value("0.29")
        expect(note).to_contain_text("Target 0.29.")
        whole_names(page, 1440, "light")  # and the table on a wide screen: every name whole, on one line
        assert not page.errors, page.errors
    finally:
        ctx.close()


def _fqn_cells(page) -> list[dict]:
    """The selection table's drawn FQN cells: their text, whether it overflows its cell, and where."""
    return page.locator("#selection").evaluate("""t => {
        const wrap = t.querySelector('.table-wrap').getBoundingClientRect();
        return [...t.querySelectorAll('[role=gridcell][data-col="2"]')].map(c => {
            const s = c.querySelector('span'), r = c.getBoundingClientRect();
            return {text: s.innerText, sw: s.scrollWidth, cw: s.clientWidth, left: r.left, right: r.right,
                    wrap_right: wrap.right, height: s.getBoundingClientRect().height,
                    line: parseFloat(getComputedStyle(s).lineHeight) || 20};
        }); }""")


def test_the_selection_table_shows_whole_operator_names_on_a_phone(browser, app_url):
    """At 390 px (dark); at 1440 px the typed-target test above checks the same table."""
    ctx, page = open_page(browser, 390, 844, "dark")
    try:
        _select_tab(page, app_url, "dark")
        whole_names(page, 390, "dark")
        assert not page.errors, page.errors
    finally:
        ctx.close()


def whole_names(page, width: int, scheme: str) -> None:
    """The selection table, pre-filled, by structures and by operators: every operator name whole and
    in view (on one line on a wide screen), the score in view, the plan's totals whole below it."""
    page.get_by_role("button", name="Pre-fill the table").click()  # structures, most prunable first
    expect(page.locator("#target-note")).to_contain_text("Your plan")
    for mode in ("structures", "operators"):
        if mode == "operators":
            page.get_by_label("operators", exact=True).check()
            expect(page.locator("#selection")).to_contain_text("resnets")
        page.locator("#selection").scroll_into_view_if_needed()
        expect(page.locator('#selection [role=gridcell][data-col="2"]').first).to_contain_text("blocks")
        cells = _fqn_cells(page)
        assert len(cells) >= 4 and max(len(c["text"]) for c in cells) >= 40, cells  # long names among them
        for c in cells:
            assert c["sw"] <= c["cw"] + 1, c  # the whole name, nothing cut off...
            assert c["right"] <= min(c["wrap_right"], width) + 1, c  # ...in view, without scrolling sideways
            if width > 1000:
                assert c["height"] < 1.5 * c["line"], c  # on one line on a wide screen
        box = page.locator('#selection [role=gridcell][data-col="1"]').first.bounding_box()
        assert box["x"] + box["width"] <= width  # the score stays in view too
        shot(page, f"select-{width}-{scheme}", f"23-11-selection-{mode}", page.locator("#selection"))
    cells = page.locator("#plan-totals").evaluate("""t => [...t.querySelectorAll('[role=gridcell], th')].map(c => {
        const r = c.getBoundingClientRect(), s = c.querySelector('span.text') || c.querySelector('span');
        return {text: c.innerText, right: r.right, sw: s ? s.scrollWidth : 0, cw: s ? s.clientWidth : 0}; })""")
    assert any("%" in c["text"] for c in cells), cells  # the plan's totals below it: every figure whole, in view
    assert all(c["right"] <= width + 1 and c["sw"] <= c["cw"] + 1 for c in cells), cells
