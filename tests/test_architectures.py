"""Architectures side by side: the group plan, the drop-path pair, the CLI, the costs and papers' points, and
what the service refuses for families where a setting has no meaning."""

import pytest

from storage import open_store
from workbench.cli import main
from workbench.errors import SpecError, WorkbenchError
from workbench.jobs import QueueExecutor
from workbench.jobs.analyses import LESION
from workbench.presets import get_preset, list_presets
from workbench.science.architectures import network_costs, paper_points
from workbench.service import Workbench
from workbench.service.plans import (
    drop_path_pair,
    plan_architectures,
    plan_drop_path,
    plan_ladder,
    plan_placements,
    plan_stochastic_depth,
    plan_twin,
)
from workbench.spec import DataSpec, RunSpec, TrainSpec
from workbench.ui.analysis_tab import column_lines, fractal_runs, start_columns

DATA = DataSpec(synthetic_train=64, synthetic_test=32, seed=4)
TRAIN = TrainSpec(iterations=2, batch_size=16, seed=4)


def test_an_architectures_plan_is_one_group_with_identical_data_and_recipe():
    plan = plan_architectures(["resnet56", "densenet-bc-100", "wrn-16-4"], DATA, TRAIN, group="A")
    assert [run.preset for run in plan] == ["resnet56", "densenet-bc-100", "wrn-16-4"]
    assert {run.group_name for run in plan} == {"A"} and {run.group_kind for run in plan} == {"architectures"}
    assert all(run.spec.data == DATA and run.spec.train == TRAIN for run in plan)
    assert [run.spec.net.kind for run in plan] == ["resnet", "densenet", "wide_resnet"]
    with pytest.raises(SpecError, match="at least two networks"):
        plan_architectures(["resnet56"], DATA, TRAIN, group="A")
    with pytest.raises(WorkbenchError, match="unknown preset 'densenet-7'"):
        plan_architectures(["resnet56", "densenet-7"], DATA, TRAIN, group="A")


def test_the_drop_path_pair_differs_only_in_drop_path():
    without, with_drop_path = drop_path_pair("fractalnet-20")
    assert (without.name, with_drop_path.name) == ("fractalnet-20", "fractalnet-20-droppath")
    assert without.model_dump(exclude={"name", "drop_path"}) == with_drop_path.model_dump(exclude={"name", "drop_path"})
    assert (without.drop_path, with_drop_path.drop_path) == (False, True)
    plan = plan_drop_path(get_preset("fractalnet-20-droppath").spec, DATA, TRAIN, list_presets(), group="D")
    assert [run.spec.net.drop_path for run in plan] == [False, True] and plan[1].preset == "fractalnet-20-droppath"
    with pytest.raises(SpecError, match="pick a FractalNet"):
        drop_path_pair("densenet-40")


@pytest.mark.parametrize("plan", [
    lambda net: plan_twin(net, DATA, TRAIN, group="g"),
    lambda net: plan_ladder(net, [40, 100], DATA, TRAIN, group="g"),
    lambda net: plan_placements(net, DATA, TRAIN, group="g"),
    lambda net: plan_stochastic_depth(net, 0.5, DATA, TRAIN, group="g"),
])
def test_resnet_settings_are_refused_for_other_families_with_the_reason(plan):
    with pytest.raises(SpecError, match="is a ResNet setting, and densenet-40 is a DenseNet"):
        plan(get_preset("densenet-40").spec)


def test_costs_and_the_papers_points():
    assert network_costs(get_preset("densenet-bc-100").spec.model_dump()) == {"params": 769_162, "macs": 287_929_692}
    points = paper_points(["wrn-16-4", "densenet121", "fractalnet-40", "resnet56"])
    assert [(p["name"], p["error"]) for p in points] == [("wrn-16-4", 5.02), ("resnet56", 6.97)]


def test_the_cli_queues_an_architectures_group(tmp_path, capsys):
    code = main(["--home", str(tmp_path), "compare-architectures", "--preset", "resnet20", "--preset", "rir-18",
                 "--iterations", "2", "--batch-size", "16", "--seed", "7", "--group", "cli"])
    assert code == 0 and "group cli" in capsys.readouterr().out
    with open_store(tmp_path) as store:
        runs = store.list_runs(group_name="cli")
    assert sorted(run.preset for run in runs) == ["resnet20", "rir-18"]
    assert {run.group_kind for run in runs} == {"architectures"} and {run.spec["train"]["seed"] for run in runs} == {7}
    assert main(["--home", str(tmp_path), "compare-architectures", "--preset", "resnet20"]) == 2
    assert "at least two networks" in capsys.readouterr().err


