"""RunStore API on a real SQLite file and a real PostgreSQL database: runs, statuses, metrics, artifacts, analyses,
deletion."""

from __future__ import annotations

import hashlib
import math
import time
from datetime import UTC, timedelta
from itertools import product
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import text, update
from sqlalchemy.exc import StatementError

from storage import (
    ALL_STATUSES,
    ALLOWED_TRANSITIONS,
    CANCELLED,
    COMPLETED,
    FAILED,
    INTERRUPTED,
    METRIC_FIELDS,
    QUEUED,
    RUNNING,
    RunStore,
    open_store,
)
from storage.schema import utc_now
from storage.store import runs
from workbench.errors import IllegalTransition, RunNotFound, StoreError
from workbench.paths import runs_dir

SPEC = {"net": {"preset": "resnet20", "depth": 20}, "data": {"name": "cifar10"}, "train": {"epochs": 1}}


@pytest.fixture
def store(tmp_path, db_url) -> RunStore:
    opened = open_store(tmp_path / "home", db=db_url)
    yield opened
    opened.close()


def metric_rows(count: int, *, start: int = 0, name: str = "loss", split: str = "train") -> list[dict]:
    return [
        {"iteration": start + i, "split": split, "name": name, "value": 1.0 / (start + i + 1)} for i in range(count)
    ]


def put_in_status(store: RunStore, run_id: int, status: str) -> None:
    """Walk a fresh queued run to `status` through legal moves only."""
    if status == QUEUED:
        return
    if status == CANCELLED:
        store.transition(run_id, CANCELLED)
        return
    store.claim_run(run_id, "worker-a")
    if status != RUNNING:
        store.transition(run_id, status, worker_id="worker-a")


# -- creating, reading, editing -----------------------------------------------------------------


def test_create_and_get_run_keeps_every_field(store):
    run_id = store.create_run(
        SPEC,
        name="  ResNet-20  ",
        group_name="fig6",
        group_kind="twin",
        preset="resnet20",
        dataset="cifar10",
        total_iterations=64000,
        notes="first try",
        tags=["paper", "paper", " cifar "],
    )
    run = store.get_run(run_id)
    assert run.id == run_id
    assert run.name == "ResNet-20"
    assert run.spec == SPEC
    assert (run.group_name, run.group_kind, run.preset, run.dataset) == ("fig6", "twin", "resnet20", "cifar10")
    assert run.status == QUEUED
    assert run.total_iterations == 64000 and run.iteration == 0
    assert run.notes == "first try" and run.tags == ["paper", "cifar"]
    assert run.cancel_requested is False
    assert run.created_at.tzinfo is UTC
    assert abs(run.created_at - utc_now()) < timedelta(seconds=30)


def test_create_run_accepts_a_pydantic_model(store):
    pydantic = pytest.importorskip("pydantic")

    class Spec(pydantic.BaseModel):
        depth: int
        lr: float

    run_id = store.create_run(Spec(depth=56, lr=0.1), name="from model")
    assert store.get_run(run_id).spec == {"depth": 56, "lr": 0.1}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "   "}, "cannot be empty"),
        ({"name": "x" * 201}, "at most 200"),
        ({"name": "ok", "group_kind": "pyramid"}, "group kind 'pyramid' is unknown"),
        ({"name": "ok", "status": RUNNING}, "cannot start as 'running'"),
        ({"name": "ok", "tags": "paper"}, "list of strings"),
    ],
)
def test_create_run_rejects_bad_input_with_a_message(store, kwargs, message):
    with pytest.raises(StoreError, match=message):
        store.create_run(SPEC, **kwargs)


def test_create_run_rejects_specs_that_are_not_json(store):
    with pytest.raises(StoreError, match="run spec cannot be stored as JSON"):
        store.create_run({"lr": float("nan")}, name="nan spec")
    with pytest.raises(StoreError, match="run spec cannot be stored as JSON"):
        store.create_run({"shape": {1, 2}}, name="set spec")


def test_get_missing_run_names_it(store):
    with pytest.raises(RunNotFound, match="run 404 does not exist"):
        store.get_run(404)


