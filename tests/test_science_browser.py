"""The Analysis and Compare tabs in Chromium: a ladder's degradation verdict, a lesion study started from the page."""

from __future__ import annotations

import pytest

from storage import open_store
from tests.gradio_page import pick, pick_runs
from workbench.spec import DataSpec, NetSpec, RunSpec, TrainSpec
from workbench.training import fit

pytestmark = pytest.mark.browser

DATA = DataSpec(synthetic_train=128, synthetic_test=64)
LESION_TIMEOUT_MS = 120_000


def expect():
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect


def ladder_run(store, name: str, shortcut: str, depth: int, final: float) -> int:
    net = NetSpec(name=name, depth=depth, widths=[4, 8, 16], shortcut=shortcut)
    spec = RunSpec(net=net, data=DATA, train=TrainSpec(iterations=30))
    run_id = store.create_run(spec, name=name, preset=name, group_name="ladder-browser", group_kind="ladder",
                              status="completed")
    rows = [{"iteration": it, "split": "train", "name": "error", "value": 90 - (90 - final) * it / 30}
            for it in (10, 20, 30)]
    rows += [{"iteration": it, "split": "train", "name": f"unit_grad/{k}", "value": 0.1 * k * it}
             for it in (10, 20, 30) for k in range(1, net.units + 1)]
    store.append_metrics(run_id, rows + [{"iteration": 30, "split": "test", "name": "error", "value": final + 2}])
    return run_id


@pytest.fixture
def analysis_home(tmp_path):
    with open_store(tmp_path) as store:
        for name, shortcut, depth, final in (("plain8", "none", 8, 40.0), ("plain14", "none", 14, 55.0),
                                             ("resnet8", "A", 8, 38.0), ("resnet14", "A", 14, 30.0)):
            ladder_run(store, name, shortcut, depth, final)
        spec = RunSpec(net=NetSpec(name="tiny", blocks=[1, 1, 1], widths=[4, 8, 16]), data=DATA,
                       train=TrainSpec(epochs=1, batch_size=32, precision="fp32"))
        trained = store.create_run(spec, name="tiny trained", preset="tiny", status="completed")
        fit(spec, store.run_dir(trained), home=tmp_path)
    return tmp_path, trained


def test_analysis_tab_verdict_gradients_and_a_lesion_job(page, serve_workbench, analysis_home, artifacts_dir):
    home, trained = analysis_home
    served = serve_workbench(home, "--workers", "1")
    page.goto(served.url)
    page.get_by_role("tab", name="Analysis", exact=True).click()

    pick_runs(page, "gradient-runs", served.store, 1, 3)
    expect()(page.locator("#gradient-heatmap .heatmaplayer .hm")).to_have_count(2, timeout=30_000)

    pick_runs(page, "lesion-run", served.store, trained)
    page.locator("#lesion-start").click()
    expect()(page.locator("#lesion-status")).to_contain_text(f"lesion of run #{trained}")
    expect()(page.locator("#lesion-status")).to_contain_text("completed", timeout=LESION_TIMEOUT_MS)
    expect()(page.locator("#lesion-by-unit .scatterlayer .trace")).to_have_count(2, timeout=30_000)
    page.screenshot(path=artifacts_dir / "analysis-tab.png", full_page=True)
    assert len(served.store.list_analyses(trained, "lesion")) == 1

    page.get_by_role("tab", name="Compare", exact=True).click()
    pick(page, "compare-group", "ladder-browser [ladder]")
    expect()(page.locator("#compare-verdict")).to_contain_text("Not enough evidence")
    expect()(page.locator("#compare-figure6 .scatterlayer .trace")).to_have_count(8)
    expect()(page.locator("#depth-plot .scatterlayer .trace")).to_have_count(4)
    page.screenshot(path=artifacts_dir / "compare-ladder.png", full_page=True)
