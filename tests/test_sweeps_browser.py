"""A sweep in Chromium: launched from the Launch tab, followed in Compare (parallel coordinates, importance, best
trial), its best trial exported with one click."""

from __future__ import annotations

import pytest

from tests.gradio_page import fill, pick
from workbench.jobs.worker import run_worker
from workbench.presets import save_preset
from workbench.spec import NetSpec

pytestmark = pytest.mark.browser

TINY = NetSpec(name="tiny", blocks=[1, 1, 1], widths=[4, 8, 16])


def expect():
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect


def test_a_grid_sweep_launches_shows_its_trials_in_compare_and_exports_the_best(page, serve_workbench, tmp_path,
                                                                               artifacts_dir):
    import workbench as library

    save_preset("tiny", TINY, tmp_path)
    served = serve_workbench(tmp_path, "--workers", "0")
    page.goto(served.url)
    page.wait_for_selector("#unit-diagram .main-svg", timeout=60_000)
    pick(page, "preset-picker", "tiny")
    page.get_by_role("tab", name="Launch", exact=True).click()
    fill(page, "synthetic-train", "256")
    fill(page, "synthetic-test", "64")
    fill(page, "budget", "1")
    fill(page, "batch-size", "32")
    expect()(page.locator("#launch-network")).to_contain_text("tiny")
    page.get_by_text("Sweep: grid, random or TPE search").click()
    fill(page, "sweep-space", "lr=0.05, 0.2; momentum=0.9")
    page.locator("#launch-sweep").click()
    expect()(page.locator("#launch-message")).to_contain_text("unknown sweep parameter 'momentum'")
    fill(page, "sweep-space", "lr=0.05, 0.2; weight_decay=0.0001, 0.001")
    page.locator("#launch-sweep").click()
    expect()(page.locator("#launch-message")).to_contain_text("Queued 4 of 4 trials as sweep")

    page.get_by_role("tab", name="Compare", exact=True).click()
    expect()(page.locator("#sweep-summary")).to_contain_text("grid sweep, 4 of 4 trials (4 queued)", timeout=30_000)
    assert run_worker(served.store, "test-worker", exit_when_idle=True) == 4

    # The view refreshes on its own timer: the parallel coordinates replace the "no trial has finished" chart.
    expect()(page.locator("#sweep-summary")).to_contain_text("(4 completed), finished", timeout=30_000)
    page.wait_for_function("document.querySelector('#sweep-parcoords .js-plotly-plot')?._fullData?.[0]?.type"
                           " === 'parcoords'", timeout=30_000)
    best = min(served.store.list_runs(), key=lambda run: (run.last_test_error, run.id))
    expect()(page.locator("#sweep-best")).to_contain_text(f"#{best.id} {best.name}")
    axes = page.evaluate("() => document.querySelector('#sweep-parcoords .js-plotly-plot')._fullData[0]"
                         ".dimensions.map(d => d.label)")
    assert axes == ["lr", "weight_decay", "final test error (%)"]
    expect()(page.locator("#sweep-importance")).to_contain_text("weight_decay")
    page.locator("#sweep-view").screenshot(path=artifacts_dir / "compare-sweep.png")

    page.locator("#sweep-export-best").click()
    expect()(page.locator("#sweep-export-message")).to_contain_text("Ready", timeout=60_000)
    with page.expect_download() as started:
        page.locator("#sweep-download-best").click()
    download = started.value
    assert download.suggested_filename.startswith(f"run{best.id}-trial-")
    download.save_as(tmp_path / download.suggested_filename)
    assert library.load_model(tmp_path / download.suggested_filename).spec.blocks == [1, 1, 1]
