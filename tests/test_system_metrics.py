"""System metrics, learning rate and images/s sampled by a real worker process and charted like any curve."""

from storage import open_store
from tests.test_jobs import cli, tiny_spec
from workbench.service import Workbench
from workbench.service.curves import CurveCache, curves_of
from workbench.ui.runs_tab import run_details
from workbench.viz.charts import training_curves_figure


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
