"""One place for paths: the home folder, the database URL, run and cache folders."""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

from workbench.errors import WorkbenchError

DEFAULT_HOME = ".workbench"
DEFAULT_FILE_MAX_AGE_HOURS = 168.0
# Written by the dispatcher; a worker on another node that finds the same id sees the same (shared) home folder.
HOME_MARKER = ".workbench-home"


def home_path(home: str | os.PathLike | None = None) -> Path:
    """The home folder: argument, then $WORKBENCH_HOME, then ./.workbench (resolved, not created)."""
    return Path(home or os.environ.get("WORKBENCH_HOME") or DEFAULT_HOME).expanduser().resolve()


def home_dir(home: str | os.PathLike | None = None) -> Path:
    """Resolve the home folder (see `home_path`); created if missing."""
    path = home_path(home)
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

    @property
    def job_log(self) -> Path:
        """The log the run's cluster jobs append to: on the shared home it outlives a cluster that forgot them."""
        return self.log("job")

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


def step_times_file(home: Path) -> Path:
    """The cache of measured training-step times that run-time estimates read (JSON)."""
    return cache_dir(Path(home)) / "step-times.json"


def exports_dir(home: Path) -> Path:
    """Folder where exported model files are written for download."""
    return home / "exports"


class SharedHomeError(WorkbenchError):
    """A node cannot see the home folder that the dispatcher uses (the shared file system is not mounted there)."""


def mark_shared_home(home: Path) -> str:
    """The id in the home folder's marker file, written first if missing; workers on other nodes check it."""
    marker = Path(home) / HOME_MARKER
    if not marker.is_file():
        draft = marker.with_name(f"{HOME_MARKER}.{uuid.uuid4().hex}.tmp")
        try:
            draft.write_text(uuid.uuid4().hex)
            draft.replace(marker)
        except OSError as exc:
            raise SharedHomeError(f"cannot write {marker} ({exc.strerror}); the home folder must be writable by "
                                  "the dispatcher and every node") from exc
    return marker.read_text().strip()


def check_shared_home(home: str | os.PathLike | None, expected_id: str) -> Path:
    """The home folder, when this node sees the one the dispatcher marked; else SharedHomeError naming the path.

    Never creates the folder: an empty one on a node without the shared file system would hide the problem.
    """
    path = home_path(home)
    marker = path / HOME_MARKER
    where = f"on node {socket.gethostname()}"
    advice = "mount the shared home folder at the same path on every node (see the README, \"Scaling out\")"
    if not path.is_dir():
        raise SharedHomeError(f"the home folder {path} does not exist {where}; {advice}")
    try:
        found = marker.read_text().strip()
    except OSError as exc:
        raise SharedHomeError(f"the home folder {path} {where} has no readable {HOME_MARKER} ({exc.strerror}): it "
                              f"is not the dispatcher's home; {advice}") from exc
    if found != expected_id:
        raise SharedHomeError(f"the home folder {path} {where} is another folder than the dispatcher's (its "
                              f"{HOME_MARKER} differs); {advice}")
    return path


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
