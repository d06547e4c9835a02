"""The worker: claims queued runs from the store, trains them, reports through a StoreSink.

Robustness rules (see DESIGN.md, "Run lifecycle and recovery"): a worker recovers runs whose
worker went silent (stale heartbeat) whenever it looks for work; it exits, leaving its run
interrupted, when the app that started it dies; a cancel is read every second whatever the
run's numbers; and a write that fails (disk full, unwritable run folder) fails the run once,
with the path, while the worker itself carries on.
"""

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

import torch
from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError

from storage import RunStore
from storage.engine import describe_url
from storage.status import CANCELLED, COMPLETED, FAILED, INTERRUPTED
from storage.store import DEFAULT_STALE_AFTER_S
from workbench.errors import IllegalTransition, RunNotFound, WorkbenchError
from workbench.jobs.analyses import execute_analysis
from workbench.jobs.sweeps import TrialPruner, step_sweeps, trial_pruner
from workbench.jobs.system_metrics import SAMPLE_EVERY_S, SystemSampler
from workbench.paths import RunFolder
from workbench.spec import RunSpec
from workbench.training import FitResult, fit
from workbench.training.distributed import BACKENDS, rank_threads
from workbench.weights import model_factory

logger = logging.getLogger(__name__)

HEARTBEAT_INTERVAL_S = 1.0
PARENT_CHECK_S = 0.5
STORE_RETRY_MAX_S = 30.0
LOST = "lost"


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class RunLost(WorkbenchError):
    """The store no longer lists this worker as the run's owner (it was taken as dead): leave the run alone."""


class _QuietRepeats:
    """Logs a failure in full the first time, and the same failure again only at debug level."""

    def __init__(self, log: logging.Logger) -> None:
        self.log = log
        self.last: str | None = None

    def failed(self, what: str, exc: BaseException) -> None:
        key = f"{what}: {type(exc).__name__}: {exc}"
        if key == self.last:
            self.log.debug("%s (again)", key)
            return
        self.last = key
        self.log.error("%s; retrying", key, exc_info=not isinstance(exc, WorkbenchError | DBAPIError))

    def recovered(self) -> None:
        if self.last is not None:
            self.log.info("the store answers again")
        self.last = None


def _summary(progress: dict[str, Any]) -> dict[str, float | None]:
    """The run's summary errors in a training loop's progress, as `RunStore.update_summary` takes them."""
    validated = progress.get("best_split") == "val"
    return {"train_error": progress.get("train_error"), "test_error": progress.get("test_error"),
            "best_val_error": progress.get("best_error") if validated else None,
            "test_error_at_best": progress.get("test_error_at_best")}


