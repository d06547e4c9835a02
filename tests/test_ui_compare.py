"""The Compare tab's handlers: redraw only when something changed, so a user's zoom survives polling."""

import gradio as gr
import pytest

from storage import open_store
from workbench.spec import NetSpec, RunSpec
from workbench.ui.compare_tab import CompareView, pick_group, redraw, tick
from workbench.ui.context import WorkbenchContext

OPTIONS = ("error", "iterations", 0.0, False)


@pytest.fixture
def ctx(tmp_path):
    with open_store(tmp_path) as store:
        yield WorkbenchContext(store=store, executor=None, home=tmp_path, data_roots=[])


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
    figure, depth, view = redraw(ctx, run_ids, *OPTIONS, CompareView())
    assert len(figure.data) == 1 and depth == gr.update(visible=False)
    assert all(is_skip(value) for value in tick(ctx, *OPTIONS, view))
    log(ctx.store, run_ids[1], [10])
    log(ctx.store, run_ids[1], [10], split="test")
    figure, _, view = tick(ctx, *OPTIONS, view)
    assert len(figure.data) == 3
    assert all(is_skip(value) for value in tick(ctx, *OPTIONS, view))


def test_redraw_skips_when_selection_and_options_are_unchanged(ctx):
    run_ids = twin(ctx)
    log(ctx.store, run_ids[0], [10])
    _, _, view = redraw(ctx, run_ids, *OPTIONS, CompareView())
    assert all(is_skip(value) for value in redraw(ctx, run_ids, *OPTIONS, view))
    figure, _, _ = redraw(ctx, run_ids, "loss", "epochs", 0.0, True, view)
    assert figure.layout.yaxis.type == "log" and figure.layout.xaxis.title.text == "epochs"


def test_a_ladder_group_adds_the_error_vs_depth_chart(ctx):
    run_ids = twin(ctx, kind="ladder")
    ctx.store.update_summary(run_ids[1], test_error=9.5)
    assert pick_group(ctx, "G") == sorted(run_ids)
    _, depth, _ = redraw(ctx, run_ids, *OPTIONS, CompareView())
    assert depth["visible"] is True
    names = [trace.name for trace in depth["value"].data]
    assert names == ["residual (this run)", "residual (He et al. 2015)"]
