"""The training engine in-process: schedules, metrics, checkpoints, exact resume, divergence."""

import dataclasses
import math

import pytest
import torch

from tests.sinks import StopAt
from workbench.data import load_dataset
from workbench.spec import DataSpec, NetSpec, RunSpec, TrainSpec
from workbench.training import LearningRateSchedule, MemorySink, TrainingDiverged, fit, load_checkpoint
from workbench.training.loop import RUN_SECONDS, resolve_precision

TINY_NET = NetSpec(name="tiny", blocks=[1, 1, 1], widths=[4, 8, 16])


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return load_dataset(DataSpec(synthetic_train=512, synthetic_test=256), home=tmp_path_factory.mktemp("home"))


def tiny_run(**train) -> RunSpec:
    recipe = {"epochs": 2, "batch_size": 64, "log_every": 2, "precision": "fp32", **train}
    return RunSpec(net=TINY_NET, train=TrainSpec(**recipe))


def test_step_schedule_divides_by_ten_at_half_and_three_quarters():
    schedule = LearningRateSchedule(TrainSpec(iterations=64000), 64000)
    assert [schedule.lr(i) for i in (0, 31999, 32000, 47999, 48000, 63999)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
    )


def test_cosine_and_linear_warmup():
    schedule = LearningRateSchedule(TrainSpec(iterations=100, schedule="cosine", warmup_iterations=10), 100)
    assert schedule.lr(0) == pytest.approx(0.1 * 0.5 * (1 + math.cos(0)) / 10)
    assert schedule.lr(9) == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 9 / 100)))
    assert schedule.lr(50) == pytest.approx(0.05)
    assert schedule.lr(100) == pytest.approx(0.0)


def test_resnet110_warmup_holds_0_01_until_training_error_is_below_80_percent():
    schedule = LearningRateSchedule(TrainSpec(iterations=1000, resnet110_warmup=True), 1000)
    assert schedule.lr(0) == 0.01
    schedule.observe_train_error(85.0)
    assert schedule.lr(300) == 0.01
    schedule.observe_train_error(79.0)
    assert schedule.lr(300) == 0.1
    restored = LearningRateSchedule(TrainSpec(iterations=1000, resnet110_warmup=True), 1000)
    restored.load_state_dict(schedule.state_dict())
    assert restored.lr(300) == 0.1


def test_auto_precision_is_bf16_only_where_supported():
    assert resolve_precision("fp32", torch.device("cpu")) is None
    assert resolve_precision("bf16", torch.device("cpu")) == torch.bfloat16
    assert resolve_precision("auto", torch.device("cuda")) == torch.bfloat16
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert resolve_precision("auto", torch.device("cpu")) == (torch.bfloat16 if native else None)


def test_fit_logs_every_interval_once_evaluates_each_epoch_and_checkpoints(tiny_data, tmp_path):
    sink = MemorySink()
    result = fit(tiny_run(), tmp_path, sink, dataset=tiny_data)
    assert result.status == "completed" and result.iteration == result.total_iterations == 16
    train_errors = [r["iteration"] for r in sink.rows if r["split"] == "train" and r["name"] == "error"]
    assert train_errors == list(range(2, 17, 2))
    test_errors = [(r["iteration"], r["epoch"]) for r in sink.rows if r["split"] == "test" and r["name"] == "error"]
    assert test_errors == [(8, 1.0), (16, 2.0)]
    names = {r["name"] for r in sink.rows}
    assert {"loss", "error", "lr", "images_per_s", "epoch_time", "grad_norm/layer1", "grad_norm/layer3"} <= names
    last = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert last["iteration"] == 16 and last["loader"]["epoch"] == 1
    assert (tmp_path / "checkpoints" / "best.pt").exists()
    assert result.best_error == min(r["value"] for r in sink.rows if r["split"] == "test" and r["name"] == "error")


