"""The library side of the Fine-tune tab: where model files come from, what they hold, and the planned run."""

import os
from pathlib import Path

import pytest
import torch
import torchvision

from workbench.errors import DataError, SpecError, UnsafeFileError, WorkbenchError
from workbench.models import ResNet
from workbench.presets import get_preset, list_presets
from workbench.service.finetune import (
    checkpoint_source,
    copy_run_checkpoint,
    describe_source,
    inspect_source,
    locate_model_file,
    plan_finetune,
    store_upload,
    with_copied_source,
)
from workbench.service.forms import data_spec_from_fields, specs_from_form, train_spec_from_fields
from workbench.spec import DataSpec, NetSpec, RunSpec, TrainSpec
from workbench.training import MemorySink, fit
from workbench.weights.loader import fitting_presets, stage_blocks

PRESETS = list_presets()
TINY = NetSpec(name="tiny", blocks=[1, 1, 1], widths=[4, 8, 16])
DATA = DataSpec(synthetic_train=64, synthetic_test=32)
TRAIN = TrainSpec(iterations=1, batch_size=32, precision="fp32", device="cpu")


class _CreatesMarker:
    """Unpickling this would create a marker file: the payload a crafted checkpoint carries."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class RecordingExecutor:
    """Takes submissions the way the real executor does and remembers them."""

    def __init__(self) -> None:
        self.submitted = []

    def submit(self, spec, **fields):
        self.submitted.append((spec, fields))
        return len(self.submitted)


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return path


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """The last checkpoint of a one-iteration run of the tiny net, under <home>/runs/7/."""
    home = tmp_path_factory.mktemp("home")
    fit(RunSpec(net=TINY, data=DATA, train=TRAIN), home / "runs" / "7", MemorySink(), home=home)
    return home / "runs" / "7" / "checkpoints" / "last.pt"


def test_an_upload_is_copied_under_a_safe_unique_name(tmp_path):
    upload = tmp_path / "my model (v2)!;rm -rf.pth"
    upload.write_bytes(b"weights")
    first, second = store_upload(upload, tmp_path / "home"), store_upload(upload, tmp_path / "home")
    assert first != second and first.parent == second.parent == tmp_path / "home" / "imports"
    assert first.name.startswith("my-model-v2-rm-rf-") and first.suffix == ".pth"
    assert all(ch.isalnum() or ch in "-_." for ch in first.name) and first.read_bytes() == b"weights"


def test_server_paths_must_lie_in_the_home_or_data_folders(tmp_path):
    home, data, outside = tmp_path / "home", tmp_path / "data", tmp_path / "outside"
    for folder in (home, data / "models", outside):
        folder.mkdir(parents=True)
    (data / "models" / "net.pth").write_bytes(b"x")
    (outside / "net.pth").write_bytes(b"x")
    assert locate_model_file("models/net.pth", home, [data]) == (data / "models" / "net.pth").resolve()
    with pytest.raises(DataError, match="outside the allowed data roots"):
        locate_model_file(str(outside / "net.pth"), home, [data])
    with pytest.raises(DataError, match="outside the allowed data roots"):
        locate_model_file(str(data / ".." / "outside" / "net.pth"), home, [data])
    with pytest.raises(DataError, match="does not exist"):
        locate_model_file(str(data / "models"), home, [data])
    with pytest.raises(WorkbenchError, match="no model file given"):
        locate_model_file("  ", home, [data])


def test_run_checkpoints_are_recognised_and_copied_apart_from_later_versions(tmp_path):
    home = tmp_path / "home"
    checkpoint = home / "runs" / "3" / "checkpoints" / "best.pt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"first")
    assert checkpoint_source(checkpoint, home) == (3, "best")
    assert checkpoint_source(home / "runs" / "3" / "best.pt", home) is None
    assert checkpoint_source(tmp_path / "runs" / "3" / "checkpoints" / "best.pt", home) is None
    copy = copy_run_checkpoint(checkpoint, 3, "best", home)
    assert copy == home / "imports" / "run3-best.pt" and copy.read_bytes() == b"first"
    assert copy_run_checkpoint(checkpoint, 3, "best", home) == copy, "an identical copy is reused"
    checkpoint.write_bytes(b"trained further")
    newer = copy_run_checkpoint(checkpoint, 3, "best", home)
    assert newer.name == "run3-best-2.pt" and copy.read_bytes() == b"first"


def test_a_torchvision_state_dict_is_matched_to_resnet18_and_checked_key_by_key(resnet18_file):
    report = inspect_source(resnet18_file, PRESETS)
    assert (report.format, report.spec.name, report.guessed, report.spec_from_file) == ("state-dict", "resnet18",
                                                                                          True, False)
    assert not report.mismatches and report.problem is None and report.head_outputs == 1000
    assert report.mean == [0.485, 0.456, 0.406] and report.std == [0.229, 0.224, 0.225]
    assert report.metadata["normalization_assumed"] is True and report.class_names == []
    text = describe_source(report)
    assert "bare PyTorch state_dict" in text and "every backbone tensor fits resnet18" in text
    assert "not recorded in the file; ImageNet's mean" in text and "are assumed" in text

    wrong = inspect_source(resnet18_file, PRESETS, preset="resnet34")
    assert "layer1.2.conv1.weight" in wrong.mismatches.missing and wrong.other_fits == ["resnet18"]
    assert "Keys and shapes do not fit resnet34" in describe_source(wrong)
    with pytest.raises(WorkbenchError, match="do not fit resnet34: 80 missing: layer1.2.conv1.weight"):
        plan_finetune(wrong, mode="all", data=DATA, train=TRAIN)
    with pytest.raises(SpecError, match="unknown preset"):
        inspect_source(resnet18_file, PRESETS, preset="resnet9000")


def test_a_reference_cifar_checkpoint_names_its_normalization_and_every_preset_it_fits(tmp_path):
    weights = ResNet(get_preset("resnet20").spec).state_dict()
    renamed = {f"module.{key.replace('fc.', 'linear.')}": value for key, value in weights.items()
               if not key.endswith("num_batches_tracked")}
    path = tmp_path / "resnet20.th"
    torch.save({"state_dict": renamed, "best_prec1": 91.5}, path)
    report = inspect_source(path, PRESETS)
    assert report.format == "cifar-reference" and report.spec.name == "resnet20" and report.other_fits == ["plain20"]
    text = describe_source(report)
    assert "mean (0.485, 0.456, 0.406)" in text and "carried over" in text and "Also fits:** plain20" in text
    assert "test_accuracy 91.50" in text


def test_a_run_checkpoint_carries_its_spec_classes_and_normalization(tiny_checkpoint):
    report = inspect_source(tiny_checkpoint, PRESETS, source_run=(7, "last"))
    assert report.format == "workbench-checkpoint" and report.spec_from_file and report.spec.blocks == [1, 1, 1]
    assert len(report.class_names) == 10 and report.mean and report.std
    text = describe_source(report)
    assert "Network (from the file):** tiny" in text and "Source run:** #7, last checkpoint" in text
    assert "carried over" in text and f"Classes ({len(report.class_names)})" in text


def test_a_malicious_pickle_is_refused_before_anything_runs(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "extra": _CreatesMarker(marker)}, path)
    with pytest.raises(UnsafeFileError, match="refused"):
        inspect_source(path, PRESETS)
    assert not marker.exists()


def test_fitting_presets_builds_only_candidates_with_the_same_outline(resnet18_file):
    weights = torch.load(resnet18_file, weights_only=True)
    assert stage_blocks(weights) == [2, 2, 2, 2]
    assert fitting_presets(weights, PRESETS) == ["resnet18"], "plain18 has no projection shortcuts"


def test_plan_finetune_sets_the_mode_and_ignores_fields_of_other_modes(resnet18_file):
    report = inspect_source(resnet18_file, PRESETS)
    head = plan_finetune(report, mode="head", data=DATA, train=TRAIN, presets=PRESETS, stages=3, head_hidden=32)
    assert (head.spec.finetune, head.spec.head_hidden, head.spec.finetune_stages) == ("head", 32, 1)
    assert head.spec.init_from == str(resnet18_file) and head.preset == "resnet18"
    assert head.name == "resnet18 fine-tuned (new head only)" and head.parent_run_id is None
    last = plan_finetune(report, mode="last_stages", data=DATA, train=TRAIN, stages=2, head_hidden=32)
    assert (last.spec.finetune_stages, last.spec.head_hidden) == (2, None)
    assert plan_finetune(report, mode="head", data=DATA, train=TRAIN, head_hidden=0).spec.head_hidden is None
    for stages in (0, 5, 1.5):
        with pytest.raises(SpecError, match="from 1 to 4 for resnet18"):
            plan_finetune(report, mode="last_stages", data=DATA, train=TRAIN, stages=stages)
    with pytest.raises(SpecError, match="hidden width"):
        plan_finetune(report, mode="head", data=DATA, train=TRAIN, head_hidden=-4)
    with pytest.raises(SpecError, match="fine-tuning mode is one of"):
        plan_finetune(report, mode="everything", data=DATA, train=TRAIN)


def test_submitting_a_run_checkpoint_fine_tune_copies_it_and_names_the_parent(tiny_checkpoint):
    home = tiny_checkpoint.parents[3]
    report = inspect_source(tiny_checkpoint, PRESETS, source_run=checkpoint_source(tiny_checkpoint, home))
    plan = plan_finetune(report, mode="all", data=DATA, train=TRAIN, presets=PRESETS)
    queued = with_copied_source(plan, home)
    assert queued.spec.init_from == str(home / "imports" / "run7-last.pt") and Path(queued.spec.init_from).is_file()
    assert (queued.name, queued.preset, queued.parent_run_id) == ("tiny fine-tuned (all layers)", None, 7)


def test_specs_from_form_reads_data_and_training_with_one_seed():
    form = dict(dataset="folder", path="pets", download=False, classes="3", per_class_cap=8, resolution=32,
                validation_size=0, synthetic_train=10, synthetic_test=10, budget_unit="iterations", budget=2,
                batch_size=16, lr=0.01, schedule="cosine", warmup=0, seed=4, precision="fp32", device="cpu",
                log_every=1, eval_every=0)
    data, train = specs_from_form(**form)
    assert data == data_spec_from_fields(name="folder", path="pets", classes="3", per_class_cap=8, resolution=32,
                                          seed=4)
    assert train == train_spec_from_fields(budget_unit="iterations", budget=2, batch_size=16, lr=0.01,
                                           schedule="cosine", seed=4, precision="fp32", device="cpu", log_every=1)
    assert (data.seed, train.seed, train.iterations, data.resolution) == (4, 4, 2, 32)
