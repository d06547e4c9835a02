"""Export tab: pick a run with a checkpoint and a format, prepare the file, download it."""

from __future__ import annotations

import functools

import gradio as gr

from workbench.errors import WorkbenchError
from workbench.ui.context import WorkbenchContext
from workbench.ui.run_table import run_choices
from workbench.weights.export import EXPORT_FORMATS

CHECKPOINTS = ("best", "last")


def exportable_run_choices(ctx: WorkbenchContext):
    return gr.update(choices=run_choices(ctx.exportable_runs()))


def prepare_export(ctx: WorkbenchContext, run_id: int | str | None, which: str, fmt: str):
    """Export the run's checkpoint into the exports folder; returns (message, download button)."""
    hidden = gr.update(visible=False)
    if run_id in (None, ""):
        return "Pick a run with a checkpoint first.", hidden
    if not str(run_id).isdigit():
        return f"**Not exported:** {run_id!r} is not a run id; pick a run from the list.", hidden
    try:
        target = ctx.export(int(run_id), fmt, which)
    except WorkbenchError as exc:
        return f"**Not exported:** {exc}", hidden
    size = target.stat().st_size / 2**20
    message = f"Ready: `{target.name}` ({size:.2f} MiB), {EXPORT_FORMATS[fmt].description}."
    return message, gr.DownloadButton(f"Download {target.name}", value=str(target), visible=True)


def export_tab(ctx: WorkbenchContext, demo: gr.Blocks) -> None:
    """Create the Export tab inside the current Blocks."""
    bound = functools.partial
    with gr.Tab("Export", id="export") as tab:
        run = gr.Dropdown([], value=None, label="Run (with a checkpoint)", elem_id="export-run",
                          allow_custom_value=True)
        with gr.Row():
            which = gr.Radio(list(CHECKPOINTS), value="best", label="Checkpoint")
            fmt = gr.Radio([(f"{name}: {spec.description}", name) for name, spec in EXPORT_FORMATS.items()],
                           value="bundle", label="Format", elem_id="export-format")
        prepare = gr.Button("Prepare file", variant="primary", elem_id="prepare-export")
        message = gr.Markdown(elem_id="export-message")
        download = gr.DownloadButton("Download", visible=False, elem_id="download-export")

    gr.on([demo.load, tab.select], bound(exportable_run_choices, ctx), None, run, api_visibility="private")
    prepare.click(bound(prepare_export, ctx), [run, which, fmt], [message, download], api_name="export")
    gr.on([run.change, which.change, fmt.change], lambda: gr.update(visible=False), None, download,
          api_visibility="private")
