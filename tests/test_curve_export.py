"""Curves written out for other tools, through the CLI (a real subprocess): a long CSV and TensorBoard event files."""

import csv
import math

import pytest

from storage import open_store
from tests.test_cli import run_cli
from workbench.spec import DataSpec, NetSpec, RunSpec, TrainSpec

SPEC = RunSpec(net=NetSpec(name="tiny", blocks=[1, 1, 1], widths=[4, 8, 16]), data=DataSpec(synthetic_train=64),
               train=TrainSpec(iterations=30))


@pytest.fixture
def home(tmp_path):
    """Two stored runs: training error, loss and learning rate every 10 iterations, a test error at 30, one NaN."""
    with open_store(tmp_path) as store:
        for name, offset in (("plain", 40.0), ("resnet", 20.0)):
            run_id = store.create_run(SPEC, name=name, status="completed")
            rows = [{"iteration": it, "epoch": it / 10, "split": "train", "name": metric, "value": value,
                     "wall_time": 1_700_000_000.0 + it}
                    for it in (10, 20, 30)
                    for metric, value in (("error", offset + 30 - it), ("loss", math.nan if it == 20 else it / 100),
                                          ("lr", 0.1))]
            rows.append({"iteration": 30, "epoch": 3.0, "split": "test", "name": "error", "value": offset + 2,
                         "wall_time": 1_700_000_031.0})
            store.append_metrics(run_id, rows)
    return tmp_path


def test_metrics_csv_has_one_row_per_stored_value_in_long_format(home, tmp_path):
    target = tmp_path / "out" / "curves.csv"
    result = run_cli("metrics", "1", "2", "--csv", str(target), home=home)
    assert result.returncode == 0, result.stderr
    with target.open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["run", "run_name", "metric", "split", "iteration", "epoch", "wall_time", "value"]
    assert len(rows) == 2 * 10
    test = [row for row in rows if row["split"] == "test"]
    assert [(row["run"], row["run_name"], row["metric"], row["iteration"], float(row["value"])) for row in test] == [
        ("1", "plain", "error", "30", 42.0), ("2", "resnet", "error", "30", 22.0)]
    assert float(test[0]["wall_time"]) == 1_700_000_031.0 and float(test[0]["epoch"]) == 3.0
    assert [row["value"] for row in rows if row["metric"] == "loss" and row["iteration"] == "20"] == ["", ""]

    only_error = run_cli("metrics", "2", "--csv", str(target), "--metric", "error", home=home)
    assert only_error.returncode == 0, only_error.stderr
    with target.open() as handle:
        assert {(row["run"], row["metric"]) for row in csv.DictReader(handle)} == {("2", "error")}


def test_metrics_tensorboard_event_files_read_back_with_tensorboard(home, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = run_cli("metrics", "1", "2", "--tensorboard", str(tmp_path / "tb"), home=home)
    assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in (tmp_path / "tb").iterdir()) == ["run1-plain", "run2-resnet"]
    events = EventAccumulator(str(tmp_path / "tb" / "run2-resnet"))
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == ["test/error", "train/error", "train/loss", "train/lr"]
    train = events.Scalars("train/error")
    assert [(event.step, event.value, event.wall_time) for event in train] == [
        (10, 40.0, 1_700_000_010.0), (20, 30.0, 1_700_000_020.0), (30, 20.0, 1_700_000_030.0)]
    assert math.isnan(events.Scalars("train/loss")[1].value)


def test_metrics_of_an_unknown_run_is_a_message(home, tmp_path):
    result = run_cli("metrics", "9", "--csv", str(tmp_path / "x.csv"), home=home)
    assert result.returncode == 2 and "9" in result.stderr and "Traceback" not in result.stderr
