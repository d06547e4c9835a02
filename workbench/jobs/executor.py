"""Executors: submit, cancel, resume and watch runs; the local one keeps worker processes alive."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import torch

from storage import RunRecord, RunStore
from storage.status import CANCELLED, INTERRUPTED, QUEUED, RUNNING
from storage.store import DEFAULT_STALE_AFTER_S
from workbench.errors import IllegalTransition
from workbench.spec import RunSpec
from workbench.threads import child_env, worker_threads

logger = logging.getLogger(__name__)

STALE_AFTER_S = DEFAULT_STALE_AFTER_S
WATCH_INTERVAL_S = 1.0
# A worker that dies this soon after it started counts as a quick death; repeated quick deaths
# (a broken environment, a full disk) restart it after a growing pause instead of in a tight loop.
QUICK_DEATH_S = 10.0
MAX_RESTART_DELAY_S = 60.0
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def default_worker_count() -> int:
    """One worker per GPU; one on a CPU-only machine."""
    return max(1, torch.cuda.device_count())


class Executor(ABC):
    """What the UI and CLI need from whatever runs the jobs."""

    #: Training processes that share this machine's cores (and so its threads, see workbench/threads.py).
    worker_count = 1

    def __init__(self, store: RunStore, *, stale_after_s: float = STALE_AFTER_S) -> None:
        self.store = store
        self.stale_after_s = stale_after_s

    def submit(
        self, spec: RunSpec, *, name: str, preset: str | None = None, group_name: str | None = None,
        group_kind: str | None = None, parent_run_id: int | None = None,
    ) -> int:
        """Queue a run; returns its id."""
        return self.store.create_run(
            spec.model_dump(mode="json"), name=name, preset=preset, dataset=spec.data.name,
            group_name=group_name, group_kind=group_kind, parent_run_id=parent_run_id,
        )

    def cancel(self, run_id: int) -> str:
        """Cancel a queued run (or one whose worker is gone) now, or ask a running one to checkpoint and stop;
        returns the status."""
        return self.store.request_cancel(run_id, stale_after_s=self.stale_after_s)

    def resume(self, run_id: int) -> None:
        """Queue an interrupted, cancelled or failed run (or a running one whose worker is gone) again."""
        self.store.resume_run(run_id, stale_after_s=self.stale_after_s)

    def status(self, run_id: int) -> str:
        return self.store.get_run(run_id).status

    def job_log(self, run: RunRecord) -> str | None:
        """The log of the cluster job executing the run; None for executors without jobs."""
        return None

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def shutdown(self) -> None: ...


class QueueExecutor(Executor):
    """Only queues: the runs wait in the store for whichever workers serve it (another app, `worker`)."""

    def start(self) -> None:
        pass

    def shutdown(self) -> None:
        pass


class LocalExecutor(Executor):
    """Worker processes on this machine (`python -m workbench worker`), restarted when they die.

    A worker that dies mid-run (even by SIGKILL) is noticed within a second: its run becomes
    `interrupted` and, with `auto_resume`, goes back to the queue to continue from its checkpoint.
    Every few seconds (not only at start) running runs whose heartbeat is older than
    `stale_after_s` are marked interrupted, whoever held them, and with `auto_resume` interrupted
    runs are queued again. Workers watch this process and stop (checkpoint, run interrupted)
    when it dies; this executor only ever reaps its own workers.
    """

    def __init__(
        self,
        store: RunStore,
        *,
        db_url: str,
        workers: int | None = None,
        auto_resume: bool = False,
        data_roots: list[Path] | None = None,
        stale_after_s: float = STALE_AFTER_S,
    ) -> None:
        super().__init__(store, stale_after_s=stale_after_s)
        self.db_url = db_url
        self.worker_count = workers if workers is not None else default_worker_count()
        self.auto_resume = auto_resume
        self.data_roots = data_roots or []
        self.processes: dict[str, subprocess.Popen] = {}
        self._spawned_at: dict[str, float] = {}
        self._respawn_at: list[float] = []
        self._quick_deaths = 0
        self._recover_every = min(max(stale_after_s / 3, WATCH_INTERVAL_S), 5.0)
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._lock = threading.Lock()

    def _worker_command(self, worker_id: str) -> list[str]:
        command = [sys.executable, "-m", "workbench", "--home", str(self.store.home), "--db", self.db_url]
        for root in self.data_roots:
            command += ["--data-root", str(root)]
        command += ["worker", "--worker-id", worker_id, "--parent-pid", str(os.getpid()),
                    "--stale-after", str(self.stale_after_s)]
        return command + (["--auto-resume"] if self.auto_resume else [])

    def _spawn(self) -> str:
        worker_id = f"local-{uuid.uuid4().hex[:8]}"
        python_path = os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))
        env = {**child_env(worker_threads(self.worker_count)), "PYTHONPATH": python_path}
        self.processes[worker_id] = subprocess.Popen(self._worker_command(worker_id), env=env, cwd=PROJECT_ROOT)
        self._spawned_at[worker_id] = time.monotonic()
        logger.info("started worker %s (pid %d)", worker_id, self.processes[worker_id].pid)
        return worker_id

    def start(self) -> None:
        """Recover runs left running by a previous session, then start the workers and their watcher."""
        self.recover()
        with self._lock:
            for _ in range(self.worker_count):
                self._spawn()
        self._watcher = threading.Thread(target=self._watch, name="worker-watcher", daemon=True)
        self._watcher.start()

    def recover(self) -> list[int]:
        """Mark runs whose worker went silent as interrupted and, with auto_resume, queue interrupted runs again.

        Returns the ids of the runs found stale. Safe to call from several processes at once.
        """
        marked = self.store.mark_stale_interrupted(self.stale_after_s)
        if self.auto_resume:
            self.store.requeue_interrupted()
        return marked

    def _after_interruption(self, run_id: int) -> None:
        if self.auto_resume:
            try:
                self.store.transition(run_id, QUEUED)
                logger.info("run %d was interrupted; queued again to resume from its checkpoint", run_id)
            except IllegalTransition as exc:
                logger.warning("could not resume run %d: %s", run_id, exc)

    def _reap(self, worker_id: str, returncode: int) -> None:
        logger.warning("worker %s exited with code %s", worker_id, returncode)
        for run in self.store.list_runs(status=RUNNING):
            if run.worker_id != worker_id:
                continue
            if run.cancel_requested:
                status, message = CANCELLED, f"cancelled; worker {worker_id} died (exit code {returncode})"
            else:
                status = INTERRUPTED
                message = (f"worker {worker_id} died (exit code {returncode}); resume to continue from the last "
                           "checkpoint")
            try:
                self.store.transition(run.id, status, worker_id=worker_id, error_message=message)
            except IllegalTransition:
                continue
            if status == INTERRUPTED:
                self._after_interruption(run.id)

    def _restart_delay(self, worker_id: str) -> float:
        """How long to wait before replacing a dead worker: 0, unless workers keep dying right after starting."""
        lived = time.monotonic() - self._spawned_at.pop(worker_id, 0.0)
        self._quick_deaths = self._quick_deaths + 1 if lived < QUICK_DEATH_S else 0
        if self._quick_deaths <= 1:
            return 0.0
        delay = min(2.0 ** (self._quick_deaths - 1), MAX_RESTART_DELAY_S)
        logger.warning("workers keep dying right after they start (%d in a row); next one in %.0f s",
                       self._quick_deaths, delay)
        return delay

    def _watch(self) -> None:
        next_recovery = time.monotonic() + self._recover_every
        while not self._stop.wait(WATCH_INTERVAL_S):
            with self._lock:
                dead = [(wid, p.returncode) for wid, p in self.processes.items() if p.poll() is not None]
                for worker_id, returncode in dead:
                    del self.processes[worker_id]
                    if self._stop.is_set():
                        continue
                    try:
                        self._reap(worker_id, returncode)
                    except Exception:
                        logger.exception("could not recover the run of worker %s", worker_id)
                    self._respawn_at.append(time.monotonic() + self._restart_delay(worker_id))
                now = time.monotonic()
                due = [moment for moment in self._respawn_at if moment <= now]
                for moment in due:
                    if self._stop.is_set():
                        break
                    self._respawn_at.remove(moment)
                    try:
                        self._spawn()
                    except OSError:
                        logger.exception("could not start a worker; trying again later")
                        self._respawn_at.append(now + MAX_RESTART_DELAY_S)
            if time.monotonic() >= next_recovery and not self._stop.is_set():
                next_recovery = time.monotonic() + self._recover_every
                try:
                    self.recover()
                except Exception:
                    logger.exception("could not check for runs whose worker is gone; trying again later")

    def worker_pids(self) -> dict[str, int]:
        with self._lock:
            return {worker_id: process.pid for worker_id, process in self.processes.items()}

    def shutdown(self, timeout: float = 30.0) -> None:
        """Ask workers to checkpoint and stop (their runs become interrupted), then wait for them."""
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join()
        with self._lock:
            processes = list(self.processes.items())
            self.processes.clear()
        for _, process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for worker_id, process in processes:
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                logger.warning("worker %s did not stop in %.0f s; killing it", worker_id, timeout)
                process.kill()
                process.wait()
                self._reap(worker_id, process.returncode)

    def __enter__(self) -> LocalExecutor:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()
