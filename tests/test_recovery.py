"""Recovery from any process: a real SQLite file (and PostgreSQL, for the killed standalone worker), real worker
processes, SIGKILL.

Every test checks that what survives a crash is consistent: the run ends in a status a user can act
on, and each (split, metric, iteration) is stored exactly once whatever the kill/resume order.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError

from storage import open_store
from storage.store import RunStore
from workbench.errors import RunNotFound, WorkbenchError
from workbench.jobs import LocalExecutor, QueueExecutor, StoreSink, execute_run, run_worker
from workbench.paths import database_url
from workbench.service import Workbench
from workbench.spec import DataSpec, NetSpec, RunSpec, TrainSpec

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[1]
TINY_NET = NetSpec(name="tiny", blocks=[1, 1, 1], widths=[4, 8, 16])
# One thread per process: the machine's cores are shared with other test runs and the other worker.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def tiny_spec(train_images: int = 512, **train) -> RunSpec:
    budget = {} if "iterations" in train else {"epochs": 4}
    recipe = {**budget, "batch_size": 32, "log_every": 1, "precision": "fp32", **train}
    return RunSpec(net=TINY_NET, data=DataSpec(synthetic_train=train_images, synthetic_test=64),
                   train=TrainSpec(**recipe))


def cli(home: Path, *args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "workbench", "--home", str(home), *args], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def cli_output(home: Path, *args: str) -> str:
    process = cli(home, *args)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    return out


def wait_for(predicate, timeout: float = 60.0, what: str = "condition", every: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie (an orphan's zombie may wait for a slow init to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def checkpoint(store: RunStore, run_id: int) -> Path:
    return store.run_dir(run_id) / "checkpoints" / "last.pt"


def stored_rows(store: RunStore, run_id: int) -> list[tuple[str, str, int]]:
    return [(row.split, row.name, row.iteration) for row in store.fetch_metrics_since({run_id: 0})[run_id].rows]


def assert_each_row_once(store: RunStore, run_id: int, total: int) -> None:
    rows = stored_rows(store, run_id)
    repeated = [key for key, count in collections.Counter(rows).items() if count > 1]
    assert not repeated, f"{len(repeated)} (split, name, iteration) stored more than once, e.g. {repeated[:3]}"
    assert sorted(i for split, name, i in rows if (split, name) == ("train", "error")) == list(range(1, total + 1))


def heartbeat_age(store: RunStore, run_id: int) -> float:
    from storage.schema import utc_now

    return (utc_now() - store.get_run(run_id).heartbeat_at).total_seconds()


def kill(process: subprocess.Popen) -> None:
    os.kill(process.pid, signal.SIGKILL)
    process.communicate(timeout=30)


@pytest.fixture
def store(tmp_path):
    with open_store(tmp_path) as opened:
        yield opened


@pytest.fixture
def db_store(tmp_path, db_url, monkeypatch):
    """A store on SQLite or PostgreSQL; the workbench commands the test starts use the same database."""
    if db_url:
        monkeypatch.setitem(ENV, "WORKBENCH_DATABASE_URL", db_url)
    with open_store(tmp_path, db=db_url) as opened:
        yield opened


# -- a standalone worker killed with SIGKILL ----------------------------------------------------------------


def test_worker_killed_before_its_first_checkpoint_restarts_from_the_beginning_with_each_row_once(db_store, tmp_path):
    store = db_store
    # 64 iterations per epoch and a budget of 40: the only checkpoint would be written at the very end.
    run_id = store.create_run(tiny_spec(train_images=1024, batch_size=16, iterations=40), name="early kill")
    worker = cli(tmp_path, "worker", "--exit-when-idle")
    wait_for(lambda: stored_rows(store, run_id).count(("train", "error", 3)), what="the first logged iterations")
    kill(worker)
    assert not checkpoint(store, run_id).exists()
    assert store.get_run(run_id).status == "running"

    # `resume` refuses a run whose worker may still be alive, then takes it once its heartbeat is stale.
    refused = cli(tmp_path, "resume", str(run_id), "--stale-after", "30")
    _, err = refused.communicate(timeout=60)
    assert refused.returncode == 2 and "is running and its worker is alive; cancel it first" in err
    wait_for(lambda: heartbeat_age(store, run_id) > 1.0, what="a stale heartbeat")
    message = cli_output(tmp_path, "resume", str(run_id), "--stale-after", "1")
    assert "restarts from the beginning" in message and "continues from" not in message

    worker = cli(tmp_path, "worker", "--exit-when-idle")
    _, err = worker.communicate(timeout=90)
    assert worker.returncode == 0, err
    run = store.get_run(run_id)
    assert run.status == "completed", run.error_message
    assert_each_row_once(store, run_id, 40)


def test_worker_killed_after_a_checkpoint_is_recovered_by_a_worker_started_inside_the_stale_window(db_store, tmp_path):
    store = db_store
    run_id = store.create_run(tiny_spec(), name="late kill")  # 16 iterations per epoch, 64 in all
    worker = cli(tmp_path, "worker", "--exit-when-idle")
    wait_for(lambda: checkpoint(store, run_id).exists(), what="the first checkpoint", every=0.02)
    kill(worker)
    assert store.get_run(run_id).status == "running", "the kill must land mid-run"

    # A new worker starts at once (the heartbeat is still fresh); it takes the run when it goes stale.
    rescuer = cli(tmp_path, "worker", "--stale-after", "2", "--auto-resume", "--worker-id", "rescuer")
    try:
        wait_for(lambda: store.get_run(run_id).status == "completed", timeout=90, what="the recovered run")
    finally:
        rescuer.send_signal(signal.SIGTERM)
        _, err = rescuer.communicate(timeout=30)
    assert rescuer.returncode == 0, err
    assert "stopped sending heartbeats" in err
    run = store.get_run(run_id)
    assert run.worker_id == "rescuer" and run.iteration == 64
    assert_each_row_once(store, run_id, 64)


def test_runs_marks_a_run_whose_worker_is_gone_as_interrupted(store, tmp_path):
    run_id = store.create_run(tiny_spec(), name="ghost")
    store.claim_run(run_id, "ghost-worker")
    listed = json.loads(cli_output(tmp_path, "runs", "--json", "--stale-after", "30"))
    assert [(r["id"], r["status"]) for r in listed] == [(run_id, "running")]
    time.sleep(0.3)
    listed = json.loads(cli_output(tmp_path, "runs", "--json", "--stale-after", "0.2"))
    assert [(r["id"], r["status"]) for r in listed] == [(run_id, "interrupted")]
    assert "worker ghost-worker stopped sending heartbeats" in listed[0]["error"]


# -- the app that started the workers dies ----------------------------------------------------------------

APP = textwrap.dedent("""
    import json, sys, time
    from storage import open_store
    from workbench.jobs import LocalExecutor
    from workbench.paths import database_url
    home = sys.argv[1]
    store = open_store(home)
    executor = LocalExecutor(store, db_url=database_url(store.home), workers=1, auto_resume=True,
                             stale_after_s=float(sys.argv[2]))
    executor.start()
    print(json.dumps(list(executor.worker_pids().values())), flush=True)
    time.sleep(600)
