"""ImageNet-style subsets from an ImageFolder tree, decoded once in parallel and cached as uint8 arrays.

Accepted layouts: `train/<class>/*` with `val/<class>/*` (or `valid`, `validation`, `test`), or one
folder of `<class>/*` split into train and test by a fraction with a fixed seed. Images are resized
(shorter side to the resolution, then a centre crop) and converted to RGB. Files that are not images
or cannot be decoded are skipped and counted. The decoded arrays are cached in the home folder, one
file per source and options, stamped with a fingerprint of the file list (names, sizes, modification
times): a changed folder is decoded again and its cache file replaced.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from workbench.data.base import SkippedFiles, Splits, check_allowed, resolve_user_path, select_classes
from workbench.data.wordnet import as_folder_names, class_words, shown_name
from workbench.errors import DataError
from workbench.paths import cache_dir
from workbench.spec import DataSpec

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
)
TEST_FOLDER_NAMES = ("val", "valid", "validation", "test")
DEFAULT_RESOLUTION = 64
CACHE_FORMAT_VERSION = 1
CACHED_ARRAYS = ("train_images", "train_labels", "test_images", "test_labels", "class_names", "skipped")
EXPECTED_LAYOUT = (
    "expected train/<class>/ and val/<class>/ sub-folders of images, or one folder of <class>/ sub-folders"
)


@dataclass
class ClassFolder:
    """The files found in one class folder (absolute path strings): usable images and everything else."""

    name: str
    path: str
    images: list[str] = field(default_factory=list)
    others: list[str] = field(default_factory=list)
    linked: set[str] = field(default_factory=set)


@dataclass
class FolderPlan:
    """Which files go into which split with which label, and a fingerprint of all that for the cache."""

    root: Path
    class_names: list[str]
    train: list[tuple[str, int]]
    test: list[tuple[str, int]]
    skipped: SkippedFiles
    fingerprint: str

    def relative(self, path: str) -> str:
        return os.path.relpath(path, self.root)


def _visible_entries(folder: str) -> list[os.DirEntry]:
    with os.scandir(folder) as entries:
        return sorted((e for e in entries if not e.name.startswith(".")), key=lambda e: e.name)


def _collect(folder: str, through_link: bool, found: ClassFolder, stats: list[tuple[str, int, int]]) -> None:
    """Files under `folder` (nested folders included, symlinked ones not followed), with sizes and times."""
    for entry in _visible_entries(folder):
        linked = through_link or entry.is_symlink()
        if entry.is_dir(follow_symlinks=False):
            _collect(entry.path, linked, found, stats)
        elif entry.is_file():
            try:
                info = entry.stat()
            except OSError:
                continue
            stats.append((entry.path, info.st_size, info.st_mtime_ns))
            is_image = os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS
            (found.images if is_image else found.others).append(entry.path)
            if linked:
                found.linked.add(entry.path)


def _scan_split(
    split_dir: Path, root: Path, skipped: SkippedFiles, stats: list[tuple[str, int, int]]
) -> dict[str, ClassFolder]:
    """Class folders of one split with their files; loose files next to the class folders are skipped."""
    classes: dict[str, ClassFolder] = {}
    for entry in _visible_entries(str(split_dir)):
        if entry.is_dir():
            folder = ClassFolder(entry.name, entry.path)
            _collect(entry.path, entry.is_symlink(), folder, stats)
            classes[entry.name] = folder
            for other in folder.others:
                skipped.add(os.path.relpath(other, root), "not an image file")
        elif entry.is_file():
            skipped.add(os.path.relpath(entry.path, root), "not inside a class folder")
    return classes


def _check_class_folders(classes: dict[str, ClassFolder], split_dir: Path) -> None:
    if not classes:
        files = [p.name for p in split_dir.iterdir() if not p.name.startswith(".")]
        found = f"found {len(files)} file(s) ({', '.join(files[:5])})" if files else "found nothing"
        raise DataError(f"image folder {split_dir} has no class sub-folders: {found}; {EXPECTED_LAYOUT}")
    empty = [c for c in classes.values() if not c.images]
    if empty:
        details = []
        for folder in empty:
            names = ", ".join(os.path.basename(p) for p in folder.others[:3])
            found = f"{len(folder.others)} other file(s): {names}" if folder.others else "nothing"
            details.append(f"{folder.path} (found {found})")
        raise DataError(
            f"class folder(s) with no images: {'; '.join(details)}; expected image files "
            f"({', '.join(sorted(IMAGE_EXTENSIONS))}) in every class folder"
        )


def _pick(files: list[str], cap: int | None, seed: list[int]) -> list[str]:
    if cap is None or len(files) <= cap:
        return files
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(files), size=cap, replace=False))
    return [files[i] for i in chosen]


def _split_by_fraction(files: list[str], fraction: float, seed: list[int]) -> tuple[list[str], list[str]]:
    n = len(files)
    n_test = min(max(round(n * fraction), 1), n - 1) if n >= 2 else 0
    order = np.random.default_rng(seed).permutation(n)
    test_index = set(order[:n_test].tolist())
    train = [f for i, f in enumerate(files) if i not in test_index]
    test = [f for i, f in enumerate(files) if i in test_index]
    return train, test


def _inside_roots(
    folder: ClassFolder, allowed_roots: list[Path] | None, root: Path, skipped: SkippedFiles
) -> list[str]:
    """The folder's images, less those reached through a symlink that leads outside the allowed roots."""
    if allowed_roots is None or not folder.linked:
        return folder.images
    roots = [str(Path(r).expanduser().resolve()) for r in allowed_roots]
    kept = []
    for file in folder.images:
        real = os.path.realpath(file) if file in folder.linked else file
        if any(real == r or real.startswith(r.rstrip(os.sep) + os.sep) for r in roots):
            kept.append(file)
        else:
            skipped.add(os.path.relpath(file, root), "links outside the allowed data roots")
    return kept


