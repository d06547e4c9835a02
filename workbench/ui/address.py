"""The open tab and the picked runs kept in the page's address (`?tab=compare&runs=3,4`), so a reload or a
shared link opens the same view. Gradio hands the query to load handlers through `gr.Request`; the address is
rewritten in the browser (history.replaceState), without reloading the page."""

from __future__ import annotations

import json
from collections.abc import Iterable

import gradio as gr


def remember(event, component: gr.components.Component, key: str) -> None:
    """After `event`, write the component's value (a list joined by commas) into the address as `key`."""
    event(None, component, None, api_visibility="private", js=f"""(value) => {{
        const url = new URL(window.location.href);
        const text = Array.isArray(value) ? value.join(",") : (value ?? "").toString();
        if (text) url.searchParams.set("{key}", text); else url.searchParams.delete("{key}");
        window.history.replaceState(window.history.state, "", url);
    }}""")


def remember_tab(tabs: gr.Tabs, demo: gr.Blocks) -> None:
    """Write the id of each tab the user opens into the address as `tab`, and open the tab it names on load.

    The tab is opened by clicking its button in the browser: returning `gr.Tabs(selected=...)` from a load
    handler garbles the tab labels in Gradio 6.31.
    """
    ids = [tab.id for tab in tabs.children if isinstance(tab, gr.Tab)]
    for tab in tabs.children:
        if isinstance(tab, gr.Tab):
            tab.select(None, None, None, api_visibility="private", js=f"""() => {{
                const url = new URL(window.location.href);
                url.searchParams.set("tab", "{tab.id}");
                window.history.replaceState(window.history.state, "", url);
            }}""")
    demo.load(None, None, None, api_visibility="private", js=f"""() => {{
        // The address as loaded: opening the first tab may already have rewritten window.location.
        const loaded = new URL(performance.getEntriesByType("navigation")[0]?.name ?? window.location.href);
        const index = {json.dumps(ids)}.indexOf(loaded.searchParams.get("tab"));
        const buttons = document.querySelector("[role=tablist]")?.querySelectorAll("[role=tab]") ?? [];
        if (index >= 0 && buttons[index]) buttons[index].click();
    }}""")


def recalled_ids(request: gr.Request, key: str, existing: Iterable[int]) -> list[int] | None:
    """The run ids the address lists under `key` that exist, in its order; None when it names none."""
    known = set(existing)
    wanted = [int(part) for part in request.query_params.get(key, "").split(",") if part.strip().isdigit()]
    picked = [run_id for run_id in wanted if run_id in known]
    return picked or None