class StoreSink:
    """Connects a training loop to the store: metrics in batches, progress and cancel via a heartbeat thread.

    The loop's calls only touch memory (except writing metric batches); a background thread
    heartbeats every second with the latest progress and turns a cancel request into a flag.
    The cancel flag is read even when writing the progress fails. When the run turns out to
    belong to someone else (it was taken as stale), `metrics` and `should_stop` raise RunLost,
    so the loop ends without writing a checkpoint or rows over the new owner's.
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
        """`prune` (set once the run is known to be a sweep trial) is asked after every batch of metrics whether
        the run should stop; its reason goes through the cancel path."""
        self.store = store
        self.prune: TrialPruner | None = None
        self.on_progress = on_progress
        self.shutdown = shutdown or threading.Event()
        self.run_id = run_id
        self.worker_id = worker_id
        self.heartbeat_s = heartbeat_s
        self._progress: dict[str, Any] = {}
        self._reported_summary: dict[str, float | None] = {}
        self._lock = threading.Lock()
        self._stop_requested = threading.Event()
        self._cancel_seen = threading.Event()
        self._lost = threading.Event()
        self._failures = _QuietRepeats(logger)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._heartbeat_loop, name=f"heartbeat-{run_id}", daemon=True)
        self._system = SystemSampler()
        self._next_sample = time.monotonic()

    def start(self) -> StoreSink:
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop heartbeating and write the final progress (never raises: the run's end is recorded next)."""
        self._closed.set()
        if self._thread.is_alive():
            self._thread.join()
        try:
            self._beat()
        except Exception as exc:
            self._failures.failed(f"final heartbeat of run {self.run_id} failed", exc)

    def _beat(self) -> None:
        with self._lock:
            progress = dict(self._progress)
            summary = _summary(progress)
            summary_changed = summary != self._reported_summary
        if summary_changed:
            try:
                self.store.update_summary(self.run_id, **summary)
                with self._lock:
                    self._reported_summary = summary
            except Exception as exc:
                self._failures.failed(f"summary of run {self.run_id} could not be written", exc)
        try:
            cancel = self.store.heartbeat(
                self.run_id, self.worker_id,
                iteration=progress.get("iteration"), total_iterations=progress.get("total_iterations"),
                epoch=progress.get("epoch"), images_per_s=progress.get("images_per_s"),
            )
        except IllegalTransition as exc:
            self._mark_lost(exc)
            return
        except Exception as exc:
            self._failures.failed(f"heartbeat with progress of run {self.run_id} failed", exc)
            cancel = self._bare_beat()
        else:
            self._failures.recovered()
        if cancel:
            self._cancel_seen.set()
            self._stop_requested.set()

    def _bare_beat(self) -> bool:
        """A heartbeat without progress, or at least a read of the cancel flag; whether cancel was asked."""
        try:
            return self.store.heartbeat(self.run_id, self.worker_id)
        except IllegalTransition as exc:
            self._mark_lost(exc)
            return False
        except Exception as exc:
            self._failures.failed(f"heartbeat of run {self.run_id} failed", exc)
        try:
            return self.store.is_cancel_requested(self.run_id)
        except Exception as exc:
            self._failures.failed(f"cancel flag of run {self.run_id} could not be read", exc)
            return False

    def _mark_lost(self, exc: Exception) -> None:
        if not self._lost.is_set():
            logger.warning("%s", exc)
        self._lost.set()
        self._stop_requested.set()

    def _heartbeat_loop(self) -> None:
        while not self._closed.wait(self.heartbeat_s):
            try:
                self._beat()
                self._sample_system()
            except Exception as exc:
                self._failures.failed(f"heartbeat for run {self.run_id} failed", exc)

    def _sample_system(self) -> None:
        """Every SAMPLE_EVERY_S, once training reports progress: CPU, memory and GPU metrics at its iteration."""
        with self._lock:
            iteration, epoch = self._progress.get("iteration"), self._progress.get("epoch")
        if iteration is None or self.lost or time.monotonic() < self._next_sample:
            return
        self._next_sample = time.monotonic() + SAMPLE_EVERY_S
        self.metrics(self._system.rows(iteration, epoch))

    @property
    def lost(self) -> bool:
        """True when the store no longer lists this worker as the run's owner (it was marked stale)."""
        return self._lost.is_set()

    @property
    def cancel_requested(self) -> bool:
        """True once the user's cancel was read from the store (as opposed to the worker being asked to exit)."""
        return self._cancel_seen.is_set()

    def _check_owned(self) -> None:
        if self._lost.is_set():
            raise RunLost(f"run {self.run_id} is no longer held by worker {self.worker_id}; leaving it alone")

    def metrics(self, rows: list[dict[str, Any]]) -> None:
        self._check_owned()
        try:
            self.store.append_metrics(self.run_id, rows, worker_id=self.worker_id)
        except IllegalTransition as exc:
            self._mark_lost(exc)
            raise RunLost(str(exc)) from exc
        if self.prune is not None and not self._stop_requested.is_set():
            self._prune_check(rows)

    def _prune_check(self, rows: list[dict[str, Any]]) -> None:
        """Cancel the run as a user would, the pruner's reason as its message, when the pruner says so; a pruner
        that cannot decide (the store does not answer) lets the trial go on."""
        with self._lock:
            total = self._progress.get("total_iterations")
        try:
            reason = self.prune(rows, total)
            if reason is None:
                return
            self.store.request_cancel(self.run_id, reason=reason)
        except IllegalTransition as exc:
            self._mark_lost(exc)
            raise RunLost(str(exc)) from exc
        except Exception as exc:
            self._failures.failed(f"pruning check of run {self.run_id} failed", exc)
            return
        logger.info("run %d: %s", self.run_id, reason)
        self._cancel_seen.set()
        self._stop_requested.set()

    def progress(self, state: dict[str, Any]) -> None:
        with self._lock:
            self._progress.update({k: v for k, v in state.items() if v is not None})
        if self.on_progress is not None:
            self.on_progress(state)

    def should_stop(self) -> bool:
        self._check_owned()
        return self._stop_requested.is_set() or self.shutdown.is_set()

    def rewind(self, iteration: int) -> None:
        self._check_owned()
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
    one stopped by the user's cancel becomes `cancelled`. A run that fails (including a write that
    fails: full disk, unwritable run folder) becomes `failed` once, with the path and the reason.
    Returns the final status, or "lost" when the run was taken from this worker meanwhile.
    """
    sink = StoreSink(store, run_id, worker_id, shutdown=shutdown, on_progress=on_progress).start()
    try:
        run = store.get_run(run_id)
        sink.prune = trial_pruner(store, run)
        spec = RunSpec.model_validate(run.spec)
        result: FitResult = fit(spec, store.run_dir(run_id), sink, home=store.home, allowed_roots=allowed_roots,
                                model_factory=model_factory(spec))
    except BaseException as exc:
        sink.close()
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        if sink.lost or isinstance(exc, RunLost):
            logger.warning("run %d was taken from worker %s; it stopped without recording anything", run_id, worker_id)
            return LOST
        message = failure_message(exc, store)
        logger.error("run %d failed: %s", run_id, message)
        return _record_end(store, run_id, FAILED, worker_id, sink.shutdown, error_message=message,
                           traceback=traceback.format_exc())
    sink.close()
    if sink.lost:
        return LOST
    if result.status == "completed":
        status = COMPLETED
    elif sink.shutdown.is_set() and not sink.cancel_requested and not _cancel_flagged(store, run_id):
        status = INTERRUPTED
    else:
        status = CANCELLED
    fields: dict[str, Any] = {
        "iteration": result.iteration, "total_iterations": result.total_iterations,
        "device": device_description(result.device, result.precision, result.world_size),
    }
    checkpoint = RunFolder(store.run_dir(run_id)).last
    if checkpoint.is_file():
        fields["checkpoint_path"] = str(checkpoint)
    final = _record_end(store, run_id, status, worker_id, sink.shutdown, **fields)
    logger.info("run %d %s at iteration %d", run_id, final, result.iteration)
    return final


def _cancel_flagged(store: RunStore, run_id: int) -> bool:
    """Whether the user asked to cancel: a cluster's cancel (flag, then SIGTERM) can stop the worker before its
    heartbeat read the flag."""
    try:
        return store.is_cancel_requested(run_id)
    except Exception:
        logger.warning("could not read the cancel flag of run %d; recording it as interrupted", run_id)
        return False


def run_one(store: RunStore, run_id: int, worker_id: str | None = None, *, allowed_roots: list[Path] | None = None,
            stop: threading.Event | None = None) -> str | None:
    """Claim one given queued run and execute it (the worker of a cluster job: `worker --run ID`).

    Returns the run's final status, or None when it was no longer queued (cancelled while its job waited
    for a node, or taken by another worker).
    """
    worker_id = worker_id or default_worker_id()
    try:
        store.claim_run(run_id, worker_id)
    except IllegalTransition as exc:
        logger.warning("%s; nothing to do", exc)
        return None
    logger.info("worker %s took run %d", worker_id, run_id)
    status = execute_run(store, run_id, worker_id, allowed_roots=allowed_roots, shutdown=stop)
    step_sweeps(store)
    return status


def device_description(device: str, precision: str, world_size: int = 1) -> str:
    """"cpu (fp32, 2 threads)", "cuda (bf16)", "2 x cpu (gloo, fp32, 1 thread each)": where a run trained, as the
    Runs table shows it."""
    if world_size == 1:
        count = torch.get_num_threads()
        threads = f", {count} thread{'s' if count > 1 else ''}" if device == "cpu" else ""
        return f"{device} ({precision}{threads})"
    kind = device.split(":")[0]
    count = rank_threads(world_size)
    threads = f", {count} thread{'s' if count > 1 else ''} each" if kind == "cpu" else ""
    return f"{world_size} x {kind} ({BACKENDS[kind]}, {precision}{threads})"


def failure_message(exc: BaseException, store: RunStore | None = None) -> str:
    """What went wrong, for the run's error message: the path and the reason for file errors."""
    if isinstance(exc, WorkbenchError | ValidationError):
        return str(exc)
    if isinstance(exc, OSError) and exc.filename:
        return f"could not access {exc.filename}: {exc.strerror or exc}"
    if isinstance(exc, DBAPIError):
        where = f" at {describe_url(store.engine.url)}" if store is not None else ""
        return f"the run store{where} could not be written: {exc.orig}"
    return f"{type(exc).__name__}: {exc}"


