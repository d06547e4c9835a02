"""Chromium journey: the Export tab downloads every format, and each downloaded file loads elsewhere.

The run is a resnet18 (torchvision's layout, so the torchvision format applies) trained for one
iteration on 32 px embedded synthetic images, in this process; the server has no workers.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from workbench.jobs.worker import execute_run
from workbench.presets import get_preset
from workbench.spec import DataSpec, RunSpec, TrainSpec
from workbench.ui.run_table import run_label
from workbench.weights.export import EXPORT_FORMATS
from workbench.weights.loader import load_model_file

pytestmark = pytest.mark.browser


def expect():
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect


@pytest.fixture(scope="module")
def exported_run(serve_workbench, tmp_path_factory):
    """(served workbench, run id) of a completed resnet18 run with a best checkpoint."""
    served = serve_workbench(tmp_path_factory.mktemp("export-home"), "--workers", "0")
    spec = RunSpec(net=get_preset("resnet18").spec, data=DataSpec(synthetic_train=32, synthetic_test=16),
                   train=TrainSpec(iterations=1, batch_size=16, precision="fp32", device="cpu"))
    run_id = served.store.create_run(spec, name="resnet18", preset="resnet18", dataset="synthetic")
    served.store.claim_run(run_id, "test-worker")
    assert execute_run(served.store, run_id, "test-worker") == "completed"
    return served, run_id


def load_and_run(fmt: str, path, images: torch.Tensor) -> torch.Tensor:
    """Load a downloaded file the way a user elsewhere would, and run it on `images`."""
    if fmt == "bundle":
        import workbench

        return workbench.load_model(path)(images)
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return torch.from_numpy(session.run(None, {name: images.numpy().astype(np.float32)})[0])
    if fmt == "pt2":
        return torch.export.load(str(path)).module()(images)
    import torchvision

    model = torchvision.models.resnet18(num_classes=10)
    model.load_state_dict(torch.load(path, weights_only=True), strict=True)
    return model.eval()(images)


def test_export_tab_downloads_every_format_and_each_file_loads(page, exported_run, artifacts_dir, tmp_path):
    served, run_id = exported_run
    reference = load_model_file(served.store.run_dir(run_id) / "checkpoints" / "best.pt")
    spec = reference.spec
    images = torch.randn(3, 3, spec.input_size, spec.input_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = reference(images)

    page.goto(served.url)
    page.get_by_role("tab", name="Export", exact=True).click()
    page.locator("#export-run input").click()
    page.get_by_role("option", name=run_label(served.store.get_run(run_id)), exact=True).click()
    for fmt, export_format in EXPORT_FORMATS.items():
        file_name = f"run{run_id}-resnet18-best{export_format.suffix}"
        page.locator("#export-format label").filter(has_text=re.compile(rf"^\s*{fmt}:")).click()
        expect()(page.locator("#download-export")).to_be_hidden()
        page.locator("#prepare-export").click()
        expect()(page.locator("#export-message")).to_contain_text(f"Ready: {file_name}", timeout=90_000)
        with page.expect_download() as started:
            page.locator("#download-export").click()
        download = started.value
        assert download.suggested_filename == file_name
        download.save_as(tmp_path / file_name)
        with torch.no_grad():
            outputs = load_and_run(fmt, tmp_path / file_name, images)
        assert (outputs - expected).abs().max().item() < 1e-4, f"{fmt} gives other outputs"
    page.screenshot(path=artifacts_dir / "export-every-format-downloaded.png", full_page=True)
