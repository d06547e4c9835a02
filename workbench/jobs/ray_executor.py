"""Ray cluster executor: each queued run becomes one Ray job (Jobs API) that runs `worker --run ID`.

The run table stays the queue of record. A run's job id is stored before the job is submitted, so a
dispatcher never submits a run twice and one restarted mid-run reattaches to the live jobs that
`list_jobs` reports. Every second the state of each job is read back into its run: a job waiting for
resources is reported on the run, one that failed or vanished leaves its run interrupted (or failed,
when it never started the run) with the tail of the job's log. Ray jobs outlive the dispatcher.
"""

from __future__ import annotations

import logging
import shlex
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from storage import RunStore
from storage.records import RunRecord
from storage.status import CANCELLED, FAILED, INTERRUPTED, QUEUED, RUNNING
from workbench.errors import IllegalTransition, WorkbenchError
from workbench.jobs.executor import PROJECT_ROOT, STALE_AFTER_S, Executor
from workbench.jobs.sweeps import step_sweeps
from workbench.paths import RunFolder, mark_shared_home

logger = logging.getLogger(__name__)

JOB_PREFIX = "workbench-run-"
POLL_S = 1.0
# How long a stopped job has to checkpoint after SIGTERM before Ray kills it.
STOP_GRACE_S = 60
LOG_TAIL_LINES = 20
SUBMIT_RETRY_S = 30.0
GPU_CHECK_S = 30.0
TERMINAL = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})
# The code travels to each job as its working directory; these stay behind (gitignore patterns, "/" = top).
WORKING_DIR_EXCLUDES = ["/.git", "/.venv", "/venv", "/data", "/.workbench", "/test-artifacts", "/docs",
                        "__pycache__", "*.pt", "*.pth", "*.onnx", "*.zip", "*.tar.gz"]


def submission_id(run_id: int) -> str:
    """The Ray submission id of a run's job."""
    return f"{JOB_PREFIX}{run_id}"


def job_resources(spec: Mapping[str, Any], cluster_has_gpus: bool) -> dict[str, float]:
    """What a run's job asks Ray for: one CPU per device (a process each), and as many GPUs when its device is
    `cuda` (or `auto` on a cluster with GPUs)."""
    train = spec.get("train", {})
    device, devices = train.get("device", "auto"), train.get("devices", 1)
    gpus = devices if device == "cuda" or (device == "auto" and cluster_has_gpus) else 0
    return {"entrypoint_num_cpus": devices, "entrypoint_num_gpus": gpus}


def describe_resources(resources: Mapping[str, float]) -> str:
    """"1 GPU and 1 CPU", "2 GPUs and 2 CPUs" for the run's waiting message."""
    gpus, cpus = resources["entrypoint_num_gpus"], resources["entrypoint_num_cpus"]
    parts = [f"{gpus:g} GPU{'s' if gpus != 1 else ''}"] if gpus else []
    return " and ".join([*parts, f"{cpus:g} CPU{'s' if cpus != 1 else ''}"])


