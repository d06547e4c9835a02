"""Shared pieces of every dataset source: the Dataset/DatasetInfo records, splits, statistics, path checks."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from workbench.errors import DataError
from workbench.paths import cache_dir

logger = logging.getLogger(__name__)

AugmentKind = Literal["cifar", "folder"]


@dataclass
class SkippedFiles:
    """Files a source could not use, counted by reason, with a few examples for the UI."""

    count: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)

    MAX_EXAMPLES = 10

    def add(self, path: str, reason: str) -> None:
        """Count one skipped file."""
        self.count += 1
        self.reasons[reason] = self.reasons.get(reason, 0) + 1
        if len(self.examples) < self.MAX_EXAMPLES:
            self.examples.append(f"{path}: {reason}")

    def to_dict(self) -> dict:
        return {"count": self.count, "reasons": dict(self.reasons), "examples": list(self.examples)}

    @classmethod
    def from_dict(cls, data: dict) -> SkippedFiles:
        return cls(count=int(data["count"]), reasons=dict(data["reasons"]), examples=list(data["examples"]))


@dataclass
class DatasetInfo:
    """What the UI shows about a dataset: where it came from, its classes, sizes and statistics."""

    name: str
    class_names: list[str]
    counts: dict[str, int]
    class_counts: dict[str, list[int]]
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    source: str
    augment: AugmentKind
    skipped: SkippedFiles = field(default_factory=SkippedFiles)
    cache_hit: bool | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_dict(self) -> dict:
        """A JSON-serialisable copy (plain lists, floats, ints and strings)."""
        data = asdict(self)
        data["mean"] = [float(m) for m in self.mean]
        data["std"] = [float(s) for s in self.std]
        data["skipped"] = self.skipped.to_dict()
        data["num_classes"] = self.num_classes
        return data


@dataclass
class Dataset:
    """A whole dataset in memory as uint8 CPU tensors (N, 3, H, W) with int64 labels."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    info: DatasetInfo
    val_images: torch.Tensor | None = None
    val_labels: torch.Tensor | None = None

    @property
    def num_classes(self) -> int:
        return self.info.num_classes


@dataclass
class Splits:
    """What a source hands back before hold-out and statistics: train and test tensors plus provenance."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    class_names: list[str]
    source: str
    augment: AugmentKind
    skipped: SkippedFiles = field(default_factory=SkippedFiles)
    cache_hit: bool | None = None


def channel_stats(images: torch.Tensor, chunk: int = 1024) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of uint8 CPU images (N, C, H, W) on the 0..1 scale.

    Exact integer sums in numpy, chunk by chunk: fast, and unaffected by torch's thread settings.
    """
    if images.shape[0] == 0:
        raise DataError("cannot compute mean/std of an empty training set")
    array = images.numpy()
    channels = array.shape[1]
    total = np.zeros(channels, dtype=np.uint64)
    total_sq = np.zeros(channels, dtype=np.uint64)
    for start in range(0, array.shape[0], chunk):
        block = array[start : start + chunk].transpose(1, 0, 2, 3).reshape(channels, -1)
        total += block.sum(axis=1, dtype=np.uint64)
        squares = block.astype(np.uint16)
        squares *= squares
        total_sq += squares.sum(axis=1, dtype=np.uint64)
    pixels = array.shape[0] * array.shape[2] * array.shape[3]
    mean = total / pixels
    var = np.maximum(total_sq / pixels - mean * mean, 0.0)
    mean01 = tuple(float(m) / 255.0 for m in mean)
    std01 = tuple(max(float(s) / 255.0, 1e-6) for s in np.sqrt(var))
    return mean01, std01


def class_counts(labels: torch.Tensor, num_classes: int) -> list[int]:
    """Number of images of each class."""
    return torch.bincount(labels, minlength=num_classes).tolist()


