"""The Compare tab's handlers: redraw only when something changed, so a user's zoom survives polling."""

import base64
import json
import zipfile
from dataclasses import astuple

import gradio as gr
import numpy as np
import pytest

from storage import open_store
from workbench.presets import get_preset
from workbench.spec import DataSpec, NetSpec, RunSpec, TrainSpec
from workbench.ui.compare_tab import (
    NO_BAND,
    NO_GROUP,
    CompareView,
    Options,
    export_curves,
    follow_group,
    pick_group,
    redraw,
    tick,
)
from workbench.ui.context import WorkbenchContext
from workbench.viz.charts import EMA, RUNNING_MEAN

OPTIONS = ("error", "iterations", 0.0, EMA, False)
CIFAR10 = DataSpec(name="cifar10", download=True)


@pytest.fixture
def ctx(tmp_path):
    with open_store(tmp_path) as store:
        yield WorkbenchContext(store, None, [])


def log(store, run_id: int, iterations, split: str = "train") -> None:
    store.append_metrics(run_id, [
        {"iteration": i, "epoch": i / 10, "split": split, "name": name, "value": 50.0}
        for i in iterations for name in ("error", "loss")
    ])


def is_skip(value) -> bool:
    return value == gr.skip()


def live(outputs) -> dict:
    """The figures a tick sends to the charts already on the page, {elem_id: plotly JSON}."""
    assert all(is_skip(outputs[i]) for i in (0, 2, 3)), "a tick must leave the charts (and their zoom) alone"
    return decoded(json.loads(outputs[5]))


def decoded(node):
    """Plotly JSON with its base64 typed arrays ({"dtype", "bdata"}) as plain lists."""
    if isinstance(node, dict) and "bdata" in node:
        return np.frombuffer(base64.b64decode(node["bdata"]), dtype=node["dtype"]).tolist()
    if isinstance(node, dict):
        return {key: decoded(value) for key, value in node.items()}
    return [decoded(value) for value in node] if isinstance(node, list) else node


def twin(ctx, kind: str = "twin") -> list[int]:
    return [
        ctx.store.create_run(RunSpec(net=NetSpec(depth=20, shortcut=shortcut)), name=name, group_name="G",
                             group_kind=kind, preset=name)
        for name, shortcut in (("plain20", "none"), ("resnet20", "A"))
    ]


def test_tick_skips_until_new_rows_arrive(ctx):
    run_ids = twin(ctx)
    log(ctx.store, run_ids[0], [10, 20])
    figure, verdict, figure_6, depth, costs, channel, view = redraw(ctx, run_ids, CompareView(), *OPTIONS)
    assert len(figure.data) == 1 and channel == ""
    assert verdict == figure_6 == depth == costs == gr.update(visible=False)
    assert all(is_skip(value) for value in tick(ctx, view, *OPTIONS))
    log(ctx.store, run_ids[1], [10])
    log(ctx.store, run_ids[1], [10], split="test")
    figure = live(tick(ctx, view, *OPTIONS))["curves-plot"]
    assert len(figure["data"]) == 3 and figure["layout"]["uirevision"] == view.revision
    assert all(is_skip(value) for value in tick(ctx, view, *OPTIONS))


def test_smoothing_goes_to_the_chart_in_place_and_a_new_selection_draws_a_new_chart(ctx):
    run_ids = twin(ctx)
    ctx.store.append_metrics(run_ids[0], [{"iteration": i, "split": "train", "name": "error", "value": v}
                                          for i, v in ((1, 10.0), (2, 20.0))])
    *_, view = redraw(ctx, run_ids, CompareView(), *OPTIONS)
    figure = live(redraw(ctx, run_ids, view, "error", "iterations", 0.5, EMA, False))["curves-plot"]
    assert figure["data"][0]["y"] == pytest.approx([10.0, 16.6667], abs=1e-3)
    figure = live(redraw(ctx, run_ids, view, "error", "iterations", 0.5, RUNNING_MEAN, False))["curves-plot"]
    assert figure["data"][0]["y"] == [10.0, 15.0]
    redrawn = redraw(ctx, run_ids[:1], view, "error", "iterations", 0.5, EMA, False)
    assert redrawn[0].layout.uirevision != figure["layout"]["uirevision"] and redrawn[5] == ""