def test_list_runs_filters_and_orders_newest_first(store):
    ladder = [store.create_run(SPEC, name=f"resnet{d}", group_name="ladder", group_kind="ladder") for d in (20, 32)]
    plain = store.create_run(SPEC, name="plain-20", preset="plain20", notes="100% baseline")
    store.claim_run(ladder[0], "w")

    assert [run.id for run in store.list_runs()] == [plain, ladder[1], ladder[0]]
    assert [run.id for run in store.list_runs(status=RUNNING)] == [ladder[0]]
    assert [run.id for run in store.list_runs(status=[QUEUED, RUNNING], group_name="ladder")] == ladder[::-1]
    assert [run.id for run in store.list_runs(search="RESNET3")] == [ladder[1]]
    assert [run.id for run in store.list_runs(search="plain2")] == [plain]
    assert [run.id for run in store.list_runs(search="100%")] == [plain]
    assert store.list_runs(search="_") == []
    assert [run.id for run in store.list_runs(limit=1, offset=1)] == [ladder[1]]
    assert store.list_groups() == [("ladder", "ladder")]


def test_rename_notes_and_tags(store):
    run_id = store.create_run(SPEC, name="before")
    store.rename_run(run_id, "after")
    store.set_notes(run_id, "lr too high?")
    store.set_tags(run_id, ["b", "a", "b"])
    run = store.get_run(run_id)
    assert (run.name, run.notes, run.tags) == ("after", "lr too high?", ["b", "a"])
    with pytest.raises(RunNotFound):
        store.rename_run(999, "ghost")


def test_run_ids_are_never_reused_after_delete(store):
    first = store.create_run(SPEC, name="one")
    store.delete_run(first)
    assert store.create_run(SPEC, name="two") > first


def test_parent_run_lineage(store):
    parent = store.create_run(SPEC, name="parent", status=COMPLETED)
    child = store.create_run(SPEC, name="fine-tune", parent_run_id=parent)
    assert store.get_run(child).parent_run_id == parent
    assert store.get_run(parent).finished_at is not None
    with pytest.raises(RunNotFound, match="parent run 999"):
        store.create_run(SPEC, name="orphan", parent_run_id=999)
    store.delete_run(parent)
    assert store.get_run(child).parent_run_id is None


# -- statuses -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("source", "target"), list(product(ALL_STATUSES, ALL_STATUSES)))
def test_every_transition_is_allowed_or_refused_by_the_table(store, source, target):
    run_id = store.create_run(SPEC, name=f"{source} to {target}")
    put_in_status(store, run_id, source)
    if target in ALLOWED_TRANSITIONS[source]:
        moved = store.transition(run_id, target, worker_id="worker-a")
        assert moved.status == target
    else:
        with pytest.raises(IllegalTransition, match=f"cannot go from {source} to {target}"):
            store.transition(run_id, target, worker_id="worker-a")
        assert store.get_run(run_id).status == source


def test_lifecycle_sets_times_worker_and_clears_on_requeue(store):
    run_id = store.create_run(SPEC, name="life")
    claimed = store.claim_next_run("worker-a", device="cuda:0")
    assert claimed.id == run_id
    assert (claimed.status, claimed.worker_id, claimed.device) == (RUNNING, "worker-a", "cuda:0")
    assert claimed.started_at is not None and claimed.heartbeat_at is not None and claimed.finished_at is None

    failed = store.transition(
        run_id,
        FAILED,
        worker_id="worker-a",
        error_message="CUDA out of memory; lower the batch size",
        traceback="Traceback ...",
        iteration=120,
        checkpoint_path="/ckpt",
    )
    assert failed.finished_at is not None and failed.iteration == 120
    assert failed.error_message.startswith("CUDA out of memory")

    retried = store.transition(run_id, QUEUED)
    assert retried.status == QUEUED
    assert (retried.worker_id, retried.error_message, retried.traceback, retried.finished_at) == (None,) * 4
    assert retried.checkpoint_path == "/ckpt" and retried.iteration == 120


def test_only_the_holding_worker_moves_a_running_run(store):
    run_id = store.create_run(SPEC, name="held")
    store.claim_run(run_id, "worker-a")
    with pytest.raises(IllegalTransition, match="running under worker worker-a, not worker-b"):
        store.transition(run_id, COMPLETED, worker_id="worker-b")
    assert store.transition(run_id, COMPLETED, worker_id="worker-a").status == COMPLETED


