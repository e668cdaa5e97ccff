"""A method registered at run time gets its own controls in the Score tab, built from its settings
fields, and runs from the browser: the toy fifth method of tests/test_architecture.py (no settings)
and a toy with settings of its own (a number and a unit-kind choice)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import pytest
from playwright.sync_api import expect

from pruning import methods
from pruning.catalog import UNIT_KINDS
from pruning.methods.base import Method, Scores, opt
from pruning.methods.baselines import magnitude_scores, unit_table
from pruning.methods.cost import weights_only
from tests.e2e.conftest import open_page
from tests.test_architecture import MinusMagnitude

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@dataclass(frozen=True)
class PowerSettings:
    power: float = opt(1.0, "exponent of the weight magnitudes (toy)", "float")
    kinds: tuple = opt(UNIT_KINDS, "structure kinds to score", "choices", UNIT_KINDS)

    def to_dict(self) -> dict:
        return asdict(self)


class PowerMagnitude(Method):
    """A toy with settings: magnitude to a power, on the chosen kinds."""

    name = "power_magnitude"
    title = "Power magnitude (toy)"
    summary = "Weight magnitudes raised to a power."
    level = "unit"
    Settings = PowerSettings
    data_free = True

    def cost(self, handle, settings, step):
        return weights_only(handle)

    def score(self, handle, settings=None, *, control=None) -> Scores:
        s = settings or PowerSettings()
        scores = {f: v ** s.power for f, v in magnitude_scores(handle, kinds=s.kinds).items()}
        return Scores(self.name, "unit", unit_table(handle, scores), handle.model_ref, s.to_dict())


@pytest.fixture(scope="module")
def toy_url(app_url):
    """A second app built with the two toys registered (the page reads the registry when built)."""
    import app

    for m in (MinusMagnitude(), PowerMagnitude()):
        methods.register(m)
    try:
        demo = app.build_app()
        url = app.launch(demo, prevent_thread_lock=True, quiet=True)
        yield url
        demo.close()
    finally:
        for name in ("minus_magnitude", "power_magnitude"):
            methods.unregister(name)


def test_a_method_registered_at_run_time_gets_working_controls(browser, toy_url):
    ctx, page = open_page(browser, 1440, 900)
    try:
        page.goto(toy_url)
        expect(page.locator("#model-status")).to_contain_text("Loaded tiny-shapes-sd", timeout=120_000)
        page.get_by_role("tab", name="2 Score").click()
        page.get_by_label("Minus magnitude (toy)").check()
        passes = page.locator("#settings-minus_magnitude").get_by_label("number input for passes")
        passes.fill("3")  # its own control, from its settings field
        passes.press("Enter")
        page.get_by_role("button", name="Run", exact=True).click()
        expect(page.locator("#score-status")).to_contain_text("Done", timeout=60_000)
        expect(page.locator("#score-plot")).to_contain_text("passes 3")  # the run used the control's value
        page.get_by_role("button", name="Estimate the cost").first.click()
        expect(page.locator("#score-estimate")).to_contain_text("Minus magnitude (toy): under a second, peak memory")

        page.get_by_label("Power magnitude (toy)").check()
        expect(page.locator("#settings-minus_magnitude").first).to_be_hidden()
        group = page.locator("#settings-power_magnitude").first
        expect(group).to_be_visible()
        group.get_by_label("power").fill("2")
        group.get_by_label("group", exact=True).uncheck()  # heads and neurons only
        page.get_by_role("button", name="Run", exact=True).click()
        expect(page.locator("#score-status")).to_contain_text("Done", timeout=60_000)

        page.get_by_role("tab", name="3 Select").click()
        expect(page.get_by_label("pre-fill from")).to_have_value("Power magnitude (toy)")
        expect(page.locator("#target-note")).to_contain_text("head, neuron units")  # the settings reached the run
        page.get_by_role("button", name="Pre-fill the table").click()
        expect(page.locator("#target-note")).to_contain_text("removes")
        assert not page.errors, page.errors
    finally:
        ctx.close()
