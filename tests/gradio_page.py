"""Helpers for driving Gradio components in Playwright browser tests."""

from __future__ import annotations


def pick(page, elem_id: str, option: str) -> None:
    """Choose an option of a Gradio dropdown."""
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option", name=option, exact=True).click()


def fill(page, elem_id: str, value: str) -> None:
    """Type into a Gradio textbox or number field and leave it, so its change event fires."""
    field = page.locator(f"#{elem_id} input, #{elem_id} textarea").first
    field.fill(value)
    field.press("Tab")
