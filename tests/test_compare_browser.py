"""The Compare tab in Chromium while a real worker trains: zoom and legend choices survive live updates."""

from __future__ import annotations

import pytest

from tests.gradio_page import pick
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
    pick(page, "compare-runs", f"#{run_id} live tiny")
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
