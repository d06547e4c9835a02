"""The Compare tab in Chromium: zoom and legend choices survive live updates while a real worker trains;
smoothing, axes, hover and curve downloads on stored runs."""

from __future__ import annotations

import csv

import pytest

from tests.gradio_page import pick, pick_runs
from workbench.service.plans import PlannedRun
from workbench.spec import DataSpec, NetSpec, RunSpec, TrainSpec

pytestmark = pytest.mark.browser

TINY = NetSpec(name="tiny", blocks=[1, 1, 1], widths=[4, 8, 16])
LIVE = RunSpec(net=TINY, data=DataSpec(synthetic_train=256, synthetic_test=32),
               train=TrainSpec(iterations=100_000, batch_size=8, log_every=2, eval_every=200, precision="fp32"))
PLOT = "#curves-plot .js-plotly-plot"


def expect():
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect


def last_x(page) -> float:
    """The largest x drawn in the curves chart (the newest logged iteration)."""
    return page.evaluate(f"""() => Math.max(-1, ...document.querySelector('{PLOT}')._fullData
                                     .map(trace => trace.x.length ? trace.x[trace.x.length - 1] : -1))""")


def x_range(page) -> list[float]:
    return page.evaluate(f"() => document.querySelector('{PLOT}')._fullLayout.xaxis.range.slice()")


def test_zoom_and_hidden_trace_survive_three_live_updates(page, serve_workbench, tmp_path, artifacts_dir):
    served = serve_workbench(tmp_path, "--workers", "1")
    [run_id] = served.app.context.submit([PlannedRun("live tiny", LIVE, None)])
    page.goto(served.url)
    page.wait_for_selector("#unit-diagram .main-svg", timeout=60_000)
    page.get_by_role("tab", name="Compare", exact=True).click()
    pick_runs(page, "compare-runs", served.store, run_id)
    page.wait_for_function(f"document.querySelector('{PLOT}')?._fullData?.[0]?.x?.length > 20", timeout=120_000)

    box = page.locator(f"{PLOT} .nsewdrag").first.bounding_box()
    top = box["y"] + box["height"] * 0.3
    page.mouse.move(box["x"] + box["width"] * 0.2, top)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.5, top + box["height"] * 0.3, steps=5)
    page.mouse.up()
    zoomed = x_range(page)
    assert page.evaluate(f"document.querySelector('{PLOT}')._fullLayout.xaxis.autorange") is False
    page.locator(f"{PLOT} .legend .traces").first.click()
    hidden = f"document.querySelector('{PLOT}')._fullData[0].visible"
    page.wait_for_function(f"{hidden} === 'legendonly'")

    seen = last_x(page)
    for _ in range(3):
        page.wait_for_function(f"""() => Math.max(...document.querySelector('{PLOT}')._fullData
                                   .map(t => t.x.length ? t.x[t.x.length - 1] : -1)) > {seen}""", timeout=60_000)
        seen = last_x(page)
        assert x_range(page) == pytest.approx(zoomed)
        assert page.evaluate(hidden) == "legendonly"
    assert seen > zoomed[1]
    page.screenshot(path=artifacts_dir / "compare-zoom-kept-while-training.png", full_page=True)
    served.app.context.cancel(run_id)


def stored_run(store, name: str, offset: float, seed: int = 0, lr: float = 0.1, group: str | None = None) -> int:
    """A completed run with 50 logged training iterations, one a minute, and two test points."""
    spec = LIVE.model_copy(update={"train": LIVE.train.model_copy(update={"seed": seed, "lr": lr})})
    run_id = store.create_run(spec, name=name, status="completed", group_name=group, group_kind=group and "seeds")
    rows = [{"iteration": i, "epoch": i / 32, "split": "train", "name": "error", "value": offset + (i % 2) * 20.0,
             "wall_time": 1_000.0 + 60.0 * i} for i in range(1, 51)]
    rows += [{"iteration": i, "epoch": i / 32, "split": "test", "name": "error", "value": offset + 5.0,
              "wall_time": 1_000.0 + 60.0 * i} for i in (25, 50)]
    rows += [{"iteration": i, "epoch": i / 32, "split": "train", "name": "grad_norm/layer2", "value": offset / 100,
              "wall_time": 1_000.0 + 60.0 * i} for i in (10, 20, 30, 40, 50)]
    store.append_metrics(run_id, rows)
    return run_id


