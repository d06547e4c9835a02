"""Fine-tune tab: start a run from an uploaded model, a file on the server, or another run's checkpoint."""

from __future__ import annotations

import functools
from pathlib import Path

import gradio as gr

from workbench.errors import WorkbenchError
from workbench.paths import CHECKPOINT_KINDS
from workbench.service.finetune import (
    MODE_LABELS,
    SourceReport,
    checkpoint_source,
    describe_source,
    import_upload,
    inspect_source,
    locate_model_file,
    plan_finetune,
)
from workbench.service.forms import FORM_FIELDS
from workbench.ui.context import WorkbenchContext
from workbench.ui.fields import number_field
from workbench.ui.launch_tab import run_form
from workbench.ui.run_table import run_choices
from workbench.weights.importers import IMPORT_FORMATS
from workbench.weights.transfer import FINETUNE_MODES

SOURCES = [("Upload a file", "upload"), ("File on the server", "path"), ("Another run's checkpoint", "run")]
NO_SOURCE = "Pick a model to start from: upload a file, give its path on the server, or pick a run."


def source_visibility(kind: str):
    """Show only the fields of the chosen kind of source."""
    return tuple(gr.update(visible=kind == name) for _, name in SOURCES)


def mode_visibility(mode: str):
    """The stage count belongs to "last stages", the hidden width to "new head only"."""
    return gr.update(visible=mode == "last_stages"), gr.update(visible=mode == "head")


def _shown(report: SourceReport):
    """(model file, summary, preset picker) for a readable file; the picker shows only when the file has no spec."""
    return str(report.path), describe_source(report), gr.update(value=report.preset, visible=not report.spec_from_file)


def _inspected(ctx: WorkbenchContext, path: Path, source_run: tuple[int, str] | None = None):
    return _shown(inspect_source(path, ctx.presets(), source_run=source_run))


def _refused(exc: Exception):
    return "", f"**Not usable:** {exc}", gr.update()


def inspect_upload(ctx: WorkbenchContext, upload: str | None):
    """Keep a copy of the upload in the imports folder and say what it holds; a refused upload is deleted."""
    if not upload:
        return "", NO_SOURCE, gr.update()
    try:
        return _shown(import_upload(Path(upload), ctx.home, ctx.presets()))
    except WorkbenchError as exc:
        Path(upload).unlink(missing_ok=True)  # Gradio's own copy
        return _refused(exc)


def inspect_path(ctx: WorkbenchContext, text: str):
    """Say what a file on the server holds (it must lie in the home or data folders)."""
    try:
        path = locate_model_file(text, ctx.home, ctx.data_roots)
        return _inspected(ctx, path, checkpoint_source(path, ctx.home))
    except WorkbenchError as exc:
        return _refused(exc)


def inspect_run(ctx: WorkbenchContext, run_id: int | str | None, which: str):
    """Say what a run's best or last checkpoint holds."""
    if run_id in (None, ""):
        return "", NO_SOURCE, gr.update()
    if not str(run_id).isdigit():
        return _refused(WorkbenchError(f"{run_id!r} is not a run id; pick a run from the list"))
    try:
        path = ctx.checkpoint(int(run_id), which)
        return _inspected(ctx, path, (int(run_id), which))
    except WorkbenchError as exc:
        return _refused(exc)


def inspect_with_preset(ctx: WorkbenchContext, model_file: str, preset: str | None):
    """The summary again after the user picked the preset the file's weights belong to."""
    if not model_file:
        return NO_SOURCE
    try:
        path = locate_model_file(model_file, ctx.home, ctx.data_roots)
        return describe_source(inspect_source(path, ctx.presets(), preset, checkpoint_source(path, ctx.home)))
    except WorkbenchError as exc:
        return f"**Not usable:** {exc}"