def test_claim_needs_a_queued_run(store):
    run_id = store.create_run(SPEC, name="once")
    store.claim_run(run_id, "worker-a")
    with pytest.raises(IllegalTransition, match="cannot go from running to running"):
        store.claim_run(run_id, "worker-b")
    with pytest.raises(StoreError, match="needs a worker id"):
        store.transition(run_id, RUNNING)
    with pytest.raises(RunNotFound):
        store.claim_run(999, "worker-a")
    assert store.claim_next_run("worker-b") is None


def test_claim_next_takes_the_oldest_queued_run(store):
    ids = [store.create_run(SPEC, name=f"r{i}") for i in range(3)]
    store.transition(ids[0], CANCELLED)
    assert store.claim_next_run("w").id == ids[1]
    assert store.claim_next_run("w").id == ids[2]
    assert store.claim_next_run("w") is None


def test_transition_rejects_unknown_status_and_fields(store):
    run_id = store.create_run(SPEC, name="x")
    with pytest.raises(StoreError, match="status 'paused' is unknown"):
        store.transition(run_id, "paused")
    with pytest.raises(TypeError, match="cannot store: status_code"):
        store.transition(run_id, CANCELLED, status_code=3)
    with pytest.raises(TypeError, match="cannot store: iteration"):
        store.transition(run_id, RUNNING, worker_id="w", iteration=3)
    assert store.transition(run_id, RUNNING, worker_id="w", device="cuda:1").device == "cuda:1"
    with pytest.raises(RunNotFound):
        store.transition(999, CANCELLED)


def test_heartbeat_records_progress_and_reports_cancel(store):
    run_id = store.create_run(SPEC, name="beat")
    first_beat = store.claim_run(run_id, "worker-a").heartbeat_at
    time.sleep(0.01)
    assert (
        store.heartbeat(run_id, "worker-a", iteration=10, total_iterations=100, epoch=0.5, images_per_s=900.0) is False
    )
    run = store.get_run(run_id)
    assert (run.iteration, run.total_iterations, run.epoch, run.images_per_s) == (10, 100, 0.5, 900.0)
    assert run.heartbeat_at > first_beat

    assert store.request_cancel(run_id) == RUNNING
    assert store.is_cancel_requested(run_id) is True
    assert store.heartbeat(run_id, "worker-a", iteration=11) is True
    assert store.transition(run_id, CANCELLED, worker_id="worker-a").status == CANCELLED


def test_heartbeat_from_a_worker_that_lost_the_run_is_refused(store):
    run_id = store.create_run(SPEC, name="lost")
    store.claim_run(run_id, "worker-a")
    with pytest.raises(IllegalTransition, match="no longer running under worker worker-b"):
        store.heartbeat(run_id, "worker-b")
    store.transition(run_id, INTERRUPTED)
    with pytest.raises(IllegalTransition, match="it is interrupted"):
        store.heartbeat(run_id, "worker-a")
    with pytest.raises(RunNotFound):
        store.heartbeat(999, "worker-a")


def test_request_cancel_by_status(store):
    queued = store.create_run(SPEC, name="queued")
    assert store.request_cancel(queued) == CANCELLED
    assert store.get_run(queued).status == CANCELLED
    with pytest.raises(IllegalTransition, match="is cancelled; only queued or running runs can be cancelled"):
        store.request_cancel(queued)
    with pytest.raises(RunNotFound):
        store.request_cancel(999)
    with pytest.raises(RunNotFound):
        store.is_cancel_requested(999)
    requeued = store.transition(queued, QUEUED)
    assert requeued.cancel_requested is False


def test_stale_runs_are_found_and_marked_interrupted(store):
    stale, fresh = (store.create_run(SPEC, name=n) for n in ("stale", "fresh"))
    store.claim_run(stale, "worker-dead")
    store.claim_run(fresh, "worker-alive")
    with store._writer.begin() as conn:
        conn.execute(update(runs).where(runs.c.id == stale).values(heartbeat_at=utc_now() - timedelta(minutes=10)))
    assert [run.id for run in store.find_stale_runs(60)] == [stale]
    assert store.mark_stale_interrupted(60) == [stale]
    run = store.get_run(stale)
    assert run.status == INTERRUPTED
    assert "worker worker-dead stopped sending heartbeats" in run.error_message
    assert store.get_run(fresh).status == RUNNING
    assert store.mark_stale_interrupted(60) == []
    assert store.transition(stale, QUEUED).status == QUEUED