def test_smoothing_follows_each_slider_step_wall_time_unified_hover_csv_download_and_gradient_norms(
        page, serve_workbench, tmp_path):
    served = serve_workbench(tmp_path, "--workers", "0")
    first, second = (stored_run(served.store, name, offset, lr=lr)
                     for name, offset, lr in (("zig", 10.0, 0.1), ("zag", 50.0, 0.05)))
    page.goto(served.url)
    page.wait_for_selector("#unit-diagram .main-svg", timeout=60_000)
    page.get_by_role("tab", name="Compare", exact=True).click()
    pick_runs(page, "compare-runs", served.store, first, second)
    train_y = f"Array.from(document.querySelector('{PLOT}')._fullData[0].y)"
    page.wait_for_function(f"{train_y}.length === 50", timeout=60_000)
    assert page.evaluate(train_y)[:2] == [30.0, 10.0]

    slider = page.locator("#compare-smoothing input[type=range]")
    box = slider.bounding_box()
    middle = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + 2, middle)
    page.mouse.down()
    for fraction in (0.3, 0.6):
        page.mouse.move(box["x"] + box["width"] * fraction, middle, steps=3)
        weight = float(slider.input_value())
        assert weight > 0.2
        debiased = (30 * weight * (1 - weight) + 10 * (1 - weight)) / (1 - weight ** 2)
        page.wait_for_function(f"Math.abs({train_y}[1] - {debiased}) < 1e-3", timeout=20_000)
    page.mouse.up()
    slider.focus()
    slider.press("End")
    page.wait_for_function(f"Math.abs({train_y}[1] - 19.9497) < 1e-3", timeout=20_000)
    page.get_by_label("running mean", exact=True).check()
    page.wait_for_function(f"{train_y}[1] === 20", timeout=20_000)

    page.locator("#compare-x-axis").get_by_label("wall time", exact=True).check()
    page.wait_for_function(f"document.querySelector('{PLOT}')._fullData[0].x[1] === 1", timeout=20_000)
    assert page.evaluate(f"document.querySelector('{PLOT}')._fullLayout.hovermode") == "x unified"
    box = page.locator(f"{PLOT} .nsewdrag").first.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    hover = page.locator(f"{PLOT} .hoverlayer")
    expect()(hover).to_contain_text("zig · synthetic train")
    expect()(hover).to_contain_text("zag · synthetic train")

    page.locator("#prepare-curves").click()
    expect()(page.locator("#curves-export-message")).to_contain_text("Ready", timeout=60_000)
    with page.expect_download() as started:
        page.locator("#download-curves").click()
    saved = tmp_path / started.value.suggested_filename
    started.value.save_as(saved)
    with saved.open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 * 52 and {row["run_name"] for row in rows} == {"zig", "zag"}
    assert {row["metric"] for row in rows} == {"error"}

    pick(page, "compare-metric", "grad norm (stage 2)")
    page.wait_for_function(f"{train_y}.length === 5 && {train_y}[0] === 0.1", timeout=20_000)
    expect()(page.locator(f"{PLOT} .legendtext").filter(has_text="zag").filter(has_text="train")).to_have_count(1)


