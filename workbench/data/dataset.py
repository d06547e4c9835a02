"""`load_dataset`: one entry point from a DataSpec to uint8 tensors plus the info the UI shows."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from workbench.data import synthetic
from workbench.data.base import (
    AugmentKind,
    Dataset,
    DatasetInfo,
    Splits,
    channel_stats,
    check_validation_size,
    class_counts,
    hold_out,
    search_roots,
    select_classes,
    subset_tensors,
)
from workbench.data.cifar import LAYOUTS, cifar_class_names, locate_cifar, read_cifar
from workbench.data.imagefolder import DEFAULT_RESOLUTION, load_folder, locate_folder, plan_folder
from workbench.errors import DataError
from workbench.paths import cache_dir, home_dir
from workbench.spec import DataSpec

logger = logging.getLogger(__name__)


def _pick_classes(splits: Splits, spec: DataSpec) -> Splits:
    """Apply `classes` and `per_class_cap` to sources that load everything (CIFAR, synthetic)."""
    keep = select_classes(splits.class_names, spec.classes, splits.source)
    if keep == list(range(len(splits.class_names))) and spec.per_class_cap is None:
        return splits
    num_classes = len(splits.class_names)
    splits.train_images, splits.train_labels = subset_tensors(
        splits.train_images, splits.train_labels, num_classes, keep, spec.per_class_cap, spec.seed
    )
    splits.test_images, splits.test_labels = subset_tensors(
        splits.test_images, splits.test_labels, num_classes, keep, spec.per_class_cap, spec.seed + 1
    )
    splits.class_names = [splits.class_names[i] for i in keep]
    return splits


def _roots(home: Path, allowed_roots: list[Path] | None) -> tuple[list[Path], list[Path] | None]:
    """Folders searched for a dataset, and the folders it may be read from (None: anywhere)."""
    permitted = None if allowed_roots is None else [home / "datasets", cache_dir(home), *allowed_roots]
    return search_roots(home, allowed_roots), permitted


@dataclass(frozen=True)
class DatasetShape:
    """The sizes a DataSpec selects, counted without decoding an image (train before the validation hold-out)."""

    train: int
    test: int
    classes: int
    image_size: int
    augment: AugmentKind


def _shape(spec: DataSpec, home: Path, allowed_roots: list[Path] | None) -> DatasetShape | None:
    """The sizes the spec selects, checking format and classes on the way; None when unknown without reading
    the data (a CIFAR archive asked for by class names, or one still to be downloaded)."""
    def capped(counts: list[int]) -> int:
        return sum(min(count, spec.per_class_cap or count) for count in counts)

    if spec.name == "synthetic":
        synthetic.check_counts(spec.synthetic_train, spec.synthetic_test)
        keep = select_classes(synthetic.CLASS_NAMES, spec.classes, "the synthetic dataset")
        return DatasetShape(capped([synthetic.class_count(spec.synthetic_train, label) for label in keep]),
                            capped([synthetic.class_count(spec.synthetic_test, label) for label in keep]),
                            len(keep), synthetic.IMAGE_SIZE, "cifar")
    else:
        roots, permitted = _roots(home, allowed_roots)
        if spec.name == "folder":
            plan = plan_folder(locate_folder(spec, roots, permitted), spec, permitted)
            return DatasetShape(len(plan.train), len(plan.test), len(plan.class_names),
                                spec.resolution or DEFAULT_RESOLUTION, "folder")
        if spec.path is None and spec.download:
            return None
        layout = LAYOUTS[spec.name]
        source = locate_cifar(spec.name, spec.path, False, home, roots, permitted)
        names = cifar_class_names(spec.name, source)
        if names is not None:
            kept = len(select_classes(names, spec.classes, f"{layout.title} at {source}"))
        elif isinstance(spec.classes, list):
            return None
        elif spec.classes is not None and spec.classes > layout.classes:
            raise DataError(f"asked for the first {spec.classes} classes but {layout.title} has only "
                            f"{layout.classes}")
        else:
            kept = spec.classes or layout.classes
        return DatasetShape(capped([layout.train_per_class] * kept), capped([layout.test_per_class] * kept), kept,
                            32, "cifar")


def check_source(spec: DataSpec, home: Path | None = None,
                 allowed_roots: list[Path] | None = None) -> DatasetShape | None:
    """Raise DataError, with the loader's own message, when the spec's data is missing, not allowed, in the
    wrong format, lacks the classes asked for, or is too small for the validation split; else its sizes
    (None when they are unknown before the data is read).

    Cheap (lists folders, decodes no image): the service calls it before queueing a run.
    """
    shape = _shape(spec, home_dir(home), allowed_roots)
    if shape is not None and spec.validation_size:
        check_validation_size(spec.validation_size, shape.train)
    return shape


def load_dataset(spec: DataSpec, home: Path | None = None, allowed_roots: list[Path] | None = None) -> Dataset:
    """Load the dataset a DataSpec describes, hold out a validation split and compute train statistics.

    `home` holds downloads and caches (default: the workbench home folder). `allowed_roots`, when
    given, are the only folders data may be read from (besides home/datasets and the cache folder);
    they are also searched, after home/datasets, when the spec gives no path.
    """
    if spec.name == "synthetic":
        splits = _pick_classes(synthetic.make_synthetic(spec.synthetic_train, spec.synthetic_test, spec.seed), spec)
    else:
        home = home_dir(home)
        roots, permitted = _roots(home, allowed_roots)
        if spec.name == "folder":
            splits = load_folder(locate_folder(spec, roots, permitted), spec, home, permitted)
        else:
            if spec.resolution not in (None, 32):
                logger.warning("resolution %s ignored: CIFAR images stay 32x32", spec.resolution)
            source = locate_cifar(spec.name, spec.path, spec.download, home, roots, permitted)
            splits = _pick_classes(read_cifar(spec.name, source), spec)

    train_images, train_labels = splits.train_images, splits.train_labels
    val_images = val_labels = None
    if spec.validation_size:
        train_images, train_labels, val_images, val_labels = hold_out(
            train_images, train_labels, spec.validation_size, spec.seed
        )
    mean, std = channel_stats(train_images)
    num_classes = len(splits.class_names)
    counts = {"train": len(train_labels), "test": len(splits.test_labels)}
    per_class = {
        "train": class_counts(train_labels, num_classes),
        "test": class_counts(splits.test_labels, num_classes),
    }
    if val_labels is not None:
        counts["val"] = len(val_labels)
        per_class["val"] = class_counts(val_labels, num_classes)
    info = DatasetInfo(
        name=spec.name,
        class_names=splits.class_names,
        counts=counts,
        class_counts=per_class,
        image_size=int(train_images.shape[-1]),
        mean=mean,
        std=std,
        source=splits.source,
        augment=splits.augment,
        skipped=splits.skipped,
        cache_hit=splits.cache_hit,
    )
    logger.info("dataset %s: %s images from %s", spec.name, counts, splits.source)
    return Dataset(
        train_images=train_images,
        train_labels=train_labels,
        test_images=splits.test_images,
        test_labels=splits.test_labels,
        info=info,
        val_images=val_images,
        val_labels=val_labels,
    )