def make_stale(store: RunStore, run_id: int, minutes: float = 10) -> None:
    with store._writer.begin() as conn:
        moment = utc_now() - timedelta(minutes=minutes)
        conn.execute(update(runs).where(runs.c.id == run_id).values(heartbeat_at=moment))


def test_claiming_recovers_stale_runs_and_with_auto_resume_queues_them_again(store):
    stale, cancelled, queued = (store.create_run(SPEC, name=n) for n in ("stale", "cancel asked", "queued"))
    store.claim_run(stale, "worker-dead")
    store.claim_run(cancelled, "worker-dead-too")
    store.request_cancel(cancelled)
    for run_id in (stale, cancelled):
        make_stale(store, run_id)
    # Without a threshold nothing is recovered; with one, the stale run is interrupted, and queued again on request.
    assert store.claim_next_run("w1").id == queued
    assert store.claim_next_run("w1", stale_after_s=60) is None
    assert store.get_run(stale).status == INTERRUPTED
    assert store.get_run(cancelled).status == CANCELLED, "a cancel asked before the worker died still counts"
    claimed = store.claim_next_run("w2", stale_after_s=60, requeue_interrupted=True)
    assert (claimed.id, claimed.worker_id, claimed.status) == (stale, "w2", RUNNING)
    assert store.requeue_interrupted() == []


def test_resume_takes_a_stale_running_run(store):
    run_id = store.create_run(SPEC, name="resumable")
    store.claim_run(run_id, "worker-dead")
    with pytest.raises(IllegalTransition, match="cannot go from running to queued"):
        store.resume_run(run_id, stale_after_s=60)
    make_stale(store, run_id)
    assert store.resume_run(run_id, stale_after_s=60).status == QUEUED


def test_cancel_of_a_run_whose_worker_is_gone_is_immediate(store):
    run_id = store.create_run(SPEC, name="abandoned")
    store.claim_run(run_id, "worker-dead")
    assert store.request_cancel(run_id, stale_after_s=60) == RUNNING
    make_stale(store, run_id)
    assert store.request_cancel(run_id, stale_after_s=60) == CANCELLED
    store.delete_run(run_id)


def test_progress_numbers_that_cannot_be_stored_are_clamped_not_raised(store):
    from storage.store import MAX_STORED_INT

    run_id = store.create_run(SPEC, name="absurd", total_iterations=8 * 10**30)
    assert store.get_run(run_id).total_iterations == MAX_STORED_INT
    store.claim_run(run_id, "w")
    assert store.heartbeat(run_id, "w", iteration=-5, total_iterations=8 * 10**30, epoch=float("inf"),
                           images_per_s=float("nan")) is False
    run = store.get_run(run_id)
    assert (run.iteration, run.total_iterations, run.epoch, run.images_per_s) == (0, MAX_STORED_INT, None, None)
    store.update_summary(run_id, train_error=float("nan"), test_error=float("inf"))
    done = store.transition(run_id, COMPLETED, worker_id="w", iteration=10**40, total_iterations=float("inf"),
                            epoch=1e300, last_test_error=float("nan"))
    assert (done.iteration, done.total_iterations, done.epoch) == (MAX_STORED_INT, MAX_STORED_INT, 1e300)


def test_metrics_from_a_worker_that_lost_its_run_are_refused(store):
    run_id = store.create_run(SPEC, name="fenced")
    store.claim_run(run_id, "worker-a")
    assert store.append_metrics(run_id, metric_rows(2), worker_id="worker-a") == 2
    make_stale(store, run_id)
    store.mark_stale_interrupted(60)
    store.transition(run_id, QUEUED)
    store.claim_run(run_id, "worker-b")
    with pytest.raises(IllegalTransition, match="no longer running under worker worker-a"):
        store.append_metrics(run_id, metric_rows(2, start=2), worker_id="worker-a")
    assert len(store.fetch_metrics_since({run_id: 0})[run_id].rows) == 2


def test_best_and_last_errors(store):
    run_id = store.create_run(SPEC, name="errors")
    store.update_summary(run_id, train_error=0.5)
    assert store.get_run(run_id).best_test_error is None
    for test_error in (0.3, 0.2, 0.25):
        store.update_summary(run_id, test_error=test_error)
    run = store.get_run(run_id)
    assert (run.best_test_error, run.last_test_error, run.last_train_error) == (0.2, 0.25, 0.5)
    with pytest.raises(RunNotFound):
        store.update_summary(999, test_error=0.1)


