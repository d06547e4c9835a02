"""Run-time estimates against a real worker's steps, their cache, refusals, and expected finish times."""

from __future__ import annotations

import statistics
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from storage import open_store
from tests.test_jobs import wait_for
from workbench.errors import SpecError
from workbench.jobs import LocalExecutor, QueueExecutor
from workbench.paths import database_url, step_times_file
from workbench.presets import get_preset
from workbench.service import Workbench
from workbench.service.estimates import StepTimeCache, expected_finishes
from workbench.service.plans import PlannedRun
from workbench.spec import DataSpec, NetSpec, RunSpec, TrainSpec
from workbench.ui.run_table import RUN_TABLE_COLUMNS, run_rows

NET = NetSpec(name="small", blocks=[1, 1, 1], widths=[16, 32, 64])
BATCH = 64


def small_spec(seed: int = 0) -> RunSpec:
    return RunSpec(net=NET, data=DataSpec(synthetic_train=1408, synthetic_test=128, validation_size=128),
                   train=TrainSpec(iterations=200, batch_size=BATCH, log_every=10, eval_every=40, precision="fp32",
                                   seed=seed))


@pytest.fixture
def store(tmp_path):
    with open_store(tmp_path) as opened:
        yield opened


@pytest.mark.serial  # the estimate, timed now, is compared with steps taken later: both need the same machine
def test_estimate_matches_a_real_workers_steps_is_cached_and_the_queue_shows_expected_finishes(store, tmp_path):
    executor = LocalExecutor(store, db_url=database_url(tmp_path), workers=1)
    bench = Workbench(store, executor)
    estimate = bench.estimate(small_spec())
    start = time.perf_counter()
    again = bench.estimate(small_spec(seed=5))
    assert time.perf_counter() - start < 1.0 and again.cached and again.seconds == estimate.seconds
    assert not estimate.cached and estimate.iterations == 200 and estimate.evaluations == 10
    assert estimate.text().startswith(("about ", "under a minute")) and f"at batch {BATCH} on cpu" in estimate.text()

    first, second = bench.submit([PlannedRun("first", small_spec(), None),
                                  PlannedRun("second", small_spec(seed=1), None)])
    executor.start()
    try:
        wait_for(lambda: (run := store.get_run(first)).iteration >= 40 and run.best_val_error is not None,
                 what="the first run to pass an evaluation")
        runs = store.list_runs()
        now = datetime.now(UTC)
        finishes = bench.expected_finishes(runs, now)
        assert now < finishes[first] < finishes[second], "the queued run waits for the one worker"
        cells = {row[0]: dict(zip(RUN_TABLE_COLUMNS, row, strict=True)) for row in run_rows(runs, now, finishes)}
        assert "(in " in cells[first]["finish"] and "(in " in cells[second]["finish"]
        assert cells[first]["best err"].endswith("% val")
        wait_for(lambda: store.get_run(first).iteration >= 100, what="enough timed steps")
    finally:
        executor.shutdown()
    speeds = [row.value for row in store.fetch_metrics_since({first: 0}, names=["images_per_s"])[first].rows]
    measured_step_s = BATCH / statistics.median(speeds)
    # A shared machine is noisy: the estimate only has to be of the right size.
    assert measured_step_s / 3 < estimate.step_s < measured_step_s * 3, (
        f"estimated {1000 * estimate.step_s:.0f} ms/step, measured {1000 * measured_step_s:.0f} ms/step")


def test_a_network_too_big_for_the_machine_is_refused_before_anything_is_timed(store):
    bench = Workbench(store, QueueExecutor(store))
    giant = RunSpec(net=get_preset("resnet1202").spec, train=TrainSpec(batch_size=4096))
    start = time.perf_counter()
    with pytest.raises(SpecError, match="training needs about .* GiB at batch size 4096"):
        bench.estimate(giant)
    assert time.perf_counter() - start < 10 and not step_times_file(store.home).exists()


def test_a_resumed_run_finishes_at_the_pace_of_all_its_training_not_since_its_latest_start(store, tmp_path):
    run_id = store.create_run(small_spec().model_dump(mode="json"), name="resumed")
    now = datetime.now(UTC)
    # Halfway after 100 s of training over two starts; the latest start was 10 s ago.
    resumed = replace(store.get_run(run_id), status="running", started_at=now - timedelta(seconds=10),
                      iteration=500, total_iterations=1000)
    cache = StepTimeCache(tmp_path)
    finish = expected_finishes([resumed], cache, workers=1, threads=1, now=now, trained_seconds={run_id: 100.0})
    assert finish[run_id] == now + timedelta(seconds=100)
    # Before its first logged row only the time since its start is known.
    assert expected_finishes([resumed], cache, 1, 1, now, {})[run_id] == now + timedelta(seconds=10)
