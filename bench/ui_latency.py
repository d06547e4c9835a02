"""Compare-tab latency next to a naive reference, and page load to the first interactive chart in Chromium.

    python bench/ui_latency.py [--runs 8] [--seeds 3] [--points 10000] [--repeats 15] [--no-browser]

Server side, with `runs` networks over `seeds` seeds each (seed groups, drawn as mean and std
band) of `points` logged training iterations each (error, loss, lr and images/s rows, plus a test
point every 100 iterations) in a real SQLite store:

- compare update: a timer tick after each run logged 10 more iterations; ours fetches only rows
  newer than the cached cursors and redraws the downsampled curves and, the runs being one ladder
  group, the degradation verdict over the seeds, Figure 6 and error against depth (each network's seeds
  as mean and band, error bars); the reference refetches every
  row and builds the curves figure from all points. Both times include Gradio's figure serialization.
  Target: ours under 150 ms.
- compare open: picking the runs (ours reads the full history once, then downsamples).
- idle tick: nothing new; ours answers gr.skip() (no redraw), the reference redraws anyway.
- runs table: a search keystroke among 200+ runs with spec columns and identical columns hidden,
  filtered in memory, next to the store's SQL search feeding the plain table. Target: under 100 ms.

Browser side (Debian's Chromium, skipped without it): the workbench page from navigation to its
first drawn Plotly chart, next to a bare HTML page drawing the same figure with plotly.js; and the
Compare chart of all runs drawn after picking their group, ours (downsampled) next to the
reference figure with every point.

The last line printed is JSON: [{"bench", "ours", "reference", "ratio", "unit"}, ...].
"""

from __future__ import annotations

import argparse
import http.server
import json
import logging
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
import plotly  # noqa: E402
import plotly.graph_objects as go  # noqa: E402

from storage import RunStore, open_store  # noqa: E402
from workbench.jobs import QueueExecutor  # noqa: E402
from workbench.spec import NetSpec, RunSpec, TrainSpec  # noqa: E402
from workbench.ui import compare_tab  # noqa: E402
from workbench.ui.compare_tab import CompareView, redraw, tick  # noqa: E402
from workbench.ui.context import WorkbenchContext  # noqa: E402

logger = logging.getLogger("bench.ui_latency")

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
OPTIONS = ("error", "iterations", 0.0, "EMA (debiased)", False)
LOG_EVERY = 1
TEST_EVERY = 100
GROUP = "bench ladder"


def metric_rows(start: int, stop: int) -> list[dict]:
    """The rows a run logs for iterations [start, stop): four training metrics, test metrics every 100."""
    rows = []
    for iteration in range(start, stop, LOG_EVERY):
        epoch = iteration / 390
        error = 90.0 * (0.999 ** iteration) + 5.0
        rows += [
            {"iteration": iteration, "epoch": epoch, "split": "train", "name": "error", "value": error},
            {"iteration": iteration, "epoch": epoch, "split": "train", "name": "loss", "value": error / 40},
            {"iteration": iteration, "epoch": epoch, "split": "train", "name": "lr", "value": 0.1},
            {"iteration": iteration, "epoch": epoch, "split": "train", "name": "images_per_s", "value": 2000.0},
        ]
        if iteration % TEST_EVERY == 0:
            rows += [
                {"iteration": iteration, "epoch": epoch, "split": "test", "name": "error", "value": error + 2},
                {"iteration": iteration, "epoch": epoch, "split": "test", "name": "loss", "value": error / 35},
            ]
    return rows


