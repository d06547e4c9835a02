"""Validation messages where the user typed, in Chromium: the Build tab's box beside the fields and the
Launch tab's message line, never Gradio's generic error toast."""

from __future__ import annotations

import pytest

from tests.gradio_page import fill

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def workbench(serve_workbench, tmp_path_factory):
    return serve_workbench(tmp_path_factory.mktemp("bad-input-browser"), "--workers", "0")


def expect():
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect


def test_a_giant_depth_and_a_giant_budget_are_explained_beside_the_form(page, workbench):
    page.goto(workbench.url)
    page.wait_for_selector("#unit-diagram .main-svg", timeout=60_000)
    fill(page, "depth-field", "30002")
    error = page.locator("#build-error")
    expect()(error).to_contain_text("at most 1,000 residual units", timeout=10_000)
    expect()(error).to_contain_text("depth 30,002 needs 15,000")
    fill(page, "depth-field", "20")
    expect()(error).to_be_hidden(timeout=10_000)

    page.get_by_role("tab", name="Launch", exact=True).click()
    fill(page, "budget", "1e30")
    page.locator("#launch-run").click()
    message = page.locator("#launch-message")
    expect()(message).to_contain_text("Nothing launched:", timeout=10_000)
    expect()(message).to_contain_text("epochs must be above 0 and at most 10,000")
    expect()(page.locator(".toast-body")).to_have_count(0)
    assert workbench.store.list_runs() == []