def test_redraw_skips_when_selection_and_options_are_unchanged(ctx):
    run_ids = twin(ctx)
    log(ctx.store, run_ids[0], [10])
    *_, view = redraw(ctx, run_ids, CompareView(), *OPTIONS)
    assert all(is_skip(value) for value in redraw(ctx, run_ids, view, *OPTIONS))
    figure, *_ = redraw(ctx, run_ids, view, "loss", "epochs", 0.0, EMA, True)
    assert figure.layout.yaxis.type == "log" and figure.layout.xaxis.title.text == "epochs"


def ladder(ctx, data: DataSpec = CIFAR10) -> dict[str, int]:
    return {
        name: ctx.store.create_run(RunSpec(net=NetSpec(depth=depth, shortcut=shortcut), data=data),
                                   name=f"{name} (L)", group_name="L", group_kind="ladder", preset=name)
        for name, depth, shortcut in (("plain20", 20, "none"), ("resnet20", 20, "A"),
                                      ("plain56", 56, "none"), ("resnet56", 56, "A"))
    }


def log_error(store, run_id: int, iterations, value: float, split: str = "train") -> None:
    store.append_metrics(run_id, [{"iteration": i, "epoch": i / 10, "split": split, "name": "error", "value": value}
                                  for i in iterations])


def test_runs_added_to_the_picked_group_join_the_picker_and_a_run_taken_out_stays_out(ctx):
    first, second = twin(ctx)
    view = CompareView()
    picked, view = pick_group(ctx, "G", view)
    assert picked == [first, second]
    assert is_skip(follow_group(ctx, "G", picked, view)), "nothing new"
    trial = ctx.store.create_run(RunSpec(net=NetSpec(depth=32)), name="resnet32", group_name="G", group_kind="twin")
    joined = follow_group(ctx, "G", [second], view)  # the user took the first run out meanwhile
    assert joined["value"] == [second, trial]
    assert (f"#{trial} resnet32 · synthetic · G", trial) in joined["choices"]
    assert is_skip(follow_group(ctx, "G", [second, trial], view)), "the first run is not added back"
    assert is_skip(follow_group(ctx, NO_GROUP, [second, trial], view))


def test_a_group_picked_before_a_session_followed_it_is_followed_from_its_runs_then(ctx):
    first, second = twin(ctx)
    view = CompareView()  # the group came from the address or a launch, not from the group picker
    assert is_skip(follow_group(ctx, "G", [first, second], view))
    third = ctx.store.create_run(RunSpec(net=NetSpec(depth=32)), name="resnet32", group_name="G", group_kind="twin")
    assert follow_group(ctx, "G", [first, second], view)["value"] == [first, second, third]


def test_a_ladder_group_shows_the_verdict_figure6_and_error_against_depth(ctx):
    runs = ladder(ctx)
    assert pick_group(ctx, "L", CompareView())[0] == sorted(runs.values())
    curves, verdict, figure_6, depth, _, _, view = redraw(ctx, sorted(runs.values()), CompareView(), *OPTIONS)
    assert len(curves.data) == 0
    assert verdict["visible"] is True and "Not enough data yet" in verdict["value"]
    assert figure_6["visible"] is True and depth["visible"] is True
    paper = [trace for trace in depth["value"].data if "He et al." in trace.name][0]
    assert list(paper.x) == [20, 56] and list(paper.y) == [8.75, 6.97]

    for name, error in (("plain20", 30.0), ("plain56", 45.0), ("resnet20", 25.0), ("resnet56", 20.0)):
        log_error(ctx.store, runs[name], range(10, 101, 10), error)
        log_error(ctx.store, runs[name], [50, 100], error + 5, split="test")
    outputs = tick(ctx, view, *OPTIONS)
    verdict, figures = outputs[1], live(outputs)
    assert verdict.startswith("**Not enough evidence.**") and "Welch's t-test needs at least two" in verdict
    assert "plain56" in verdict and "no deeper residual net trains worse" in verdict
    axes = {trace["name"]: trace.get("xaxis", "x") for trace in figures["compare-figure6"]["data"]}
    assert axes["plain56 train (45.0%)"] == "x" and axes["resnet56 test (25.0%)"] == "x2"
    finals = {trace["name"]: trace["y"] for trace in figures["depth-plot"]["data"]}
    assert finals["plain train"] == [30.0, 45.0] and finals["ResNet test"] == [30.0, 25.0]
    assert all(is_skip(value) for value in tick(ctx, view, *OPTIONS))