def _record_end(store: RunStore, run_id: int, status: str, worker_id: str, stop: threading.Event,
                **fields: Any) -> str:
    """Move the run to its final status, retrying while the store cannot be written (e.g. a full disk).

    Gives up when the run is no longer this worker's (returns "lost"), or after a few tries once the
    worker is asked to exit: the run then stays `running` until its stale heartbeat marks it interrupted.
    """
    failures = _QuietRepeats(logger)
    delay, attempts = 0.5, 0
    while True:
        attempts += 1
        try:
            store.transition(run_id, status, worker_id=worker_id, **fields)
            return status
        except (IllegalTransition, RunNotFound) as exc:
            logger.warning("run %d could not be marked %s: %s", run_id, status, exc)
            return LOST
        except Exception as exc:
            failures.failed(f"run {run_id} could not be marked {status}", exc)
        if stop.is_set() and attempts >= 3:
            logger.error("run %d left running: the store cannot record it as %s; it is marked interrupted once "
                         "its heartbeat is stale", run_id, status)
            return LOST
        if stop.is_set():
            time.sleep(delay)
        else:
            stop.wait(delay)
        delay = min(delay * 2, STORE_RETRY_MAX_S)


def watch_parent(parent_pid: int, stop: threading.Event, interval_s: float = PARENT_CHECK_S) -> threading.Thread:
    """Set `stop` when the process `parent_pid` is no longer this process's parent (the app died).

    The worker then checkpoints its run, leaves it interrupted and exits, so a dead app never
    leaves workers behind that keep claiming runs under the next one.
    """

    def parent_gone() -> bool:
        if os.getppid() == parent_pid:
            return False
        logger.warning("worker pid %d: the process that started it (pid %d) is gone; stopping", os.getpid(),
                       parent_pid)
        stop.set()
        return True

    def watch() -> None:
        while not stop.wait(interval_s):
            if parent_gone():
                return

    parent_gone()
    thread = threading.Thread(target=watch, name="parent-watch", daemon=True)
    thread.start()
    return thread


