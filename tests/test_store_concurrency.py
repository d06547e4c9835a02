"""The store under several real processes, on SQLite and PostgreSQL: claiming, reading while writing, and SIGKILL
mid-write."""

from __future__ import annotations

import json
import multiprocessing
import random
import threading
import time
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Barrier, Event
from pathlib import Path

import pytest
from sqlalchemy import text

from storage import COMPLETED, RUNNING, RunStore, open_store

pytestmark = pytest.mark.timeout(90)

# Forked children start at once with the modules already imported; each opens its own store,
# so no database connection crosses the fork.
PROCESSES = multiprocessing.get_context("fork")


def metric_batch(batch_index: int, size: int) -> list[dict]:
    """A batch whose rows all carry the batch index as their iteration, so torn batches would show."""
    return [{"iteration": batch_index, "split": "train", "name": "loss", "value": float(i)} for i in range(size)]


# -- several workers claim from one queue -----------------------------------------------------------


def claim_until_empty(home: str, db: str | None, worker_id: str, start: Barrier, report: str) -> None:
    """Worker process: claim runs until the queue is empty, finishing each one."""
    claimed = []
    with open_store(home, db=db) as store:
        start.wait()
        while (run := store.claim_next_run(worker_id, device="cpu")) is not None:
            claimed.append(run.id)
            # A run takes time: the others claim meanwhile (without it, on a loaded machine one worker
            # scheduled first can drain the whole queue alone).
            time.sleep(0.02)
            store.heartbeat(run.id, worker_id, iteration=1)
            store.append_metrics(run.id, metric_batch(0, 5))
            store.transition(run.id, COMPLETED, worker_id=worker_id)
    Path(report).write_text(json.dumps(claimed))


