"""Chromium journeys in the Fine-tune tab: import a torchvision model and fine-tune it, start from a run's
checkpoint, and see a malicious upload refused.

The server has no workers; the journey runs its queued fine-tune in this process (resnet18 on 32 px
embedded synthetic images, one iteration).
"""

from __future__ import annotations

import os
import re

import pytest
import torch
import torchvision

from tests.gradio_page import fill, pick, pick_runs
from workbench.jobs.worker import execute_run

pytestmark = pytest.mark.browser


class _CreatesMarker:
    """Unpickling this would create a marker file."""

    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def expect():
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect


@pytest.fixture(scope="module")
def workbench(serve_workbench, tmp_path_factory):
    return serve_workbench(tmp_path_factory.mktemp("finetune-browser-home"), "--workers", "0")


def open_finetune_tab(page, url: str) -> None:
    page.goto(url)
    page.get_by_role("tab", name="Fine-tune", exact=True).click()
    expect()(page.locator("#finetune-summary")).to_contain_text("Pick a model")


def choose(page, elem_id: str, label_start: str) -> None:
    """Click the radio option of `elem_id` whose label starts with `label_start`."""
    page.locator(f"#{elem_id} label").filter(has_text=re.compile(rf"^\s*{re.escape(label_start)}")).click()


def tiny_synthetic_budget(page) -> None:
    pick(page, "finetune-dataset-picker", "Embedded synthetic set (no download)")
    fill(page, "finetune-synthetic-train", "32")
    fill(page, "finetune-synthetic-test", "16")
    choose(page, "finetune-budget-unit", "iterations")
    fill(page, "finetune-budget", "1")
    fill(page, "finetune-batch-size", "16")


def test_import_torchvision_resnet18_fine_tune_its_head_then_start_from_that_run(page, workbench, artifacts_dir,
                                                                                 tmp_path):
    source = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), source)
    open_finetune_tab(page, workbench.url)
    page.locator("#finetune-upload input[type=file]").set_input_files(str(source))
    summary = page.locator("#finetune-summary")
    expect()(summary).to_contain_text("every backbone tensor fits resnet18", timeout=30_000)
    expect()(summary).to_contain_text("ImageNet's mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225) are assumed")
    expect()(page.locator("#finetune-preset input")).to_have_value("resnet18")
    choose(page, "finetune-mode", "new head only")
    fill(page, "finetune-hidden", "8")
    tiny_synthetic_budget(page)
    page.screenshot(path=artifacts_dir / "finetune-import-detected.png", full_page=True)
    page.locator("#finetune-launch").click()
    expect()(page.locator("#finetune-message")).to_contain_text("Queued #1 resnet18 fine-tuned (new head only)")

    store = workbench.store
    run = store.get_run(1)
    assert (run.spec["finetune"], run.spec["head_hidden"]) == ("head", 8)
    store.claim_run(run.id, "test-worker")
    assert execute_run(store, run.id, "test-worker") == "completed"
    page.get_by_role("tab", name="Runs", exact=True).click()
    expect()(page.locator("#runs-table").get_by_text("completed", exact=True).filter(visible=True)).to_have_count(
        1, timeout=30_000)
    page.screenshot(path=artifacts_dir / "finetune-import-completed.png", full_page=True)

    page.get_by_role("tab", name="Fine-tune", exact=True).click()
    choose(page, "finetune-source", "Another run's checkpoint")
    pick_runs(page, "finetune-run", store, 1)
    expect()(summary).to_contain_text("Source run: #1, best checkpoint", timeout=30_000)
    expect()(summary).to_contain_text("Network (from the file): resnet18")
    expect()(summary).to_contain_text("carried over")
    expect()(page.locator("#finetune-preset")).to_be_hidden()
    choose(page, "finetune-mode", "all layers")
    page.locator("#finetune-launch").click()
    expect()(page.locator("#finetune-message")).to_contain_text("Queued #2")
    expect()(page.locator("#finetune-message")).to_contain_text("child of run #1")
    page.screenshot(path=artifacts_dir / "finetune-from-run-queued.png", full_page=True)
    child = store.get_run(2)
    assert child.parent_run_id == 1 and child.spec["init_from"].endswith("imports/run1-best.pt")


def test_a_malicious_upload_is_refused_and_launch_does_nothing(page, workbench, artifacts_dir, tmp_path):
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "extra": _CreatesMarker(marker)}, evil)
    runs_before = len(workbench.store.list_runs())
    open_finetune_tab(page, workbench.url)
    page.locator("#finetune-upload input[type=file]").set_input_files(str(evil))
    expect()(page.locator("#finetune-summary")).to_contain_text("refused", timeout=30_000)
    expect()(page.locator("#finetune-model-file textarea, #finetune-model-file input").first).to_have_value("")
    page.locator("#finetune-launch").click()
    expect()(page.locator("#finetune-message")).to_contain_text("Nothing launched")
    page.screenshot(path=artifacts_dir / "finetune-malicious-refused.png", full_page=True)
    assert not marker.exists() and len(workbench.store.list_runs()) == runs_before
