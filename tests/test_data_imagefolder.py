"""Image folders: the real Imagenette subset in ../shared/data, the cache, and bad input of every kind."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from workbench.data import load_dataset
from workbench.errors import DataError
from workbench.paths import cache_dir
from workbench.spec import DataSpec

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
IMAGENETTE = SHARED_DATA / "imagenette-mini"
needs_imagenette = pytest.mark.skipif(
    not IMAGENETTE.is_dir(), reason=f"Imagenette subset not found at {IMAGENETTE} (../shared/data absent)"
)
IMAGENETTE_CLASSES = [
    "n01440764",
    "n02102040",
    "n02979186",
    "n03000684",
    "n03028079",
    "n03394916",
    "n03417042",
    "n03425413",
    "n03445777",
    "n03888257",
]
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "grey": (128, 128, 128)}


def save_image(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (24, 20), fmt: str = "JPEG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, fmt)
    return path


def make_tree(root: Path, per_class: dict[str, int], split: str | None = None) -> Path:
    """Class folders of solid-colour JPEGs under root (or root/split)."""
    base = root / split if split else root
    for name, count in per_class.items():
        for i in range(count):
            save_image(base / name / f"{name}_{i:03d}.jpg", COLOURS.get(name, (90, 90, 90)))
    return root


def load(path: Path, home: Path, **options) -> object:
    return load_dataset(DataSpec(name="folder", path=str(path), **options), home=home)


@needs_imagenette
def test_imagenette_loads_800_200_and_second_load_hits_the_cache(tmp_path):
    spec = DataSpec(name="folder", path=str(IMAGENETTE), resolution=64)
    started = time.perf_counter()
    first = load_dataset(spec, home=tmp_path, allowed_roots=[SHARED_DATA])
    cold = time.perf_counter() - started
    warm_times = []
    for _ in range(2):
        started = time.perf_counter()
        second = load_dataset(spec, home=tmp_path, allowed_roots=[SHARED_DATA])
        warm_times.append(time.perf_counter() - started)
    warm = min(warm_times)

    assert first.info.cache_hit is False and second.info.cache_hit is True
    assert first.info.counts == {"train": 800, "test": 200}
    assert first.info.class_names == IMAGENETTE_CLASSES
    assert first.info.class_counts == {"train": [80] * 10, "test": [20] * 10}
    assert first.train_images.shape == (800, 3, 64, 64) and first.train_images.dtype == torch.uint8
    assert first.info.image_size == 64 and first.info.augment == "folder"
    assert first.info.skipped.count == 0
    assert torch.equal(first.train_images, second.train_images)
    assert torch.equal(first.test_labels, second.test_labels)
    assert first.info.mean == pytest.approx(second.info.mean)
    assert cold >= 5 * warm, f"cache hit took {warm:.3f}s, first load {cold:.3f}s: less than 5x faster"
    json.dumps(second.info.to_dict())


@needs_imagenette
def test_imagenette_subset_by_relative_path_first_k_classes_and_cap(tmp_path):
    spec = DataSpec(name="folder", path="imagenette-mini", classes=3, per_class_cap=10, resolution=32)
    data = load_dataset(spec, home=tmp_path, allowed_roots=[SHARED_DATA])
    assert data.info.class_names == IMAGENETTE_CLASSES[:3]
    assert data.info.counts == {"train": 30, "test": 30}
    assert data.train_images.shape[1:] == (3, 32, 32)


def test_split_layout_with_classes_by_name(tmp_path):
    make_tree(tmp_path / "data", {"red": 4, "green": 3, "blue": 2}, "train")
    make_tree(tmp_path / "data", {"red": 2, "green": 1, "blue": 1}, "val")
    data = load(tmp_path / "data", tmp_path / "home", classes=["blue", "red"], resolution=16)
    assert data.info.class_names == ["blue", "red"]
    assert data.info.counts == {"train": 6, "test": 3}
    assert data.info.class_counts["train"] == [2, 4]
    blue = data.train_images[data.train_labels == 0].float().mean(dim=(0, 2, 3))
    assert blue[2] > 150 and blue[0] < 80


def test_unknown_class_names_list_the_available_ones(tmp_path):
    make_tree(tmp_path / "data", {"red": 2, "green": 2})
    with pytest.raises(DataError, match=r"unknown class name\(s\) purple .*available classes: green, red"):
        load(tmp_path / "data", tmp_path / "home", classes=["red", "purple"])
    with pytest.raises(DataError, match="first 5 classes but .* has only 2"):
        load(tmp_path / "data", tmp_path / "home", classes=5)


def test_single_folder_is_split_by_fraction_with_a_fixed_seed(tmp_path):
    make_tree(tmp_path / "data", {"red": 10, "green": 10, "blue": 5})
    a = load(tmp_path / "data", tmp_path / "home", split_fraction=0.2, resolution=8, seed=3)
    assert a.info.class_counts == {"train": [4, 8, 8], "test": [1, 2, 2]}
    b = load(tmp_path / "data", tmp_path / "home2", split_fraction=0.2, resolution=8, seed=3)
    assert torch.equal(a.train_images, b.train_images) and torch.equal(a.test_labels, b.test_labels)


def test_single_folder_split_depends_on_the_seed(tmp_path):
    root = tmp_path / "data"
    for i in range(12):
        save_image(root / "grey" / f"{i:02d}.png", (i * 20, i * 20, i * 20), fmt="PNG")
    save_image(root / "red" / "0.png", COLOURS["red"], fmt="PNG")
    save_image(root / "red" / "1.png", COLOURS["red"], fmt="PNG")
    pick = {seed: load(root, tmp_path / "home", split_fraction=0.25, resolution=8, seed=seed) for seed in (0, 1, 2)}
    held_out = {seed: sorted(d.test_images[d.test_labels == 0][:, 0, 0, 0].tolist()) for seed, d in pick.items()}
    assert all(len(v) == 3 for v in held_out.values())
    assert len({tuple(v) for v in held_out.values()}) > 1


def test_resize_shorter_side_then_centre_crop(tmp_path):
    root = tmp_path / "data"
    image = np.zeros((40, 120, 3), dtype=np.uint8)
    image[:, :40] = COLOURS["red"]
    image[:, 40:80] = COLOURS["green"]
    image[:, 80:] = COLOURS["blue"]
    for split in ("train", "val"):
        (root / split / "bars").mkdir(parents=True)
        Image.fromarray(image).save(root / split / "bars" / "wide.png")
    data = load(root, tmp_path / "home", resolution=20)
    assert data.train_images.shape == (1, 3, 20, 20)
    inner = data.train_images[0, :, :, 1:-1].permute(1, 2, 0).int()
    assert (inner - torch.tensor(COLOURS["green"])).abs().max() <= 2


def test_grey_cmyk_rgba_palette_and_16_bit_images_become_rgb(tmp_path):
    folder = tmp_path / "data" / "train" / "modes"
    folder.mkdir(parents=True)
    Image.new("L", (16, 16), 77).save(folder / "grey.png")
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(folder / "cmyk.jpg")
    Image.new("RGBA", (16, 16), (10, 200, 30, 128)).save(folder / "rgba.png")
    Image.new("LA", (16, 16), (150, 255)).save(folder / "la.png")
    palette = Image.new("P", (16, 16), 1)
    palette.putpalette([0, 0, 0, 250, 20, 20] + [0] * 762)
    palette.info["transparency"] = 0
    palette.save(folder / "palette.png")
    Image.fromarray(np.full((16, 16), 40000, dtype=np.uint16)).save(folder / "sixteen.png")
    Image.new("1", (16, 16), 1).save(folder / "bilevel.bmp")
    save_image(tmp_path / "data" / "val" / "modes" / "x.jpg", (1, 2, 3))
    data = load(tmp_path / "data", tmp_path / "home", resolution=8)
    assert data.info.skipped.count == 0 and data.info.counts["train"] == 7
    names = sorted(p.name for p in folder.iterdir())
    pixel = {name: data.train_images[i, :, 4, 4].tolist() for i, name in enumerate(names)}
    assert pixel["grey.png"] == [77, 77, 77]
    assert pixel["cmyk.jpg"][0] > 200 and pixel["cmyk.jpg"][1] < 60 and pixel["cmyk.jpg"][2] < 60
    assert pixel["rgba.png"] == [10, 200, 30]
    assert pixel["la.png"] == [150, 150, 150]
    assert pixel["palette.png"] == [250, 20, 20]
    assert pixel["sixteen.png"] == [156, 156, 156]
    assert pixel["bilevel.bmp"] == [255, 255, 255]


def test_truncated_unreadable_and_non_image_files_are_skipped_and_counted(tmp_path):
    root = make_tree(tmp_path / "data", {"red": 3, "green": 3}, "train")
    make_tree(root, {"red": 1, "green": 1}, "val")
    whole = (root / "train" / "red" / "red_000.jpg").read_bytes()
    (root / "train" / "red" / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (root / "train" / "green" / "fake.png").write_bytes(b"this is text, not a PNG")
    (root / "train" / "green" / "notes.txt").write_text("labels were checked by hand")
    (root / "train" / "README.md").write_text("loose file next to the class folders")
    (root / "train" / "red" / ".DS_Store").write_bytes(b"\0" * 10)

    data = load(root, tmp_path / "home", resolution=8)
    assert data.info.counts == {"train": 6, "test": 2}
    skipped = data.info.skipped
    assert skipped.count == 4
    assert skipped.reasons["not an image file"] == 1
    assert skipped.reasons["not inside a class folder"] == 1
    assert sum(n for reason, n in skipped.reasons.items() if reason.startswith("unreadable image")) == 2
    assert any("truncated.jpg" in example for example in skipped.examples)
    again = load(root, tmp_path / "home", resolution=8)
    assert again.info.cache_hit is True and again.info.skipped.to_dict() == skipped.to_dict()


def test_class_whose_images_all_fail_to_decode_is_an_error(tmp_path):
    root = make_tree(tmp_path / "data", {"red": 2})
    (root / "broken").mkdir()
    (root / "broken" / "a.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(DataError, match="no image in class folder.*broken.*could be decoded"):
        load(root, tmp_path / "home")


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda root: None, "does not exist; expected train/<class>/ and val/<class>/"),
        (lambda root: root.mkdir(), "is empty; expected"),
        (lambda root: (root.parent.mkdir(exist_ok=True), root.write_text("x")), "is a file, not a folder"),
        (
            lambda root: save_image(root / "loose.jpg", (1, 2, 3)),
            r"has no class sub-folders: found 1 file\(s\) \(loose.jpg\)",
        ),
    ],
    ids=["missing", "empty", "file", "no class folders"],
)
def test_bad_folders_say_what_was_found_and_expected(tmp_path, build, message):
    root = tmp_path / "data"
    build(root)
    with pytest.raises(DataError, match=message):
        load(root, tmp_path / "home")


def test_class_folder_without_images_is_named(tmp_path):
    root = make_tree(tmp_path / "data", {"red": 2}, "train")
    (root / "train" / "empty").mkdir()
    (root / "train" / "empty" / "notes.txt").write_text("nothing here")
    make_tree(root, {"red": 1}, "val")
    with pytest.raises(
        DataError, match=r"class folder\(s\) with no images: .*empty \(found 1 other file\(s\): notes.txt\)"
    ):
        load(root, tmp_path / "home")


def test_val_class_missing_from_train_is_an_error(tmp_path):
    root = make_tree(tmp_path / "data", {"red": 2}, "train")
    make_tree(root, {"red": 1, "blue": 1}, "val")
    with pytest.raises(DataError, match="class folder.*blue that .*train lacks"):
        load(root, tmp_path / "home")


def test_no_test_images_is_an_error(tmp_path):
    root = make_tree(tmp_path / "data", {"red": 1, "green": 1})
    with pytest.raises(DataError, match="gives no test images"):
        load(root, tmp_path / "home")


def test_folder_needs_a_path(tmp_path):
    with pytest.raises(DataError, match="needs a path"):
        load_dataset(DataSpec(name="folder"), home=tmp_path)


def test_changed_folder_invalidates_the_cache(tmp_path):
    root = make_tree(tmp_path / "data", {"red": 3, "green": 3}, "train")
    make_tree(root, {"red": 1, "green": 1}, "val")
    home = tmp_path / "home"
    assert load(root, home, resolution=8).info.cache_hit is False
    assert load(root, home, resolution=8).info.cache_hit is True
    assert load(root, home, resolution=12).info.cache_hit is False

    save_image(root / "train" / "red" / "new.jpg", COLOURS["red"])
    changed = load(root, home, resolution=8)
    assert changed.info.cache_hit is False and changed.info.counts["train"] == 7

    target = root / "train" / "green" / "green_000.jpg"
    save_image(target, COLOURS["blue"], size=(30, 30))
    os.utime(target, ns=(time.time_ns(), time.time_ns() + 10**9))
    recoloured = load(root, home, resolution=8)
    assert recoloured.info.cache_hit is False
    assert recoloured.train_images[recoloured.train_labels == 0][0, 2].float().mean() > 150

    cached = sorted(p.name for p in cache_dir(home).iterdir())
    assert len(cached) == 2, f"one cache file per source and options, replaced when files change: {cached}"
    assert all(name.startswith("folder-") and name.endswith(".npz") for name in cached), cached


def test_unreadable_cache_is_rebuilt(tmp_path):
    root = make_tree(tmp_path / "data", {"red": 3, "green": 3})
    home = tmp_path / "home"
    first = load(root, home, resolution=8)
    (cache_file,) = cache_dir(home).iterdir()
    cache_file.write_bytes(b"corrupt")
    rebuilt = load(root, home, resolution=8)
    assert rebuilt.info.cache_hit is False and torch.equal(first.train_images, rebuilt.train_images)
    assert load(root, home, resolution=8).info.cache_hit is True


def test_paths_and_links_outside_allowed_roots(tmp_path):
    outside = make_tree(tmp_path / "outside", {"red": 2, "green": 2})
    with pytest.raises(DataError, match="image folder .*outside is outside the allowed data roots"):
        load_dataset(
            DataSpec(name="folder", path=str(outside)), home=tmp_path / "home", allowed_roots=[tmp_path / "data"]
        )

    inside = make_tree(tmp_path / "data" / "set", {"red": 3, "green": 3})
    (inside / "red" / "escape.jpg").symlink_to(outside / "red" / "red_000.jpg")
    (inside / "green" / "sneaky").symlink_to(outside / "green", target_is_directory=True)
    data = load_dataset(
        DataSpec(name="folder", path="set", resolution=8), home=tmp_path / "home", allowed_roots=[tmp_path / "data"]
    )
    assert data.info.counts["train"] + data.info.counts["test"] == 6
    assert data.info.skipped.reasons == {"links outside the allowed data roots": 1}


def test_wordnet_class_folders_are_picked_by_words_from_the_folders_own_mapping(tmp_path):
    root = make_tree(tmp_path / "data", {"n00000001": 2, "n00000002": 2, "n00000003": 2})
    (root / "LOC_synset_mapping.txt").write_text("n00000001 sea slug, nudibranch\nn00000003 tabby, tabby cat\n")
    data = load(root, tmp_path / "home", classes=["Tabby Cat", "n00000002"])
    assert data.info.class_names == ["n00000003", "n00000002"]
    with pytest.raises(DataError, match=r"available classes: n00000001 \(sea slug\), n00000002, n00000003 \(tabby\)"):
        load(root, tmp_path / "home", classes=["tiger"])


@needs_imagenette
def test_imagenette_classes_are_accepted_as_words_from_the_shipped_mapping(tmp_path):
    spec = DataSpec(name="folder", path=str(IMAGENETTE), resolution=16, classes=["tench", "Golf Ball"],
                    per_class_cap=2)
    data = load_dataset(spec, home=tmp_path, allowed_roots=[SHARED_DATA])
    assert data.info.class_names == ["n01440764", "n03445777"]
    with pytest.raises(DataError, match=r"n01440764 \(tench\), n02102040 \(English springer\)"):
        load_dataset(spec.model_copy(update={"classes": ["goldfish"]}), home=tmp_path, allowed_roots=[SHARED_DATA])
