"""End-to-end journeys in Chromium: build, launch a twin, watch it finish, cancel and resume, log in.

One workbench (one worker process) serves the journeys of this module in order; the networks
are tiny (blocks [1, 1, 1], widths [4, 8, 16]) on small embedded synthetic sets.
"""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest

from tests.gradio_page import fill, pick, pick_runs
from workbench.presets import save_preset
from workbench.spec import NetSpec
from workbench.ui.run_table import RUN_TABLE_COLUMNS

pytestmark = pytest.mark.browser

TINY = NetSpec(name="tiny", blocks=[1, 1, 1], widths=[4, 8, 16])
RUN_TIMEOUT_MS = 120_000


@pytest.fixture(scope="module")
def workbench(serve_workbench, tmp_path_factory):
    home = tmp_path_factory.mktemp("browser-home")
    save_preset("tiny", TINY, home)
    return serve_workbench(home, "--workers", "1")


def expect():
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect


def open_app(page, url: str) -> None:
    page.goto(url)
    page.wait_for_selector("#unit-diagram .main-svg", timeout=60_000)


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name, exact=True).click()


def set_tiny_training(page, *, train: int, test: int, budget: str, unit: str = "epochs") -> None:
    open_tab(page, "Launch")
    fill(page, "synthetic-train", str(train))
    fill(page, "synthetic-test", str(test))
    page.get_by_label(unit, exact=True).check()
    fill(page, "budget", budget)
    fill(page, "batch-size", "32")
    fill(page, "log-every", "4")


def status_cells(page, status: str):
    """Visible cells of the runs table that say `status` (the table also keeps hidden sizing copies)."""
    return page.locator("#runs-table").get_by_text(status, exact=True).filter(visible=True)


def test_invalid_depth_shows_message_and_launches_nothing(page, workbench, artifacts_dir):
    open_app(page, workbench.url)
    fill(page, "depth-field", "21")
    expect()(page.locator("#build-error")).to_contain_text("21 is not one; the nearest are 20 and 26")
    page.screenshot(path=artifacts_dir / "journey2-invalid-depth-message.png", full_page=True)
    open_tab(page, "Launch")
    expect()(page.locator("#launch-network")).to_contain_text("invalid")
    for button in ("launch-run", "launch-twin", "launch-ladder", "launch-placements", "launch-stochastic-depth"):
        expect()(page.locator(f"#{button}")).to_be_disabled()
    page.screenshot(path=artifacts_dir / "journey2-launch-disabled.png", full_page=True)
    assert workbench.store.list_runs() == []


def test_twin_completes_and_compare_shows_four_traces(page, workbench, artifacts_dir):
    open_app(page, workbench.url)
    pick(page, "preset-picker", "tiny")
    expect()(page.locator("#build-summary")).to_contain_text("blocks [1, 1, 1]")
    set_tiny_training(page, train=256, test=64, budget="2")
    expect()(page.locator("#launch-network")).to_contain_text("tiny")
    page.locator("#launch-twin").click()
    expect()(page.locator("#launch-message")).to_contain_text("Queued")

    open_tab(page, "Runs")
    expect()(status_cells(page, "completed")).to_have_count(2, timeout=RUN_TIMEOUT_MS)
    page.screenshot(path=artifacts_dir / "journey1-runs-completed.png", full_page=True)

    open_tab(page, "Compare")
    expect()(page.locator("#curves-plot .scatterlayer .trace")).to_have_count(4, timeout=30_000)
    legend = page.locator("#curves-plot .legendtext").all_text_contents()
    assert any(text.startswith("#") and "plain-tiny · synthetic · twin" in text and " test" in text
               for text in legend)
    page.screenshot(path=artifacts_dir / "journey1-compare-four-traces.png", full_page=True)
    runs = workbench.store.list_runs()
    assert sorted(run.spec["net"]["shortcut"] for run in runs) == ["A", "none"]
    assert runs[0].spec["data"] == runs[1].spec["data"] and runs[0].spec["train"] == runs[1].spec["train"]


def test_export_tab_downloads_a_bundle_that_loads(page, workbench, artifacts_dir, tmp_path):
    import workbench as library

    completed = workbench.store.list_runs(status="completed")
    assert completed, "needs the twin of the previous journey"
    run = completed[-1]
    open_app(page, workbench.url)
    open_tab(page, "Export")
    pick_runs(page, "export-run", workbench.store, run.id)
    page.locator("#prepare-export").click()
    expect()(page.locator("#export-message")).to_contain_text("Ready", timeout=60_000)
    with page.expect_download() as started:
        page.locator("#download-export").click()
    download = started.value
    assert download.suggested_filename == f"run{run.id}-{run.name}-best.zip"
    download.save_as(tmp_path / download.suggested_filename)
    page.screenshot(path=artifacts_dir / "export-bundle-downloaded.png", full_page=True)
    assert library.load_model(tmp_path / download.suggested_filename).spec.blocks == [1, 1, 1]


def test_cancel_then_resume_a_running_run(page, workbench, artifacts_dir):
    open_app(page, workbench.url)
    pick(page, "preset-picker", "tiny")
    set_tiny_training(page, train=2048, test=64, budget="1200", unit="iterations")
    page.locator("#launch-run").click()
    expect()(page.locator("#launch-message")).to_contain_text("Queued")
    run_id = max(run.id for run in workbench.store.list_runs())

    open_tab(page, "Runs")
    pick_runs(page, "run-picker", workbench.store, run_id)
    details = page.locator("#run-details")
    expect()(details).to_contain_text("Status: running", timeout=RUN_TIMEOUT_MS)
    page.locator("#cancel-run").click()
    expect()(page.locator("#runs-message")).to_contain_text("cancel requested")
    expect()(details).to_contain_text("Status: cancelled", timeout=RUN_TIMEOUT_MS)
    page.screenshot(path=artifacts_dir / "journey3-cancelled.png", full_page=True)
    cancelled = workbench.store.get_run(run_id)
    assert cancelled.status == "cancelled" and 0 < cancelled.iteration < 1200

    page.locator("#resume-run").click()
    expect()(page.locator("#runs-message")).to_contain_text("queued again")
    expect()(details).to_contain_text("Status: completed", timeout=RUN_TIMEOUT_MS)
    page.screenshot(path=artifacts_dir / "journey4-resumed-completed.png", full_page=True)
    assert workbench.store.get_run(run_id).iteration == 1200


def test_auth_refuses_unauthenticated_page_and_api(page, serve_workbench, tmp_path, artifacts_dir):
    from gradio_client import Client

    served = serve_workbench(tmp_path, "--workers", "0", "--auth", "ada:lovelace")
    page.goto(served.url)
    expect()(page.get_by_role("button", name="Login")).to_be_visible()
    assert page.locator("#preset-picker").count() == 0
    page.screenshot(path=artifacts_dir / "journey5-login-required.png", full_page=True)

    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(served.url + "config")
    assert refused.value.code == 401
    with pytest.raises(Exception, match="(?i)auth|login|401"):
        Client(served.url, verbose=False)
    client = Client(served.url, auth=("ada", "lovelace"), verbose=False)
    assert client.predict(api_name="/list_runs")[0]["data"] in ([], [[""] * len(RUN_TABLE_COLUMNS)])
