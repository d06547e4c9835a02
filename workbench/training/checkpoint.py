"""Checkpoints: written atomically, loaded without unpickling arbitrary objects.

A checkpoint is a dict of tensors and plain values only (so `torch.load(weights_only=True)`
reads it): format tag, the run spec as JSON-compatible data, model and optimizer state,
schedule and loader position, RNG states, and the metric summary at that point.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import torch

from workbench.errors import UnsafeFileError, WorkbenchError

CHECKPOINT_FORMAT = "workbench-checkpoint/1"


class CheckpointWriteError(WorkbenchError):
    """A checkpoint could not be written (disk full, read-only or misplaced run folder)."""


def save_checkpoint(path: Path, state: dict[str, Any]) -> Path:
    """Write `state` to `path` atomically: a reader sees the old file or the new one, never half of one.

    A failed write leaves no temporary file behind and raises CheckpointWriteError naming the path and the reason.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as handle:
            torch.save({"format": CHECKPOINT_FORMAT, **state}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)
    except (OSError, RuntimeError) as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise CheckpointWriteError(
            f"could not write checkpoint {path}: {_write_failure(exc, path)}; free disk space or make the run "
            "folder writable, then resume the run"
        ) from exc
    return path


def _write_failure(exc: BaseException, path: Path) -> str:
    """Why a write under `path` failed, in words (torch reports a full disk without the errno)."""
    if isinstance(exc, OSError):
        reason = exc.strerror or str(exc)
        return f"{reason} ({exc.filename})" if exc.filename and str(exc.filename) != str(path) else reason
    reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    folder = next((p for p in (path.parent, *path.parents) if p.is_dir()), None)
    if folder is not None:
        with contextlib.suppress(OSError):
            if shutil.disk_usage(folder).free < 64 * 2**20:
                return f"the disk is full ({reason})"
    return reason


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a workbench checkpoint safely (no arbitrary pickles)."""
    path = Path(path)
    if not path.is_file():
        raise WorkbenchError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeFileError(
            f"{path} needs arbitrary code to load and was refused ({str(exc).splitlines()[0]}); "
            "only tensors and plain values are accepted"
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise WorkbenchError(f"{path} is not a readable checkpoint: {exc}") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise WorkbenchError(f"{path} is not a workbench checkpoint (no '{CHECKPOINT_FORMAT}' tag)")
    return state
