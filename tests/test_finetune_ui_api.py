"""The Fine-tune tab's API through `gradio_client`: import a model, launch a fine-tune, refuse unsafe files.

The server has no workers; the tests run queued fine-tunes in this process with `execute_run`.
"""

import os
from pathlib import Path

import pytest
import torch
import torchvision

from workbench.jobs.worker import execute_run
from workbench.spec import DataSpec, NetSpec, RunSpec, TrainSpec
from workbench.training import load_checkpoint

DATA_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data"
IMAGENETTE = DATA_ROOT / "imagenette-mini"
TINY = NetSpec(name="tiny", blocks=[1, 1, 1], widths=[4, 8, 16])
FORM = dict(
    dataset="synthetic", path="", download=False, classes="", per_class_cap=0, resolution=0, validation_size=0,
    synthetic_train=64, synthetic_test=32, budget_unit="iterations", budget=2, batch_size=32, lr=0.01,
    schedule="constant", warmup=0, seed=0, precision="fp32", device="cpu", devices=1, log_every=1,
    eval_every=0, grad_norm_every=0,
)


class _CreatesMarker:
    """Unpickling this would create a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def served(serve_workbench, tmp_path_factory):
    roots = ["--data-root", str(DATA_ROOT)] if DATA_ROOT.is_dir() else []
    return serve_workbench(tmp_path_factory.mktemp("finetune-home"), "--workers", "0", *roots)


@pytest.fixture
def client(served):
    from gradio_client import Client

    return Client(served.url, verbose=False)


def launch(client, model_file: str, *, preset: str | None = None, mode: str = "all", stages: int = 1,
           hidden: int = 0, **form) -> str:
    values = {**FORM, **form}
    return client.predict(model_file, preset, mode, stages, hidden, *values.values(), api_name="/finetune_launch")


def run_here(served, run_id: int) -> str:
    """Run a queued run in this process, as a worker would."""
    served.store.claim_run(run_id, "test-worker")
    return execute_run(served.store, run_id, "test-worker", allowed_roots=served.app.context.data_roots)


@pytest.mark.skipif(not IMAGENETTE.is_dir(), reason=f"{IMAGENETTE} is absent")
def test_torchvision_resnet18_upload_fine_tunes_a_new_head_on_imagenette(client, served, tmp_path):
    from gradio_client import handle_file

    torch.manual_seed(0)
    source = torchvision.models.resnet18()
    upload = tmp_path / "resnet18 from torchvision.pth"
    torch.save(source.state_dict(), upload)
    model_file, summary, preset = client.predict(handle_file(str(upload)), api_name="/finetune_upload")
    assert Path(model_file).parent == served.app.context.home / "imports" and Path(model_file).is_file()
    assert "bare PyTorch state_dict" in summary and "every backbone tensor fits resnet18" in summary
    assert "ImageNet's mean (0.485, 0.456, 0.406)" in summary
    assert (preset["value"], preset["visible"]) == ("resnet18", True)

    message = launch(client, model_file, preset=preset["value"], mode="head", hidden=16, dataset="folder",
                     path="imagenette-mini", per_class_cap=8, resolution=32, batch_size=16)
    assert message.startswith("Queued"), message
    run = served.store.list_runs()[0]
    assert (run.name, run.preset, run.parent_run_id) == ("resnet18 fine-tuned (new head only)", "resnet18", None)
    assert (run.spec["init_from"], run.spec["finetune"], run.spec["head_hidden"]) == (model_file, "head", 16)
    assert run_here(served, run.id) == "completed", served.store.get_run(run.id).error_message
    trained = load_checkpoint(served.store.run_dir(run.id) / "checkpoints" / "last.pt")["model"]
    backbone = {key: value for key, value in source.state_dict().items() if not key.startswith("fc.")}
    assert all(torch.equal(trained[key], value) for key, value in backbone.items()), "frozen weights unchanged"
    assert trained["fc.0.weight"].shape == (16, 512) and trained["fc.2.weight"].shape == (10, 16)


def test_a_malicious_upload_is_refused_and_nothing_is_launched(client, served, tmp_path):
    from gradio_client import handle_file

    marker = tmp_path / "marker"
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "extra": _CreatesMarker(marker)}, evil)
    imports = served.app.context.home / "imports"
    before = set(imports.iterdir()) if imports.exists() else set()
    runs_before = len(served.store.list_runs())

    model_file, summary, _ = client.predict(handle_file(str(evil)), api_name="/finetune_upload")
    assert model_file == "" and "Not usable:** the upload evil.pth was refused" in summary and "system" in summary
    assert set(imports.iterdir()) == before, "the refused copy is removed"

    inside_home = served.app.context.home / "evil.pth"
    inside_home.write_bytes(evil.read_bytes())
    message = launch(client, str(inside_home))
    assert message.startswith("**Nothing launched:**") and "refused" in message
    assert "Nothing launched" in launch(client, "")
    assert not marker.exists() and len(served.store.list_runs()) == runs_before


def test_a_server_path_outside_the_home_and_data_folders_is_refused(client, served, tmp_path):
    outside = tmp_path / "net.pth"
    torch.save(torchvision.models.resnet18().state_dict(), outside)
    model_file, summary, _ = client.predict(str(outside), api_name="/finetune_inspect_path")
    assert model_file == "" and "outside the allowed data roots" in summary
    before = len(served.store.list_runs())
    assert "outside the allowed data roots" in launch(client, str(outside))
    assert len(served.store.list_runs()) == before


def test_a_fine_tune_from_a_run_checkpoint_survives_deleting_the_source_run(client, served):
    store = served.store
    spec = RunSpec(net=TINY, data=DataSpec(synthetic_train=64, synthetic_test=32),
                   train=TrainSpec(iterations=1, batch_size=32, precision="fp32", device="cpu"))
    source_id = store.create_run(spec, name="source", dataset="synthetic")
    assert run_here(served, source_id) == "completed"

    model_file, summary, _ = client.predict(source_id, "last", api_name="/finetune_inspect_run")
    assert model_file == str(store.run_dir(source_id) / "checkpoints" / "last.pt")
    assert f"Source run:** #{source_id}, last checkpoint" in summary and "Network (from the file):** tiny" in summary
    assert "carried over" in summary
    assert "from 1 to 3 for tiny" in launch(client, model_file, mode="last_stages", stages=4)

    message = launch(client, model_file, mode="last_stages", stages=2)
    assert message.startswith("Queued") and f"child of run #{source_id}" in message
    child = store.list_runs()[0]
    copy = served.app.context.home / "imports" / f"run{source_id}-last.pt"
    assert child.parent_run_id == source_id and child.spec["init_from"] == str(copy)
    assert (child.spec["finetune"], child.spec["finetune_stages"]) == ("last_stages", 2)
    store.delete_run(source_id)
    assert copy.is_file() and run_here(served, child.id) == "completed"
