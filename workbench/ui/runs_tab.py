"""Runs tab: a live table of runs and actions on one run (cancel, resume, delete, rename, notes, details)."""

from __future__ import annotations

import json

import gradio as gr
import pandas as pd

from workbench.errors import WorkbenchError
from workbench.service import RunRecord
from workbench.ui.context import WorkbenchContext
from workbench.ui.run_table import RUN_TABLE_COLUMNS, run_label, run_rows

REFRESH_SECONDS = 2.0


def run_choices(runs: list[RunRecord]) -> list[tuple[str, int]]:
    """Picker choices for runs: ("#12 resnet20", 12)."""
    return [(run_label(run), run.id) for run in runs]


def run_details(run: RunRecord) -> str:
    """Markdown with a run's status, group, progress and (for a failed or interrupted run) its message."""
    lines = [f"### #{run.id} {run.name}", f"- **Status:** {run.status}"]
    if run.group_name:
        lines.append(f"- **Group:** {run.group_name} ({run.group_kind})")
    if run.total_iterations:
        lines.append(f"- **Iterations:** {run.iteration} of {run.total_iterations}")
    if run.worker_id:
        lines.append(f"- **Executes on:** `{run.worker_id}`" + (f" (device {run.device})" if run.device else ""))
    if run.job_id:
        lines.append(f"- **Cluster job:** `{run.job_id}`")
    if run.checkpoint_path:
        lines.append(f"- **Checkpoint:** `{run.checkpoint_path}`")
    if run.error_message:
        lines.append(f"\n**Message:** {run.error_message}")
    return "\n".join(lines)


def _traceback(run: RunRecord):
    return gr.update(value=run.traceback or "", visible=bool(run.traceback))


def runs_tab(ctx: WorkbenchContext, demo: gr.Blocks) -> None:
    """Create the Runs tab inside the current Blocks."""

    def table_frame(runs: list[RunRecord]) -> pd.DataFrame:
        return pd.DataFrame(run_rows(runs), columns=RUN_TABLE_COLUMNS)

    def list_runs():
        """The runs table and the run picker's choices."""
        runs = ctx.list_runs()
        return table_frame(runs), gr.update(choices=run_choices(runs))

    def refresh(shown: list | None, run_id: int | None):
        runs = ctx.list_runs()
        rows = run_rows(runs)
        if rows == shown:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        picked = next((run for run in runs if run.id == run_id), None)
        details = (run_details(picked), _traceback(picked)) if picked else (gr.skip(), gr.skip())
        return (pd.DataFrame(rows, columns=RUN_TABLE_COLUMNS), rows, gr.update(choices=run_choices(runs)),
                *details)

    def show_run(run_id: int | str | None):
        if run_id in (None, ""):
            return "", gr.update(value="", visible=False), "", "", ""
        try:
            run = ctx.get_run(int(run_id))
        except (ValueError, WorkbenchError) as exc:
            return str(exc), gr.update(value="", visible=False), "", "", ""
        return run_details(run), _traceback(run), json.dumps(run.spec, indent=2), run.name, run.notes

    def act(action, run_id: int | str | None, *args) -> tuple:
        if run_id in (None, ""):
            return ("Pick a run first.", *list_runs())
        try:
            message = action(int(run_id), *args)
        except ValueError:
            message = f"**Not done:** {run_id!r} is not a run id; pick a run from the list."
        except WorkbenchError as exc:
            message = f"**Not done:** {exc}"
        return (message, *list_runs())

    cancel, resume, delete, rename, save_notes = ctx.cancel, ctx.resume, ctx.delete, ctx.rename, ctx.annotate

    def show_log(run_id: int | str | None) -> str:
        if run_id in (None, ""):
            return "Pick a run first."
        try:
            return ctx.job_log(int(run_id))
        except (ValueError, WorkbenchError) as exc:
            return str(exc)

    def ask_delete(run_id: int | None):
        if run_id is None:
            return gr.update(visible=False), "Pick a run first."
        return gr.update(visible=True), f"Delete run #{run_id} with its metrics and checkpoints? This cannot be undone."

    def pick_row(event: gr.SelectData):
        return event.row_value[0]

    with gr.Tab("Runs", id="runs"):
        table = gr.Dataframe(headers=RUN_TABLE_COLUMNS, interactive=False, wrap=True, elem_id="runs-table",
                             label="Runs (click a row to pick it)", max_height=420)
        with gr.Row():
            picker = gr.Dropdown([], value=None, label="Run", elem_id="run-picker", scale=3, allow_custom_value=True)
            cancel_button = gr.Button("Cancel", elem_id="cancel-run", variant="stop", scale=1)
            resume_button = gr.Button("Resume", elem_id="resume-run", scale=1)
            delete_button = gr.Button("Delete...", elem_id="delete-run", scale=1)
        with gr.Row(visible=False) as confirm_row:
            confirm_text = gr.Markdown()
            confirm_button = gr.Button("Delete for good", variant="stop", elem_id="confirm-delete")
            keep_button = gr.Button("Keep it", elem_id="keep-run")
        message = gr.Markdown(elem_id="runs-message")
        details = gr.Markdown(elem_id="run-details")
        trace = gr.Code(language="python", label="Traceback", visible=False, interactive=False)
        with gr.Row():
            new_name = gr.Textbox(label="Name", scale=3)
            rename_button = gr.Button("Rename", scale=1)
        with gr.Row():
            notes = gr.Textbox(label="Notes", lines=2, scale=3)
            notes_button = gr.Button("Save notes", scale=1)
        with gr.Accordion("Full spec", open=False):
            spec = gr.Code(language="json", interactive=False)
        with gr.Accordion("Job log", open=False):
            log_button = gr.Button("Show the job log", elem_id="show-job-log")
            job_log = gr.Code(language=None, interactive=False, elem_id="job-log")
        shown = gr.State(None)
        timer = gr.Timer(REFRESH_SECONDS)

    refreshed = [table, picker]
    timer.tick(refresh, [shown, picker], [table, shown, picker, details, trace], concurrency_limit=None,
               api_visibility="private", show_progress="hidden")
    demo.load(list_runs, None, refreshed, api_name="list_runs")
    table.select(pick_row, None, picker, api_visibility="private")
    picker.change(show_run, picker, [details, trace, spec, new_name, notes], api_name="run_details")
    cancel_button.click(lambda run_id: act(cancel, run_id), picker, [message, *refreshed], api_name="cancel_run")
    resume_button.click(lambda run_id: act(resume, run_id), picker, [message, *refreshed], api_name="resume_run")
    log_button.click(show_log, picker, job_log, api_name="job_log")
    delete_button.click(ask_delete, picker, [confirm_row, confirm_text], api_visibility="private")
    keep_button.click(lambda: gr.update(visible=False), None, confirm_row, api_visibility="private")
    confirm_button.click(lambda run_id: act(delete, run_id), picker, [message, *refreshed],
                         api_name="delete_run").then(
        lambda: (gr.update(visible=False), None), None, [confirm_row, picker], api_visibility="private")
    rename_button.click(lambda run_id, name: act(rename, run_id, name), [picker, new_name], [message, *refreshed],
                        api_name="rename_run")
    notes_button.click(lambda run_id, text: act(save_notes, run_id, text), [picker, notes], [message, *refreshed],
                       api_name="save_notes")