""")


def start_app(home: Path, stale_after_s: float = 15.0) -> tuple[subprocess.Popen, list[int]]:
    """A process that owns a LocalExecutor as the app does; returns it with its workers' pids."""
    with open(home / "app.log", "ab") as log:  # the app's workers write there too, even after it is gone
        app = subprocess.Popen([sys.executable, "-c", APP, str(home), str(stale_after_s)], cwd=ROOT, env=ENV,
                               stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True)
    return app, json.loads(app.stdout.readline())


def test_workers_stop_when_the_app_that_started_them_is_killed(store, tmp_path):
    run_id = store.create_run(tiny_spec(epochs=200), name="orphaned")
    app, pids = start_app(tmp_path)
    try:
        wait_for(lambda: store.get_run(run_id).iteration >= 2, what="training to start")
        os.kill(app.pid, signal.SIGKILL)
        killed = time.monotonic()
        wait_for(lambda: not any(alive(pid) for pid in pids), timeout=20, what="the workers to exit")
        assert time.monotonic() - killed < 10
    finally:
        os.killpg(app.pid, signal.SIGKILL)
        app.communicate(timeout=30)
    run = store.get_run(run_id)
    assert run.status == "interrupted", run.error_message
    assert checkpoint(store, run_id).exists() and run.checkpoint_path == str(checkpoint(store, run_id))
    assert 0 < run.iteration < run.total_iterations


