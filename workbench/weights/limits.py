"""Bounds on model files, checked before any of their content is read (docs/limits.md says why).

A zip's central directory states every member's size; those are checked here, and Python's zipfile
never inflates a member past its stated size (a member that claims less fails its CRC check instead).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from workbench.errors import WorkbenchError

MAX_MODEL_BYTES = 2 * 2**30  # a whole model file, and all members of a zip together; ResNet-152 is 240 MB
MAX_ZIP_MEMBERS = 100_000  # a torch checkpoint holds one member per tensor; ResNet-1202 has about 2,500
MAX_COMPRESSION_RATIO = 50  # trained weights barely compress (about 1.1x); only a bomb inflates 50-fold
RATIO_CHECKED_FROM = 2**20  # smaller members (spec.json, metadata.json) may compress as well as text does
MAX_TEXT_MEMBER_BYTES = 2**20  # spec.json, metadata.json, MODEL_CARD.md


class FileTooLarge(WorkbenchError):
    """A model file is bigger, or would inflate to more, than the workbench reads."""


def _mib(size: int) -> str:
    return f"{size / 2**20:,.1f} MiB"


def check_file_size(path: Path) -> None:
    """FileTooLarge when the file on disk exceeds MAX_MODEL_BYTES."""
    size = Path(path).stat().st_size
    if size > MAX_MODEL_BYTES:
        raise FileTooLarge(f"{path} is {_mib(size)}; model files up to {_mib(MAX_MODEL_BYTES)} are read")


def check_zip(path: Path, text_members: tuple[str, ...] = ()) -> None:
    """FileTooLarge when a zip has too many members, would inflate past MAX_MODEL_BYTES, has a member that
    inflates more than MAX_COMPRESSION_RATIO times, or a `text_members` entry above MAX_TEXT_MEMBER_BYTES.

    Reads only the central directory.
    """
    check_file_size(path)
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise WorkbenchError(f"{path} is a damaged zip file: {exc}") from None
    if len(infos) > MAX_ZIP_MEMBERS:
        raise FileTooLarge(f"{path} holds {len(infos):,} files; a model file holds at most {MAX_ZIP_MEMBERS:,}")
    total = sum(info.file_size for info in infos)
    if total > MAX_MODEL_BYTES:
        raise FileTooLarge(f"{path} would unpack to {_mib(total)}; model files up to {_mib(MAX_MODEL_BYTES)} "
                           "are read")
    for info in infos:
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size >= RATIO_CHECKED_FROM and ratio > MAX_COMPRESSION_RATIO:
            raise FileTooLarge(
                f"{info.filename} in {path} would inflate {ratio:,.0f}-fold ({_mib(info.compress_size)} to "
                f"{_mib(info.file_size)}); weights compress at most {MAX_COMPRESSION_RATIO}-fold, so this file "
                "was refused unread"
            )
        if info.filename in text_members and info.file_size > MAX_TEXT_MEMBER_BYTES:
            raise FileTooLarge(f"{info.filename} in {path} is {_mib(info.file_size)}; at most "
                               f"{_mib(MAX_TEXT_MEMBER_BYTES)} is read")
