"""One place for paths: the home folder, the database URL, run and cache folders."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_HOME = ".workbench"


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
    return f"sqlite:///{home / 'workbench.db'}"


def runs_dir(home: Path) -> Path:
    """Folder that holds one sub-folder per run (checkpoints, logs)."""
    return home / "runs"


def cache_dir(home: Path) -> Path:
    """Folder for dataset caches."""
    return home / "cache"


def exports_dir(home: Path) -> Path:
    """Folder where exported model files are written for download."""
    return home / "exports"