def test_a_seed_group_is_drawn_as_mean_and_band_with_n_in_the_legend(page, serve_workbench, tmp_path,
                                                                     artifacts_dir):
    served = serve_workbench(tmp_path, "--workers", "0")
    for seed, offset in enumerate((10.0, 14.0, 18.0)):
        stored_run(served.store, f"tiny seed {seed}", offset, seed=seed, group="tiny over seeds")
    stored_run(served.store, "tiny lr 0.05", 40.0, lr=0.05, group="tiny over seeds")
    page.goto(served.url)
    page.wait_for_selector("#unit-diagram .main-svg", timeout=60_000)
    page.get_by_role("tab", name="Compare", exact=True).click()
    pick(page, "compare-group", "tiny over seeds [seeds]")
    bands = f"document.querySelectorAll('{PLOT} .scatterlayer .trace path.js-fill').length"
    page.wait_for_function(f"{bands} === 2", timeout=60_000)
    legend = page.locator(f"{PLOT} .legendtext")
    seeds = "tiny [3 seeds] · synthetic · tiny over seeds test n=3, final 19.00 ± 4.00%"
    expect()(legend.filter(has_text=seeds)).to_have_count(1)
    expect()(legend.filter(has_text="tiny lr 0.05 · synthetic · tiny over seeds test 45.00%")).to_have_count(1)
    traces = f"document.querySelector('{PLOT}')._fullData.length"
    drawn = page.evaluate(traces)
    page.locator("#show-seed-runs input").check()
    page.wait_for_function(f"{traces} === {drawn + 6}", timeout=20_000)
    page.locator("#seed-band").get_by_label("min-max", exact=True).check()
    page.wait_for_function(f"Math.max(...document.querySelector('{PLOT}')._fullData[0].y) === 38", timeout=20_000)
    page.locator("#curves-plot").screenshot(path=artifacts_dir / "compare-seed-band.png")


def test_a_group_started_elsewhere_is_listed_when_the_picker_opens_and_its_later_runs_join(
        page, serve_workbench, tmp_path):
    served = serve_workbench(tmp_path, "--workers", "0")
    page.goto(served.url)
    page.wait_for_selector("#unit-diagram .main-svg", timeout=60_000)
    page.get_by_role("tab", name="Compare", exact=True).click()
    stored_run(served.store, "first", 10.0, group="from the cli")  # after the tab listed its groups
    pick(page, "compare-group", "from the cli [seeds]")
    legend = page.locator(f"{PLOT} .legendtext")
    expect()(legend.filter(has_text="first · synthetic · from the cli test")).to_have_count(1, timeout=30_000)
    stored_run(served.store, "second", 30.0, lr=0.05, group="from the cli")  # as a sweep's next trial
    expect()(legend.filter(has_text="second · synthetic · from the cli test")).to_have_count(1, timeout=30_000)
    expect()(page.locator("#compare-runs")).to_contain_text("second")


def test_runs_table_filters_per_keystroke_picks_columns_hides_identical_ones_and_diffs_specs(
        page, serve_workbench, tmp_path, artifacts_dir):
    served = serve_workbench(tmp_path, "--workers", "0")
    for name, lr in (("alpha", 0.1), ("beta", 0.05), ("alphabet", 0.02)):
        stored_run(served.store, name, 10.0, lr=lr)
    page.goto(served.url)
    page.wait_for_selector("#unit-diagram .main-svg", timeout=60_000)
    page.get_by_role("tab", name="Runs", exact=True).click()
    table = page.locator("#runs-table")
    expect()(table.get_by_text("beta", exact=True).filter(visible=True)).to_have_count(1, timeout=30_000)
    page.locator("#runs-search textarea, #runs-search input").first.press_sequentially("alph", delay=50)
    expect()(table.get_by_text("beta", exact=True).filter(visible=True)).to_have_count(0, timeout=20_000)
    expect()(table.get_by_text("alphabet", exact=True).filter(visible=True)).to_have_count(1)

    pick(page, "runs-columns", "train.lr", "data.name")
    expect()(table.get_by_text("0.02", exact=True).filter(visible=True)).to_have_count(1, timeout=20_000)
    expect()(table.get_by_text("synthetic", exact=True).filter(visible=True)).to_have_count(2)
    page.locator("#hide-identical input").check()
    expect()(table.get_by_text("synthetic", exact=True).filter(visible=True)).to_have_count(0, timeout=20_000)
    expect()(table.get_by_text("0.02", exact=True).filter(visible=True)).to_have_count(1)

    page.get_by_text("Compare specs").click()
    pick_runs(page, "diff-runs", served.store, 1, 3)
    highlighted = page.locator("#spec-diff tr.differs")
    expect()(highlighted).to_have_count(1, timeout=20_000)
    expect()(highlighted).to_contain_text("train.lr0.10.02")
    page.screenshot(path=artifacts_dir / "runs-table-filters-and-spec-diff.png", full_page=True)
