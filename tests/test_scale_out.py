"""Scale-out with real parts: a loopback Ray head, a PostgreSQL store, workers inside Ray jobs, the headless
dispatcher (a TPE sweep too), jobs that fail or vanish, the shared-home check, and the Runs tab in Chromium."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from clusters import new_postgres_database
from gradio_page import pick_runs
from sqlalchemy import select, text
from test_jobs import ROOT, tiny_spec, train_iterations, wait_for
from test_sweeps import sweep_of
from test_ui_browser import expect, open_tab, status_cells

from storage import open_store
from storage.store import artifacts
from workbench.jobs import QueueExecutor
from workbench.jobs.ray_executor import RayExecutor, submission_id
from workbench.paths import HOME_MARKER, SharedHomeError, check_shared_home, mark_shared_home
from workbench.service import Workbench

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def cluster_store(tmp_path, postgres_server, request):
    """A store on a fresh PostgreSQL database whose run ids no other test uses (all share one Ray head, where a
    submission id names one job)."""
    url = new_postgres_database(postgres_server)
    with open_store(tmp_path / "home", db=url) as store:
        first_id = 1000 * (1 + sum(map(ord, request.node.name)) % 100_000)
        with store.engine.begin() as conn:
            conn.execute(text(f"ALTER SEQUENCE runs_id_seq RESTART WITH {first_id}"))
        yield store, url


def ray_executor(store, url: str, address: str, **options) -> RayExecutor:
    return RayExecutor(store, address=address, db_url=url, poll_s=0.5, **options)


def train_then_stop_dispatching(store, url: str, address: str, run_id: int, **options):
    """Dispatch until the run's Ray job has trained a few iterations, then stop dispatching (the job goes on);
    returns the run as it was then."""
    dispatcher = ray_executor(store, url, address, **options)
    dispatcher.start()
    try:
        return wait_for(lambda: (run := store.get_run(run_id)).iteration >= 3 and run, timeout=180,
                        what="the Ray job to train")
    finally:
        dispatcher.shutdown()


def dispatch_until_idle(store, url: str, address: str) -> None:
    """Run `workbench dispatch --executor ray --exit-when-idle` on the store until it exits."""
    dispatcher = subprocess.run(
        [sys.executable, "-m", "workbench", "--home", str(store.home), "--db", url, "dispatch", "--executor", "ray",
         "--ray-address", address, "--exit-when-idle"],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )
    assert dispatcher.returncode == 0, dispatcher.stderr[-3000:]


def jobs_named(address: str, job_id: str) -> list:
    from ray.job_submission import JobSubmissionClient

    return [job for job in JobSubmissionClient(address).list_jobs() if job.submission_id == job_id]


def worker_pid(run) -> int:
    """The pid in a Ray worker's id, "workbench-run-7@host:pid" (the job runs on this machine)."""
    return int(run.worker_id.rsplit(":", 1)[1])


def test_a_twin_dispatched_through_ray_completes_with_one_job_per_run(cluster_store, ray_head):
    store, url = cluster_store
    twin = [store.create_run(tiny_spec(epochs=1), name=name, group_name="twin", group_kind="twin")
            for name in ("plain", "residual")]
    dispatch_until_idle(store, url, ray_head)
    for run_id in twin:
        run = store.get_run(run_id)
        assert run.status == "completed", run.error_message
        assert run.job_id == submission_id(run_id) == f"workbench-run-{run_id}"
        assert run.worker_id.startswith(f"workbench-run-{run_id}@")
        assert train_iterations(store, run_id) == list(range(1, 9))
        assert Path(run.checkpoint_path).is_file()
        assert [job.status for job in jobs_named(ray_head, run.job_id)] == ["SUCCEEDED"]
    with store.engine.connect() as conn:
        stored = list(conn.scalars(select(artifacts.c.path)))
    assert stored and not any(path.startswith("/") for path in stored), "artifact paths are stored home-relative"

    executor = ray_executor(store, url, ray_head)
    executor.start()
    try:
        log = Workbench(store, executor).job_log(twin[0])
    finally:
        executor.shutdown()
    assert f"took run {twin[0]}" in log and f"run {twin[0]} completed" in log