@pytest.mark.parametrize(("preset", "reason"), [("densenet-40", "concatenated"), ("fractalnet-20", "drop-path"),
                                                ("rir-18", "transient stream")])
def test_the_service_refuses_to_queue_a_lesion_study_of_non_residual_families(tmp_path, preset, reason):
    with open_store(tmp_path) as store:
        run_id = store.create_run(RunSpec(net=get_preset(preset).spec, data=DATA, train=TRAIN), name=preset)
        with pytest.raises(WorkbenchError, match=reason):
            Workbench(store, QueueExecutor(store)).queue_analysis(run_id, LESION)
        assert store.list_analyses(run_id) == []


def test_a_trained_fractalnet_is_evaluated_per_column_as_a_stored_job(tmp_path, capsys):
    from workbench.jobs.worker import default_worker_id, execute_run

    net = {"kind": "fractalnet", "name": "tiny-fractal", "blocks": 2, "columns": 3, "widths": [8, 16],
           "drop_path": True}
    spec = RunSpec.model_validate({"net": net, "data": DATA.model_dump(), "train": {
        "iterations": 4, "batch_size": 16, "precision": "fp32", "log_every": 2}})
    with open_store(tmp_path) as store:
        run_id = store.create_run(spec, name="tiny-fractal")
        store.claim_run(run_id, default_worker_id())
        execute_run(store, run_id, default_worker_id())
    assert main(["--home", str(tmp_path), "fractal-columns", str(run_id), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "all columns joined" in out and "column 3 alone (8 convs deep)" in out
    with open_store(tmp_path) as store:
        [analysis] = store.list_analyses(run_id, "fractal_columns")
        assert analysis.status == "completed"
        assert [row["column"] for row in analysis.result["columns"]] == [1, 2, 3]
        assert all(0.0 <= row["error"] <= 100.0 for row in analysis.result["columns"])
        ctx = Workbench(store, QueueExecutor(store))
        assert fractal_runs(ctx) == [(f"#{run_id} tiny-fractal · {DATA.name}", run_id)]
        shown = column_lines(ctx, run_id)
        assert shown.startswith("All columns joined: **") and "column 2 alone (4 convs deep)" in shown
        resnet = store.create_run(RunSpec(net=get_preset("resnet20").spec, data=DATA, train=TRAIN), name="r")
        with pytest.raises(WorkbenchError, match="resnet20 is a resnet network"):
            ctx.queue_analysis(resnet, "fractal_columns")
        with pytest.raises(WorkbenchError, match="needs a completed run"):
            start_columns(ctx, resnet)
        assert column_lines(ctx, resnet) == "No per-column evaluation stored for this run yet."


def test_a_finished_architectures_group_is_written_up_with_its_figure(tmp_path, capsys):
    from workbench.jobs.worker import default_worker_id, execute_run

    nets = [{"kind": "densenet", "name": "tiny-dense", "blocks": [1, 1, 1], "growth_rate": 4},
            {"kind": "wide_resnet", "name": "tiny-wide", "depth": 10, "widen_factor": 1}]
    train = TrainSpec(iterations=2, batch_size=16, precision="fp32", log_every=1)
    with open_store(tmp_path) as store:
        service = Workbench(store, QueueExecutor(store))
        plan = plan_architectures([RunSpec.model_validate({"net": net}).net for net in nets], DATA, train, group="T")
        run_ids = service.submit(plan)
        assert main(["--home", str(tmp_path), "architectures-report", "--group", "T", "--docs", str(tmp_path)]) == 2
        assert "not every run of 'T' has completed" in capsys.readouterr().err
        for run_id in run_ids:
            store.claim_run(run_id, default_worker_id())
            execute_run(store, run_id, default_worker_id())
    assert main(["--home", str(tmp_path), "architectures-report", "--group", "T", "--docs", str(tmp_path / "d")]) == 0
    report = (tmp_path / "d" / "architectures.md").read_text()
    assert "| tiny-dense | densenet |" in report and "| tiny-wide | wide_resnet |" in report
    assert "architectures-report --group T" in report
    assert (tmp_path / "d" / "figures" / "error_vs_cost.png").stat().st_size > 10_000
    assert main(["--home", str(tmp_path), "architectures-report", "--group", "nope"]) == 2
    assert "there is no group 'nope'" in capsys.readouterr().err