def select_classes(class_names: list[str], classes: int | list[str] | None, what: str,
                   shown: list[str] | None = None) -> list[int]:
    """Indices of the classes asked for: all, the first k, or a list of names (unknown names are an error, which
    lists the classes as `shown`, by default their names)."""
    listed = ", ".join(shown or class_names)
    if classes is None:
        return list(range(len(class_names)))
    if isinstance(classes, int):
        if classes > len(class_names):
            raise DataError(f"asked for the first {classes} classes but {what} has only {len(class_names)}: {listed}")
        return list(range(classes))
    unknown = [name for name in classes if name not in class_names]
    if unknown:
        raise DataError(f"unknown class name(s) {', '.join(unknown)} in {what}; available classes: {listed}")
    duplicates = [name for name, n in Counter(classes).items() if n > 1]
    if duplicates:
        raise DataError(f"class name(s) listed twice: {', '.join(duplicates)}")
    return [class_names.index(name) for name in classes]


def subset_tensors(
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    keep: list[int],
    per_class_cap: int | None,
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the classes in `keep` (relabelled 0..k-1 in that order), at most `per_class_cap` each, chosen by seed."""
    if keep == list(range(num_classes)) and per_class_cap is None:
        return images, labels
    labels_np = labels.numpy()
    chosen: list[np.ndarray] = []
    new_labels: list[np.ndarray] = []
    for new_label, old_label in enumerate(keep):
        where = np.flatnonzero(labels_np == old_label)
        if per_class_cap is not None and len(where) > per_class_cap:
            rng = np.random.default_rng([seed, old_label])
            where = np.sort(rng.choice(where, size=per_class_cap, replace=False))
        chosen.append(where)
        new_labels.append(np.full(len(where), new_label, dtype=np.int64))
    order = np.concatenate(chosen) if chosen else np.zeros(0, dtype=np.int64)
    relabelled = np.concatenate(new_labels) if new_labels else np.zeros(0, dtype=np.int64)
    sort = np.argsort(order, kind="stable")
    index = torch.from_numpy(order[sort])
    return images[index], torch.from_numpy(relabelled[sort])


def check_validation_size(size: int, train_count: int) -> None:
    """DataError when holding out `size` validation images would leave no training images."""
    if size >= train_count:
        raise DataError(
            f"validation_size {size:,} leaves no training images: the training set has {train_count:,}; "
            f"use fewer than {train_count:,}"
        )


def hold_out(
    images: torch.Tensor, labels: torch.Tensor, size: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split `size` random images (fixed by seed) off the training set: returns train and validation parts."""
    n = images.shape[0]
    check_validation_size(size, n)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=generator)
    val_index = order[:size].sort().values
    train_index = order[size:].sort().values
    return images[train_index], labels[train_index], images[val_index], labels[val_index]


def check_allowed(path: Path, allowed_roots: list[Path] | None, what: str) -> Path:
    """Resolve `path` and make sure it lies inside one of `allowed_roots` (when given)."""
    resolved = path.expanduser().resolve()
    if allowed_roots is None:
        return resolved
    roots = [Path(root).expanduser().resolve() for root in allowed_roots]
    if any(resolved == root or resolved.is_relative_to(root) for root in roots):
        return resolved
    listed = ", ".join(str(root) for root in roots) or "(none)"
    raise DataError(
        f"{what} {resolved} is outside the allowed data roots ({listed}); "
        "move the data under one of them or add its folder to the allowed roots"
    )


def resolve_user_path(path: str, search_roots: list[Path]) -> Path:
    """A path as given; a relative path that does not exist from here is looked up under the data roots."""
    if "\0" in str(path):
        raise DataError(f"the path {str(path)!r} contains a NUL byte, which no file name can hold; type it again")
    candidate = Path(path).expanduser()
    if candidate.is_absolute() or candidate.exists():
        return candidate
    for root in search_roots:
        under_root = root / candidate
        if under_root.exists():
            return under_root
    return candidate


def search_roots(home: Path, allowed_roots: list[Path] | None) -> list[Path]:
    """Where datasets are looked for by default: home/datasets, the cache folder, then the allowed roots."""
    roots = [home / "datasets", cache_dir(home)]
    roots.extend(Path(root).expanduser() for root in allowed_roots or [])
    return roots
