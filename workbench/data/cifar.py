"""CIFAR-10 and CIFAR-100 from the python-version archive (.tar.gz) or its extracted folder.

The batches are pickles, so they are read with a restricted unpickler that only builds what a
CIFAR batch contains (dicts, lists, numbers, strings, bytes and uint8 numpy arrays). The archive is
read member by member without extracting it to disk, and no checksum list is consulted, so a
re-encoded copy works as well as the official file.
"""

from __future__ import annotations

import codecs
import logging
import pickle
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from workbench.data.base import Splits, check_allowed, resolve_user_path
from workbench.errors import DataError, UnsafeFileError
from workbench.paths import cache_dir

logger = logging.getLogger(__name__)

try:
    from numpy._core.multiarray import _reconstruct as _numpy_reconstruct
    from numpy._core.numeric import _frombuffer as _numpy_frombuffer
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct as _numpy_reconstruct
    from numpy.core.numeric import _frombuffer as _numpy_frombuffer

IMAGE_SHAPE = (3, 32, 32)
PIXELS_PER_IMAGE = 3 * 32 * 32


@dataclass(frozen=True)
class CifarLayout:
    """File names inside one CIFAR python-version archive."""

    title: str
    archive: str
    folder: str
    train_members: tuple[str, ...]
    test_members: tuple[str, ...]
    meta_member: str
    label_key: str
    names_key: str
    url: str
    md5: str
    classes: int
    train_per_class: int
    test_per_class: int

    @property
    def members(self) -> tuple[str, ...]:
        return (*self.train_members, *self.test_members, self.meta_member)


LAYOUTS: dict[str, CifarLayout] = {
    "cifar10": CifarLayout(
        title="CIFAR-10",
        archive="cifar-10-python.tar.gz",
        folder="cifar-10-batches-py",
        train_members=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_members=("test_batch",),
        meta_member="batches.meta",
        label_key="labels",
        names_key="label_names",
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        classes=10,
        train_per_class=5000,
        test_per_class=1000,
    ),
    "cifar100": CifarLayout(
        title="CIFAR-100",
        archive="cifar-100-python.tar.gz",
        folder="cifar-100-python",
        train_members=("train",),
        test_members=("test",),
        meta_member="meta",
        label_key="fine_labels",
        names_key="fine_label_names",
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        classes=100,
        train_per_class=500,
        test_per_class=100,
    ),
}


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """The only use of `_codecs.encode` in a CIFAR pickle: bytes stored as latin-1 text (protocol 2)."""
    if codecs.lookup(encoding).name != "iso8859-1":
        raise UnsafeFileError(f"a CIFAR batch only encodes bytes as latin-1, not {encoding!r}")
    return text.encode("latin1")


SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _numpy_frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _numpy_frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that builds only numpy arrays and plain Python data; any other global is refused."""

    def __init__(self, file: IO[bytes], label: str) -> None:
        super().__init__(file, encoding="latin1")
        self.label = label

    def find_class(self, module: str, name: str) -> Any:
        try:
            return SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafeFileError(
                f"refused to load {self.label}: it asks for {module}.{name}, which a CIFAR batch never "
                "contains (only numpy arrays, lists, numbers and strings); the file is not a genuine "
                "CIFAR batch and may try to run code"
            ) from None


def safe_unpickle(file: IO[bytes], label: str) -> Any:
    """Unpickle one CIFAR member with the restricted unpickler; damaged data becomes a DataError."""
    try:
        return RestrictedUnpickler(file, label).load()
    except UnsafeFileError:
        raise
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        zlib.error,
        OSError,
    ) as exc:
        raise DataError(f"{label} is not a readable CIFAR batch ({type(exc).__name__}: {exc})") from None


def _text(value: Any) -> str:
    return value.decode("latin1") if isinstance(value, bytes) else str(value)


def _normalise_keys(obj: Any, label: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise DataError(f"{label} holds a {type(obj).__name__}, but a CIFAR batch is a dict")
    return {_text(key): value for key, value in obj.items()}


def _parse_batch(obj: Any, layout: CifarLayout, label: str) -> tuple[np.ndarray, np.ndarray]:
    batch = _normalise_keys(obj, label)
    for key in ("data", layout.label_key):
        if key not in batch:
            raise DataError(f"{label} has no '{key}' entry; found {', '.join(sorted(batch))}")
    data = batch["data"]
    if (
        not isinstance(data, np.ndarray)
        or data.dtype != np.uint8
        or data.ndim != 2
        or data.shape[1] != PIXELS_PER_IMAGE
    ):
        shape = getattr(data, "shape", None)
        dtype = getattr(data, "dtype", type(data).__name__)
        raise DataError(f"{label}: 'data' should be a uint8 array (N, 3072); found {dtype} {shape}")
    try:
        labels = np.asarray(batch[layout.label_key], dtype=np.int64)
    except (TypeError, ValueError):
        raise DataError(f"{label}: '{layout.label_key}' is not a list of integers") from None
    if labels.shape != (data.shape[0],):
        raise DataError(f"{label} has {data.shape[0]} images but {labels.size} labels")
    return data.reshape(-1, *IMAGE_SHAPE), labels


def _parse_meta(obj: Any, layout: CifarLayout, label: str) -> list[str]:
    meta = _normalise_keys(obj, label)
    names = meta.get(layout.names_key)
    if not isinstance(names, list) or not names:
        raise DataError(f"{label} has no '{layout.names_key}' list of class names")
    return [_text(name) for name in names]


def _missing_message(layout: CifarLayout, where: Path, missing: list[str]) -> str:
    return (
        f"{layout.title} at {where} is incomplete: missing {', '.join(missing)}; a complete "
        f"{layout.archive} holds {layout.folder}/ with {', '.join(layout.members)}"
    )


def _read_archive(archive: Path, layout: CifarLayout) -> dict[str, Any]:
    """Unpickle the needed members straight from the tar stream, in archive order."""
    wanted = set(layout.members)
    found: dict[str, Any] = {}
    try:
        with tarfile.open(archive, mode="r|*") as tar:
            for member in tar:
                name = Path(member.name).name
                if not member.isfile() or name not in wanted or name in found:
                    continue
                file = tar.extractfile(member)
                found[name] = safe_unpickle(file, f"{name} in {archive}")
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise DataError(f"{archive} is not a readable tar archive ({exc}); expected {layout.archive}") from None
    missing = [name for name in layout.members if name not in found]
    if missing:
        raise DataError(_missing_message(layout, archive, missing))
    return found


def _read_folder(folder: Path, layout: CifarLayout) -> dict[str, Any]:
    missing = [name for name in layout.members if not (folder / name).is_file()]
    if missing:
        raise DataError(_missing_message(layout, folder, missing))
    found = {}
    for name in layout.members:
        with open(folder / name, "rb") as file:
            found[name] = safe_unpickle(file, f"{name} in {folder}")
    return found


def _source_in(candidate: Path, layout: CifarLayout) -> Path | None:
    """The archive or batches folder that `candidate` is, or holds; None when it holds neither."""
    if candidate.is_file():
        return candidate
    if not candidate.is_dir():
        return None
    if (candidate / layout.folder).is_dir():
        return candidate / layout.folder
    if (candidate / layout.archive).is_file():
        return candidate / layout.archive
    if any((candidate / name).is_file() for name in layout.members):
        return candidate
    return None


def _download(layout: CifarLayout, home: Path) -> Path:
    """Fetch the official archive into the cache folder with torchvision's helper (checks its MD5)."""
    from torchvision.datasets.utils import download_and_extract_archive

    target = cache_dir(home)
    target.mkdir(parents=True, exist_ok=True)
    logger.info("downloading %s from %s into %s", layout.title, layout.url, target)
    try:
        download_and_extract_archive(layout.url, download_root=str(target), filename=layout.archive, md5=layout.md5)
    except (OSError, RuntimeError, ValueError) as exc:
        raise DataError(
            f"could not download {layout.title} from {layout.url} ({exc}); download {layout.archive} by hand "
            f"and put it in {home / 'datasets'}"
        ) from None
    return target / layout.folder