def test_an_app_restarted_inside_the_stale_window_still_recovers_the_run(store, tmp_path):
    run_id = store.create_run(tiny_spec(), name="quick restart")
    app, _ = start_app(tmp_path)
    wait_for(lambda: checkpoint(store, run_id).exists(), what="the first checkpoint", every=0.02)
    os.killpg(app.pid, signal.SIGKILL)  # the app and its worker die at once: no checkpoint, no status change
    app.communicate(timeout=30)
    assert store.get_run(run_id).status == "running", "the kill must land mid-run"

    executor = LocalExecutor(store, db_url=database_url(tmp_path), workers=1, auto_resume=True, stale_after_s=3)
    executor.start()
    try:
        assert store.get_run(run_id).status == "running"  # still inside the stale window at start-up
        wait_for(lambda: store.get_run(run_id).status == "completed", timeout=90, what="the recovered run")
    finally:
        executor.shutdown()
    assert_each_row_once(store, run_id, 64)


def test_an_analysis_whose_worker_died_with_its_app_is_run_by_the_next_app(store, tmp_path):
    run_id = store.create_run(tiny_spec(iterations=4), name="trained")
    store.claim_run(run_id, "worker-a")
    assert execute_run(store, run_id, "worker-a") == "completed"
    analysis_id = store.create_analysis(run_id, "lesion", {"draws": 1, "max_k": 1, "limit_images": 32})
    store.claim_analysis(analysis_id, "worker-of-a-dead-app")  # taken, then the app and its worker died

    app, _ = start_app(tmp_path, stale_after_s=1)
    try:
        wait_for(lambda: store.get_analysis(analysis_id).status == "completed", timeout=90,
                 what="the analysis to be queued again and completed")
    finally:
        os.killpg(app.pid, signal.SIGKILL)
        app.communicate(timeout=30)
    analysis = store.get_analysis(analysis_id)
    assert analysis.worker_id.startswith("local-") and len(analysis.result["single"]) == 3


# -- cancel always works, writes that fail fail the run once -------------------------------------------------


def test_the_largest_budget_can_be_cancelled_and_deleted(store, tmp_path):
    run_id = store.create_run(tiny_spec(iterations=10_000_000), name="long")
    worker = cli(tmp_path, "worker", "--exit-when-idle")
    try:
        wait_for(lambda: store.get_run(run_id).iteration >= 2, what="progress to be reported")
        assert store.get_run(run_id).total_iterations == 10_000_000
        assert store.request_cancel(run_id) == "running"
        asked = time.monotonic()
        wait_for(lambda: store.get_run(run_id).status == "cancelled", timeout=20, what="the cancel")
        assert time.monotonic() - asked < 5
    finally:
        _, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err
    store.delete_run(run_id)
    with pytest.raises(RunNotFound):
        store.get_run(run_id)


def test_a_stored_run_with_an_absurd_budget_fails_with_the_bound_and_can_be_deleted(store, tmp_path):
    # A run stored before the spec had bounds: the worker refuses it with the bound's message.
    spec = tiny_spec().model_dump(mode="json")
    spec["train"] = {**spec["train"], "epochs": 1e30}
    run_id = store.create_run(spec, name="forever")
    worker = cli(tmp_path, "worker", "--exit-when-idle")
    _, err = worker.communicate(timeout=120)
    assert worker.returncode == 0, err
    run = store.get_run(run_id)
    assert run.status == "failed" and "epochs" in run.error_message and "OverflowError" not in err
    store.delete_run(run_id)
    with pytest.raises(RunNotFound):
        store.get_run(run_id)


def test_an_unwritable_run_folder_fails_the_run_once_with_the_path_and_the_worker_goes_on(store, tmp_path):
    broken = store.create_run(tiny_spec(epochs=1, train_images=256), name="nowhere to write")
    healthy = store.create_run(tiny_spec(epochs=1, train_images=256), name="healthy")
    # A regular file where the run folder should be: even root cannot create the checkpoints under it.
    store.run_dir(broken).parent.mkdir(parents=True, exist_ok=True)
    store.run_dir(broken).write_text("not a folder")
    worker = cli(tmp_path, "worker", "--exit-when-idle", "--worker-id", "solo")
    _, err = worker.communicate(timeout=90)
    assert worker.returncode == 0, err
    failed = store.get_run(broken)
    assert failed.status == "failed"
    assert str(store.run_dir(broken)) in failed.error_message and "Not a directory" in failed.error_message
    assert err.count(f"run {broken} failed") == 1
    done = store.get_run(healthy)
    assert done.status == "completed" and done.worker_id == "solo"