# -- deleting ---------------------------------------------------------------------------------------


def test_delete_is_refused_while_running_and_removes_everything_after(store, tmp_path):
    run_id = store.create_run(SPEC, name="doomed")
    store.claim_run(run_id, "worker-a")
    run_folder = store.run_dir(run_id)
    assert run_folder == runs_dir(store.home) / str(run_id)
    (run_folder / "logs").mkdir(parents=True)
    checkpoint = run_folder / "last.pt"
    checkpoint.write_bytes(b"weights")
    export = store.home / "exports" / f"run{run_id}.onnx"
    export.parent.mkdir()
    export.write_bytes(b"onnx")
    outside = tmp_path / "elsewhere.onnx"
    outside.write_bytes(b"keep me")
    for kind, path in (("checkpoint", checkpoint), ("export", export), ("export", outside)):
        store.add_artifact(run_id, kind, path)
    store.append_metrics(run_id, metric_rows(5))
    store.add_analysis(run_id, "lesion", {"block": 1}, {"error": 0.4})
    other = store.create_run(SPEC, name="survivor")
    store.append_metrics(other, metric_rows(3))

    with pytest.raises(StoreError, match=f"run {run_id} is running and cannot be deleted; cancel it"):
        store.delete_run(run_id)
    assert checkpoint.exists() and store.get_run(run_id).status == RUNNING

    store.transition(run_id, CANCELLED, worker_id="worker-a")
    store.delete_run(run_id)
    assert not run_folder.exists() and not export.exists()
    assert outside.read_bytes() == b"keep me"
    with pytest.raises(RunNotFound):
        store.get_run(run_id)
    with store.engine.connect() as conn:
        for table in ("metrics", "artifacts", "analyses"):
            assert conn.scalar(text(f"SELECT count(*) FROM {table} WHERE run_id = :id"), {"id": run_id}) == 0
    assert len(store.fetch_metrics_since({other: 0})[other].rows) == 3
    with pytest.raises(RunNotFound):
        store.delete_run(run_id)


# -- metrics ----------------------------------------------------------------------------------------


def test_fetch_metrics_since_returns_only_newer_rows_per_run(store):
    first, second, idle = (store.create_run(SPEC, name=n) for n in ("a", "b", "idle"))
    store.append_metrics(first, metric_rows(3))
    store.append_metrics(second, metric_rows(2, name="error", split="test"))

    batches = store.fetch_metrics_since({first: 0, second: 0, idle: 0})
    assert [row.iteration for row in batches[first].rows] == [0, 1, 2]
    assert batches[second].rows[0]._fields == METRIC_FIELDS
    assert (batches[second].rows[0].split, batches[second].rows[0].name) == ("test", "error")
    assert batches[idle].rows == [] and batches[idle].cursor == 0

    cursors = {run_id: batch.cursor for run_id, batch in batches.items()}
    assert all(len(batch.rows) == 0 for batch in store.fetch_metrics_since(cursors).values())

    store.append_metrics(first, metric_rows(2, start=3))
    newer = store.fetch_metrics_since(cursors)
    assert [row.iteration for row in newer[first].rows] == [3, 4]
    assert newer[first].cursor > cursors[first]
    assert newer[second].rows == [] and newer[second].cursor == cursors[second]
    ids = [row.id for row in batches[first].rows + newer[first].rows]
    assert ids == sorted(ids) and len(set(ids)) == 5


def test_fetch_metrics_since_filters_by_name(store):
    run_id = store.create_run(SPEC, name="names")
    store.append_metrics(run_id, metric_rows(4, name="loss") + metric_rows(4, name="lr") + metric_rows(4, name="error"))
    batch = store.fetch_metrics_since({run_id: 0}, names=["loss", "error"])
    assert [row.name for row in batch[run_id].rows] == ["loss"] * 4 + ["error"] * 4
    store.append_metrics(run_id, metric_rows(1, start=9, name="error") + metric_rows(1, start=9, name="lr"))
    newer = store.fetch_metrics_since({run_id: batch[run_id].cursor}, names=["loss", "error"])
    assert [(row.name, row.iteration) for row in newer[run_id].rows] == [("error", 9)]


