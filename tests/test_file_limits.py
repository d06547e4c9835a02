"""Bounded file handling: model files checked before reading, data sources checked before queueing, old
uploads and exports cleaned up. Real files, a real SQLite store."""

import os
import pickle
import time
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save

from workbench.data import check_source
from workbench.errors import DataError, WorkbenchError
from workbench.jobs import QueueExecutor
from workbench.paths import file_max_age_hours
from workbench.service import Workbench, open_store
from workbench.spec import DataSpec, NetSpec, RunSpec
from workbench.weights.importers import read_weights
from workbench.weights.limits import FileTooLarge

TINY = NetSpec(name="tiny", blocks=[1, 1, 1], widths=[4, 8, 16])


def test_a_torch_checkpoint_that_would_inflate_is_refused_unread(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"fc.weight": torch.zeros(2, 2)}, path)
    with zipfile.ZipFile(path, "a", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("model/data/99", bytes(64 * 2**20))
    with pytest.raises(FileTooLarge, match=r"model/data/99 in .* would inflate [\d,]+-fold"):
        read_weights(path)


def test_a_bundle_with_a_huge_spec_is_refused_unread(tmp_path):
    path = tmp_path / "bundle.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("weights.safetensors", b"")
        archive.writestr("spec.json", b" " * (2 * 2**20))
    with pytest.raises(FileTooLarge, match=r"spec.json in .* is 2.0 MiB; at most 1.0 MiB is read"):
        read_weights(path)


def test_a_bundle_whose_spec_is_not_an_object_says_so(tmp_path):
    path = tmp_path / "bundle.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("weights.safetensors", save({"fc.weight": torch.zeros(2, 2)}))
        archive.writestr("spec.json", "[1, 2]")
    with pytest.raises(WorkbenchError, match="spec.json must hold a JSON object of network fields"):
        read_weights(path)


def _cifar_folder(root: Path) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))
    (folder / "data_batch_1").write_bytes(b"")
    return folder


def test_cifar_classes_and_validation_size_are_checked_before_queueing(tmp_path):
    folder = _cifar_folder(tmp_path)
    check_source(DataSpec(name="cifar10", path=str(folder), classes=["cat", "dog"], validation_size=9999),
                 tmp_path, [tmp_path])
    with pytest.raises(DataError, match="unknown class name.s. wolf"):
        check_source(DataSpec(name="cifar10", path=str(folder), classes=["cat", "wolf"]), tmp_path, [tmp_path])
    with pytest.raises(DataError, match="validation_size 10,000 leaves no training images: the training set has "
                                        "10,000"):
        check_source(DataSpec(name="cifar10", path=str(folder), classes=2, validation_size=10000), tmp_path,
                     [tmp_path])
    with pytest.raises(DataError, match="has only 10"):
        check_source(DataSpec(name="cifar10", path=str(folder), classes=11), tmp_path, [tmp_path])


def _aged(path: Path, days: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    stamp = time.time() - days * 24 * 3600
    os.utime(path, (stamp, stamp))
    return path


def test_old_uploads_and_exports_go_but_imports_a_run_starts_from_stay(tmp_path):
    store = open_store(tmp_path)
    try:
        service = Workbench(store, QueueExecutor(store))
        in_use = _aged(tmp_path / "imports" / "run3-best.pt", 30)
        store.create_run(RunSpec(net=TINY, init_from=str(in_use), finetune="all"), name="fine-tune")
        stale = _aged(tmp_path / "imports" / "upload-1234.pt", 30)
        old_export = _aged(tmp_path / "exports" / "run1-tiny-best.onnx", 8)
        fresh_export = _aged(tmp_path / "exports" / "run1-tiny-last.onnx", 0)
        assert sorted(service.clean_old_files(24 * 7)) == sorted([stale, old_export])
        assert in_use.exists() and fresh_export.exists()
    finally:
        store.close()


def test_the_age_of_kept_files_comes_from_the_flag_or_the_environment(monkeypatch):
    monkeypatch.delenv("WORKBENCH_FILE_MAX_AGE_HOURS", raising=False)
    assert file_max_age_hours() == 168
    monkeypatch.setenv("WORKBENCH_FILE_MAX_AGE_HOURS", "12")
    assert file_max_age_hours() == 12 and file_max_age_hours(3) == 3
    monkeypatch.setenv("WORKBENCH_FILE_MAX_AGE_HOURS", "soon")
    with pytest.raises(WorkbenchError, match="a number of hours; got 'soon'"):
        file_max_age_hours()
    with pytest.raises(WorkbenchError, match="above 0 hours"):
        file_max_age_hours(0)