# -- in-process: a store that fails for a while ----------------------------------------------------------


class FlakyStore(RunStore):
    """A real store whose chosen methods raise a database error the first `failures` times."""

    def __init__(self, store: RunStore, **failures: int) -> None:
        super().__init__(store.engine, store.home)
        self.failures = dict(failures)
        self.calls = collections.Counter()

    def _maybe_fail(self, name: str) -> None:
        self.calls[name] += 1
        if self.failures.get(name, 0) > 0:
            self.failures[name] -= 1
            raise OperationalError("UPDATE runs", {}, Exception("database or disk is full"))

    def claim_next_run(self, *args, **kwargs):
        self._maybe_fail("claim_next_run")
        return super().claim_next_run(*args, **kwargs)

    def transition(self, *args, **kwargs):
        self._maybe_fail("transition")
        return super().transition(*args, **kwargs)

    def heartbeat(self, run_id, worker_id, **progress):
        if any(value is not None for value in progress.values()):
            self._maybe_fail("heartbeat_with_progress")
        return super().heartbeat(run_id, worker_id, **progress)


def test_a_worker_survives_a_store_it_cannot_write_for_a_while(store):
    flaky = FlakyStore(store, claim_next_run=2)
    assert run_worker(flaky, "patient", exit_when_idle=True, poll_s=0.01) == 0
    assert flaky.calls["claim_next_run"] == 3


def test_the_end_of_a_run_is_recorded_once_the_store_can_be_written_again(store):
    run_id = store.create_run(tiny_spec(iterations=2, train_images=64), name="retried")
    flaky = FlakyStore(store, transition=2)
    flaky.claim_run(run_id, "w")
    assert execute_run(flaky, run_id, "w") == "completed"
    assert flaky.calls["transition"] == 3 and store.get_run(run_id).status == "completed"


def test_cancel_is_read_even_when_progress_cannot_be_written(store):
    run_id = store.create_run(tiny_spec(), name="stuck progress")
    flaky = FlakyStore(store, heartbeat_with_progress=10**6)
    flaky.claim_run(run_id, "w")
    sink = StoreSink(flaky, run_id, "w", shutdown=threading.Event(), heartbeat_s=0.05).start()
    try:
        sink.progress({"iteration": 3, "total_iterations": 10})
        store.request_cancel(run_id)
        wait_for(sink.should_stop, timeout=5, what="the cancel to be read", every=0.02)
    finally:
        sink.close()
    assert sink.cancel_requested and flaky.calls["heartbeat_with_progress"] >= 1


def test_resume_says_what_happens_or_why_it_cannot(store):
    service = Workbench(store, QueueExecutor(store, stale_after_s=60))
    queued = store.create_run(tiny_spec(), name="waiting")
    with pytest.raises(WorkbenchError, match="already queued"):
        service.resume(queued)

    running = store.create_run(tiny_spec(), name="alive")
    store.claim_run(running, "worker-alive")
    with pytest.raises(WorkbenchError, match="its worker is alive; cancel it first"):
        service.resume(running)

    store.transition(running, "completed", worker_id="worker-alive")
    with pytest.raises(WorkbenchError, match="completed its budget; to train it further, fine-tune"):
        service.resume(running)

    interrupted = store.create_run(tiny_spec(), name="stopped")
    store.claim_run(interrupted, "worker-gone")
    store.transition(interrupted, "interrupted", worker_id="worker-gone")
    assert "restarts from the beginning" in service.resume(interrupted)
    store.claim_run(interrupted, "worker-b")
    store.transition(interrupted, "interrupted", worker_id="worker-b")
    checkpoint(store, interrupted).parent.mkdir(parents=True)
    checkpoint(store, interrupted).write_bytes(b"state")
    assert service.resume(interrupted) == f"Run #{interrupted} queued again; it continues from its last checkpoint."