def locate_cifar(
    name: str, path: str | None, download: bool, home: Path, roots: list[Path], allowed_roots: list[Path] | None
) -> Path:
    """Find the archive or batches folder for `name` ('cifar10' or 'cifar100'), downloading if asked."""
    layout = LAYOUTS[name]
    if path is not None:
        given = resolve_user_path(path, roots)
        resolved = check_allowed(given, allowed_roots, f"{layout.title} path")
        source = _source_in(resolved, layout)
        if source is None:
            if not resolved.exists():
                raise DataError(
                    f"{layout.title} path {resolved} does not exist; give {layout.archive} or the folder "
                    f"{layout.folder}/ (or a folder that holds one of them)"
                )
            raise DataError(
                f"{resolved} holds neither {layout.archive} nor {layout.folder}/ nor its batch files "
                f"({', '.join(layout.members)})"
            )
        return source
    for root in roots:
        source = _source_in(root, layout)
        if source is not None and source != root:
            return check_allowed(source, allowed_roots, f"{layout.title} path")
    if download:
        return _download(layout, home)
    looked = ", ".join(str(root) for root in roots)
    raise DataError(
        f"{layout.title} not found: looked for {layout.archive} or {layout.folder}/ in {looked}; give its path, "
        f"put it in {home / 'datasets'}, or set download: true to fetch it"
    )


def cifar_class_names(name: str, source: Path) -> list[str] | None:
    """The class names of a CIFAR source without reading its images: a batches folder's small meta file,
    or None for an archive (its meta member lies somewhere in the compressed stream).

    A file that is not a tar archive (a README given as the archive) is refused here.
    """
    layout = LAYOUTS[name]
    if source.is_file():
        if not tarfile.is_tarfile(source):
            raise DataError(f"{source} is not a tar archive; give {layout.archive} or the folder {layout.folder}/")
        return None
    meta = source / layout.meta_member
    if not meta.is_file():
        raise DataError(_missing_message(layout, source, [layout.meta_member]))
    with open(meta, "rb") as file:
        return _parse_meta(safe_unpickle(file, f"{meta}"), layout, str(meta))


def read_cifar(name: str, source: Path) -> Splits:
    """Read CIFAR train/test images (uint8, N x 3 x 32 x 32) and class names from an archive or folder."""
    layout = LAYOUTS[name]
    members = _read_archive(source, layout) if source.is_file() else _read_folder(source, layout)
    label = f"{layout.meta_member} in {source}"
    class_names = _parse_meta(members[layout.meta_member], layout, label)

    def stack(member_names: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        parts = [_parse_batch(members.pop(m), layout, f"{m} in {source}") for m in member_names]
        labels = np.concatenate([p[1] for p in parts])
        if labels.size and (labels.min() < 0 or labels.max() >= len(class_names)):
            raise DataError(
                f"{layout.title} at {source} has labels outside 0..{len(class_names) - 1} "
                f"(found {labels.min()}..{labels.max()})"
            )
        # Each batch is copied into place and let go before the next, so the images are held once plus a batch
        # (np.concatenate would hold every batch and the whole result at once).
        images = np.empty((len(labels), *IMAGE_SHAPE), dtype=np.uint8)
        start = 0
        while parts:
            batch, _ = parts.pop(0)
            images[start:start + len(batch)] = batch
            start += len(batch)
        return torch.from_numpy(images), torch.from_numpy(labels)

    train_images, train_labels = stack(layout.train_members)
    test_images, test_labels = stack(layout.test_members)
    logger.info("read %s from %s: %d train, %d test", layout.title, source, len(train_labels), len(test_labels))
    return Splits(
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        class_names=class_names,
        source=str(source),
        augment="cifar",
    )