def test_validation_hold_out_is_evaluated_alongside_test(tmp_path):
    data = load_dataset(DataSpec(synthetic_train=320, synthetic_test=64, validation_size=64), home=tmp_path)
    sink = MemorySink()
    fit(tiny_run(epochs=1), tmp_path / "run", sink, dataset=data)
    splits = {r["split"] for r in sink.rows if r["name"] == "error"}
    assert splits == {"train", "val", "test"}


def test_best_checkpoint_is_chosen_on_validation_and_reports_the_test_error_there(tmp_path):
    """Validation labels shifted by one class make validation error rise as test error falls, so the two splits
    disagree on the best evaluation; the kept checkpoint and the reported errors follow validation."""
    data = load_dataset(DataSpec(synthetic_train=576, synthetic_test=256, validation_size=64), home=tmp_path)
    data = dataclasses.replace(data, val_labels=(data.val_labels + 1) % 10)
    sink = MemorySink()
    result = fit(tiny_run(epochs=4, eval_every=4), tmp_path / "run", sink, dataset=data)

    def errors(split):
        return {r["iteration"]: r["value"] for r in sink.rows if r["split"] == split and r["name"] == "error"}

    val, test = errors("val"), errors("test")
    val_best, test_best = min(val, key=val.get), min(test, key=test.get)
    assert val_best != test_best, "the splits must disagree for this test to tell them apart"
    kept = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")
    assert kept["iteration"] == val_best and kept["metadata"]["best_split"] == "val"
    assert (result.best_split, result.best_error) == ("val", val[val_best])
    assert result.test_error_at_best == test[val_best] != test[test_best]
    assert result.test_error == test[max(test)]
    assert sink.last_progress["test_error"] == test[max(test)]


def test_stopping_and_resuming_gives_the_same_weights_and_curve_as_training_straight(tiny_data, tmp_path):
    straight_sink = MemorySink()
    fit(tiny_run(epochs=4), tmp_path / "straight", straight_sink, dataset=tiny_data)

    stopped_sink = StopAt(16)
    first = fit(tiny_run(epochs=4), tmp_path / "resumed", stopped_sink, dataset=tiny_data)
    assert first.status == "cancelled" and first.iteration == 16
    # A second stop mid-epoch, then the rest.
    stopped_sink.stop_at = 21
    second = fit(tiny_run(epochs=4), tmp_path / "resumed", stopped_sink, dataset=tiny_data)
    assert second.status == "cancelled" and second.iteration == 22
    stopped_sink.stop_at = 10**9
    final = fit(tiny_run(epochs=4), tmp_path / "resumed", stopped_sink, dataset=tiny_data)
    assert final.status == "completed" and final.iteration == 32

    straight = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")["model"]
    resumed = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")["model"]
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key

    def curve(rows):
        return [(r["iteration"], r["split"], r["name"], r["value"]) for r in rows
                if r["name"] in ("loss", "error", "lr")]

    assert curve(stopped_sink.rows) == curve(straight_sink.rows)


def test_seconds_and_images_per_s_cover_the_whole_run_across_a_resume(tiny_data, tmp_path):
    class Speeds(StopAt):
        def progress(self, state):
            super().progress(state)
            if "images_per_s" in state:
                self.speed = state["images_per_s"]

    sink = Speeds(8)
    fit(tiny_run(), tmp_path, sink, dataset=tiny_data)
    before = [row["value"] for row in sink.rows if row["name"] == RUN_SECONDS]
    sink.stop_at = 10**9
    fit(tiny_run(), tmp_path, sink, dataset=tiny_data)
    seconds = [row["value"] for row in sink.rows if row["name"] == RUN_SECONDS]
    assert seconds[:len(before)] == before and seconds == sorted(seconds) and seconds[-1] > before[-1] > 0
    assert sink.speed == pytest.approx(16 * 64 / seconds[-1])


