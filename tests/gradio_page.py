"""Helpers for driving Gradio components in Playwright browser tests."""

from __future__ import annotations


def pick(page, elem_id: str, *options: str) -> None:
    """Choose options of a Gradio dropdown (one, or several for a multiselect), then close its list."""
    page.locator(f"#{elem_id} input").click()
    for option in options:
        page.locator(f"#{elem_id}").get_by_role("option", name=option, exact=True).click()
    page.keyboard.press("Escape")


def fill(page, elem_id: str, value: str) -> None:
    """Type into a Gradio textbox or number field and leave it, so its change event fires."""
    field = page.locator(f"#{elem_id} input, #{elem_id} textarea").first
    field.fill(value)
    field.press("Tab")


def pick_runs(page, elem_id: str, store, *run_ids: int) -> None:
    """Choose runs in a run picker by the labels the workbench gives them."""
    from workbench.ui.run_table import run_label

    pick(page, elem_id, *(run_label(store.get_run(run_id)) for run_id in run_ids))


def expect():
    """Playwright's `expect`, imported only by the browser tests that run."""
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect


def open_app(page, url: str) -> None:
    """Open the workbench and wait until the Build tab has drawn its unit diagram (the page is live then)."""
    page.goto(url)
    page.wait_for_selector("#unit-diagram .main-svg", timeout=60_000)
