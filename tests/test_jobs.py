"""Background jobs with real worker processes and a real SQLite file."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from storage import open_store
from workbench import load_model
from workbench.jobs import LocalExecutor
from workbench.paths import database_url
from workbench.spec import DataSpec, NetSpec, RunSpec, TrainSpec

ROOT = Path(__file__).resolve().parents[1]
TINY_NET = NetSpec(name="tiny", blocks=[1, 1, 1], widths=[4, 8, 16])


def tiny_spec(**train) -> RunSpec:
    recipe = {"epochs": 2, "batch_size": 32, "log_every": 1, "precision": "fp32", **train}
    return RunSpec(net=TINY_NET, data=DataSpec(synthetic_train=256, synthetic_test=64), train=TrainSpec(**recipe))


def cli(home: Path, *args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "workbench", "--home", str(home), *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def wait_for(predicate, timeout: float = 120.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def train_iterations(store, run_id: int) -> list[int]:
    rows = store.fetch_metrics_since({run_id: 0}, names=["error"])[run_id].rows
    return [row.iteration for row in rows if row.split == "train"]


@pytest.fixture
def store(tmp_path):
    with open_store(tmp_path) as opened:
        yield opened


def test_worker_takes_queued_runs_to_completed_with_metrics(store, tmp_path):
    first = store.create_run(tiny_spec(), name="first")
    second = store.create_run(tiny_spec(epochs=1), name="second")
    worker = cli(tmp_path, "worker", "--exit-when-idle")
    out, err = worker.communicate(timeout=300)
    assert worker.returncode == 0, err
    for run_id, iterations in ((first, 16), (second, 8)):
        run = store.get_run(run_id)
        assert run.status == "completed", run.error_message
        assert run.iteration == run.total_iterations == iterations
        assert run.best_test_error is not None and run.finished_at is not None
        assert train_iterations(store, run_id) == list(range(1, iterations + 1))
        assert Path(run.checkpoint_path).exists()


def test_cancel_stops_a_running_run_with_a_checkpoint(store, tmp_path):
    run_id = store.create_run(tiny_spec(epochs=200), name="long")
    worker = cli(tmp_path, "worker", "--exit-when-idle")
    try:
        wait_for(lambda: store.get_run(run_id).iteration >= 3, what="training to start")
        store.request_cancel(run_id)
        asked = time.monotonic()
        wait_for(lambda: store.get_run(run_id).status == "cancelled", timeout=30, what="cancel")
        assert time.monotonic() - asked < 5
        run = store.get_run(run_id)
        assert 0 < run.iteration < run.total_iterations
        assert (store.run_dir(run_id) / "checkpoints" / "last.pt").exists()
    finally:
        worker.communicate(timeout=60)
    assert worker.returncode == 0


def test_a_failing_run_does_not_take_the_worker_down(store, tmp_path):
    broken = tiny_spec().model_copy(update={"data": DataSpec(name="folder", path=str(tmp_path / "missing"))})
    failing = store.create_run(broken, name="broken data")
    healthy = store.create_run(tiny_spec(epochs=1), name="healthy")
    worker = cli(tmp_path, "worker", "--exit-when-idle", "--worker-id", "solo")
    _, err = worker.communicate(timeout=300)
    assert worker.returncode == 0, err
    failed = store.get_run(failing)
    assert failed.status == "failed"
    assert "missing" in failed.error_message and "Traceback" in failed.traceback
    done = store.get_run(healthy)
    assert done.status == "completed" and done.worker_id == "solo"


def test_killed_worker_leaves_an_interrupted_run_that_resumes_with_every_iteration_once(store, tmp_path):
    # Long enough that the kill lands mid-run even on an idle machine (about 100 iterations/s).
    run_id = store.create_run(tiny_spec(epochs=30), name="survivor")
    executor = LocalExecutor(store, db_url=database_url(tmp_path), workers=1)
    executor.start()
    try:
        # Kill after the first epoch's checkpoint, in the middle of the second epoch.
        wait_for(lambda: store.get_run(run_id).iteration >= 11, what="training past the first checkpoint")
        (pid,) = executor.worker_pids().values()
        os.kill(pid, signal.SIGKILL)
        interrupted = wait_for(lambda: store.get_run(run_id).status == "interrupted", timeout=30,
                               what="the run to be marked interrupted")
        assert interrupted
        assert "died" in store.get_run(run_id).error_message
        wait_for(lambda: len(executor.worker_pids()) == 1 and pid not in executor.worker_pids().values(),
                 timeout=30, what="a replacement worker")
        executor.resume(run_id)
        wait_for(lambda: store.get_run(run_id).status == "completed", timeout=300, what="the resumed run")
    finally:
        executor.shutdown()
    assert train_iterations(store, run_id) == sorted(set(train_iterations(store, run_id)))
    assert train_iterations(store, run_id) == list(range(1, 241))


def test_shutdown_interrupts_running_runs_so_they_can_resume(store, tmp_path):
    run_id = store.create_run(tiny_spec(epochs=200), name="long")
    executor = LocalExecutor(store, db_url=database_url(tmp_path), workers=1)
    executor.start()
    try:
        wait_for(lambda: store.get_run(run_id).iteration >= 2, what="training to start")
    finally:
        executor.shutdown()
    assert store.get_run(run_id).status == "interrupted"


def test_cli_train_runs_and_lists_the_run(tmp_path):
    train = cli(tmp_path, "train", "--preset", "resnet20", "--iterations", "2", "--batch-size", "16",
                "--log-every", "1", "--precision", "fp32")
    out, err = train.communicate(timeout=300)
    assert train.returncode == 0, err
    run_id = int(out.splitlines()[0].removeprefix("run "))
    listing = cli(tmp_path, "runs", "--json")
    out, err = listing.communicate(timeout=60)
    runs = json.loads(out)
    assert [(r["id"], r["status"], r["progress"]) for r in runs] == [(run_id, "completed", 1.0)]
    assert {"id", "name", "status", "progress", "best_test_error"} <= set(runs[0])

    bundle = tmp_path / "model.zip"
    export = cli(tmp_path, "export", str(run_id), "--format", "bundle", "--checkpoint", "last", "-o", str(bundle))
    out, err = export.communicate(timeout=120)
    assert export.returncode == 0, err
    model = load_model(bundle)
    assert model.spec.depth == 20 and model.metadata["run_id"] == run_id
    with open_store(tmp_path) as store:
        assert [Path(a.path).name for a in store.list_artifacts(run_id, kind="export")] == ["model.zip"]
    missing = cli(tmp_path, "export", "999", "--format", "onnx", "-o", str(tmp_path / "x.onnx"))
    _, err = missing.communicate(timeout=60)
    assert missing.returncode == 2 and "999" in err and "Traceback" not in err


def test_on_start_runs_left_running_by_a_dead_session_resume_automatically(store, tmp_path):
    run_id = store.create_run(tiny_spec(epochs=1), name="orphan")
    store.claim_run(run_id, "worker-of-a-crashed-app")
    time.sleep(1.0)
    executor = LocalExecutor(store, db_url=database_url(tmp_path), workers=1, auto_resume=True, stale_after_s=0.5)
    executor.start()
    try:
        wait_for(lambda: store.get_run(run_id).status == "completed", timeout=300, what="the orphaned run")
    finally:
        executor.shutdown()
    assert store.get_run(run_id).worker_id != "worker-of-a-crashed-app"
