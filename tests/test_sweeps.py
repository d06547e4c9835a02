"""Sweeps: planning grids and random searches, refusing bad search spaces, a TPE search and median pruning through
real worker processes, and the report (parallel coordinates, parameter importance, best trial) from stored runs."""

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from test_jobs import wait_for

from storage import open_store
from storage.status import COMPLETED, QUEUED, SWEEP
from workbench.errors import SpecError, WorkbenchError
from workbench.jobs import QueueExecutor
from workbench.jobs.dispatch import dispatch
from workbench.jobs.sweeps import next_params, sweep_trials
from workbench.service import Workbench
from workbench.service.plans import plan_sweep
from workbench.spec import DataSpec, NetSpec, RunSpec, TrainSpec, parse_spec
from workbench.sweep_spec import MAX_GRID_TRIALS, SweepSpec, parse_space
from workbench.viz.sweeps import parallel_coordinates

ROOT = Path(__file__).resolve().parents[1]
TINY_NET = NetSpec(name="tiny", blocks=[1, 1, 1], widths=[4, 8, 16])
BASE = RunSpec(net=TINY_NET, data=DataSpec(synthetic_train=256, synthetic_test=64),
               train=TrainSpec(epochs=3, batch_size=32, log_every=4, precision="fp32"))


def sweep_of(space: str, epochs: int = 3, **fields) -> SweepSpec:
    base = BASE.model_copy(update={"train": BASE.train.model_copy(update={"epochs": epochs})})
    return parse_spec(SweepSpec, {"base": base.model_dump(), "space": parse_space(space), **fields})


