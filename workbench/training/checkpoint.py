"""Checkpoints: written atomically, loaded without unpickling arbitrary objects.

A checkpoint is a dict of tensors and plain values only (so `torch.load(weights_only=True)`
reads it): format tag, the run spec as JSON-compatible data, model and optimizer state,
schedule and loader position, RNG states, and the metric summary at that point.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch

from workbench.errors import UnsafeFileError, WorkbenchError

CHECKPOINT_FORMAT = "workbench-checkpoint/1"


def save_checkpoint(path: Path, state: dict[str, Any]) -> Path:
    """Write `state` to `path` atomically: a reader sees the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        torch.save({"format": CHECKPOINT_FORMAT, **state}, handle)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)
    return path


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