def test_a_restarted_dispatcher_reattaches_and_its_stop_cancels_the_run_with_a_checkpoint(cluster_store, ray_head):
    store, url = cluster_store
    run_id = store.create_run(tiny_spec(epochs=300), name="long")
    started = train_then_stop_dispatching(store, url, ray_head, run_id)
    second = ray_executor(store, url, ray_head)
    second.start()
    try:
        time.sleep(2.0)  # a few passes of the new dispatcher
        now = store.get_run(run_id)
        assert (now.status, now.worker_id, now.started_at) == ("running", started.worker_id, started.started_at)
        assert [job.status for job in jobs_named(ray_head, started.job_id)] == ["RUNNING"], "no second job"
        assert second.cancel(run_id) == "running"
        cancelled = wait_for(lambda: (run := store.get_run(run_id)).status == "cancelled" and run, timeout=60,
                             what="the stopped job to cancel its run")
    finally:
        second.shutdown()
    assert 0 < cancelled.iteration < cancelled.total_iterations
    assert Path(cancelled.checkpoint_path).is_file()
    wait_for(lambda: jobs_named(ray_head, started.job_id)[0].status == "STOPPED", timeout=30, what="job stopped")


def test_a_killed_job_process_leaves_its_run_interrupted_with_the_log_tail(cluster_store, ray_head):
    store, url = cluster_store
    run_id = store.create_run(tiny_spec(epochs=300), name="doomed")
    executor = ray_executor(store, url, ray_head)
    executor.start()
    try:
        running = wait_for(lambda: (run := store.get_run(run_id)).iteration >= 2 and run, timeout=180,
                           what="the Ray job to train")
        os.kill(worker_pid(running), signal.SIGKILL)
        interrupted = wait_for(lambda: (run := store.get_run(run_id)).status == "interrupted" and run, timeout=60,
                               what="the run to be marked interrupted")
    finally:
        executor.shutdown()
    assert f"Ray job workbench-run-{run_id} ended FAILED" in interrupted.error_message
    assert f"took run {run_id}" in interrupted.error_message, "the message carries the tail of the job's log"


def test_a_job_the_cluster_forgot_while_no_dispatcher_ran_leaves_its_run_interrupted_with_the_log_tail(
        cluster_store, ray_head):
    from ray.job_submission import JobSubmissionClient

    store, url = cluster_store
    run_id = store.create_run(tiny_spec(epochs=300), name="forgotten")
    # Heartbeats stay fresh for the whole test: the job check, not the stale-heartbeat check, must end the run.
    running = train_then_stop_dispatching(store, url, ray_head, run_id, stale_after_s=600)
    os.kill(worker_pid(running), signal.SIGKILL)
    wait_for(lambda: jobs_named(ray_head, running.job_id)[0].status == "FAILED", timeout=60, what="the job to fail")
    JobSubmissionClient(ray_head).delete_job(running.job_id)  # as a restarted head forgets its jobs, logs included
    assert store.get_run(run_id).status == "running"

    second = ray_executor(store, url, ray_head, stale_after_s=600)
    second.start()  # its first pass runs before start returns
    try:
        interrupted = store.get_run(run_id)
        log = Workbench(store, second).job_log(run_id)
    finally:
        second.shutdown()
    assert interrupted.status == "interrupted"
    assert interrupted.error_message.startswith(f"Ray job {running.job_id} is gone from the cluster at {ray_head}")
    assert f"worker {running.worker_id} took run {run_id}" in interrupted.error_message, \
        "the tail of the log its worker kept on the shared home"
    assert "its workers' log kept in" in log and f"took run {run_id}" in log


def test_a_run_asking_for_a_gpu_the_cluster_lacks_waits_with_a_message_and_cancels(cluster_store, ray_head):
    store, url = cluster_store
    run_id = store.create_run(tiny_spec(device="cuda"), name="needs a gpu")
    executor = ray_executor(store, url, ray_head)
    executor.start()
    try:
        waiting = wait_for(lambda: (run := store.get_run(run_id)).error_message and run, timeout=60,
                           what="the waiting message")
        assert waiting.status == "queued"
        assert waiting.error_message == f"waiting for a node with 1 GPU and 1 CPU (Ray job workbench-run-{run_id} " \
                                        "is pending)"
        assert executor.cancel(run_id) == "cancelled"
        time.sleep(1.5)  # a few passes of the dispatcher: the pending job is left alone, the run stays cancelled
        assert store.get_run(run_id).status == "cancelled"
        assert [job.status for job in jobs_named(ray_head, waiting.job_id)] == ["PENDING"]
    finally:
        executor.shutdown()