def test_a_diverging_run_stops_with_a_clear_message(tiny_data, tmp_path):
    # Infinite inputs make the loss NaN on the first step, the same path a learning rate blow-up takes.
    broken = dataclasses.replace(tiny_data, info=dataclasses.replace(tiny_data.info, mean=(math.inf,) * 3))
    with pytest.raises(TrainingDiverged, match="lower the learning rate"):
        fit(tiny_run(), tmp_path, MemorySink(), dataset=broken)


def test_network_output_follows_the_dataset_classes(tmp_path):
    data = load_dataset(DataSpec(synthetic_train=128, synthetic_test=64), home=tmp_path)
    run = RunSpec(net=TINY_NET.model_copy(update={"num_classes": 100}), train=TrainSpec(iterations=2, batch_size=32))
    result = fit(run, tmp_path / "run", MemorySink(), dataset=data)
    assert result.net.num_classes == 10
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["run_spec"]["net"]["num_classes"] == 10


def test_unit_input_gradient_norms_are_recorded_at_the_configured_interval(tiny_data, tmp_path):
    sink = MemorySink()
    fit(tiny_run(epochs=1, grad_norm_every=3), tmp_path, sink, dataset=tiny_data)
    recorded = sorted({(r["iteration"], r["name"]) for r in sink.rows if r["name"].startswith("unit_grad/")})
    assert recorded == [(i, f"unit_grad/{u}") for i in (3, 6) for u in (1, 2, 3)]
    assert all(r["value"] > 0 for r in sink.rows if r["name"].startswith("unit_grad/"))


def test_resuming_a_run_that_already_reached_its_budget_takes_no_extra_step(tiny_data, tmp_path):
    fit(tiny_run(epochs=1), tmp_path, MemorySink(), dataset=tiny_data)
    before = load_checkpoint(tmp_path / "checkpoints" / "last.pt")["model"]
    again = fit(tiny_run(epochs=1), tmp_path, MemorySink(), dataset=tiny_data)
    assert again.status == "completed" and again.iteration == 8
    after = load_checkpoint(tmp_path / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_run_restarted_without_a_checkpoint_drops_the_rows_of_its_first_attempt(tiny_data, tmp_path):
    sink = MemorySink()
    # Rows a first attempt logged before it was killed, with no checkpoint written.
    sink.rows = [{"iteration": i, "epoch": i / 8, "split": "train", "name": "error", "value": 50.0} for i in (2, 4)]
    fit(tiny_run(epochs=1), tmp_path, sink, dataset=tiny_data)
    keys = [(r["split"], r["name"], r["iteration"]) for r in sink.rows]
    assert len(keys) == len(set(keys))
    assert [r["iteration"] for r in sink.rows if (r["split"], r["name"]) == ("train", "error")] == [2, 4, 6, 8]


@pytest.mark.slow
def test_a_compiled_run_trains_checkpoints_and_resumes_to_the_eager_curve(tiny_data, tmp_path):
    eager_sink = MemorySink()
    fit(tiny_run(epochs=2), tmp_path / "eager", eager_sink, dataset=tiny_data)

    sink = StopAt(8)
    first = fit(tiny_run(epochs=2, compile=True), tmp_path / "compiled", sink, dataset=tiny_data)
    assert first.status == "cancelled" and first.iteration == 8
    assert (tmp_path / "compiled" / "checkpoints" / "last.pt").is_file()
    sink.stop_at = 10**9
    final = fit(tiny_run(epochs=2, compile=True), tmp_path / "compiled", sink, dataset=tiny_data)
    assert final.status == "completed" and final.iteration == 16

    def losses(rows):
        return {r["iteration"]: r["value"] for r in rows if r["name"] == "loss" and r["split"] == "train"}

    compiled, eager = losses(sink.rows), losses(eager_sink.rows)
    assert sorted(compiled) == sorted(eager)
    # Inductor fuses and reorders float operations, so the curve matches closely, not bit for bit.
    assert [compiled[i] for i in sorted(compiled)] == pytest.approx([eager[i] for i in sorted(eager)], rel=1e-3)
