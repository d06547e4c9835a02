"""The rough edges a new user meets, in Chromium: every edit (deletions too) reaches the spec that is
launched, the network name follows edits, actions only where they can act, a Runs table that fits 1024 px,
run labels with dataset and group, and tab and selection kept in the URL.

One workbench without workers serves the journeys: launched runs stay queued, other statuses are set
through the real store.
"""

from __future__ import annotations

import pytest

from tests.gradio_page import expect, fill, open_app, pick
from workbench.spec import DataSpec, NetSpec, RunSpec, TrainSpec
from workbench.ui.run_table import run_label

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def workbench(serve_workbench, tmp_path_factory):
    return serve_workbench(tmp_path_factory.mktemp("rough-edges-browser"), "--workers", "0")


def name_field(page):
    return page.get_by_label("Network name", exact=True)


def test_deleting_characters_changes_the_spec_that_is_launched_with_gradient_norms(page, workbench):
    open_app(page, workbench.url)
    widths = page.locator("#widths-field input, #widths-field textarea").first
    widths.click()
    widths.press("End")
    for _ in range(4):
        widths.press("Backspace")
    expect()(widths).to_have_value("16, 32")
    expect()(page.locator("#build-error")).to_contain_text("2 stages")
    widths.type(", 480")
    widths.press("Backspace")
    summary = page.locator("#build-summary")
    expect()(summary).to_contain_text("widths [16, 32, 48]")
    expect()(name_field(page)).to_have_value("resnet20-custom")

    page.get_by_role("tab", name="Launch", exact=True).click()
    expect()(page.locator("#launch-network")).to_contain_text("widths [16, 32, 48]")
    fill(page, "grad-norm-every", "5")
    page.locator("#launch-run").click()
    expect()(page.locator("#launch-message")).to_contain_text("Queued")
    run = workbench.store.list_runs()[-1]
    assert run.spec["net"]["widths"] == [16, 32, 48] and run.name == "resnet20-custom"
    assert run.spec["train"]["grad_norm_every"] == 5


def test_the_name_follows_a_preset_edit_and_keeps_a_typed_one(page, workbench):
    open_app(page, workbench.url)
    fill(page, "depth-field", "32")
    expect()(name_field(page)).to_have_value("resnet32")
    fill(page, "depth-field", "38")
    expect()(name_field(page)).to_have_value("resnet38-custom")
    expect()(page.locator("#build-summary h3")).to_have_text("resnet38-custom")
    name_field(page).fill("my-net")
    fill(page, "depth-field", "44")
    expect()(page.locator("#build-summary")).to_contain_text("44 layers")
    expect()(page.locator("#build-summary h3")).to_have_text("my-net")
    expect()(name_field(page)).to_have_value("my-net")


def test_run_actions_are_enabled_only_where_they_can_act(page, workbench):
    spec = RunSpec(net=NetSpec(depth=20), data=DataSpec(), train=TrainSpec())
    store = workbench.store
    queued, completed, cancelled = (store.create_run(spec, name=f"actions-{status}", status=status)
                                    for status in ("queued", "completed", "cancelled"))
    open_app(page, workbench.url)
    page.get_by_role("tab", name="Runs", exact=True).click()
    buttons = {name: page.locator(f"#{name}-run") for name in ("cancel", "resume", "delete")}
    for button in buttons.values():
        expect()(button).to_be_disabled()
    for run_id, enabled in ((queued, {"cancel", "delete"}), (completed, {"delete"}),
                            (cancelled, {"resume", "delete"})):
        pick(page, "run-picker", run_label(store.get_run(run_id)))
        for name, button in buttons.items():
            (expect()(button).to_be_enabled if name in enabled else expect()(button).to_be_disabled)()
    buttons["resume"].click()
    expect()(page.locator("#runs-message")).to_contain_text("queued again")
    expect()(buttons["resume"]).to_be_disabled()
    expect()(buttons["cancel"]).to_be_enabled()