def launch_finetune(ctx: WorkbenchContext, model_file: str, preset: str | None, mode: str, stages, head_hidden,
                    *form_values):
    """Queue a fine-tune of `model_file`, checked again (location, safety, fit); `form_values` are the launch
    form's FORM_FIELDS in order. Returns the message."""
    try:
        source = locate_model_file(model_file, ctx.home, ctx.data_roots)
        presets = ctx.presets()
        report = inspect_source(source, presets, preset or None, checkpoint_source(source, ctx.home))
        data, train = ctx.specs_from_form(dict(zip(FORM_FIELDS, form_values, strict=True)))
        plan = plan_finetune(report, mode=mode, data=data, train=train, presets=presets, stages=stages,
                             head_hidden=head_hidden)
        run_id = ctx.launch_finetune(plan)
    except (WorkbenchError, ValueError) as exc:
        return f"**Nothing launched:** {exc}"
    parent = f" (child of run #{plan.parent_run_id})" if plan.parent_run_id is not None else ""
    return (f"Queued #{run_id} {plan.name}{parent} on {data.name}, starting from `{source.name}`. "
            "Follow it in the Runs and Compare tabs.")


def exportable_run_choices(ctx: WorkbenchContext):
    return gr.update(choices=run_choices(ctx.exportable_runs()))


def finetune_tab(ctx: WorkbenchContext, demo: gr.Blocks) -> None:
    """Create the Fine-tune tab inside the current Blocks."""
    bound = functools.partial
    formats = "; ".join(IMPORT_FORMATS.values())
    with gr.Tab("Fine-tune", id="finetune") as tab:
        gr.Markdown(f"#### Model to start from\nImportable: {formats}. Files are read safely: a pickle that "
                    "would run code is refused.")
        kind = gr.Radio(SOURCES, value="upload", label="Start from", elem_id="finetune-source")
        with gr.Column() as upload_column:
            upload = gr.File(label="Weights file", type="filepath", elem_id="finetune-upload")
        with gr.Row(visible=False) as path_row:
            server_path = gr.Textbox(label="Path on the server", scale=4, elem_id="finetune-path",
                                     info="Inside the home folder or a data folder; relative paths are looked up "
                                          "there.")
            read_path = gr.Button("Read file", scale=1, elem_id="finetune-read-path")
        with gr.Row(visible=False) as run_row:
            run = gr.Dropdown([], value=None, label="Run (with a checkpoint)", allow_custom_value=True,
                              elem_id="finetune-run")
            which = gr.Radio(list(CHECKPOINT_KINDS), value="best", label="Checkpoint")
        summary = gr.Markdown(NO_SOURCE, elem_id="finetune-summary")
        with gr.Row():
            model_file = gr.Textbox(label="Model file the fine-tune starts from", interactive=False, scale=3,
                                    elem_id="finetune-model-file")
            preset = gr.Dropdown([entry.name for entry in ctx.presets()], value=None, scale=1,
                                 label="Network (when the file does not say)", elem_id="finetune-preset")
        gr.Markdown("#### Fine-tuning")
        with gr.Row():
            mode = gr.Radio([(f"{MODE_LABELS[name]}: {text}", name) for name, text in FINETUNE_MODES.items()],
                            value="all", label="Mode", scale=3, elem_id="finetune-mode")
            stages = number_field(1, label="Last stages to train", precision=0, visible=False,
                               elem_id="finetune-stages")
            hidden = number_field(0, label="Hidden units in the new head (0 = none)", precision=0, visible=False,
                               elem_id="finetune-hidden")
        form = run_form(ctx, "finetune-", dataset="folder", lr=0.01)
        launch = gr.Button("Launch fine-tune", variant="primary", elem_id="finetune-launch")
        message = gr.Markdown(elem_id="finetune-message")

    picked = [model_file, summary, preset]
    kind.change(source_visibility, kind, [upload_column, path_row, run_row], api_visibility="private")
    upload.upload(bound(inspect_upload, ctx), upload, picked, api_name="finetune_upload")
    upload.clear(lambda: ("", NO_SOURCE), None, [model_file, summary], api_visibility="private")
    gr.on([read_path.click, server_path.submit], bound(inspect_path, ctx), server_path, picked,
          api_name="finetune_inspect_path")
    gr.on([run.input, which.input], bound(inspect_run, ctx), [run, which], picked, api_name="finetune_inspect_run")
    preset.input(bound(inspect_with_preset, ctx), [model_file, preset], summary, api_visibility="private")
    mode.change(mode_visibility, mode, [stages, hidden], api_visibility="private")
    gr.on([demo.load, tab.select], bound(exportable_run_choices, ctx), None, run, api_visibility="private")
    launch.click(bound(launch_finetune, ctx), [model_file, preset, mode, stages, hidden, *form.components()],
                 message, api_name="finetune_launch")