def test_append_metrics_converts_numpy_nan_and_defaults(store):
    run_id = store.create_run(SPEC, name="values")
    before = time.time()
    rows = [
        {
            "iteration": np.int64(1),
            "split": "train",
            "name": "loss",
            "value": np.float32(0.5),
            "epoch": np.float64(0.1),
        },
        {"iteration": 2, "split": "val", "name": "loss", "value": float("nan"), "wall_time": 12.5},
        {"iteration": 3, "split": "test", "name": "loss", "value": float("inf"), "epoch": None},
    ]
    assert store.append_metrics(run_id, rows) == 3
    assert store.append_metrics(run_id, []) == 0
    stored = store.fetch_metrics_since({run_id: 0})[run_id].rows
    assert [(row.iteration, row.split, row.value) for row in stored] == [
        (1, "train", 0.5),
        (2, "val", None),
        (3, "test", math.inf),
    ]
    assert stored[0].epoch == pytest.approx(0.1) and stored[2].epoch is None
    assert stored[0].wall_time >= before and stored[1].wall_time == 12.5


def test_append_metrics_rejects_bad_rows_and_unknown_runs_whole(store):
    run_id = store.create_run(SPEC, name="bad rows")
    with pytest.raises(StoreError, match="lacks 'split'"):
        store.append_metrics(run_id, [{"iteration": 1, "name": "loss", "value": 1.0}])
    with pytest.raises(StoreError, match="split 'dev' is unknown"):
        store.append_metrics(run_id, metric_rows(3) + [{"iteration": 1, "split": "dev", "name": "loss", "value": 1.0}])
    with pytest.raises(StoreError, match="metric row 1 has a field that is not a number"):
        store.append_metrics(
            run_id, metric_rows(1) + [{"iteration": 1, "split": "test", "name": "loss", "value": None}]
        )
    with pytest.raises(RunNotFound, match="run 999"):
        store.append_metrics(999, metric_rows(3))
    assert store.fetch_metrics_since({run_id: 0})[run_id].rows == []


def test_generic_insert_path_stores_the_same_rows(store):
    """Other databases go through SQLAlchemy's own executemany; check it on SQLite too."""
    fast, generic = (store.create_run(SPEC, name=n) for n in ("fast", "generic"))
    rows = metric_rows(50) + [{"iteration": 7, "split": "test", "name": "error", "value": float("nan"), "epoch": 2.0}]
    store.append_metrics(fast, rows)
    store._metric_insert_sql = None
    store.append_metrics(generic, rows)
    batches = store.fetch_metrics_since({fast: 0, generic: 0})

    def comparable(rows):
        return [tuple(row)[2:7] for row in rows]

    assert comparable(batches[fast].rows) == comparable(batches[generic].rows)
    assert len(batches[generic].rows) == 51


# -- artifacts and analyses ---------------------------------------------------------------------


def test_artifacts_record_size_hash_and_checkpoint(store):
    run_id = store.create_run(SPEC, name="files")
    checkpoint = store.run_dir(run_id) / "epoch1.pt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"x" * 1000)
    artifact_id = store.add_artifact(run_id, "checkpoint", checkpoint)
    store.add_artifact(run_id, "log", checkpoint.parent / "train.log", size=0, sha256="0" * 64)

    artifacts = store.list_artifacts(run_id)
    assert [a.kind for a in artifacts] == ["checkpoint", "log"]
    assert artifacts[0].id == artifact_id
    assert artifacts[0].size == 1000
    assert artifacts[0].sha256 == hashlib.sha256(b"x" * 1000).hexdigest()
    assert [a.kind for a in store.list_artifacts(run_id, kind="log")] == ["log"]
    assert store.get_run(run_id).checkpoint_path == str(checkpoint.resolve())

    with pytest.raises(StoreError, match="artifact kind 'weights' is unknown"):
        store.add_artifact(run_id, "weights", checkpoint)
    with pytest.raises(StoreError, match="does not exist; write it before recording it"):
        store.add_artifact(run_id, "export", checkpoint.parent / "missing.onnx")
    with pytest.raises(RunNotFound):
        store.add_artifact(999, "checkpoint", checkpoint)


