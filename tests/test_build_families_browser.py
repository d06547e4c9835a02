"""The Build tab in Chromium for every network family: the kind picker loads the family's preset, its own
fields change the summary and the diagram of one unit, and a bad value gets the family's message."""

from __future__ import annotations

import pytest

from tests.gradio_page import fill
from workbench.spec import KINDS

pytestmark = pytest.mark.browser

#: kind -> (preset it opens with, its parameters, text of its unit diagram, a field edit, parameters after it)
JOURNEYS = {
    "densenet": ("densenet-bc-100", "769,162", "one dense layer of a DenseNet-BC", ("growth-rate-field", "24"),
                 "k = 24"),
    "wide_resnet": ("wrn-16-4", "2,748,890", "one unit of WRN-16-4", ("widen-factor-field", "8"), "10,961,370"),
    "resnext": ("resnext29-8x64d", "34,426,698", "one ResNeXt unit (8x64d)", ("cardinality-field", "16"),
                "68,155,210"),
    "fractalnet": ("fractalnet-20", "33,724,618", "one fractal block of 3 columns", ("columns-field", "4"),
                   "76,106,634"),
    "rir": ("rir-18", "9,469,930", "one generalized residual block", ("family-depth-field", "26"), "26 layers"),
}
#: kind -> (field, bad value, the message's words)
BAD_VALUES = {
    "densenet": ("family-depth-field", "101", "6n+4 layers; 101 is not one; the nearest are 100 and 106"),
    "wide_resnet": ("family-depth-field", "27", "6n+4 layers; 27 is not one; the nearest are 22 and 28"),
    "resnext": ("cardinality-field", "0", "must be at least 1"),
    "fractalnet": ("columns-field", "9", "columns must be between 1 and 8"),
    "rir": ("family-depth-field", "19", "2n+2 layers; 19 is not one; the nearest are 18 and 20"),
}


@pytest.fixture(scope="module")
def workbench(serve_workbench, tmp_path_factory):
    return serve_workbench(tmp_path_factory.mktemp("build-home"), "--workers", "0")


def expect():
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect


def open_build(page, url: str) -> None:
    page.goto(url)
    page.wait_for_selector("#unit-diagram .main-svg", timeout=60_000)


def pick_kind(page, kind: str) -> None:
    page.locator("#kind-picker").get_by_label(KINDS[kind], exact=True).check()


@pytest.mark.parametrize("kind", JOURNEYS)
def test_each_family_builds_in_the_build_tab(page, workbench, artifacts_dir, kind):
    preset, params, diagram, (field, value), changed = JOURNEYS[kind]
    open_build(page, workbench.url)
    pick_kind(page, kind)
    summary = page.locator("#build-summary")
    expect()(summary).to_contain_text(f"Parameters:** {params}".replace("**", ""), timeout=60_000)
    expect()(page.locator("#preset-picker input")).to_have_value(preset)
    expect()(page.locator("#unit-diagram")).to_contain_text(diagram)
    expect()(summary).to_contain_text("Multiply-adds")
    expect()(summary).to_contain_text("Activation memory")
    expect()(page.locator("#path-lengths .main-svg").first).to_be_visible()
    expect()(page.locator("#depth-field")).to_be_hidden()
    page.screenshot(path=artifacts_dir / f"build-{kind}.png", full_page=True)

    fill(page, field, value)
    expect()(summary).to_contain_text(changed, timeout=60_000)
    page.screenshot(path=artifacts_dir / f"build-{kind}-edited.png", full_page=True)
    bad_field, bad_value, message = BAD_VALUES[kind]
    fill(page, bad_field, bad_value)
    expect()(page.locator("#build-error")).to_contain_text(message, timeout=60_000)
    page.get_by_role("tab", name="Launch", exact=True).click()
    expect()(page.locator("#launch-network")).to_contain_text("invalid")


def test_back_to_resnet_and_a_fractalnet_drop_path_diagram(page, workbench, artifacts_dir):
    open_build(page, workbench.url)
    pick_kind(page, "fractalnet")
    expect()(page.locator("#unit-diagram")).to_contain_text("no drop-path", timeout=60_000)
    page.locator("#drop-path-field input").check()
    expect()(page.locator("#unit-diagram")).to_contain_text("drop-path: local", timeout=60_000)
    page.get_by_role("tab", name="Launch", exact=True).click()
    expect()(page.locator("#launch-network")).to_contain_text("FractalNet B=5 C=3")
    expect()(page.locator("#launch-drop-path")).to_be_enabled()
    page.get_by_role("tab", name="Build", exact=True).click()
    pick_kind(page, "resnet")
    expect()(page.locator("#build-summary")).to_contain_text("Parameters: 269,722", timeout=60_000)
    expect()(page.locator("#depth-field")).to_be_visible()
    expect()(page.locator("#columns-field")).to_be_hidden()
    page.screenshot(path=artifacts_dir / "build-back-to-resnet.png", full_page=True)
