"""Executors: submit, cancel, resume and watch runs; the local one keeps worker processes alive."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import uuid
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import torch

from storage import RunStore
from storage.status import INTERRUPTED, QUEUED, RUNNING
from workbench.errors import IllegalTransition
from workbench.spec import RunSpec

logger = logging.getLogger(__name__)

STALE_AFTER_S = 15.0
WATCH_INTERVAL_S = 1.0
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def default_worker_count() -> int:
    """One worker per GPU; one on a CPU-only machine."""
    return max(1, torch.cuda.device_count())


class Executor(ABC):
    """What the UI and CLI need from whatever runs the jobs."""

    def __init__(self, store: RunStore) -> None:
        self.store = store

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
        """Cancel a queued run now, or ask a running one to checkpoint and stop; returns the status."""
        return self.store.request_cancel(run_id)

    def resume(self, run_id: int) -> None:
        """Queue an interrupted, cancelled or failed run again; it continues from its last checkpoint."""
        self.store.transition(run_id, QUEUED)

    def status(self, run_id: int) -> str:
        return self.store.get_run(run_id).status

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
        super().__init__(store)
        self.stale_after_s = stale_after_s
        self.db_url = db_url
        self.worker_count = workers if workers is not None else default_worker_count()
        self.auto_resume = auto_resume
        self.data_roots = data_roots or []
        self.processes: dict[str, subprocess.Popen] = {}
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._lock = threading.Lock()

    def _worker_command(self, worker_id: str) -> list[str]:
        command = [sys.executable, "-m", "workbench", "--home", str(self.store.home), "--db", self.db_url]
        for root in self.data_roots:
            command += ["--data-root", str(root)]
        return command + ["worker", "--worker-id", worker_id]

    def _spawn(self) -> str:
        worker_id = f"local-{uuid.uuid4().hex[:8]}"
        python_path = os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "PYTHONPATH": python_path}
        if not torch.cuda.is_available():
            # CPU workers share the cores instead of each spinning one thread per core.
            env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // self.worker_count)))
        self.processes[worker_id] = subprocess.Popen(self._worker_command(worker_id), env=env, cwd=PROJECT_ROOT)
        logger.info("started worker %s (pid %d)", worker_id, self.processes[worker_id].pid)
        return worker_id

    def start(self) -> None:
        """Recover runs left running by a previous session, then start the workers and their watcher."""
        for run_id in self.store.mark_stale_interrupted(self.stale_after_s):
            self._after_interruption(run_id)
        with self._lock:
            for _ in range(self.worker_count):
                self._spawn()
        self._watcher = threading.Thread(target=self._watch, name="worker-watcher", daemon=True)
        self._watcher.start()

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
            try:
                self.store.transition(
                    run.id, INTERRUPTED, worker_id=worker_id,
                    error_message=f"worker {worker_id} died (exit code {returncode}); resume to continue from "
                                  "the last checkpoint",
                )
            except IllegalTransition:
                continue
            self._after_interruption(run.id)

    def _watch(self) -> None:
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
                    self._spawn()

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