def test_worker_processes_claim_each_run_exactly_once(tmp_path, db_url):
    run_count, worker_count = 60, 4
    with open_store(tmp_path, db=db_url) as store:
        run_ids = [store.create_run({"index": i}, name=f"run {i}") for i in range(run_count)]
    start = PROCESSES.Barrier(worker_count)
    reports = [tmp_path / f"worker{i}.json" for i in range(worker_count)]
    workers = [
        PROCESSES.Process(target=claim_until_empty, args=(str(tmp_path), db_url, f"worker-{i}", start, str(reports[i])))
        for i in range(worker_count)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(80)
    assert [worker.exitcode for worker in workers] == [0] * worker_count

    claimed = [json.loads(report.read_text()) for report in reports]
    assert sum(1 for worker_claims in claimed if worker_claims) >= 2, "the workers did not compete"
    every_claim = [run_id for worker_claims in claimed for run_id in worker_claims]
    assert sorted(every_claim) == run_ids
    with open_store(tmp_path, db=db_url) as store:
        runs = store.list_runs()
        assert {run.status for run in runs} == {COMPLETED}
        for index, worker_claims in enumerate(claimed):
            assert all(store.get_run(run_id).worker_id == f"worker-{index}" for run_id in worker_claims)
        counts = {
            run_id: len(batch.rows) for run_id, batch in store.fetch_metrics_since(dict.fromkeys(run_ids, 0)).items()
        }
        assert set(counts.values()) == {5}


def test_threads_sharing_one_store_claim_each_run_exactly_once(tmp_path, db_url):
    with open_store(tmp_path, db=db_url) as store:
        run_ids = [store.create_run({}, name=f"run {i}") for i in range(40)]
        claims: dict[str, list[int]] = {f"thread-{i}": [] for i in range(6)}
        start = threading.Barrier(len(claims))

        def claim(worker_id: str) -> None:
            start.wait()
            while (run := store.claim_next_run(worker_id)) is not None:
                claims[worker_id].append(run.id)

        threads = [threading.Thread(target=claim, args=(worker_id,)) for worker_id in claims]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert sorted(run_id for ids in claims.values() for run_id in ids) == run_ids
        assert {run.status for run in store.list_runs()} == {RUNNING}


# -- several processes step one sweep -----------------------------------------------------------------


def add_trial_each_round(home: str, db: str | None, index: int, rounds: int, start: Barrier, report: str) -> None:
    """Stepping process: in each round, add the trial that the round's count of trials calls for."""
    added = []
    with open_store(home, db=db) as store:
        sweep_id = store.get_sweep("race").id
        for trials_so_far in range(rounds):
            start.wait()
            if store.add_sweep_trial(sweep_id, {"data": {"name": "cifar10"}}, name=f"trial {trials_so_far + 1}",
                                     expected_trials=trials_so_far, max_in_flight=rounds) is not None:
                added.append(trials_so_far)
    Path(report).write_text(json.dumps(added))


def test_processes_stepping_one_sweep_at_once_add_each_trial_exactly_once(tmp_path, db_url):
    rounds, process_count = 10, 4
    with open_store(tmp_path, db=db_url) as store:
        store.create_sweep("race", "tpe", {})
    start = PROCESSES.Barrier(process_count)
    reports = [tmp_path / f"stepper{i}.json" for i in range(process_count)]
    steppers = [PROCESSES.Process(target=add_trial_each_round, args=(str(tmp_path), db_url, i, rounds, start,
                                                                      str(reports[i]))) for i in range(process_count)]
    for stepper in steppers:
        stepper.start()
    for stepper in steppers:
        stepper.join(60)
    assert [stepper.exitcode for stepper in steppers] == [0] * process_count
    added = [trial for report in reports for trial in json.loads(report.read_text())]
    assert sorted(added) == list(range(rounds)), "one process adds each round's trial"
    with open_store(tmp_path, db=db_url) as store:
        assert sorted(run.name for run in store.list_runs(group_name="race")) == sorted(
            f"trial {number}" for number in range(1, rounds + 1))


# -- reading while another process writes hard ------------------------------------------------------


def write_batches(home: str, db: str | None, run_id: int, batches: int, size: int, start: Event) -> None:
    """Writer process: append metric batches as fast as it can."""
    with open_store(home, db=db) as store:
        start.wait()
        for batch_index in range(batches):
            store.append_metrics(run_id, metric_batch(batch_index, size))


def beat_and_cancel(home: str, db: str | None, run_id: int, worker_id: str, start: Event, stop: Event) -> None:
    """Second writer process: heartbeats and status writes on the same database until told to stop."""
    with open_store(home, db=db) as store:
        start.wait()
        beat = 0
        while not stop.is_set():
            beat += 1
            store.heartbeat(run_id, worker_id, iteration=beat)
            scratch = store.create_run({}, name=f"scratch {beat}")
            store.request_cancel(scratch)


def test_readers_never_fail_while_processes_write(tmp_path, db_url):
    batches, size = 150, 1000
    with open_store(tmp_path, db=db_url) as store:
        run_id = store.create_run({}, name="written")
        beating = store.create_run({}, name="beating")
        store.claim_run(beating, "worker-b")
    start, stop = PROCESSES.Event(), PROCESSES.Event()
    writer = PROCESSES.Process(target=write_batches, args=(str(tmp_path), db_url, run_id, batches, size, start))
    beater = PROCESSES.Process(target=beat_and_cancel, args=(str(tmp_path), db_url, beating, "worker-b", start, stop))
    writer.start()
    beater.start()

    seen_counts = []
    with open_store(tmp_path, db=db_url) as reader:
        cursor, rows_seen, polls = 0, 0, 0
        start.set()
        while writer.is_alive() or polls == 0:
            batch = reader.fetch_metrics_since({run_id: cursor})[run_id]
            assert batch.cursor >= cursor
            cursor = batch.cursor
            rows_seen += len(batch.rows)
            seen_counts.append(rows_seen)
            reader.list_runs(limit=20)
            reader.get_run(beating)
            polls += 1
        writer.join(30)
        stop.set()
        beater.join(30)
        rows_seen += len(reader.fetch_metrics_since({run_id: cursor})[run_id].rows)

    assert (writer.exitcode, beater.exitcode) == (0, 0)
    assert rows_seen == batches * size
    assert polls > 5
    assert all(count % size == 0 for count in seen_counts), "a reader saw part of a batch"


# -- SIGKILL in the middle of writing ---------------------------------------------------------------


def write_forever(home: str, db: str | None, run_id: int, size: int, first_batch: int, appending: Synchronized) -> None:
    """Writer process that only stops when killed; `appending` is 1 while a batch is being stored."""
    with open_store(home, db=db) as store:
        batch_index = first_batch
        while True:
            appending.value = 1
            store.append_metrics(run_id, metric_batch(batch_index, size))
            appending.value = 0
            store.heartbeat(run_id, "worker-k", iteration=batch_index)
            batch_index += 1


def committed_rows(store: RunStore, run_id: int) -> int:
    with store.engine.connect() as connection:
        return connection.scalar(text("SELECT count(*) FROM metrics WHERE run_id = :run"), {"run": run_id})


def test_a_writer_killed_mid_batch_leaves_a_consistent_database(tmp_path, db_url):
    size = 5000
    observer = open_store(tmp_path, db=db_url)
    run_id = observer.create_run({}, name="killed")
    observer.claim_run(run_id, "worker-k")
    rng = random.Random(3)
    killed_while_appending = []
    for cycle in range(3):
        appending = PROCESSES.Value("i", 0)
        writer = PROCESSES.Process(target=write_forever,
                                   args=(str(tmp_path), db_url, run_id, size, cycle * 1000, appending))
        writer.start()
        already = committed_rows(observer, run_id)
        deadline = time.time() + 30
        while committed_rows(observer, run_id) < already + 2 * size and time.time() < deadline:
            time.sleep(0.02)
        while not appending.value and time.time() < deadline:
            time.sleep(0.001)
        time.sleep(rng.uniform(0.0, 0.01))
        killed_while_appending.append(appending.value)
        writer.kill()
        writer.join(10)
        assert writer.exitcode == -9
    assert any(killed_while_appending), "no kill landed inside a batch"

    with observer.engine.connect() as connection:
        if db_url is None:
            assert connection.exec_driver_sql("PRAGMA integrity_check").fetchall() == [("ok",)]
            assert connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall() == []
        torn = connection.execute(
            text("SELECT iteration, count(*) FROM metrics GROUP BY iteration HAVING count(*) != :size"), {"size": size}
        ).fetchall()
    observer.close()
    assert torn == []

    with open_store(tmp_path, db=db_url) as store:
        total = len(store.fetch_metrics_since({run_id: 0})[run_id].rows)
        assert total >= 6 * size and total % size == 0
        store.append_metrics(run_id, metric_batch(10_000, 10))
        assert store.transition(run_id, "interrupted").status == "interrupted"