def test_a_queued_run_gets_one_cluster_job_and_loses_it_when_queued_again(store):
    run_id = store.create_run(SPEC, name="clustered")
    assert store.assign_job(run_id, "workbench-run-1")
    assert not store.assign_job(run_id, "workbench-run-1"), "a second dispatcher must not submit it again"
    store.note_waiting(run_id, "waiting for a node with 1 GPU")
    assert store.get_run(run_id).error_message == "waiting for a node with 1 GPU"
    assert not store.release_job(run_id, "another job")
    assert store.release_job(run_id, "workbench-run-1", "the cluster lost it")
    assert (store.get_run(run_id).job_id, store.get_run(run_id).error_message) == (None, "the cluster lost it")
    assert store.assign_job(run_id, "workbench-run-1")
    running = store.claim_run(run_id, "workbench-run-1@node:1")
    assert (running.job_id, running.error_message) == ("workbench-run-1", None)
    store.note_waiting(run_id, "ignored: the run is running")
    assert not store.assign_job(run_id, "workbench-run-1") and store.get_run(run_id).error_message is None
    store.transition(run_id, INTERRUPTED, worker_id="workbench-run-1@node:1")
    assert store.resume_run(run_id).job_id is None, "a resumed run is submitted as a new job"


def test_paths_in_the_home_are_stored_relative_so_a_home_mounted_elsewhere_still_works(tmp_path, db_url):
    first_home, outside = tmp_path / "mounted-here", tmp_path / "outside.bin"
    outside.write_bytes(b"x")
    with open_store(first_home, db=db_url) as store:
        run_id = store.create_run(SPEC, name="moved")
        checkpoint = runs_dir(store.home) / str(run_id) / "last.pt"
        checkpoint.parent.mkdir(parents=True)
        checkpoint.write_bytes(b"weights")
        store.add_artifact(run_id, "checkpoint", checkpoint)
        store.add_artifact(run_id, "export", outside)
        store.claim_run(run_id, "w")
        store.transition(run_id, INTERRUPTED, worker_id="w", checkpoint_path=str(checkpoint))
        with store.engine.connect() as conn:
            assert conn.scalar(text("SELECT checkpoint_path FROM runs")) == f"runs/{run_id}/last.pt"
            assert sorted(conn.scalars(text("SELECT path FROM artifacts"))) == sorted(
                [f"runs/{run_id}/last.pt", str(outside)])
    second_home = first_home.rename(tmp_path / "mounted-there")
    with open_store(second_home, db=db_url) as store:
        moved = second_home / "runs" / str(run_id) / "last.pt"
        assert store.get_run(run_id).checkpoint_path == str(moved)
        assert [artifact.path for artifact in store.list_artifacts(run_id)] == [str(moved), str(outside)]
        store.delete_run(run_id)
        assert not moved.exists() and outside.exists()


def test_rewriting_a_checkpoint_updates_its_artifact_and_best_snapshots_are_not_resume_points(store):
    run_id = store.create_run(SPEC, name="epochs")
    folder = store.run_dir(run_id)
    folder.mkdir(parents=True)
    last, best = folder / "last.pt", folder / "best.pt"
    last.write_bytes(b"epoch 1")
    store.add_artifact(run_id, "checkpoint", last)
    last.write_bytes(b"epoch 2 weights")
    store.add_artifact(run_id, "checkpoint", last)
    best.write_bytes(b"best")
    store.add_artifact(run_id, "checkpoint", best, resumable=False)
    artifacts = store.list_artifacts(run_id)
    assert [(Path(a.path).name, a.size) for a in artifacts] == [("last.pt", 15), ("best.pt", 4)]
    assert store.get_run(run_id).checkpoint_path == str(last.resolve())


def test_delete_metrics_after_drops_only_later_iterations_of_that_run(store):
    kept, other = store.create_run(SPEC, name="resumed"), store.create_run(SPEC, name="other")
    for run_id in (kept, other):
        store.append_metrics(run_id, [{"iteration": i, "split": "train", "name": "loss", "value": 1.0}
                                      for i in range(1, 11)])
    assert store.delete_metrics_after(kept, 6) == 4
    rows = store.fetch_metrics_since({kept: 0, other: 0})
    assert [r.iteration for r in rows[kept].rows] == [1, 2, 3, 4, 5, 6]
    assert len(rows[other].rows) == 10