def plan_folder(root: Path, spec: DataSpec, allowed_roots: list[Path] | None) -> FolderPlan:
    """Scan the tree, check its layout and choose the files of each split (no decoding yet)."""
    if not root.exists():
        raise DataError(f"image folder {root} does not exist; {EXPECTED_LAYOUT}")
    if not root.is_dir():
        raise DataError(f"{root} is a file, not a folder; {EXPECTED_LAYOUT}")
    if not _visible_entries(str(root)):
        raise DataError(f"image folder {root} is empty; {EXPECTED_LAYOUT}")
    skipped = SkippedFiles()
    stats: list[tuple[str, int, int]] = []
    train_dir = root / "train" if (root / "train").is_dir() else root
    test_dir = next((root / n for n in TEST_FOLDER_NAMES if train_dir != root and (root / n).is_dir()), None)

    train_classes = _scan_split(train_dir, root, skipped, stats)
    _check_class_folders(train_classes, train_dir)
    test_classes: dict[str, ClassFolder] = {}
    if test_dir is not None:
        test_classes = _scan_split(test_dir, root, skipped, stats)
        _check_class_folders(test_classes, test_dir)
        strangers = sorted(set(test_classes) - set(train_classes))
        if strangers:
            raise DataError(
                f"{test_dir} has class folder(s) {', '.join(strangers)} that {train_dir} lacks; "
                f"the training classes are {', '.join(train_classes)}"
            )

    all_names = list(train_classes)
    words = class_words(root)
    wanted = as_folder_names(spec.classes, all_names, words) if isinstance(spec.classes, list) else spec.classes
    keep = select_classes(all_names, wanted, f"image folder {root}", [shown_name(name, words) for name in all_names])
    class_names = [all_names[i] for i in keep]
    train: list[tuple[str, int]] = []
    test: list[tuple[str, int]] = []
    for label, index in enumerate(keep):
        name = all_names[index]
        images = _inside_roots(train_classes[name], allowed_roots, root, skipped)
        if test_dir is not None:
            folder = test_classes.get(name)
            train_files = images
            test_files = _inside_roots(folder, allowed_roots, root, skipped) if folder else []
        else:
            train_files, test_files = _split_by_fraction(images, spec.split_fraction, [spec.seed, index])
        train += [(f, label) for f in _pick(train_files, spec.per_class_cap, [spec.seed, index, 0])]
        test += [(f, label) for f in _pick(test_files, spec.per_class_cap, [spec.seed, index, 1])]

    stats.sort()
    fingerprint = hashlib.sha256(json.dumps([stats, train, test]).encode()).hexdigest()
    return FolderPlan(root, class_names, train, test, skipped, fingerprint)


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode (grayscale, 16-bit, CMYK, palette, with or without alpha) as 8-bit RGB."""
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I") or image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        if image.mode != "F" and values.size and values.max() > 255:
            values = values / 257.0
        image = Image.fromarray(np.clip(values, 0, 255).round().astype(np.uint8), mode="L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")


def decode_image(path: str | Path, resolution: int) -> np.ndarray:
    """Decode one file to RGB, resize its shorter side to `resolution` and centre-crop: (res, res, 3) uint8."""
    with Image.open(path) as opened:
        opened.draft("RGB", (resolution, resolution))
        image = _to_rgb(ImageOps.exif_transpose(opened))
        width, height = image.size
        scale = resolution / min(width, height)
        size = (max(resolution, round(width * scale)), max(resolution, round(height * scale)))
        image = image.resize(size, Image.Resampling.BILINEAR)
        left = (size[0] - resolution) // 2
        top = (size[1] - resolution) // 2
        return np.asarray(image.crop((left, top, left + resolution, top + resolution)), dtype=np.uint8)


def _decode_or_reason(path: str, resolution: int) -> np.ndarray | str:
    try:
        return decode_image(path, resolution)
    except Exception as exc:  # any undecodable file is skipped and counted, never a crash
        logger.debug("skipping %s: %s", path, exc)
        return f"unreadable image ({type(exc).__name__})"


def _decode_split(
    files: list[tuple[str, int]], resolution: int, plan: FolderPlan, pool: ThreadPoolExecutor
) -> tuple[np.ndarray, np.ndarray]:
    images = np.empty((len(files), resolution, resolution, 3), dtype=np.uint8)
    labels = np.empty(len(files), dtype=np.int64)
    count = 0
    decoded = pool.map(lambda item: _decode_or_reason(item[0], resolution), files, chunksize=16)
    for (path, label), result in zip(files, decoded, strict=True):
        if isinstance(result, str):
            plan.skipped.add(plan.relative(path), result)
            continue
        images[count] = result
        labels[count] = label
        count += 1
    return np.ascontiguousarray(images[:count].transpose(0, 3, 1, 2)), labels[:count]


def _cache_key(plan: FolderPlan, spec: DataSpec, resolution: int) -> str:
    options = {
        "version": CACHE_FORMAT_VERSION,
        "source": str(plan.root),
        "classes": spec.classes,
        "per_class_cap": spec.per_class_cap,
        "resolution": resolution,
        "split_fraction": spec.split_fraction,
        "seed": spec.seed,
    }
    return hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:24]


def _write_cache(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write the arrays to `path` atomically: a temporary file in the same folder, then a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            np.savez(file, **arrays)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def _read_cache(path: Path, fingerprint: str) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None when there is no cache, it is unreadable, or the files have changed since."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as archive:
            if str(archive["fingerprint"]) != fingerprint:
                logger.info("image folder changed since %s was written; decoding again", path)
                return None
            return {key: archive[key] for key in CACHED_ARRAYS}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
        logger.warning("ignoring unreadable dataset cache %s (%s); decoding again", path, exc)
        return None


def locate_folder(spec: DataSpec, roots: list[Path], allowed_roots: list[Path] | None) -> Path:
    """The image folder the spec names, checked against the allowed roots."""
    if spec.path is None:
        raise DataError(f"an image folder dataset needs a path; {EXPECTED_LAYOUT}")
    return check_allowed(resolve_user_path(spec.path, roots), allowed_roots, "image folder")


def load_folder(root: Path, spec: DataSpec, home: Path, allowed_roots: list[Path] | None) -> Splits:
    """Load an image folder (from the cache when its files and options are unchanged)."""
    resolution = spec.resolution or DEFAULT_RESOLUTION
    plan = plan_folder(root, spec, allowed_roots)
    cache_file = cache_dir(home) / f"folder-{_cache_key(plan, spec, resolution)}.npz"
    cached = _read_cache(cache_file, plan.fingerprint)
    cache_hit = cached is not None
    if cached is None:
        logger.info(
            "decoding %d images from %s at %dx%d", len(plan.train) + len(plan.test), root, resolution, resolution
        )
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            train_images, train_labels = _decode_split(plan.train, resolution, plan, pool)
            test_images, test_labels = _decode_split(plan.test, resolution, plan, pool)
        cached = {
            "train_images": train_images,
            "train_labels": train_labels,
            "test_images": test_images,
            "test_labels": test_labels,
            "class_names": np.array(plan.class_names, dtype=str),
            "skipped": np.array(json.dumps(plan.skipped.to_dict())),
        }
        _check_decoded(cached, plan)
        _write_cache(cache_file, {**cached, "fingerprint": np.array(plan.fingerprint)})
    else:
        logger.info("loaded %s from cache %s", root, cache_file)
    return Splits(
        train_images=torch.from_numpy(cached["train_images"]),
        train_labels=torch.from_numpy(cached["train_labels"]),
        test_images=torch.from_numpy(cached["test_images"]),
        test_labels=torch.from_numpy(cached["test_labels"]),
        class_names=[str(n) for n in cached["class_names"]],
        source=str(root),
        augment="folder",
        skipped=SkippedFiles.from_dict(json.loads(str(cached["skipped"]))),
        cache_hit=cache_hit,
    )


def _check_decoded(arrays: dict[str, np.ndarray], plan: FolderPlan) -> None:
    counts = np.bincount(arrays["train_labels"], minlength=len(plan.class_names))
    unusable = [name for name, n in zip(plan.class_names, counts, strict=True) if n == 0]
    if unusable:
        raise DataError(
            f"no image in class folder(s) {', '.join(unusable)} of {plan.root} could be decoded "
            f"({plan.skipped.count} file(s) skipped, e.g. {'; '.join(plan.skipped.examples[:3])})"
        )
    if len(arrays["test_labels"]) == 0:
        raise DataError(
            f"image folder {plan.root} gives no test images; add a val/<class>/ folder or more images per class "
            "so that split_fraction can hold some out"
        )