def test_a_node_that_does_not_see_the_shared_home_fails_the_run_naming_the_path(cluster_store, ray_head):
    store, url = cluster_store
    executor = ray_executor(store, url, ray_head)
    executor.start()
    try:
        (store.home / HOME_MARKER).unlink()  # as on a node where the shared file system is not mounted
        run_id = store.create_run(tiny_spec(), name="homeless")
        failed = wait_for(lambda: (run := store.get_run(run_id)).status == "failed" and run, timeout=120,
                          what="the run to fail")
    finally:
        executor.shutdown()
    assert failed.error_message.startswith(f"Ray job workbench-run-{run_id} ended FAILED")
    assert f"the home folder {store.home}" in failed.error_message, "the tail of the job's log"
    assert failed.error_message.endswith("the run never started")
    assert "mount the shared home folder at the same path on every node" in failed.error_message
    assert failed.iteration == 0


def test_the_runs_tab_shows_where_a_ray_run_executed_its_job_log_and_why_another_waits(cluster_store, ray_head,
                                                                                        serve_workbench, page):
    store, url = cluster_store
    served = serve_workbench(store.home, "--db", url, "--executor", "ray", "--ray-address", ray_head)
    run_id = store.create_run(tiny_spec(epochs=1), name="from the app")
    waiting_id = store.create_run(tiny_spec(device="cuda"), name="needs a gpu")
    done = wait_for(lambda: (run := store.get_run(run_id)).status == "completed" and run, timeout=180,
                    what="the run to complete through the app's Ray executor")
    waiting = f"waiting for a node with 1 GPU and 1 CPU (Ray job workbench-run-{waiting_id} is pending)"

    page.goto(served.url)
    open_tab(page, "Runs")
    expect()(status_cells(page, f"queued: {waiting}")).to_have_count(1)
    pick_runs(page, "run-picker", store, run_id)
    details = page.locator("#run-details")
    expect()(details).to_contain_text(f"Executes on: {done.worker_id}")
    expect()(details).to_contain_text(f"Cluster job: {done.job_id}")
    page.get_by_text("Job log", exact=True).click()
    page.locator("#show-job-log").click()
    expect()(page.locator("#job-log")).to_contain_text(f"took run {run_id}")

    pick_runs(page, "run-picker", store, waiting_id)
    expect()(details).to_contain_text(f"Message: {waiting}")
    page.locator("#cancel-run").click()
    expect()(details).to_contain_text("Status: cancelled")
    assert store.get_run(waiting_id).status == "cancelled"


def test_a_tpe_sweep_completes_through_the_ray_dispatcher_on_postgresql(cluster_store, ray_head):
    store, url = cluster_store
    sweep = sweep_of("lr=0.01..0.3 log", epochs=1, method="tpe", trials=3, parallel=2)
    bench = Workbench(store, QueueExecutor(store))
    group, first = bench.launch_sweep(sweep)
    assert len(first) == 2
    dispatch_until_idle(store, url, ray_head)
    trials = store.list_runs(group_name=group)
    assert len(trials) == 3 and {run.status for run in trials} == {"completed"}, \
        [(run.status, run.error_message) for run in trials]
    assert {run.job_id for run in trials} == {submission_id(run.id) for run in trials}
    assert store.get_sweep(group).finished_at is not None
    report = bench.sweep_report(group)
    assert report.finished and report.best.value == min(run.last_test_error for run in trials)


def test_dispatch_with_local_workers_serves_the_queue_and_exits_when_idle(tmp_path):
    with open_store(tmp_path) as store:
        run_id = store.create_run(tiny_spec(epochs=1), name="local")
    dispatcher = subprocess.run(
        [sys.executable, "-m", "workbench", "--home", str(tmp_path), "dispatch", "--workers", "1", "--exit-when-idle"],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )
    assert dispatcher.returncode == 0, dispatcher.stderr[-3000:]
    with open_store(tmp_path) as store:
        assert store.get_run(run_id).status == "completed"


def test_dispatch_with_ray_and_no_address_says_what_to_pass(tmp_path):
    dispatcher = subprocess.run([sys.executable, "-m", "workbench", "--home", str(tmp_path), "dispatch", "--executor",
                                 "ray"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert dispatcher.returncode == 2
    assert "--executor ray needs --ray-address URL" in dispatcher.stderr


def test_the_shared_home_check_names_the_path_and_creates_nothing(tmp_path):
    home = tmp_path / "home"
    with pytest.raises(SharedHomeError, match=f"the home folder {home} does not exist on node .*mount the shared"):
        check_shared_home(home, "any")
    assert not home.exists()
    home.mkdir()
    with pytest.raises(SharedHomeError, match=f"{home} .* has no readable {HOME_MARKER}"):
        check_shared_home(home, "any")
    marked = mark_shared_home(home)
    assert mark_shared_home(home) == marked, "the marker is written once"
    assert check_shared_home(home, marked) == home
    with pytest.raises(SharedHomeError, match="another folder than the dispatcher's"):
        check_shared_home(home, "another home's id")
