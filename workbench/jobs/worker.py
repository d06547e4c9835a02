"""The worker: claims queued runs from the store, trains them, reports through a StoreSink."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from storage import RunStore
from storage.status import CANCELLED, COMPLETED, FAILED, INTERRUPTED
from workbench.errors import IllegalTransition, WorkbenchError
from workbench.jobs.analyses import execute_analysis
from workbench.jobs.system_metrics import SAMPLE_EVERY_S, SystemSampler
from workbench.paths import RunFolder
from workbench.spec import RunSpec
from workbench.training import FitResult, fit
from workbench.weights import model_factory

logger = logging.getLogger(__name__)

HEARTBEAT_INTERVAL_S = 1.0


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class StoreSink:
    """Connects a training loop to the store: metrics in batches, progress and cancel via a heartbeat thread.

    The loop's calls only touch memory (except writing metric batches); a background thread
    heartbeats every second with the latest progress and turns a cancel request into a flag.
    """

    def __init__(
        self,
        store: RunStore,
        run_id: int,
        worker_id: str,
        *,
        shutdown: threading.Event | None = None,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        heartbeat_s: float = HEARTBEAT_INTERVAL_S,
    ) -> None:
        self.store = store
        self.on_progress = on_progress
        self.shutdown = shutdown or threading.Event()
        self.run_id = run_id
        self.worker_id = worker_id
        self.heartbeat_s = heartbeat_s
        self._progress: dict[str, Any] = {}
        self._reported_errors: tuple[float | None, float | None] = (None, None)
        self._lock = threading.Lock()
        self._stop_requested = threading.Event()
        self._lost = threading.Event()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._heartbeat_loop, name=f"heartbeat-{run_id}", daemon=True)
        self._system = SystemSampler()
        self._next_sample = time.monotonic()

    def start(self) -> StoreSink:
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop heartbeating and write the final progress."""
        self._closed.set()
        self._thread.join()
        self._beat()

    def _beat(self) -> None:
        with self._lock:
            progress = dict(self._progress)
            errors = (progress.get("train_error"), progress.get("test_error"))
            summary_changed = errors != self._reported_errors
            self._reported_errors = errors
        if summary_changed:
            self.store.update_summary(self.run_id, train_error=errors[0], test_error=errors[1])
        try:
            cancel = self.store.heartbeat(
                self.run_id, self.worker_id,
                iteration=progress.get("iteration"), total_iterations=progress.get("total_iterations"),
                epoch=progress.get("epoch"), images_per_s=progress.get("images_per_s"),
            )
        except IllegalTransition as exc:
            logger.warning("%s", exc)
            self._lost.set()
            self._stop_requested.set()
            return
        if cancel:
            self._stop_requested.set()

    def _heartbeat_loop(self) -> None:
        while not self._closed.wait(self.heartbeat_s):
            try:
                self._beat()
                self._sample_system()
            except Exception:
                logger.exception("heartbeat for run %d failed; retrying", self.run_id)

    def _sample_system(self) -> None:
        """Every SAMPLE_EVERY_S, once training reports progress: CPU, memory and GPU metrics at its iteration."""
        with self._lock:
            iteration, epoch = self._progress.get("iteration"), self._progress.get("epoch")
        if iteration is None or time.monotonic() < self._next_sample:
            return
        self._next_sample = time.monotonic() + SAMPLE_EVERY_S
        self.store.append_metrics(self.run_id, self._system.rows(iteration, epoch))

    @property
    def lost(self) -> bool:
        """True when the store no longer lists this worker as the run's owner (it was marked stale)."""
        return self._lost.is_set()

    def metrics(self, rows: list[dict[str, Any]]) -> None:
        self.store.append_metrics(self.run_id, rows)

    def progress(self, state: dict[str, Any]) -> None:
        with self._lock:
            self._progress.update({k: v for k, v in state.items() if v is not None})
        if self.on_progress is not None:
            self.on_progress(state)

    def should_stop(self) -> bool:
        return self._stop_requested.is_set() or self.shutdown.is_set()

    def rewind(self, iteration: int) -> None:
        self.store.delete_metrics_after(self.run_id, iteration)

    def checkpoint_saved(self, path: Path, kind: str) -> None:
        self.store.add_artifact(self.run_id, "checkpoint", path, resumable=kind == "last")


def execute_run(
    store: RunStore,
    run_id: int,
    worker_id: str,
    *,
    allowed_roots: list[Path] | None = None,
    shutdown: threading.Event | None = None,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> str:
    """Train one run this worker has claimed and move it to its final status; never raises for run errors.

    A run stopped by `shutdown` (the worker is asked to exit) becomes `interrupted`, resumable;
    one stopped by the user's cancel becomes `cancelled`.
    """
    sink = StoreSink(store, run_id, worker_id, shutdown=shutdown, on_progress=on_progress).start()
    try:
        run = store.get_run(run_id)
        spec = RunSpec.model_validate(run.spec)
        result: FitResult = fit(spec, store.run_dir(run_id), sink, home=store.home, allowed_roots=allowed_roots,
                                model_factory=model_factory(spec))
    except BaseException as exc:
        sink.close()
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        message = str(exc) if isinstance(exc, WorkbenchError | ValidationError) else f"{type(exc).__name__}: {exc}"
        logger.error("run %d failed: %s", run_id, message)
        if sink.lost:
            return "lost"
        store.transition(run_id, FAILED, worker_id=worker_id, error_message=message,
                         traceback=traceback.format_exc())
        return FAILED
    sink.close()
    if sink.lost:
        return "lost"
    if result.status == "completed":
        status = COMPLETED
    else:
        status = INTERRUPTED if sink.shutdown.is_set() else CANCELLED
    checkpoint = RunFolder(store.run_dir(run_id)).last
    store.transition(
        run_id, status, worker_id=worker_id, iteration=result.iteration, total_iterations=result.total_iterations,
        device=f"{result.device} ({result.precision})", checkpoint_path=str(checkpoint),
    )
    logger.info("run %d %s at iteration %d", run_id, status, result.iteration)
    return status


def run_worker(
    store: RunStore,
    worker_id: str | None = None,
    *,
    exit_when_idle: bool = False,
    poll_s: float = 0.5,
    allowed_roots: list[Path] | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Claim and execute queued analyses and runs until stopped (or, with exit_when_idle, until both
    queues are empty). Analyses go first: they are short and someone is usually waiting for them.

    Returns how many jobs it executed.
    """
    worker_id = worker_id or default_worker_id()
    stop = stop or threading.Event()
    executed = 0
    logger.info("worker %s started (pid %d)", worker_id, os.getpid())
    while not stop.is_set():
        analysis = store.claim_next_analysis(worker_id)
        if analysis is not None:
            logger.info("worker %s took analysis %d (%s of run %d)", worker_id, analysis.id, analysis.kind,
                        analysis.run_id)
            execute_analysis(store, analysis, worker_id, allowed_roots=allowed_roots, shutdown=stop)
            executed += 1
            continue
        run = store.claim_next_run(worker_id, device=None)
        if run is None:
            if exit_when_idle:
                break
            stop.wait(poll_s)
            continue
        logger.info("worker %s took run %d (%s)", worker_id, run.id, run.name)
        execute_run(store, run.id, worker_id, allowed_roots=allowed_roots, shutdown=stop)
        executed += 1
    return executed