class RayExecutor(Executor):
    """Runs each queued run as a Ray job on the cluster at `address` (its dashboard URL, http://HOST:8265).

    Workers on the cluster reach the store through `db_url` (PostgreSQL on a real cluster) and the home
    folder through a shared file system mounted at the same path on every node.
    """

    def __init__(
        self,
        store: RunStore,
        *,
        address: str,
        db_url: str,
        data_roots: list[Path] | None = None,
        auto_resume: bool = False,
        stale_after_s: float = STALE_AFTER_S,
        stop_grace_s: int = STOP_GRACE_S,
        poll_s: float = POLL_S,
    ) -> None:
        super().__init__(store, stale_after_s=stale_after_s)
        self.address = address
        self.db_url = db_url
        self.data_roots = data_roots or []
        self.auto_resume = auto_resume
        self.stop_grace_s = stop_grace_s
        self.poll_s = poll_s
        self.client: Any = None
        self.home_id = ""
        self._retry_at: dict[int, float] = {}
        self._gpus: tuple[float, bool] = (0.0, False)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- the executor interface ----------------------------------------------------------------

    def start(self) -> None:
        """Check the shared home, connect to the cluster, reattach to its jobs, then follow them every second."""
        from ray.job_submission import JobSubmissionClient

        # Ray logs every file it leaves out of the working directory, on every submission.
        logging.getLogger("ray._private.runtime_env.packaging").setLevel(logging.WARNING)
        logging.getLogger("ray.dashboard.modules.dashboard_sdk").setLevel(logging.WARNING)
        self.home_id = mark_shared_home(self.store.home)
        try:
            self.client = JobSubmissionClient(self.address)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise WorkbenchError(
                f"cannot reach the Ray cluster at {self.address} ({exc}); start one with `ray start --head` and pass "
                "its dashboard URL (http://HOST:8265) as --ray-address"
            ) from exc
        self.sync()
        self._stop.clear()
        self._thread = threading.Thread(target=self._follow_loop, name="ray-dispatcher", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        """Stop following the jobs; they go on running on the cluster and are reattached by the next start."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def cancel(self, run_id: int) -> str:
        """Cancel through the store (a queued run at once, a running one by its flag) and stop the run's job:
        SIGTERM, so the worker checkpoints and records `cancelled`; Ray kills it after the grace period."""
        status = super().cancel(run_id)
        job_id = self.store.get_run(run_id).job_id
        if job_id is not None and self.client is not None:
            try:
                self.client.stop_job(job_id)
            except RuntimeError as exc:
                logger.info("run %d: Ray job %s could not be stopped (%s)", run_id, job_id, exc)
        return status

    def job_log(self, run: RunRecord) -> str | None:
        """The log of the run's Ray job; when the cluster no longer has it, the copy its workers kept in the run
        folder; None when the run has no job."""
        if run.job_id is None or self.client is None:
            return None
        try:
            log = self.client.get_job_logs(run.job_id)
            if log:
                return log
            # Ray answers so for a job that has printed nothing yet, and now and then for one it is deleting.
            why = f"Ray's log of job {run.job_id} is empty"
        except RuntimeError as exc:
            log, why = f"(the log of Ray job {run.job_id} cannot be read: {exc})", \
                f"Ray no longer has the log of job {run.job_id}"
        kept = RunFolder.of(self.store.home, run.id).job_log
        try:
            return f"({why}; its workers' log kept in {kept}:)\n" + kept.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return log

    # -- following the jobs --------------------------------------------------------------------

    def _follow_loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.sync()
            except Exception:
                logger.exception("could not follow the Ray jobs at %s; trying again", self.address)

    def sync(self) -> None:
        """One pass: recover stale runs, step the sweeps (queueing their next TPE trials), submit queued runs without
        a job, read each job's state into its run.

        Jobs are listed before runs are read: a worker records its run's end before its job ends, so a
        finished job whose run still shows `running` really died.
        """
        with self._lock:
            self.store.mark_stale_interrupted(self.stale_after_s)
            if self.auto_resume:
                self.store.requeue_interrupted()
            step_sweeps(self.store)
            jobs = {job.submission_id: job for job in self.client.list_jobs()
                    if (job.submission_id or "").startswith(JOB_PREFIX)}
            ours = {job_id: job for job_id, job in jobs.items() if (job.metadata or {}).get("home_id") == self.home_id}
            for run in reversed(self.store.list_runs(status=[QUEUED, RUNNING], limit=100_000)):
                if run.job_id is None:
                    if run.status == QUEUED:
                        self._submit(run, jobs.get(submission_id(run.id)))
                else:
                    self._follow(run, ours.get(run.job_id))

    def _submit(self, run: RunRecord, previous: Any) -> None:
        if self._retry_at.get(run.id, 0.0) > time.monotonic():
            return
        job_id = submission_id(run.id)
        if previous is not None:
            if (previous.metadata or {}).get("home_id") != self.home_id:
                self._say(run, f"Ray job id {job_id} is taken by another workbench home on {self.address}; give "
                               "each home its own Ray cluster")
                return
            if previous.status not in TERMINAL:
                return  # the run's previous job is still stopping
            self.client.delete_job(job_id)
        if not self.store.assign_job(run.id, job_id):
            return
        resources = job_resources(run.spec, self._cluster_has_gpus())
        try:
            self.client.submit_job(
                entrypoint=self._entrypoint(run.id), submission_id=job_id, runtime_env=self._runtime_env(resources),
                metadata={"run_id": str(run.id), "run_name": run.name[:100], "home_id": self.home_id,
                          "resources": describe_resources(resources)},
                **resources,
            )
        except Exception as exc:
            self._retry_at[run.id] = time.monotonic() + SUBMIT_RETRY_S
            self.store.release_job(run.id, job_id, f"could not submit Ray job {job_id} to {self.address}: {exc}; "
                                                   f"trying again in {SUBMIT_RETRY_S:.0f} s")
            logger.warning("run %d: could not submit Ray job %s: %s", run.id, job_id, exc)
            return
        self._retry_at.pop(run.id, None)
        logger.info("run %d submitted as Ray job %s (%s)", run.id, job_id, describe_resources(resources))

    def _follow(self, run: RunRecord, job: Any) -> None:
        if job is None:
            gone = f"Ray job {run.job_id} is gone from the cluster at {self.address} (its head restarted or the job " \
                   "was deleted)"
            if run.status == QUEUED:
                self.store.release_job(run.id, run.job_id, f"{gone}; submitting it again")
            elif self._ran_in_job(run):
                self._end(run, gone, self._log_tail(run))
            return
        status = str(job.status.value if hasattr(job.status, "value") else job.status)
        if status == "PENDING" and run.status == QUEUED:
            self._say(run, f"waiting for a node with {job.metadata.get('resources', 'the resources it asks for')} "
                           f"(Ray job {run.job_id} is pending)")
        elif status in TERMINAL and run.status == QUEUED and job.driver_exit_code is None:
            # Ray gives up on a job that waited too long for a node; the run keeps waiting in the queue.
            self.store.release_job(run.id, run.job_id, f"Ray job {run.job_id} never started ({job.message}); "
                                                       "submitting it again")
        elif status in TERMINAL and (run.status == QUEUED or self._ran_in_job(run)):
            self._end(run, f"Ray job {run.job_id} ended {status} ({job.message})", self._log_tail(run))

    def _say(self, run: RunRecord, message: str) -> None:
        """Show why a queued run has not started (written only when it changes)."""
        if run.error_message != message:
            self.store.note_waiting(run.id, message)

    def _ran_in_job(self, run: RunRecord) -> bool:
        return run.status == RUNNING and (run.worker_id or "").startswith(f"{run.job_id}@")

    def _end(self, run: RunRecord, what: str, tail: str) -> None:
        """Record the end of a job that did not record its run's end itself."""
        message = what + (f"; the last lines of its log:\n{tail}" if tail else "")
        try:
            if run.status == QUEUED:
                # The job could not start its worker (or the worker could not take the run): fail it once.
                self.store.claim_run(run.id, f"{run.job_id}@dispatcher")
                self.store.transition(run.id, FAILED, worker_id=f"{run.job_id}@dispatcher",
                                      error_message=f"{message}\nthe run never started")
                return
            status = CANCELLED if run.cancel_requested else INTERRUPTED
            self.store.transition(run.id, status, worker_id=run.worker_id, error_message=message)
        except IllegalTransition:
            return  # the worker (or the user) moved the run meanwhile
        logger.warning("run %d: %s", run.id, what)
        if status == INTERRUPTED and self.auto_resume:
            self.store.transition(run.id, QUEUED)

    def _log_tail(self, run: RunRecord) -> str:
        return "\n".join(self.job_log(run).splitlines()[-LOG_TAIL_LINES:])

    def _cluster_has_gpus(self) -> bool:
        """Whether any live node offers GPUs (checked at most every GPU_CHECK_S seconds)."""
        checked_at, has_gpus = self._gpus
        if time.monotonic() - checked_at < GPU_CHECK_S and checked_at:
            return has_gpus
        from ray.util.state import list_nodes

        try:
            nodes = list_nodes(address=self.address, detail=True)
        except Exception as exc:
            logger.warning("could not list the nodes of %s (%s); asking for no GPU for device auto", self.address, exc)
            return has_gpus
        has_gpus = any(node.state == "ALIVE" and node.resources_total.get("GPU", 0) > 0 for node in nodes)
        self._gpus = (time.monotonic(), has_gpus)
        return has_gpus

    def _entrypoint(self, run_id: int) -> str:
        # The interpreter path and the home are the same on every node (README, "Scaling out").
        command = [sys.executable, "-m", "workbench", "--home", str(self.store.home)]
        for root in self.data_roots:
            command += ["--data-root", str(root)]
        command += ["worker", "--run", str(run_id), "--job-id", submission_id(run_id)]
        return shlex.join(command)

    def _runtime_env(self, resources: Mapping[str, float]) -> dict[str, Any]:
        excludes = list(WORKING_DIR_EXCLUDES)
        home = self.store.home.resolve()
        if home.is_relative_to(PROJECT_ROOT):
            excludes.append("/" + home.relative_to(PROJECT_ROOT).as_posix())
        return {
            "working_dir": str(PROJECT_ROOT),
            "excludes": excludes,
            "env_vars": {
                # Through the environment, not the command line: the URL may hold a password.
                "WORKBENCH_DATABASE_URL": self.db_url,
                "WORKBENCH_HOME_ID": self.home_id,
                "RAY_JOB_STOP_WAIT_TIME_S": str(self.stop_grace_s),
                "OMP_NUM_THREADS": str(max(1, int(resources["entrypoint_num_cpus"]))),
            },
        }
