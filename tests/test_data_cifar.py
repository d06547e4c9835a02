"""CIFAR-10/100 loading: the real archive in ../shared/data, small fake archives, and unsafe pickles."""

from __future__ import annotations

import io
import json
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from workbench.data import load_dataset
from workbench.data.base import hold_out
from workbench.data.cifar import LAYOUTS, locate_cifar, safe_unpickle
from workbench.errors import DataError, UnsafeFileError
from workbench.spec import DataSpec

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CIFAR10_ARCHIVE = SHARED_DATA / "cifar-10-python.tar.gz"
needs_real_cifar = pytest.mark.skipif(
    not CIFAR10_ARCHIVE.is_file(),
    reason=f"real CIFAR-10 archive not found at {CIFAR10_ARCHIVE} (../shared/data absent)",
)
CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


class WritesMarker:
    """Unpickling this would run a shell command that creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def fake_batch(count: int, num_classes: int, seed: int, label_key: str = "labels") -> dict:
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": b"fake batch",
        label_key.encode(): [i % num_classes for i in range(count)],
        b"data": rng.integers(0, 256, size=(count, 3072), dtype=np.uint8),
        b"filenames": [f"img_{i}.png".encode() for i in range(count)],
    }


def fake_members(name: str = "cifar10", per_batch: int = 20) -> dict[str, bytes]:
    """Pickled members in the real format (protocol 2 dicts with bytes keys and uint8 arrays)."""
    layout = LAYOUTS[name]
    num_classes = 10 if name == "cifar10" else 100
    members = {
        member: pickle.dumps(fake_batch(per_batch, num_classes, seed, layout.label_key), protocol=2)
        for seed, member in enumerate((*layout.train_members, *layout.test_members))
    }
    names = CIFAR10_NAMES if name == "cifar10" else [f"class_{i}" for i in range(100)]
    meta = {layout.names_key.encode(): [n.encode() for n in names], b"num_vis": 3072}
    members[layout.meta_member] = pickle.dumps(meta, protocol=2)
    return members


def write_archive(path: Path, members: dict[str, bytes], folder: str = "cifar-10-batches-py") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path


def write_folder(path: Path, members: dict[str, bytes]) -> Path:
    path.mkdir(parents=True)
    for name, payload in members.items():
        (path / name).write_bytes(payload)
    return path


@pytest.fixture(scope="module")
def real_cifar10(tmp_path_factory):
    if not CIFAR10_ARCHIVE.is_file():
        pytest.skip(f"real CIFAR-10 archive not found at {CIFAR10_ARCHIVE} (../shared/data absent)")
    home = tmp_path_factory.mktemp("home")
    return load_dataset(DataSpec(name="cifar10", path=str(CIFAR10_ARCHIVE)), home=home, allowed_roots=[SHARED_DATA])


@needs_real_cifar
def test_real_cifar10_counts_classes_and_mean(real_cifar10):
    data = real_cifar10
    assert data.train_images.shape == (50000, 3, 32, 32) and data.train_images.dtype == torch.uint8
    assert data.test_images.shape == (10000, 3, 32, 32)
    assert data.train_labels.dtype == torch.int64
    assert data.info.class_names == CIFAR10_NAMES
    assert data.info.counts == {"train": 50000, "test": 10000}
    assert data.info.class_counts["train"] == [5000] * 10
    assert data.info.class_counts["test"] == [1000] * 10
    assert data.info.mean == pytest.approx((0.491, 0.482, 0.447), abs=0.01)
    assert data.info.std == pytest.approx((0.247, 0.243, 0.261), abs=0.01)
    assert data.info.image_size == 32 and data.info.augment == "cifar"
    assert Path(data.info.source).resolve() == CIFAR10_ARCHIVE.resolve()
    assert data.val_images is None
    json.dumps(data.info.to_dict())


@needs_real_cifar
def test_real_cifar10_paper_holdout_is_45k_5k_and_fixed_by_seed(real_cifar10):
    images, labels = real_cifar10.train_images, real_cifar10.train_labels
    train_x, train_y, val_x, val_y = hold_out(images, labels, 5000, seed=0)
    assert len(train_y) == 45000 and len(val_y) == 5000
    again = hold_out(images, labels, 5000, seed=0)
    assert torch.equal(again[3], val_y) and torch.equal(again[2], val_x)
    other = hold_out(images, labels, 5000, seed=1)
    assert not torch.equal(other[2], val_x)


@needs_real_cifar
def test_real_cifar10_is_found_in_the_data_roots_without_a_path(tmp_path):
    roots = [tmp_path / "datasets", SHARED_DATA]
    found = locate_cifar("cifar10", None, False, tmp_path, roots, allowed_roots=[SHARED_DATA])
    assert found == CIFAR10_ARCHIVE.resolve()


@pytest.mark.parametrize("form", ["archive", "batches folder", "folder holding the batches folder"])
def test_fake_cifar10_loads_from_archive_or_folder(tmp_path, form):
    members = fake_members()
    if form == "archive":
        path = write_archive(tmp_path / "data" / "cifar-10-python.tar.gz", members)
    elif form == "batches folder":
        path = write_folder(tmp_path / "data" / "cifar-10-batches-py", members)
    else:
        write_folder(tmp_path / "data" / "cifar-10-batches-py", members)
        path = tmp_path / "data"
    data = load_dataset(DataSpec(name="cifar10", path=str(path)), home=tmp_path / "home")
    assert data.info.counts == {"train": 100, "test": 20}
    assert data.info.class_names == CIFAR10_NAMES
    expected = pickle.loads(members["data_batch_1"])[b"data"].reshape(-1, 3, 32, 32)
    assert torch.equal(data.train_images[:20], torch.from_numpy(expected))
    assert data.train_labels[:12].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]


def test_fake_cifar100_uses_fine_labels(tmp_path):
    path = write_archive(
        tmp_path / "cifar-100-python.tar.gz", fake_members("cifar100", per_batch=200), "cifar-100-python"
    )
    data = load_dataset(DataSpec(name="cifar100", path=str(path)), home=tmp_path / "home")
    assert data.num_classes == 100 and data.info.class_names[7] == "class_7"
    assert data.info.counts == {"train": 200, "test": 200}
    assert data.info.class_counts["train"] == [2] * 100


def test_classes_cap_and_validation_apply_to_cifar(tmp_path):
    path = write_archive(tmp_path / "cifar-10-python.tar.gz", fake_members(per_batch=40))
    spec = DataSpec(name="cifar10", path=str(path), classes=["dog", "cat"], per_class_cap=15, validation_size=6)
    data = load_dataset(spec, home=tmp_path / "home")
    assert data.info.class_names == ["dog", "cat"]
    assert data.info.counts == {"train": 24, "test": 8, "val": 6}
    assert sorted(set(data.train_labels.tolist())) == [0, 1]
    assert data.info.class_counts["val"][0] + data.info.class_counts["train"][0] == 15


@pytest.mark.parametrize("form", ["archive", "folder"])
def test_missing_batch_names_the_member_and_the_complete_contents(tmp_path, form):
    members = fake_members()
    del members["data_batch_3"]
    if form == "archive":
        path = write_archive(tmp_path / "cifar-10-python.tar.gz", members)
    else:
        path = write_folder(tmp_path / "cifar-10-batches-py", members)
    with pytest.raises(DataError, match="missing data_batch_3") as caught:
        load_dataset(DataSpec(name="cifar10", path=str(path)), home=tmp_path / "home")
    assert "data_batch_1, data_batch_2, data_batch_3, data_batch_4, data_batch_5, test_batch, batches.meta" in str(
        caught.value
    )


@pytest.mark.parametrize("form", ["archive", "folder"])
def test_crafted_pickle_is_refused_and_runs_nothing(tmp_path, form):
    marker = tmp_path / "pwned"
    members = fake_members()
    members["data_batch_2"] = pickle.dumps(WritesMarker(marker), protocol=2)
    if form == "archive":
        path = write_archive(tmp_path / "evil" / "cifar-10-python.tar.gz", members)
    else:
        path = write_folder(tmp_path / "evil" / "cifar-10-batches-py", members)
    with pytest.raises(UnsafeFileError, match=r"refused to load data_batch_2 .*asks for (posix|os)\.system"):
        load_dataset(DataSpec(name="cifar10", path=str(path)), home=tmp_path / "home")
    assert not marker.exists()
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(WritesMarker(control), protocol=2))
    assert control.exists(), "the payload is live: a plain unpickler runs it"


def test_restricted_unpickler_refuses_other_codecs_and_globals(tmp_path):
    sneaky = b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x05\x00\x00\x00rot13\x86R."
    with pytest.raises(UnsafeFileError, match="latin-1"):
        safe_unpickle(io.BytesIO(sneaky), "sneaky")
    with pytest.raises(UnsafeFileError, match=r"builtins\.eval"):
        safe_unpickle(io.BytesIO(b"cbuiltins\neval\n(S'1+1'\ntR."), "eval")
    assert safe_unpickle(io.BytesIO(pickle.dumps({"x": [1, b"a", "b", 2.5]}, protocol=2)), "plain") == {
        "x": [1, b"a", "b", 2.5]
    }


def test_garbage_archive_and_damaged_batch_give_data_errors(tmp_path):
    garbage = tmp_path / "cifar-10-python.tar.gz"
    garbage.write_bytes(b"definitely not a tar archive" * 100)
    with pytest.raises(DataError, match="not a readable tar archive"):
        load_dataset(DataSpec(name="cifar10", path=str(garbage)), home=tmp_path / "home")
    members = fake_members()
    members["test_batch"] = members["test_batch"][:100]
    path = write_archive(tmp_path / "damaged" / "cifar-10-python.tar.gz", members)
    with pytest.raises(DataError, match="test_batch .* is not a readable CIFAR batch"):
        load_dataset(DataSpec(name="cifar10", path=str(path)), home=tmp_path / "home")


def test_wrong_shape_is_reported(tmp_path):
    members = fake_members()
    batch = pickle.loads(members["data_batch_1"])
    batch[b"data"] = batch[b"data"][:, :100]
    members["data_batch_1"] = pickle.dumps(batch, protocol=2)
    path = write_archive(tmp_path / "cifar-10-python.tar.gz", members)
    with pytest.raises(DataError, match=r"uint8 array \(N, 3072\); found uint8 \(20, 100\)"):
        load_dataset(DataSpec(name="cifar10", path=str(path)), home=tmp_path / "home")


def test_not_found_says_where_it_looked_and_how_to_fix(tmp_path):
    with pytest.raises(DataError) as caught:
        load_dataset(DataSpec(name="cifar10"), home=tmp_path / "home", allowed_roots=[tmp_path / "roots"])
    message = str(caught.value)
    assert "CIFAR-10 not found" in message and "cifar-10-python.tar.gz" in message
    assert str(tmp_path / "home" / "datasets") in message and "download: true" in message
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(DataSpec(name="cifar10", path=str(tmp_path / "nowhere.tar.gz")), home=tmp_path / "home")


def test_default_location_is_home_datasets(tmp_path):
    write_archive(tmp_path / "home" / "datasets" / "cifar-10-python.tar.gz", fake_members())
    data = load_dataset(DataSpec(name="cifar10"), home=tmp_path / "home", allowed_roots=[])
    assert data.info.counts["train"] == 100


def test_path_outside_allowed_roots_is_refused(tmp_path):
    path = write_archive(tmp_path / "elsewhere" / "cifar-10-python.tar.gz", fake_members())
    with pytest.raises(DataError, match="outside the allowed data roots"):
        load_dataset(
            DataSpec(name="cifar10", path=str(path)), home=tmp_path / "home", allowed_roots=[tmp_path / "data"]
        )
    link = tmp_path / "data" / "cifar-10-python.tar.gz"
    link.parent.mkdir()
    link.symlink_to(path)
    with pytest.raises(DataError, match="outside the allowed data roots"):
        load_dataset(
            DataSpec(name="cifar10", path=str(link)), home=tmp_path / "home", allowed_roots=[tmp_path / "data"]
        )