def test_the_runs_table_fits_1024_px_with_a_group_column_and_durations_across_resumes(page, workbench,
                                                                                     artifacts_dir):
    spec = RunSpec(net=NetSpec(depth=20), data=DataSpec(name="cifar100"), train=TrainSpec())
    store = workbench.store
    for seed in range(3):
        store.create_run(spec, name=f"preact-resnet110-custom seed {seed}", preset="preact-resnet110",
                         dataset="cifar100", group_name="ladder preact-resnet110 on cifar100 (2)", group_kind="ladder")
    running = store.create_run(spec, name="resnet20-custom", dataset="cifar100")
    store.claim_run(running, "worker-1", device="cuda:0")
    store.heartbeat(running, "worker-1", iteration=12_500, total_iterations=64_000, epoch=32.0,
                    images_per_s=12_345.6)
    store.update_summary(running, test_error=12.345, train_error=5.5)
    store.append_metrics(running, [{"iteration": 12_500, "split": "train", "name": "run_seconds", "value": 400.0}])
    page.set_viewport_size({"width": 1024, "height": 768})
    open_app(page, workbench.url)
    page.get_by_role("tab", name="Runs", exact=True).click()
    table = page.locator("#runs-table")
    expect()(table.get_by_text("20% (12500/64000)", exact=True).filter(visible=True)).to_have_count(1)
    expect()(table.get_by_text("ladder preact-resnet110 on cifar100 (2)").filter(visible=True)).to_have_count(3)
    expect()(table.get_by_text("6 min 40 s", exact=True).filter(visible=True)).to_have_count(1)
    page.screenshot(path=artifacts_dir / "runs-table-1024.png")
    scroll, client = page.evaluate("""() => {
        const viewport = document.querySelector('#runs-table .virtual-table-viewport');
        return [viewport.scrollWidth, viewport.clientWidth];
    }""")
    assert 0 < scroll <= client
    assert page.evaluate("document.documentElement.scrollWidth") <= 1024


def test_run_labels_carry_dataset_and_group_and_the_legend_shows_what_the_user_picks(page, workbench):
    spec = RunSpec(net=NetSpec(depth=20), data=DataSpec(), train=TrainSpec())
    store = workbench.store
    run_id = store.create_run(spec, name="labelled", dataset="synthetic", group_name="twin-3", group_kind="twin")
    store.append_metrics(run_id, [{"iteration": i, "split": split, "name": "error", "value": 50.0 - i}
                                  for i in range(1, 6) for split in ("train", "test")])
    open_app(page, workbench.url)
    page.get_by_role("tab", name="Compare", exact=True).click()
    pick(page, "compare-runs", f"#{run_id} labelled · synthetic · twin-3")
    legend = page.locator("#curves-plot .legendtext")
    expect()(legend.first).to_contain_text(f"#{run_id} labelled · synthetic · twin-3", timeout=30_000)
    pick(page, "legend-shows", "name + group")
    expect()(legend.first).to_contain_text(f"#{run_id} labelled · twin-3 ")
    pick(page, "legend-shows", "name")
    expect()(legend.first).not_to_contain_text("·")


def test_unit_diagram_boxes_hold_their_labels_at_1024_px(page, workbench, artifacts_dir):
    page.set_viewport_size({"width": 1024, "height": 768})
    open_app(page, workbench.url)
    pick(page, "preset-picker", "resnet50")
    expect()(page.locator("#build-summary")).to_contain_text("bottleneck units")
    expect()(page.locator("#unit-diagram g.annotation").filter(has_text="conv1x1")).to_have_count(2)
    boxes = page.evaluate("""() => [...document.querySelectorAll('#unit-diagram g.annotation')]
        .filter(g => /^(conv|BN|ReLU)/.test(g.textContent)).map(g => {
            const box = g.querySelector('rect.bg').getBoundingClientRect();
            const text = g.querySelector('text').getBoundingClientRect();
            return [g.textContent, box.left, box.right, text.left, text.right];
        })""")
    page.locator("#unit-diagram").screenshot(path=artifacts_dir / "unit-diagram-bottleneck-1024.png")
    assert len(boxes) == 9
    for label, left, right, text_left, text_right in boxes:
        assert left <= text_left and text_right <= right, label
    overlaps = [(before[0], after[0], before[2] - after[1]) for before, after in zip(boxes, boxes[1:], strict=False)
                if after[1] < before[2] - 1]
    assert not overlaps, overlaps


def test_tab_and_picked_runs_come_back_after_a_reload(page, workbench):
    store = workbench.store
    first, second = (store.create_run(RunSpec(net=NetSpec(depth=20), data=DataSpec(), train=TrainSpec(lr=lr)),
                                      name=name, dataset="synthetic", status="completed")
                     for name, lr in (("kept-a", 0.1), ("kept-b", 0.05)))
    for run_id in (first, second):
        store.append_metrics(run_id, [{"iteration": i, "split": "test", "name": "error", "value": 50.0 - i}
                                      for i in range(1, 4)])
    page.goto(f"{workbench.url}?tab=compare&runs={first},{second}")
    legend = page.locator("#curves-plot .legendtext")
    expect()(legend.filter(has_text="kept-a")).to_have_count(1, timeout=30_000)
    expect()(legend.filter(has_text="kept-b")).to_have_count(1)

    page.get_by_role("tab", name="Runs", exact=True).click()
    pick(page, "run-picker", run_label(store.get_run(second)))
    expect()(page.locator("#run-details")).to_contain_text(f"#{second} kept-b")
    page.wait_for_url(f"**/?tab=runs&runs={first}%2C{second}&run={second}")
    page.reload()
    expect()(page.locator("#run-details")).to_contain_text(f"#{second} kept-b", timeout=30_000)
    expect()(page.get_by_role("tab", name="Runs", exact=True)).to_have_attribute("aria-selected", "true")
