"""The service layer: the one API the UI and the CLI use for runs, groups, exports, fine-tunes and analyses.

Its names load on first use, so light CLI commands (presets, summary) do not import torch or the store.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AnalysisRecord": "storage",
    "RunRecord": "storage",
    "RunStore": "storage",
    "open_store": "storage",
    "Workbench": "workbench.service.runs",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'workbench.service' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
