"""Assemble the workbench's tabs into one Gradio app."""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from workbench.ui.build_tab import build_tab  # noqa: E402


def build_app() -> gr.Blocks:
    """The workbench UI."""
    with gr.Blocks(title="ResNet Workbench") as app:
        gr.Markdown("# ResNet Workbench")
        with gr.Tab("Build"):
            build_tab()
    return app
