"""Export tab: pick a run with a checkpoint and a format, prepare the file, download it."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import gradio as gr

from storage import RunRecord
from workbench.errors import WorkbenchError
from workbench.export import EXPORT_FORMATS, export_from_checkpoint
from workbench.paths import exports_dir
from workbench.run_table import run_label
from workbench.ui.context import WorkbenchContext

CHECKPOINT_FILES = {"last": "last.pt", "best": "best.pt"}


def checkpoint_file(ctx: WorkbenchContext, run_id: int, which: str) -> Path:
    """Where a run's last or best checkpoint is kept."""
    return ctx.store.run_dir(run_id) / "checkpoints" / CHECKPOINT_FILES[which]


def exportable_runs(ctx: WorkbenchContext) -> list[RunRecord]:
    """Runs that have at least a last checkpoint, newest first."""
    return [run for run in ctx.store.list_runs() if checkpoint_file(ctx, run.id, "last").exists()]


def export_file_name(run: RunRecord, which: str, fmt: str) -> str:
    """A file name that says what the file holds: "run12-resnet20-best.onnx"."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", run.name).strip("-") or "run"
    return f"run{run.id}-{slug}-{which}{EXPORT_FORMATS[fmt].suffix}"


def run_choices(ctx: WorkbenchContext):
    return gr.update(choices=[(run_label(run), run.id) for run in exportable_runs(ctx)])


def prepare_export(ctx: WorkbenchContext, run_id: int | str | None, which: str, fmt: str):
    """Export the run's checkpoint into the exports folder; returns (message, download button)."""
    hidden = gr.update(visible=False)
    if run_id in (None, ""):
        return "Pick a run with a checkpoint first.", hidden
    if not str(run_id).isdigit():
        return f"**Not exported:** {run_id!r} is not a run id; pick a run from the list.", hidden
    try:
        run = ctx.store.get_run(int(run_id))
        checkpoint = checkpoint_file(ctx, run.id, which)
        if not checkpoint.exists():
            return f"Run #{run.id} has no {which} checkpoint yet.", hidden
        target = exports_dir(ctx.home) / export_file_name(run, which, fmt)
        target.parent.mkdir(parents=True, exist_ok=True)
        export_from_checkpoint(checkpoint, fmt, target, metadata={"preset": run.preset or run.name})
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
            which = gr.Radio(list(CHECKPOINT_FILES), value="best", label="Checkpoint")
            fmt = gr.Radio([(f"{name}: {spec.description}", name) for name, spec in EXPORT_FORMATS.items()],
                           value="bundle", label="Format", elem_id="export-format")
        prepare = gr.Button("Prepare file", variant="primary", elem_id="prepare-export")
        message = gr.Markdown(elem_id="export-message")
        download = gr.DownloadButton("Download", visible=False, elem_id="download-export")

    gr.on([demo.load, tab.select], bound(run_choices, ctx), None, run, api_visibility="private")
    prepare.click(bound(prepare_export, ctx), [run, which, fmt], [message, download], api_name="export")
    gr.on([run.change, which.change, fmt.change], lambda: gr.update(visible=False), None, download,
          api_visibility="private")
