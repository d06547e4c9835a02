"""One place for paths: the home folder, the database URL, run and cache folders."""

from __future__ import annotations

import os
from pathlib import Path

from workbench.errors import WorkbenchError

DEFAULT_HOME = ".workbench"
DEFAULT_FILE_MAX_AGE_HOURS = 168.0


def home_dir(home: str | os.PathLike | None = None) -> Path:
    """Resolve the home folder: argument, then $WORKBENCH_HOME, then ./.workbench; created if missing."""
    chosen = home or os.environ.get("WORKBENCH_HOME") or DEFAULT_HOME
    path = Path(chosen).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def database_url(home: Path, db: str | None = None) -> str:
    """Resolve the database URL: argument, then $WORKBENCH_DATABASE_URL, then SQLite in the home folder."""
    url = db or os.environ.get("WORKBENCH_DATABASE_URL")
    if url:
        return url
    return f"sqlite:///{database_file(home)}"


def database_file(home: Path) -> Path:
    """The SQLite database of a home folder (its -wal and -shm files lie beside it)."""
    return Path(home) / "workbench.db"


def runs_dir(home: Path) -> Path:
    """Folder that holds one sub-folder per run (checkpoints, logs)."""
    return home / "runs"


CHECKPOINT_KINDS = ("best", "last")


class RunFolder:
    """The one owner of a run folder's layout: `<home>/runs/<id>/checkpoints/{last,best}.pt` and logs.

    `last` is what a run resumes from; `best` is the lowest-error snapshot. Nothing is created here.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @classmethod
    def of(cls, home: Path, run_id: int) -> RunFolder:
        return cls(runs_dir(Path(home)) / str(run_id))

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def checkpoint(self, which: str) -> Path:
        """Where the `best` or `last` checkpoint is (or will be) written."""
        if which not in CHECKPOINT_KINDS:
            raise ValueError(f"a checkpoint is {' or '.join(CHECKPOINT_KINDS)}, not {which!r}")
        return self.checkpoints / f"{which}.pt"

    @property
    def last(self) -> Path:
        return self.checkpoint("last")

    @property
    def best(self) -> Path:
        return self.checkpoint("best")

    def existing_checkpoint(self, which: str = "best") -> Path | None:
        """The asked-for checkpoint, else the other one (a run without an evaluation yet has neither)."""
        for kind in (which, *(k for k in CHECKPOINT_KINDS if k != which)):
            if self.checkpoint(kind).is_file():
                return self.checkpoint(kind)
        return None

    def log(self, name: str) -> Path:
        return self.root / f"{name}.log"

    @staticmethod
    def parse(path: Path, home: Path) -> tuple[int, str] | None:
        """(run id, "best" or "last") when `path` is a run's checkpoint in this home folder, else None."""
        folder = runs_dir(Path(home)).resolve()
        resolved = Path(path).resolve()
        if not resolved.is_relative_to(folder):
            return None
        parts = resolved.relative_to(folder).parts
        kinds = {f"{kind}.pt": kind for kind in CHECKPOINT_KINDS}
        if len(parts) == 3 and parts[0].isdigit() and parts[1] == "checkpoints" and parts[2] in kinds:
            return int(parts[0]), kinds[parts[2]]
        return None


def imports_dir(home: Path) -> Path:
    """Folder holding uploaded models and copies of run checkpoints that fine-tunes start from."""
    return Path(home) / "imports"


def cache_dir(home: Path) -> Path:
    """Folder for dataset caches."""
    return home / "cache"


def exports_dir(home: Path) -> Path:
    """Folder where exported model files are written for download."""
    return home / "exports"


def file_max_age_hours(hours: float | None = None) -> float:
    """How long uploads and exports are kept: argument, then $WORKBENCH_FILE_MAX_AGE_HOURS, then a week."""
    chosen = hours if hours is not None else os.environ.get("WORKBENCH_FILE_MAX_AGE_HOURS")
    try:
        value = float(chosen) if chosen not in (None, "") else DEFAULT_FILE_MAX_AGE_HOURS
    except ValueError:
        raise WorkbenchError(f"the age of kept files is a number of hours; got {chosen!r}") from None
    if not value > 0:
        raise WorkbenchError(f"the age of kept files must be above 0 hours; got {chosen!r}")
    return value