def fill_store(store: RunStore, runs: int, points: int, seeds: int) -> list[int]:
    """A ladder group of `runs` networks, each over `seeds` seeds (a seed group), `points` logged iterations each."""
    run_ids = []
    for index in range(runs):
        depth = 20 + 12 * (index // 2)
        shortcut = "none" if index % 2 == 0 else "A"
        for seed in range(seeds):
            spec = RunSpec(net=NetSpec(depth=depth, shortcut=shortcut), train=TrainSpec(seed=seed))
            run_id = store.create_run(spec, name=f"run{index} seed {seed}", group_name=GROUP, group_kind="ladder")
            for start in range(1, points + 1, 2000):
                store.append_metrics(run_id, metric_rows(start, min(start + 2000, points + 1)))
            run_ids.append(run_id)
    return run_ids


def naive_figure(store: RunStore, run_ids: list[int]) -> go.Figure:
    """The reference: every error row of every run fetched again and drawn, no downsampling, no cache."""
    batches = store.fetch_metrics_since({run_id: 0 for run_id in run_ids}, names=["error"])
    traces = []
    for run_id, batch in batches.items():
        for split, dash in (("train", "dash"), ("test", "solid")):
            rows = [row for row in batch.rows if row.split == split]
            traces.append(go.Scatter(x=[row.iteration for row in rows], y=[row.value for row in rows],
                                     name=f"#{run_id} {split}", line={"dash": dash}))
    return go.Figure(traces, layout={"height": 480, "template": "plotly_white"})


def timed(action: Callable[[], object], repeats: int, before: Callable[[], None] = lambda: None) -> float:
    """Median milliseconds of `action`, running `before` (untimed) ahead of each repeat."""
    samples = []
    for _ in range(repeats):
        before()
        start = time.perf_counter()
        action()
        samples.append(1000 * (time.perf_counter() - start))
    return statistics.median(samples)


def server_benches(ctx: WorkbenchContext, run_ids: list[int], points: int, repeats: int) -> list[dict]:
    plot = gr.Plot()
    next_iteration = {"value": points + 1}

    def log_more() -> None:
        start = next_iteration["value"]
        for run_id in run_ids:
            ctx.store.append_metrics(run_id, metric_rows(start, start + 10))
        next_iteration["value"] = start + 10

    def serialized(outputs) -> int:
        """Bytes of every figure the handler returned (curves, and for a ladder Figure 6 and error vs depth),
        as charts to mount or as the JSON text of live updates."""
        figures = [output.get("value") if isinstance(output, dict) else output for output in outputs[:-1]]
        return sum(len(plot.postprocess(figure).plot) if isinstance(figure, go.Figure) else len(figure)
                   for figure in figures if isinstance(figure, go.Figure | str))

    view = CompareView()
    sizes = {"ours": serialized(redraw(ctx, run_ids, view, *OPTIONS)),
             "reference": len(plot.postprocess(naive_figure(ctx.store, run_ids)).plot)}
    logger.info("figure JSON: ours %d bytes, reference %d bytes", sizes["ours"], sizes["reference"])

    update_ours = timed(lambda: serialized(tick(ctx, view, *OPTIONS)), repeats, log_more)
    update_reference = timed(lambda: plot.postprocess(naive_figure(ctx.store, run_ids)), repeats, log_more)
    open_ours = timed(lambda: serialized(redraw(ctx, run_ids, CompareView(), *OPTIONS)), max(3, repeats // 3))
    open_reference = timed(lambda: plot.postprocess(naive_figure(ctx.store, run_ids)), max(3, repeats // 3))
    idle_ours = timed(lambda: serialized(tick(ctx, view, *OPTIONS)), repeats)
    label = f"{len(run_ids)} runs x {points} points, seed bands on"
    return [
        result(f"compare update after new rows, server ({label})", update_ours, update_reference, "ms"),
        result(f"compare open (full history), server ({label})", open_ours, open_reference, "ms"),
        result(f"compare idle tick, server ({label})", idle_ours, update_reference, "ms"),
        result(f"compare figure JSON size ({label})", sizes["ours"] / 1024, sizes["reference"] / 1024, "KiB"),
    ]


def table_benches(ctx: WorkbenchContext, repeats: int, count: int = 200) -> list[dict]:
    """The Runs tab among `count` runs: a keystroke in the search box with two spec columns and identical columns
    hidden (filtered in memory), next to the store's SQL search feeding the plain table."""
    import pandas as pd

    from workbench.service.run_query import RunFilter
    from workbench.ui.run_table import RUN_TABLE_COLUMNS, run_rows
    from workbench.ui.runs_tab import table_view

    for index in range(count):
        spec = RunSpec(net=NetSpec(depth=20 + 6 * (index % 4)), train=TrainSpec(lr=0.1 / (1 + index % 3)))
        ctx.store.create_run(spec, name=f"table run {index}", status="completed", group_name=f"table {index % 7}")

    def ours() -> None:
        columns, rows = table_view(ctx.list_runs(), RunFilter(text="run 1", statuses=["completed"]),
                                   ["train.lr", "net.depth"], True)
        pd.DataFrame(rows, columns=columns)

    def reference() -> None:
        pd.DataFrame(run_rows(ctx.store.list_runs(search="run 1", status="completed")), columns=RUN_TABLE_COLUMNS)

    return [result(f"runs table filter per keystroke, server ({len(ctx.list_runs())} runs; reference: SQL search)",
                   timed(ours, repeats), timed(reference, repeats), "ms")]


def result(name: str, ours: float, reference: float, unit: str) -> dict:
    return {"bench": name, "ours": round(ours, 2), "reference": round(reference, 2),
            "ratio": round(ours / reference, 4) if reference else None, "unit": unit}


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def serve_folder(folder: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    handler = lambda *args, **kwargs: _QuietHandler(*args, directory=str(folder), **kwargs)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


def bare_plotly_page(folder: Path, figure: go.Figure) -> None:
    """An HTML page drawing `figure` with plotly.js alone: the floor for any page showing this chart."""
    source = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    (folder / "plotly.min.js").write_bytes(source.read_bytes())
    (folder / "index.html").write_text(
        "<!doctype html><html><body><div id='chart'></div><script src='plotly.min.js'></script>"
        f"<script>const figure = {figure.to_json()}; Plotly.newPlot('chart', figure.data, figure.layout);"
        "</script></body></html>"
    )


def browser_benches(served_url: str, store: RunStore, run_ids: list[int], folder: Path, repeats: int,
                    networks: int) -> list[dict]:
    from playwright.sync_api import sync_playwright

    from workbench.presets import get_preset
    from workbench.ui.build_tab import DEFAULT_PRESET
    from workbench.viz.charts import unit_diagram_figure

    bare_plotly_page(folder, unit_diagram_figure(get_preset(DEFAULT_PRESET).spec))
    static, static_url = serve_folder(folder)
    traces = 2 * networks  # at least a training and a test line per network (seed groups add bands)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)

            def first_chart(url: str, selector: str) -> float:
                page = browser.new_page()
                page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(
                    "http://127.0.0.1") else route.abort())
                start = time.perf_counter()
                page.goto(url)
                page.wait_for_selector(selector, timeout=60_000)
                elapsed = 1000 * (time.perf_counter() - start)
                page.close()
                return elapsed

            def compare_chart(url: str) -> float:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.goto(url)
                page.wait_for_selector("#unit-diagram .main-svg", timeout=60_000)
                page.get_by_role("tab", name="Compare", exact=True).click()
                page.locator("#compare-group input").click()
                option = page.get_by_role("option").filter(has_text=GROUP)
                start = time.perf_counter()
                option.click()
                page.wait_for_function(
                    f"document.querySelectorAll('#curves-plot .scatterlayer .trace').length >= {traces}",
                    timeout=120_000)
                elapsed = 1000 * (time.perf_counter() - start)
                page.close()
                return elapsed

            first_chart(served_url, "#unit-diagram .main-svg")
            load_ours = statistics.median(first_chart(served_url, "#unit-diagram .main-svg") for _ in range(repeats))
            load_bare = statistics.median(first_chart(static_url, "#chart .main-svg") for _ in range(repeats))
            compare_ours = statistics.median(compare_chart(served_url) for _ in range(3))
            original = compare_tab._curves_figure
            compare_tab._curves_figure = lambda view, *options: naive_figure(store, view.run_ids)
            try:
                compare_reference = statistics.median(compare_chart(served_url) for _ in range(3))
            finally:
                compare_tab._curves_figure = original
            browser.close()
    finally:
        static.shutdown()
    return [
        result("page load to first interactive chart, Chromium (reference: bare plotly.js page)", load_ours,
               load_bare, "ms"),
        result(f"compare chart drawn after picking a group of {len(run_ids)} runs, Chromium "
               "(reference: every point sent)", compare_ours, compare_reference, "ms"),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--points", type=int, default=10_000)
    parser.add_argument("--seeds", type=int, default=3, help="seeds per network: each network is a seed group")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--no-browser", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)

    with tempfile.TemporaryDirectory() as scratch:
        home = Path(scratch) / "home"
        store = open_store(home)
        started = time.perf_counter()
        run_ids = fill_store(store, args.runs, args.points, args.seeds)
        logger.info("stored %d runs x %d seeds x %d iterations in %.1f s", args.runs, args.seeds, args.points,
                    time.perf_counter() - started)
        ctx = WorkbenchContext(store, QueueExecutor(store), [home / "datasets"])
        results = server_benches(ctx, run_ids, args.points, args.repeats) + table_benches(ctx, args.repeats)
        if args.no_browser or not CHROMIUM.exists():
            logger.warning("browser benches skipped (%s)", "--no-browser" if args.no_browser else f"no {CHROMIUM}")
        else:
            results += run_browser_benches(ctx, run_ids, Path(scratch), max(3, args.repeats // 3), args.runs)
        store.close()

    print(f"{'benchmark':<100} {'ours':>10} {'reference':>10} {'ratio':>7}  unit")
    for row in results:
        print(f"{row['bench']:<100} {row['ours']:>10.2f} {row['reference']:>10.2f} {row['ratio']:>7.3f}  {row['unit']}")
    print(json.dumps(results))
    return 0


def run_browser_benches(ctx: WorkbenchContext, run_ids: list[int], scratch: Path, repeats: int,
                        networks: int) -> list[dict]:
    """Serve the workbench UI (no workers needed) on a free port and measure it in Chromium."""
    from workbench.paths import file_max_age_hours
    from workbench.ui.app import CSS, build_ui

    demo = build_ui(ctx, file_max_age_hours())
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, css=CSS,
                theme=gr.themes.Soft(), run_history=False)
    try:
        static = scratch / "static"
        static.mkdir()
        return browser_benches(demo.local_url, ctx.store, run_ids, static, repeats, networks)
    finally:
        demo.close()


if __name__ == "__main__":
    sys.exit(main())
