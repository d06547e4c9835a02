"""The Compare tab's handlers: redraw only when something changed, so a user's zoom survives polling."""

import gradio as gr
import pytest

from storage import open_store
from workbench.presets import get_preset
from workbench.spec import DataSpec, NetSpec, RunSpec
from workbench.ui.compare_tab import CompareView, pick_group, redraw, tick
from workbench.ui.context import WorkbenchContext

OPTIONS = ("error", "iterations", 0.0, False)
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


def twin(ctx, kind: str = "twin") -> list[int]:
    return [
        ctx.store.create_run(RunSpec(net=NetSpec(depth=20, shortcut=shortcut)), name=name, group_name="G",
                             group_kind=kind, preset=name)
        for name, shortcut in (("plain20", "none"), ("resnet20", "A"))
    ]


def test_tick_skips_until_new_rows_arrive(ctx):
    run_ids = twin(ctx)
    log(ctx.store, run_ids[0], [10, 20])
    figure, verdict, figure_6, depth, costs, view = redraw(ctx, run_ids, *OPTIONS, CompareView())
    assert len(figure.data) == 1
    assert verdict == figure_6 == depth == costs == gr.update(visible=False)
    assert all(is_skip(value) for value in tick(ctx, *OPTIONS, view))
    log(ctx.store, run_ids[1], [10])
    log(ctx.store, run_ids[1], [10], split="test")
    figure, *_, view = tick(ctx, *OPTIONS, view)
    assert len(figure.data) == 3
    assert all(is_skip(value) for value in tick(ctx, *OPTIONS, view))


def test_redraw_skips_when_selection_and_options_are_unchanged(ctx):
    run_ids = twin(ctx)
    log(ctx.store, run_ids[0], [10])
    *_, view = redraw(ctx, run_ids, *OPTIONS, CompareView())
    assert all(is_skip(value) for value in redraw(ctx, run_ids, *OPTIONS, view))
    figure, *_ = redraw(ctx, run_ids, "loss", "epochs", 0.0, True, view)
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


def test_a_ladder_group_shows_the_verdict_figure6_and_error_against_depth(ctx):
    runs = ladder(ctx)
    assert pick_group(ctx, "L") == sorted(runs.values())
    curves, verdict, figure_6, depth, _, view = redraw(ctx, sorted(runs.values()), *OPTIONS, CompareView())
    assert len(curves.data) == 0
    assert verdict["visible"] is True and "Not enough data yet" in verdict["value"]
    assert figure_6["visible"] is True and depth["visible"] is True
    paper = [trace for trace in depth["value"].data if "He et al." in trace.name][0]
    assert list(paper.x) == [20, 56] and list(paper.y) == [8.75, 6.97]

    for name, error in (("plain20", 30.0), ("plain56", 45.0), ("resnet20", 25.0), ("resnet56", 20.0)):
        log_error(ctx.store, runs[name], range(10, 101, 10), error)
        log_error(ctx.store, runs[name], [50, 100], error + 5, split="test")
    _, verdict, figure_6, depth, _, view = tick(ctx, *OPTIONS, view)
    assert verdict["value"].startswith("**Degradation observed.**")
    assert "plain56" in verdict["value"] and "no deeper residual net trains worse" in verdict["value"]
    axes = {trace.name: trace.xaxis for trace in figure_6["value"].data}
    assert axes["plain56 train (45.0%)"] == "x" and axes["resnet56 test (25.0%)"] == "x2"
    finals = {trace.name: list(trace.y) for trace in depth["value"].data}
    assert finals["plain train"] == [30.0, 45.0] and finals["ResNet test"] == [30.0, 25.0]
    assert all(is_skip(value) for value in tick(ctx, *OPTIONS, view))


def test_ladder_outputs_follow_new_error_rows_while_loss_is_on_screen(ctx):
    runs = ladder(ctx)
    *_, view = redraw(ctx, sorted(runs.values()), "loss", "iterations", 0.0, False, CompareView())
    for name, error in (("plain20", 30.0), ("plain56", 25.0)):
        log_error(ctx.store, runs[name], range(10, 101, 10), error)
    curves, verdict, figure_6, _, _, view = tick(ctx, "loss", "iterations", 0.0, False, view)
    assert is_skip(curves)
    assert verdict["value"].startswith("**No degradation observed.**") and len(figure_6["value"].data) == 2


def test_paper_stars_only_for_a_cifar10_ladder(ctx):
    runs = ladder(ctx, data=DataSpec())
    *_, depth, _, _ = redraw(ctx, sorted(runs.values()), *OPTIONS, CompareView())
    assert depth["visible"] is True and not [trace for trace in depth["value"].data if "He et al." in trace.name]


def test_an_architectures_group_shows_error_against_parameters_and_multiply_adds(ctx):
    nets = {name: get_preset(name).spec for name in ("resnet20", "densenet-40", "wrn-16-4")}
    runs = {name: ctx.store.create_run(RunSpec(net=net, data=CIFAR10), name=f"{name} (A)", group_name="A",
                                       group_kind="architectures", preset=name)
            for name, net in nets.items()}
    curves, verdict, figure_6, depth, costs, view = redraw(ctx, sorted(runs.values()), *OPTIONS, CompareView())
    assert costs["visible"] is True and not verdict["visible"] and not depth["visible"]
    stars = [trace for trace in costs["value"].data if trace.marker.symbol == "star"]
    assert sorted(zip(stars[0].x, stars[0].y, strict=True)) == [(269_722, 8.75), (1_019_722, 5.24), (2_748_890, 5.02)]
    assert sorted(stars[1].x) == [40_551_040, 264_812_928, 392_612_352]
    for name, error in (("resnet20", 12.0), ("densenet-40", 10.0), ("wrn-16-4", 11.0)):
        log_error(ctx.store, runs[name], [50, 100], error, split="test")
    *_, costs, view = tick(ctx, *OPTIONS, view)
    tested = [trace for trace in costs["value"].data if trace.name == "runs, test error"]
    assert sorted(zip(tested[1].x, tested[1].y, strict=True)) == [
        (40_551_040, 12.0), (264_812_928, 10.0), (392_612_352, 11.0)]
    assert sorted(tested[0].y) == [10.0, 11.0, 12.0]