def run_worker(
    store: RunStore,
    worker_id: str | None = None,
    *,
    exit_when_idle: bool = False,
    poll_s: float = 0.5,
    allowed_roots: list[Path] | None = None,
    stop: threading.Event | None = None,
    stale_after_s: float | None = DEFAULT_STALE_AFTER_S,
    auto_resume: bool = False,
    parent_pid: int | None = None,
) -> int:
    """Claim and execute queued analyses and runs until stopped (or, with exit_when_idle, until both
    queues are empty). Analyses go first: they are short and someone is usually waiting for them.

    Each time it looks for work it steps the unfinished sweeps (queueing the TPE trials they may add),
    marks runs without a heartbeat for `stale_after_s` seconds as interrupted and queues stale analyses
    again (None: never) and, with `auto_resume`, queues interrupted runs again. With `parent_pid` it
    stops when that process dies. A store that cannot be reached or written is retried with a growing
    pause; the worker does not exit because of it.
    Returns how many jobs it executed.
    """
    worker_id = worker_id or default_worker_id()
    stop = stop or threading.Event()
    if parent_pid is not None:
        watch_parent(parent_pid, stop)
    executed = 0
    failures = _QuietRepeats(logger)
    pause = poll_s
    logger.info("worker %s started (pid %d)", worker_id, os.getpid())
    while not stop.is_set():
        step_sweeps(store)
        try:
            analysis = store.claim_next_analysis(worker_id, stale_after_s=stale_after_s)
            run = None if analysis is not None else store.claim_next_run(
                worker_id, device=None, stale_after_s=stale_after_s, requeue_interrupted=auto_resume)
        except Exception as exc:
            failures.failed(f"worker {worker_id} could not look for queued jobs", exc)
            stop.wait(pause)
            pause = min(pause * 2, STORE_RETRY_MAX_S)
            continue
        failures.recovered()
        pause = poll_s
        if analysis is not None:
            logger.info("worker %s took analysis %d (%s of run %d)", worker_id, analysis.id, analysis.kind,
                        analysis.run_id)
            execute_analysis(store, analysis, worker_id, allowed_roots=allowed_roots, shutdown=stop)
            executed += 1
            continue
        if run is None:
            if exit_when_idle:
                break
            stop.wait(poll_s)
            continue
        logger.info("worker %s took run %d (%s)", worker_id, run.id, run.name)
        try:
            execute_run(store, run.id, worker_id, allowed_roots=allowed_roots, shutdown=stop)
        except Exception:
            logger.exception("worker %s: run %d ended with an unexpected error; going on", worker_id, run.id)
        executed += 1
    return executed