def test_analyses_round_trip(store):
    run_id = store.create_run(SPEC, name="science")
    lesion = {"blocks": [0, 1, 2], "error": [0.08, 0.09, 0.31]}
    store.add_analysis(run_id, "lesion", {"split": "test"}, lesion)
    store.add_analysis(run_id, "gradient_flow", {"batches": 4}, [1.0, 0.5])
    analyses = store.list_analyses(run_id)
    assert [(a.kind, a.params, a.result) for a in analyses] == [
        ("lesion", {"split": "test"}, lesion),
        ("gradient_flow", {"batches": 4}, [1.0, 0.5]),
    ]
    assert [a.kind for a in store.list_analyses(run_id, kind="lesion")] == ["lesion"]
    with pytest.raises(StoreError, match="analysis result cannot be stored as JSON"):
        store.add_analysis(run_id, "bad", {}, {"x": float("nan")})
    with pytest.raises(RunNotFound):
        store.add_analysis(999, "lesion", {}, {})


def test_naive_timestamps_are_refused(store):
    run_id = store.create_run(SPEC, name="tz")
    naive = utc_now().replace(tzinfo=None)
    with pytest.raises(StatementError, match="has no time zone"), store._writer.begin() as conn:
        conn.execute(update(runs).where(runs.c.id == run_id).values(heartbeat_at=naive))


def test_store_works_as_a_context_manager(tmp_path, db_url):
    with RunStore.open(tmp_path, db=db_url) as store:
        run_id = store.create_run(SPEC, name="ctx")
    with open_store(tmp_path, db=db_url) as reopened:
        assert reopened.get_run(run_id).name == "ctx"


def test_metric_ids_are_not_reused_after_rows_are_deleted(store):
    """A chart polling with a cursor must see rows a resumed run logs again."""
    run_id = store.create_run(SPEC, name="resumed")
    rows = [{"iteration": i, "split": "train", "name": "loss", "value": 1.0} for i in range(1, 11)]
    store.append_metrics(run_id, rows)
    cursor = store.fetch_metrics_since({run_id: 0})[run_id].cursor
    store.delete_metrics_after(run_id, 5)
    store.append_metrics(run_id, rows[5:])
    relogged = store.fetch_metrics_since({run_id: cursor})[run_id].rows
    assert [r.iteration for r in relogged] == [6, 7, 8, 9, 10]


# -- sweeps -----------------------------------------------------------------------------------------


def test_a_sweep_is_recorded_once_per_group_until_it_is_finished(store):
    sweep_id = store.create_sweep("g", "tpe", {"trials": 3})
    with pytest.raises(StoreError, match="a sweep named 'g' exists already; give the new one another name"):
        store.create_sweep("g", "grid", {})
    record = store.get_sweep("g")
    assert (record.id, record.method, record.spec, record.finished_at) == (sweep_id, "tpe", {"trials": 3}, None)
    assert record.created_at.tzinfo is not None and store.get_sweep("no sweep") is None
    assert [sweep.group_name for sweep in store.unfinished_sweeps()] == ["g"]
    store.finish_sweep(sweep_id, "its space cannot be read")
    store.finish_sweep(sweep_id)
    assert store.unfinished_sweeps() == []
    assert store.get_sweep("g").error_message == "its space cannot be read", "a sweep is finished once"


def test_a_trial_chosen_from_stale_counts_is_not_added(store):
    """Two processes that stepped a TPE sweep from the same stored trials would suggest the same trial: the insert
    counts the group's runs in its own transaction, so only the first one lands."""
    sweep_id = store.create_sweep("g", "tpe", {"trials": 3})
    first = store.add_sweep_trial(sweep_id, SPEC, name="trial 1", expected_trials=0, max_in_flight=2)
    assert first is not None and store.get_run(first).group_kind == "sweep"
    assert store.add_sweep_trial(sweep_id, SPEC, name="trial 1", expected_trials=0, max_in_flight=2) is None
    assert store.add_sweep_trial(sweep_id, SPEC, name="trial 2", expected_trials=1, max_in_flight=1) is None
    store.finish_sweep(sweep_id)
    assert store.add_sweep_trial(sweep_id, SPEC, name="trial 2", expected_trials=1, max_in_flight=2) is None
    assert [run.name for run in store.list_runs(group_name="g")] == ["trial 1"]
