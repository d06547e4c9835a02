"""The incremental curve cache against a real store, and the runs-table cells."""

from collections import namedtuple
from datetime import UTC, datetime, timedelta

import pytest

from storage import METRIC_FIELDS, open_store
from workbench.service.curves import CurveCache, curves_of, ladder_curve_runs
from workbench.spec import NetSpec, RunSpec, TrainSpec
from workbench.ui.run_table import RUN_TABLE_COLUMNS, format_duration, run_label, run_row


@pytest.fixture
def store(tmp_path):
    with open_store(tmp_path) as opened:
        yield opened


def spec(depth: int = 20, shortcut: str = "A") -> RunSpec:
    return RunSpec(net=NetSpec(depth=depth, shortcut=shortcut))


def log(store, run_id: int, iterations, split: str = "train", name: str = "error", value: float = 50.0) -> None:
    store.append_metrics(run_id, [
        {"iteration": i, "epoch": i / 10, "split": split, "name": name, "value": value - i / 100}
        for i in iterations
    ])


def test_refresh_fetches_only_new_rows(store):
    run_id = store.create_run(spec(), name="r")
    log(store, run_id, range(10, 110, 10))
    log(store, run_id, range(10, 110, 10), name="lr")
    cache = CurveCache()
    cache.select([run_id])
    assert cache.refresh(store)
    assert list(cache.get(run_id, "train", "error").iterations) == list(range(10, 110, 10))
    assert cache.get(run_id, "train", "lr") is None
    assert not cache.refresh(store)
    log(store, run_id, [110, 120])
    cursor = cache.cursors[run_id]
    assert cache.refresh(store) and cache.cursors[run_id] > cursor
    assert len(cache.get(run_id, "train", "error")) == 12


def test_resumed_run_replaces_the_rewound_tail():
    row = namedtuple("row", METRIC_FIELDS)
    cache = CurveCache()
    cache.select([1])
    cache.ingest(1, [row(i, 1, i, i / 10, "train", "error", 50.0, 0.0) for i in (10, 20, 30, 40)])
    cache.ingest(1, [row(i + 10, 1, i, i / 10, "train", "error", 10.0, 0.0) for i in (30, 40, 50)])
    series = cache.get(1, "train", "error")
    assert list(series.iterations) == [10, 20, 30, 40, 50]
    assert list(series.values) == [50.0, 50.0, 10.0, 10.0, 10.0]


def test_select_keeps_curves_of_kept_runs_and_drops_others(store):
    first, second = store.create_run(spec(), name="a"), store.create_run(spec(), name="b")
    log(store, first, [10])
    log(store, second, [10])
    cache = CurveCache()
    cache.select([first, second])
    cache.refresh(store)
    assert not cache.select([first, second])
    assert cache.select([second])
    assert cache.get(first, "train", "error") is None and cache.get(second, "train", "error") is not None
    assert not cache.refresh(store)


def test_non_finite_values_are_skipped(store):
    run_id = store.create_run(spec(), name="r")
    store.append_metrics(run_id, [{"iteration": 1, "split": "train", "name": "loss", "value": float("nan")}])
    cache = CurveCache()
    cache.select([run_id])
    assert not cache.refresh(store)


def test_curves_of_labels_runs_in_selection_order(store):
    first, second = store.create_run(spec(), name="a"), store.create_run(spec(), name="b")
    log(store, second, [10], split="test")
    cache = CurveCache()
    cache.select([second, first])
    cache.refresh(store)
    curves = curves_of(cache, {second: "#2 b"})
    assert [c.label for c in curves] == ["#2 b", f"#{first}"]
    assert curves[0].test is not None and curves[0].train is None and curves[1].test is None