def test_a_ladder_over_three_seeds_draws_seed_bands_and_tests_the_verdict_over_seeds(ctx):
    nets = {"plain20": (20, "none", 30.0), "plain56": (56, "none", 45.0), "resnet20": (20, "A", 25.0),
            "resnet56": (56, "A", 20.0)}
    run_ids = []
    for name, (depth, shortcut, error) in nets.items():
        for seed in range(3):
            spec = RunSpec(net=NetSpec(depth=depth, shortcut=shortcut), train=TrainSpec(seed=seed))
            run_id = ctx.store.create_run(spec, name=f"{name} seed {seed}", group_name="S", group_kind="ladder",
                                          preset=name)
            log_error(ctx.store, run_id, range(10, 101, 10), error + seed)
            run_ids.append(run_id)
    curves, verdict, *_ = redraw(ctx, run_ids, CompareView(), *OPTIONS)
    assert verdict["value"].startswith("**Degradation observed.**")
    assert "Welch's t-test over seeds" in verdict["value"]
    assert "plain56 46.0 ± 1.0% (n=3), best 45.0%" in verdict["value"]
    legend = [trace.name for trace in curves.data if trace.showlegend is not False]
    assert legend[0] == "plain20 [3 seeds] · synthetic · S train n=3, final 31.00 ± 1.00%" and len(legend) == 4
    assert sum(trace.fill == "toself" for trace in curves.data) == 4
    *_, view = redraw(ctx, run_ids, CompareView(), *OPTIONS)
    each = live(tick(ctx, view, "error", "iterations", 0.0, EMA, False, NO_BAND))["curves-plot"]
    assert len(each["data"]) == 12
    named = live(tick(ctx, view, *astuple(Options(band=NO_BAND, legend="name + group"))))["curves-plot"]
    assert named["data"][0]["name"].startswith(f"#{run_ids[0]} plain20 seed 0 · S train")


def test_a_seeded_ladder_s_figure6_depth_chart_and_verdict_follow_the_band_and_summary_choices(ctx):
    run_ids = []
    for name, depth, shortcut in (("plain20", 20, "none"), ("plain56", 56, "none")):
        for seed in range(3):
            spec = RunSpec(net=NetSpec(depth=depth, shortcut=shortcut), train=TrainSpec(seed=seed))
            run_id = ctx.store.create_run(spec, name=f"{name} seed {seed}", group_name="S", group_kind="ladder")
            # plain56 ends above plain20 but its best (at iteration 20) is below it.
            low = 10.0 if name == "plain56" else 20.0
            ctx.store.append_metrics(run_id, [{"iteration": i, "split": "train", "name": "error", "value": v + seed}
                                              for i, v in ((10, 90.0), (20, low), (100, 35.0 if low == 10 else 20.0))])
            log_error(ctx.store, run_id, [100], 40.0 + seed, split="test")
            run_ids.append(run_id)
    _, verdict, figure_6, depth, _, _, view = redraw(ctx, run_ids, CompareView(), *OPTIONS)
    assert verdict["value"].startswith("**Degradation observed.**")
    names = [trace.name for trace in figure_6["value"].data if trace.showlegend is not False]
    assert names == ["plain20 train n=3, final 21.00 ± 1.00%", "plain20 test n=3, final 41.00 ± 1.00%",
                     "plain56 train n=3, final 36.00 ± 1.00%", "plain56 test n=3, final 41.00 ± 1.00%"]
    plain = {trace.name: trace for trace in depth["value"].data}["plain test (n=3, mean ± std)"]
    assert list(plain.x) == [20, 56] and list(plain.error_y.array) == [1.0, 1.0]

    outputs = tick(ctx, view, "error", "iterations", 0.0, EMA, False, "min-max", False, "best", None)
    figures = live(outputs)
    assert outputs[1].startswith("**No degradation observed.**") and "lowest training error" in outputs[1]
    legend = [trace["name"] for trace in figures["compare-figure6"]["data"] if trace.get("showlegend") is not False]
    assert legend[2] == "plain56 train n=3, best 11.00 ± 1.00%"
    curves = [trace["name"] for trace in figures["curves-plot"]["data"] if trace.get("showlegend") is not False]
    assert "plain56 [3 seeds] · synthetic · S train n=3, best 11.00 ± 1.00%" in curves
    spread = {trace["name"]: trace for trace in figures["depth-plot"]["data"]}["plain test (n=3, min-max)"]
    assert spread["error_y"]["array"] == [1.0, 1.0]
    at = tick(ctx, view, "error", "iterations", 0.0, EMA, False, "min-max", False, "at iteration", 20)[1]
    assert at.startswith("**No degradation observed.**") and "iterations 19-20" in at
    each = live(tick(ctx, view, "error", "iterations", 0.0, EMA, False, NO_BAND, False, "final", None))
    assert len(each["compare-figure6"]["data"]) == 12


