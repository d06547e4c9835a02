"""Science tools as background jobs: a detached `python -m workbench ...` process that stores its result."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from workbench.paths import home_dir, runs_dir

logger = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def lesion_log_path(home: Path, run_id: int) -> Path:
    """Where a background lesion job of this run writes its log."""
    return runs_dir(home) / str(run_id) / f"lesion-{time.strftime('%Y%m%d-%H%M%S')}.log"


def lesion_command(
    home: Path, db: str | None, run_id: int, *, draws: int | None = None, max_k: int | None = None,
    limit_images: int | None = None, seed: int | None = None, data_roots: list[Path] | None = None,
) -> list[str]:
    """The CLI command line of a lesion job."""
    command = [sys.executable, "-m", "workbench", "--home", str(home)]
    if db:
        command += ["--db", db]
    for root in data_roots or []:
        command += ["--data-root", str(root)]
    command += ["lesion", str(run_id)]
    for flag, value in (("--draws", draws), ("--max-k", max_k), ("--limit-images", limit_images), ("--seed", seed)):
        if value is not None:
            command += [flag, str(value)]
    return command


def start_lesion_job(
    home: str | Path | None, db: str | None, run_id: int, *, draws: int | None = None, max_k: int | None = None,
    limit_images: int | None = None, seed: int | None = None, data_roots: list[Path] | None = None,
) -> subprocess.Popen:
    """Start a lesion study of a run in its own detached process; the result lands in the run's analyses.

    The process survives the caller (its own session, no inherited terminal); its output goes to
    `<run folder>/lesion-<time>.log`, whose path is the returned process's `log_path` attribute.
    """
    home_path = home_dir(home)
    log_path = lesion_log_path(home_path, run_id)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = lesion_command(home_path, db, run_id, draws=draws, max_k=max_k, limit_images=limit_images,
                             seed=seed, data_roots=data_roots)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))}
    with open(log_path, "ab") as log:
        process = subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    process.log_path = log_path
    logger.info("lesion job for run %d started (pid %d, log %s)", run_id, process.pid, log_path)
    return process
