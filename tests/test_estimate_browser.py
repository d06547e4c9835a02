"""The Launch tab in Chromium: a run-time estimate before launching, and the paper's 45k/5k split in one click."""

from __future__ import annotations

import pytest

from tests.gradio_page import fill, pick
from tests.test_ui_browser import TINY, expect, open_app, open_tab
from workbench.presets import save_preset

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def workbench(serve_workbench, tmp_path_factory):
    home = tmp_path_factory.mktemp("estimate-home")
    save_preset("tiny", TINY, home)
    return serve_workbench(home, "--workers", "1")


def test_launch_tab_estimates_the_run_time_and_sets_the_papers_split(page, workbench, artifacts_dir):
    open_app(page, workbench.url)
    pick(page, "preset-picker", "tiny")
    open_tab(page, "Launch")
    fill(page, "synthetic-train", "512")
    fill(page, "batch-size", "32")
    page.locator("#estimate-run").click()
    expect()(page.locator("#launch-estimate")).to_contain_text("Estimated run time:", timeout=60_000)
    expect()(page.locator("#launch-estimate")).to_contain_text("ms/step at batch 32 on cpu")

    page.locator("#paper-split").click()
    expect()(page.locator("#validation-size input")).to_have_value("5000")
    expect()(page.locator("#dataset-picker input")).to_have_value("CIFAR-10")
    page.screenshot(path=artifacts_dir / "launch-estimate-and-paper-split.png", full_page=True)
    assert workbench.store.list_runs() == [], "estimating launches nothing"