def test_ladder_curve_runs_read_the_cached_error_curves(store):
    resnet = store.create_run(spec(56), name="resnet56", preset="resnet56", group_name="L", group_kind="ladder")
    plain = store.create_run(spec(56, "none"), name="plain56", preset="plain56", group_name="L", group_kind="ladder")
    store.append_metrics(resnet, [{"iteration": i, "epoch": i / 10, "split": split, "name": name, "value": value}
                                  for i in (10, 20) for split, name, value in
                                  (("train", "error", 50.0 - i), ("test", "error", 60.0 - i), ("train", "loss", 2.0))])
    cache = CurveCache(("error",))
    cache.select([resnet, plain])
    cache.refresh(store)
    curves = ladder_curve_runs(cache, {resnet: ("resnet56", 56, True), plain: ("plain56", 56, False)})
    assert [(c.name, c.depth, c.residual) for c in curves] == [("resnet56", 56, True), ("plain56", 56, False)]
    assert curves[0].train.tolist() == [[10, 40.0], [20, 30.0]] and curves[0].test.tolist() == [[10, 50.0], [20, 40.0]]
    assert curves[1].train == [] and curves[1].test == []


def test_format_duration():
    assert [format_duration(s) for s in (None, 42, 185, 7620)] == ["", "42 s", "3 min 05 s", "2 h 07 min"]


def test_run_row_has_a_cell_per_column(store):
    run_id = store.create_run(spec(), name="resnet20", preset="resnet20", dataset="synthetic", group_name="twin-3",
                              group_kind="twin")
    run = store.get_run(run_id)
    row = run_row(run)
    assert len(row) == len(RUN_TABLE_COLUMNS)
    cells = dict(zip(RUN_TABLE_COLUMNS, row, strict=True))
    assert cells["status"] == "queued" and cells["group"] == "twin-3" and cells["duration"] == ""
    assert run_label(run) == f"#{run_id} resnet20 · synthetic · twin-3"


def test_run_row_of_a_running_run_shows_progress_and_duration(store):
    run_id = store.create_run(spec(), name="r")
    store.claim_run(run_id, "w1", device="cpu")
    store.heartbeat(run_id, "w1", iteration=50, total_iterations=200, epoch=1.25, images_per_s=1234.5)
    store.update_summary(run_id, test_error=12.345)
    run = store.get_run(run_id)
    cells = dict(zip(RUN_TABLE_COLUMNS, run_row(run, now=run.started_at + timedelta(seconds=75)), strict=True))
    assert cells["progress"] == "25% (50/200)"
    assert cells["best err"] == "12.35% test" and cells["img/s"] == "1,234"
    assert cells["duration"] == "1 min 15 s"
    resumed = run_row(run, now=run.started_at + timedelta(seconds=75), trained_seconds=400.0)
    assert dict(zip(RUN_TABLE_COLUMNS, resumed, strict=True))["duration"] == "6 min 40 s"
    assert run.started_at.tzinfo is not None and run.started_at <= datetime.now(UTC)


def test_a_compiled_run_says_it_is_compiling_until_its_first_step(store):
    compiled = spec().model_copy(update={"train": TrainSpec(compile=True)})
    run_id = store.create_run(compiled, name="compiled")
    store.claim_run(run_id, "w1", device="cpu")
    status = dict(zip(RUN_TABLE_COLUMNS, run_row(store.get_run(run_id)), strict=True))["status"]
    assert status == "running: compiling (the first step can take a minute)"
    store.heartbeat(run_id, "w1", iteration=1, total_iterations=200)
    assert dict(zip(RUN_TABLE_COLUMNS, run_row(store.get_run(run_id)), strict=True))["status"] == "running"


def test_the_newest_value_of_a_metric_per_run_in_one_query(store):
    first, second, silent = (store.create_run(spec(), name=name) for name in ("a", "b", "c"))
    for run_id, values in ((first, (1.0, 5.0)), (second, (2.0,))):
        store.append_metrics(run_id, [{"iteration": i, "split": "train", "name": "run_seconds", "value": value}
                                      for i, value in enumerate(values, start=1)])
    store.append_metrics(first, [{"iteration": 3, "split": "train", "name": "loss", "value": 9.0}])
    assert store.latest_metric_values([first, second, silent], "run_seconds") == {first: 5.0, second: 2.0}
    assert store.latest_metric_values([], "run_seconds") == {}
