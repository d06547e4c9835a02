"""Choosing an executor and dispatching without a UI (`python -m workbench dispatch`)."""

from __future__ import annotations

import threading
from pathlib import Path

from storage import RunStore
from storage.status import QUEUED, RUNNING
from workbench.errors import WorkbenchError
from workbench.jobs.executor import STALE_AFTER_S, Executor, LocalExecutor
from workbench.jobs.ray_executor import RayExecutor
from workbench.jobs.sweeps import step_sweeps

EXECUTORS = ("local", "ray")


def make_executor(
    kind: str, store: RunStore, *, db_url: str, ray_address: str | None = None, workers: int | None = None,
    auto_resume: bool = False, data_roots: list[Path] | None = None, stale_after_s: float = STALE_AFTER_S,
) -> Executor:
    """The executor the app and `dispatch` run: local worker processes, or one Ray job per run."""
    if kind == "local":
        return LocalExecutor(store, db_url=db_url, workers=workers, auto_resume=auto_resume, data_roots=data_roots,
                             stale_after_s=stale_after_s)
    if kind == "ray":
        if not ray_address:
            raise WorkbenchError("--executor ray needs --ray-address URL: the dashboard address of the Ray head "
                                 "(http://HOST:8265)")
        return RayExecutor(store, address=ray_address, db_url=db_url, data_roots=data_roots, auto_resume=auto_resume,
                           stale_after_s=stale_after_s)
    raise WorkbenchError(f"executor {kind!r} is unknown; use one of {', '.join(EXECUTORS)}")


def dispatch(executor: Executor, store: RunStore, stop: threading.Event, *, exit_when_idle: bool = False,
             poll_s: float = 1.0) -> None:
    """Start the executor and serve the store's queue until `stop` is set (or, with `exit_when_idle`, until no
    run is queued or running and no sweep asks for another trial), then shut the executor down."""
    executor.start()
    try:
        while not stop.wait(poll_s):
            if exit_when_idle and _idle(store):
                break
    finally:
        executor.shutdown()


def _idle(store: RunStore) -> bool:
    """No run queued or running, and no sweep waiting for its next trial. The sweeps are stepped after the queue
    is read: a trial that ended after its worker last stepped them gets its successor queued here, not lost."""
    return not store.list_runs(status=[QUEUED, RUNNING], limit=1) and not step_sweeps(store)