def test_ladder_outputs_follow_new_error_rows_while_loss_is_on_screen(ctx):
    runs = ladder(ctx)
    *_, view = redraw(ctx, sorted(runs.values()), CompareView(), "loss", "iterations", 0.0, EMA, False)
    for name, error in (("plain20", 30.0), ("plain56", 25.0)):
        log_error(ctx.store, runs[name], range(10, 101, 10), error)
    outputs = tick(ctx, view, "loss", "iterations", 0.0, EMA, False)
    figures = live(outputs)
    assert "curves-plot" not in figures
    assert outputs[1].startswith("**No degradation observed.**") and len(figures["compare-figure6"]["data"]) == 2


def test_paper_stars_only_for_a_cifar10_ladder(ctx):
    runs = ladder(ctx, data=DataSpec())
    *_, depth, _, _, _ = redraw(ctx, sorted(runs.values()), CompareView(), *OPTIONS)
    assert depth["visible"] is True and not [trace for trace in depth["value"].data if "He et al." in trace.name]


def test_tensorboard_export_of_the_curves_on_screen_is_a_zip_with_a_folder_per_run(ctx):
    run_ids = twin(ctx)
    log(ctx.store, run_ids[0], [10, 20])
    *_, view = redraw(ctx, run_ids, CompareView(), *OPTIONS)
    message, button = export_curves(ctx, "loss", "tensorboard", view)
    with zipfile.ZipFile(button.value["path"]) as archive:
        folders = {name.split("/")[0] for name in archive.namelist() if "tfevents" in name}
    assert folders == {f"run{run_ids[0]}-plain20", f"run{run_ids[1]}-resnet20"} and "Ready" in message
    message, button = export_curves(ctx, "loss", "csv", CompareView())
    assert "pick runs" in message and button["visible"] is False


def test_an_architectures_group_shows_error_against_parameters_and_multiply_adds(ctx):
    nets = {name: get_preset(name).spec for name in ("resnet20", "densenet-40", "wrn-16-4")}
    runs = {name: ctx.store.create_run(RunSpec(net=net, data=CIFAR10), name=f"{name} (A)", group_name="A",
                                       group_kind="architectures", preset=name)
            for name, net in nets.items()}
    curves, verdict, figure_6, depth, costs, _, view = redraw(ctx, sorted(runs.values()), CompareView(), *OPTIONS)
    assert costs["visible"] is True and not verdict["visible"] and not depth["visible"]
    stars = [trace for trace in costs["value"].data if trace.marker.symbol == "star"]
    assert sorted(zip(stars[0].x, stars[0].y, strict=True)) == [(269_722, 8.75), (1_019_722, 5.24), (2_748_890, 5.02)]
    assert sorted(stars[1].x) == [40_551_040, 264_812_928, 392_612_352]
    for name, error in (("resnet20", 12.0), ("densenet-40", 10.0), ("wrn-16-4", 11.0)):
        log_error(ctx.store, runs[name], [50, 100], error, split="test")
    costs = tick(ctx, view, *OPTIONS)[4]
    tested = [trace for trace in costs["value"].data if trace.name == "runs, test error"]
    assert sorted(zip(tested[1].x, tested[1].y, strict=True)) == [
        (40_551_040, 12.0), (264_812_928, 10.0), (392_612_352, 11.0)]
    assert sorted(tested[0].y) == [10.0, 11.0, 12.0]