def worker(home: Path) -> subprocess.CompletedProcess:
    """A real worker process that serves the store until nothing is left to do."""
    return subprocess.run([sys.executable, "-m", "workbench", "--home", str(home), "worker", "--exit-when-idle"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)


def complete(store, run_id: int, error: float, iteration: int = 8) -> None:
    """Finish a queued trial as a worker would, with `error` as its test error at the end of epoch 1."""
    store.claim_run(run_id, "w")
    store.append_metrics(run_id, [{"iteration": iteration, "epoch": 1, "split": "test", "name": "error",
                                   "value": error}])
    store.transition(run_id, COMPLETED, worker_id="w")


@pytest.fixture
def bench(tmp_path):
    with open_store(tmp_path) as store:
        yield Workbench(store, QueueExecutor(store))


# -- planning -------------------------------------------------------------------------------------


def test_a_grid_is_every_combination_as_one_sweep_group():
    plan = plan_sweep(sweep_of("lr=0.1,0.05; depth=8,14; shortcut=A,B"), group="g")
    assert len(plan) == 8
    assert {(run.group_name, run.group_kind) for run in plan} == {("g", SWEEP)}
    combos = [(run.spec.train.lr, run.spec.net.depth, run.spec.net.shortcut) for run in plan]
    assert combos == [(lr, depth, shortcut) for lr in (0.1, 0.05) for depth in (8, 14) for shortcut in "AB"]
    assert plan[2].name == "trial 3: lr=0.1, depth=14, shortcut=A"
    assert plan[2].spec.net.name == "tiny14" and plan[2].spec.net.blocks == [2, 2, 2]
    assert all(run.spec.data == BASE.data and run.spec.train.epochs == 3 for run in plan)


def test_a_random_search_is_seeded_reproducible_and_within_its_bounds():
    space = "lr=0.001..0.3 log; warmup=0..50; batch_size=16,32"
    first = plan_sweep(sweep_of(space, method="random", trials=20, seed=7), group="g")
    again = plan_sweep(sweep_of(space, method="random", trials=20, seed=7), group="g")
    other = plan_sweep(sweep_of(space, method="random", trials=20, seed=8), group="g")
    assert [run.spec for run in first] == [run.spec for run in again]
    assert [run.spec for run in first] != [run.spec for run in other]
    assert all(0.001 <= run.spec.train.lr <= 0.3 and 0 <= run.spec.train.warmup_iterations <= 50
               and run.spec.train.batch_size in (16, 32) for run in first)
    assert isinstance(first[0].spec.train.warmup_iterations, int)
    # log-uniform: about as many draws below 0.0173 (the geometric middle) as above
    assert 5 <= sum(run.spec.train.lr < 0.0173 for run in first) <= 15


def test_the_objective_is_the_validation_error_when_the_run_holds_a_split_out():
    assert sweep_of("lr=0.1").objective_label == "final test error (%)"
    held_out = BASE.model_copy(update={"data": BASE.data.model_copy(update={"validation_size": 32})})
    sweep = parse_spec(SweepSpec, {"base": held_out.model_dump(), "space": parse_space("lr=0.1"), "objective": "best"})
    assert (sweep.objective_split, sweep.objective_label) == ("val", "best validation error (%)")


@pytest.mark.parametrize(("fields", "message"), [
    ({"space": {"momentum": {"values": [0.9]}}}, "unknown sweep parameter 'momentum'; choose from lr, weight_decay"),
    ({"space": {"lr": {"values": []}}}, "the list of values is empty"),
    ({"space": {"depth": {"values": [8, 9]}}}, "depth=9 does not make a valid run: .*6n\\+2 layers"),
    ({"space": {"lr": {"low": 0.1, "high": 0.5}}}, "a grid needs a list of values"),
    ({"space": {"lr": {"values": [0.1]}}, "method": "tpe"}, "a tpe search needs a number of trials"),
    ({"space": {"lr": {"low": 0.0, "high": 0.5, "log": True}}, "method": "random", "trials": 3},
     "a log range needs a low above 0"),
    ({"space": {"shortcut": {"low": 1, "high": 2}}, "method": "random", "trials": 3}, "shortcut takes names"),
    ({"space": {"lr": {"values": [float(i) / 100 for i in range(1, 20)]},
                "seed": {"values": list(range(20))}}}, f"19 x 20 = 380 combinations, more than the {MAX_GRID_TRIALS}"),
])
def test_a_bad_sweep_is_refused_with_what_to_fix(fields, message):
    with pytest.raises(SpecError, match=message):
        parse_spec(SweepSpec, {"base": BASE.model_dump(), **fields})


def test_a_network_setting_of_another_family_is_refused():
    base = {**BASE.model_dump(), "net": {"kind": "densenet", "depth": 10, "growth_rate": 4}}
    with pytest.raises(SpecError, match="shortcut sets net.shortcut, which a densenet network does not have"):
        parse_spec(SweepSpec, {"base": base, "space": parse_space("shortcut=A,B")})


@pytest.mark.parametrize(("text", "message"), [
    ("lr", "NAME=VALUES such as lr=0.1,0.05"),
    ("", "type the parameters to sweep"),
    ("lr=0.1; lr=0.2", "lr is given twice"),
    ("lr=0.3..0.1", "a range goes from low to a higher high"),
])
def test_a_typed_search_space_that_cannot_be_read_says_how_to_write_it(text, message):
    with pytest.raises(SpecError, match=message):
        parse_space(text)


# -- TPE and pruning through real workers ----------------------------------------------------------


def test_a_tpe_sweep_runs_its_trials_through_the_queue_and_reports_the_best(bench, tmp_path):
    sweep = sweep_of("lr=0.001..0.5 log; weight_decay=0.0001,0.001", epochs=1, method="tpe", trials=4)
    group, first = bench.launch_sweep(sweep)
    assert len(first) == 1 and bench.store.get_run(first[0]).status == "queued"
    with pytest.raises(WorkbenchError, match="a sweep named .* exists already"):
        bench.launch_sweep(sweep, group)

    done = worker(tmp_path)
    assert done.returncode == 0, done.stderr

    runs = bench.store.list_runs(group_name=group)
    assert len(runs) == 4 and {run.status for run in runs} == {COMPLETED}
    assert {run.group_kind for run in runs} == {SWEEP}
    assert bench.store.get_sweep(group).finished_at is not None
    report = bench.sweep_report(group)
    assert report.finished and report.best.value == min(trial.value for trial in report.trials)
    assert report.best.value == min(run.last_test_error for run in runs)
    assert all(0.001 <= trial.params["lr"] <= 0.5 for trial in report.trials)
    names = [name for name, _ in report.importance]
    assert "lr" in names and set(names) <= {"lr", "weight_decay"}
    assert sum(share for _, share in report.importance) == pytest.approx(1.0)
    # The study is re-derived from the stored runs: the same trials give the same next suggestion.
    trials = sweep_trials(bench.store, sweep, sorted(runs, key=lambda run: run.id))
    assert next_params(sweep, trials) == next_params(sweep, trials)


def test_a_trial_worse_than_the_median_is_pruned_through_the_cancel_path(bench, tmp_path):
    sweep = sweep_of("lr=0.05,0.1", pruning=True, prune_after=2)
    group, (first, second) = bench.launch_sweep(sweep)
    # Two trials that completed with 0% error at every epoch (imported, as finished runs can be): any real trial is
    # worse at its first epoch, so it is pruned there, before its budget of 3 epochs.
    for number in (3, 4):
        done = bench.store.create_run(BASE, name=f"trial {number}: imported", group_name=group, group_kind=SWEEP,
                                      status=COMPLETED)
        bench.store.append_metrics(done, [{"iteration": 8 * epoch, "epoch": epoch, "split": "test", "name": "error",
                                           "value": 0.0} for epoch in (1, 2, 3)])

    finished = worker(tmp_path)
    assert finished.returncode == 0, finished.stderr

    for run_id in (first, second):
        run = bench.store.get_run(run_id)
        assert run.status == "cancelled", run.error_message
        assert run.error_message.startswith("pruned: test error") and "at epoch 1 is worse than the median 0.00%" \
            in run.error_message and "of 2 completed trials" in run.error_message
        assert run.iteration == 8 < run.total_iterations
    report = bench.sweep_report(group)
    assert report.finished and {trial.run_id for trial in report.trials if trial.pruned} == {first, second}


def test_an_idle_dispatcher_queues_the_next_tpe_trial_instead_of_exiting(bench):
    """A trial that ended after its worker last stepped the sweep: `dispatch --exit-when-idle` queues the next
    trial and serves it, and exits once the sweep has all its trials."""
    group, (first,) = bench.launch_sweep(sweep_of("lr=0.001..0.5 log", epochs=1, method="tpe", trials=2))
    complete(bench.store, first, error=30.0)
    stop = threading.Event()
    dispatcher = threading.Thread(target=dispatch, args=(QueueExecutor(bench.store), bench.store, stop),
                                  kwargs={"exit_when_idle": True, "poll_s": 0.05})
    dispatcher.start()
    try:
        (second,) = wait_for(lambda: bench.store.list_runs(group_name=group, status=QUEUED), timeout=30,
                             what="the next trial")
        time.sleep(0.2)
        assert dispatcher.is_alive(), "a queued trial keeps the dispatcher serving"
        complete(bench.store, second.id, error=20.0)
        dispatcher.join(30)
        assert not dispatcher.is_alive(), "the dispatcher exits once the sweep is done"
    finally:
        stop.set()
        dispatcher.join()
    assert bench.store.get_sweep(group).finished_at is not None


# -- the report -----------------------------------------------------------------------------------


def test_the_parallel_coordinates_and_importance_come_from_stored_runs(bench):
    sweep = sweep_of("lr=0.01,0.1; shortcut=A,B")
    group, ids = bench.launch_sweep(sweep)
    # The error depends only on the learning rate.
    for run_id in ids:
        complete(bench.store, run_id, error=80.0 if bench.store.get_run(run_id).spec["train"]["lr"] == 0.01 else 20.0)
    report = bench.sweep_report(group)
    assert report.importance[0][0] == "lr" and report.importance[0][1] > report.importance[1][1]
    assert report.best.params["lr"] == 0.1 and report.best.value == 20.0

    rows = [{"params": trial.params, "value": trial.value} for trial in report.trials]
    figure = parallel_coordinates(rows, report.parameters, report.sweep.objective_label)
    (trace,) = figure.data
    assert trace.type == "parcoords"
    lr, shortcut, objective = trace.dimensions
    assert list(lr.values) == [0.01, 0.01, 0.1, 0.1] and list(shortcut.ticktext) == ["A", "B"]
    assert list(shortcut.values) == [0, 1, 0, 1]
    assert objective.label == "final test error (%)" and list(objective.values) == [80.0, 80.0, 20.0, 20.0]
    assert json.loads(json.dumps(report.as_dict()))["best"]["run_id"] == report.best.run_id


def test_a_log_parameter_gets_a_log_axis_and_an_empty_sweep_says_so():
    rows = [{"params": {"lr": lr}, "value": v} for lr, v in ((0.001, 50.0), (0.1, 20.0), (0.01, None))]
    (trace,) = parallel_coordinates(rows, ["lr"], "final test error (%)", log_scale={"lr"}).data
    assert list(trace.dimensions[0].values) == pytest.approx([-3.0, -1.0])
    assert list(trace.dimensions[0].ticktext) == ["0.001", "0.01", "0.1"]
    empty = parallel_coordinates(rows[2:], ["lr"], "final test error (%)")
    assert "no trial has finished yet" in empty.layout.annotations[0].text


def test_a_group_that_is_no_sweep_has_no_report(bench):
    with pytest.raises(WorkbenchError, match="group 'nothing' is not a sweep"):
        bench.sweep_report("nothing")


# -- the command line -----------------------------------------------------------------------------


def cli(home: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "workbench", "--home", str(home), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)


def test_the_cli_queues_a_grid_and_reports_its_best_trial(tmp_path):
    refused = cli(tmp_path, "sweep", "--preset", "resnet20", "--grid", "momentum=0.9")
    assert refused.returncode == 2 and "unknown sweep parameter 'momentum'" in refused.stderr
    assert "Traceback" not in refused.stderr

    queued = cli(tmp_path, "sweep", "--preset", "resnet20", "--epochs", "1", "--grid", "lr=0.1,0.05",
                 "--grid", "depth=20,32", "--name", "g")
    assert queued.returncode == 0, queued.stderr
    assert queued.stdout.splitlines() == ["group g (grid sweep, 4 trials)", "1 trial 1: lr=0.1, depth=20",
                                          "2 trial 2: lr=0.1, depth=32", "3 trial 3: lr=0.05, depth=20",
                                          "4 trial 4: lr=0.05, depth=32"]
    with open_store(tmp_path) as store:
        for run_id, error in ((1, 30.0), (2, 20.0), (3, 60.0)):
            complete(store, run_id, error, iteration=79)
        assert store.get_run(2).preset is None and store.get_run(1).spec["net"]["name"] == "resnet20"

    report = cli(tmp_path, "sweep-report", "g", "--json")
    assert report.returncode == 0, report.stderr
    data = json.loads(report.stdout)
    assert data["best"] == {"run_id": 2, "name": "trial 2: lr=0.1, depth=32", "params": {"lr": 0.1, "depth": 32},
                            "value": 20.0}
    assert set(data["importance"]) == {"lr", "depth"} and not data["finished"]
    text = cli(tmp_path, "sweep-report", "g")
    assert "best: run 2 (trial 2: lr=0.1, depth=32), 20.00%" in text.stdout
    assert "workbench export 2 --format bundle" in text.stdout
