"""Analysis tab: its views on a real store, the tab building in Blocks, and lesion jobs started from it."""

import os

import gradio as gr
import pytest

from storage import open_store
from workbench.errors import WorkbenchError
from workbench.jobs import QueueExecutor, run_worker
from workbench.service import Workbench
from workbench.spec import DataSpec, NetSpec, RunSpec, TrainSpec
from workbench.ui.analysis_tab import (
    build_analysis_tab,
    gradient_view,
    job_lines,
    lesion_view,
    profile_view,
    queue_profiles,
    start_lesion,
)

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

DATA = DataSpec(synthetic_train=64, synthetic_test=32)


def spec(shortcut: str, depth: int = 8) -> dict:
    net = NetSpec(name=f"{'plain' if shortcut == 'none' else 'resnet'}{depth}", depth=depth, widths=[4, 8, 16],
                  shortcut=shortcut)
    return RunSpec(net=net, data=DATA, train=TrainSpec(iterations=10, seed=1)).model_dump(mode="json")


def error_rows(final: float, with_gradients: bool = True) -> list[dict]:
    rows = []
    for it in (10, 20, 30):
        rows.append({"iteration": it, "split": "train", "name": "error", "value": 90 - (90 - final) * it / 30})
        if with_gradients:
            rows += [{"iteration": it, "split": "train", "name": f"unit_grad/{k}", "value": 0.1 * k} for k in (1, 2, 3)]
    rows.append({"iteration": 30, "split": "test", "name": "error", "value": final + 3})
    return rows


STUDY = {"units": 3, "images": 32, "baseline_error": 20.0, "residual": True,
         "single": [{"unit": u, "stage": u, "block": 1, "kept": "identity", "error": 20.0 + u} for u in (1, 2, 3)],
         "random": [{"k": 1, "deleted": [[1]], "errors": [22.0], "mean": 22.0, "std": 0.0}]}


@pytest.fixture
def store(tmp_path):
    with open_store(tmp_path) as opened:
        yield opened


@pytest.fixture
def ctx(store):
    return Workbench(store, QueueExecutor(store))


@pytest.fixture
def ladder(store):
    ids = {}
    for name, shortcut, depth, final in (("plain8", "none", 8, 30.0), ("resnet8", "A", 8, 25.0),
                                         ("plain14", "none", 14, 45.0), ("resnet14", "A", 14, 20.0)):
        ids[name] = store.create_run(spec(shortcut, depth), name=name, preset=name, group_name="ladder-a",
                                     group_kind="ladder", status="completed")
        store.append_metrics(ids[name], error_rows(final))
    return ids


def test_lesion_view_shows_stored_studies_and_names_runs_without_one(store, ctx, ladder):
    store.add_analysis(ladder["resnet14"], "lesion", {"draws": 1}, STUDY)
    by_unit, by_k, summary = lesion_view(ctx, [ladder["resnet14"], ladder["plain14"]])
    assert list(by_unit.data[0].y) == [21.0, 22.0, 23.0]
    assert list(by_k.data[0].x) == [0, 1]
    assert "intact 20.0%" in summary and f"#{ladder['plain14']}" in summary


def test_gradient_view_puts_plain_runs_first(ctx, ladder):
    figure = gradient_view(ctx, [ladder["resnet8"], ladder["plain8"]])
    assert [trace.type for trace in figure.data] == ["heatmap", "heatmap"]
    assert figure.layout.annotations[0].text.endswith("plain8")
    assert list(figure.data[0].x) == [10, 20, 30] and list(figure.data[0].y) == [1, 2, 3]


def test_profiles_at_initialization_are_jobs_a_worker_computes_on_the_runs_data(store, ctx, ladder):
    picked = [ladder["plain8"], ladder["resnet8"]]
    assert len(profile_view(ctx, picked).data) == 0
    assert queue_profiles(ctx, picked) == "Queued 2 gradient profile(s)."
    assert queue_profiles(ctx, picked) == "Every picked run has a profile already."
    assert run_worker(store, "test-worker", exit_when_idle=True) == 2
    figure = profile_view(ctx, picked)
    assert len(figure.data) == 2 and len(figure.data[0].y) == 3
    assert all(value > 0 for value in figure.data[1].y)


def test_the_tab_builds_inside_blocks(ctx, ladder):
    with gr.Blocks() as demo, gr.Tabs():
        build_analysis_tab(ctx, demo)
    ids = {getattr(block, "elem_id", None) for block in demo.blocks.values()}
    assert {"lesion-start", "gradient-heatmap", "gradient-profile"} <= ids


def test_lesion_jobs_refuse_unfinished_runs_and_report_failures(store, ctx, ladder):
    queued = store.create_run(spec("A"), name="queued")
    with pytest.raises(WorkbenchError, match="completed run"):
        start_lesion(ctx, queued, draws=1, max_k=1, limit_images=None)
    analysis_id = start_lesion(ctx, ladder["resnet8"], draws=1, max_k=1, limit_images=None)
    with pytest.raises(WorkbenchError, match="already queued or running"):
        start_lesion(ctx, ladder["resnet8"], draws=1, max_k=1, limit_images=None)
    assert f"analysis #{analysis_id}: lesion of run #{ladder['resnet8']}, queued" in job_lines(ctx)
    run_worker(store, "test-worker", exit_when_idle=True)
    assert store.get_analysis(analysis_id).status == "failed"
    assert "no checkpoint" in job_lines(ctx)
