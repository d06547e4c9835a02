"""What every tab needs: the run store, the executor, the home folder and the allowed data folders."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from storage import RunStore
from workbench.jobs.executor import Executor
from workbench.presets import Preset, list_presets


@dataclass(frozen=True)
class WorkbenchContext:
    """Shared services of the UI; tabs read and change runs only through these."""

    store: RunStore
    executor: Executor
    home: Path
    data_roots: list[Path]

    def presets(self) -> list[Preset]:
        """Built-in presets and the ones saved in this home folder."""
        return list_presets(self.home)
