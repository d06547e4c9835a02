"""System metrics, learning rate, images/s and stage gradient norms logged by real runs and charted like any curve."""

import csv

import pytest

from storage import open_store
from tests.test_jobs import cli, tiny_spec
from tests.test_models_families import TINY
from workbench.jobs.worker import run_one
from workbench.models import build_network
from workbench.service import Workbench
from workbench.service.curves import GRAD_NORM_METRICS, GRAD_NORM_NAMES, CurveCache, curves_of, stored_names
from workbench.ui.compare_tab import CompareView, export_curves, redraw
from workbench.ui.context import WorkbenchContext
from workbench.ui.runs_tab import run_details
from workbench.viz.charts import EMA, training_curves_figure


def test_a_worker_samples_cpu_and_memory_while_training_and_compare_charts_them(tmp_path):
    with open_store(tmp_path) as store:
        run_id = store.create_run(tiny_spec(epochs=None, iterations=150, batch_size=16, log_every=10), name="tiny")
        worker = cli(tmp_path, "worker", "--exit-when-idle")
        _, err = worker.communicate(timeout=300)
        assert worker.returncode == 0, err
        assert store.get_run(run_id).status == "completed"
        service = Workbench(store, None)
        latest = service.latest_values(run_id, ["lr", "images_per_s", "system/cpu_percent", "system/rss_mb"])
        assert set(latest) == {"lr", "images_per_s", "system/cpu_percent", "system/rss_mb"}
        assert 20 < latest["system/rss_mb"] < 64_000 and 0 <= latest["system/cpu_percent"] <= 100
        assert latest["images_per_s"] > 0 and "system/rss_mb" in run_details(store.get_run(run_id), latest)

        cache = CurveCache(("system/rss_mb",))
        cache.select([run_id])
        cache.refresh(store)
        [curves] = curves_of(cache, {run_id: "#1 tiny"}, "system/rss_mb")
        samples = curves.train
        assert len(samples) >= 1 and all(0 < it <= 150 for it in samples.iterations)
        figure = training_curves_figure([curves], metric="system/rss_mb")
        assert figure.data[0].name.startswith("#1 tiny system ") and figure.layout.yaxis.title.text == (
            "worker memory (MiB)")



def test_stage_gradient_norms_of_a_real_run_are_chartable_exported_and_in_the_run_details(tmp_path):
    with open_store(tmp_path) as store:
        spec = tiny_spec(epochs=None, iterations=8, batch_size=16, log_every=2, grad_norm_every=4)
        run_id = store.create_run(spec, name="tiny")
        assert run_one(store, run_id) == "completed"
        ctx = WorkbenchContext(store, None, [])
        figure, *_, view = redraw(ctx, [run_id], CompareView(), "grad norm (stage 3)", "iterations", 0.0, EMA, False)
        [trace] = figure.data
        assert list(trace.x) == [2, 4, 6, 8] and all(value > 0 for value in trace.y)
        assert trace.name.startswith(f"#{run_id} tiny · synthetic train ") and figure.layout.yaxis.title.text == (
            "grad norm (stage 3)")

        _, button = export_curves(ctx, "grad norm (stage 1)", "csv", view)
        with open(button.value["path"]) as handle:
            rows = list(csv.DictReader(handle))
        assert {row["metric"] for row in rows} == {"grad_norm/layer1"} and len(rows) == 4

        latest = Workbench(store, None).latest_values(run_id, GRAD_NORM_NAMES)
        assert set(latest) == {"grad_norm/layer1", "grad_norm/layer2", "grad_norm/layer3"}
        assert "grad_norm/layer3" in run_details(store.get_run(run_id), latest)


@pytest.mark.parametrize("kind", TINY)
def test_stage_n_of_every_family_is_the_gradient_norm_choice_n(kind):
    stages = [name for name, _ in build_network(TINY[kind]).named_stages()]
    assert all(f"grad_norm/{name}" in stored_names(GRAD_NORM_METRICS[index]) for index, name in enumerate(stages))
