"""Runs tab: a live table of runs and actions on one run (cancel, resume, delete, rename, notes, details)."""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from datetime import datetime

import gradio as gr
import pandas as pd

from workbench.errors import WorkbenchError
from workbench.service import RunRecord
from workbench.service.curves import GRAD_NORM_NAMES, SYSTEM_METRICS
from workbench.service.run_query import (
    ALL_STATUSES,
    RESULT_COLUMNS,
    RunFilter,
    cell,
    column_value,
    differing,
    filter_runs,
    spec_columns,
    spec_diff,
)
from workbench.service.runs import CANCEL, DELETE, RESUME, possible_actions
from workbench.ui.address import recalled_ids, remember
from workbench.ui.context import WorkbenchContext
from workbench.ui.fields import edited
from workbench.ui.run_table import (
    RUN_TABLE_COLUMNS,
    RUN_TABLE_WIDTHS,
    format_duration,
    run_choices,
    run_duration,
    run_rows,
)

REFRESH_SECONDS = 2.0
DIFFERS_STYLE = ' style="background:#fff3b0;font-weight:600"'


def run_details(run: RunRecord, latest: dict[str, float] | None = None, trained_seconds: float | None = None) -> str:
    """Markdown with a run's status, group, progress, duration and speed over the run, latest learning rate, speed
    and system metrics, and (for a failed or interrupted run) its message."""
    lines = [f"### #{run.id} {run.name}", f"- **Status:** {run.status}"]
    duration = run_duration(run, trained_seconds=trained_seconds)
    if duration is not None:
        speed = f", {run.images_per_s:,.0f} images/s over the run" if run.images_per_s else ""
        lines.append(f"- **Duration:** {format_duration(duration)} across resumes{speed}")
    if latest:
        lines.append("- **Latest:** " + ", ".join(f"{name} {value:.4g}" for name, value in latest.items()))
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


def table_view(runs: list[RunRecord], wanted: RunFilter, extra_columns: Sequence[str], hide_identical: bool,
               finishes: Mapping[int, datetime] | None = None, trained_seconds: Mapping[int, float] | None = None):
    """(columns, rows) of the runs table: the filtered runs, the chosen spec and result columns after the standard
    ones, and with `hide_identical` only the columns whose values differ between the shown runs; `finishes` are
    expected finish times by run id, `trained_seconds` (by run id) give durations across resumes."""
    shown = filter_runs(runs, wanted)
    columns = [*RUN_TABLE_COLUMNS, *(column for column in extra_columns if column not in RUN_TABLE_COLUMNS)]
    rows = [row + [cell(column_value(run, column)) for column in columns[len(RUN_TABLE_COLUMNS):]]
            for run, row in zip(shown, run_rows(shown, finishes=finishes, trained_seconds=trained_seconds),
                                strict=True)]
    if hide_identical:
        kept = [column for column in differing(columns, rows) if column not in ("id", "name")]
        indices = [0, 1, *(columns.index(column) for column in kept)]
        columns, rows = [columns[i] for i in indices], [[row[i] for i in indices] for row in rows]
    return columns, rows


def spec_diff_html(runs: list[RunRecord]) -> str:
    """The runs' full specs side by side, rows that differ highlighted and listed first."""
    if len(runs) < 2:
        return "<p>Pick two or more runs to compare their specs.</p>"
    table = sorted(spec_diff(runs), key=lambda row: not row[2])
    head = "".join(f"<th>#{run.id} {html.escape(run.name)}</th>" for run in runs)
    body = "".join(
        f"<tr class=\"{'differs' if differs else 'same'}\"{DIFFERS_STYLE if differs else ''}>"
        f"<td>{html.escape(path)}</td>" + "".join(f"<td>{html.escape(value)}</td>" for value in values) + "</tr>"
        for path, values, differs in table)
    count = sum(differs for _, _, differs in table)
    return (f"<p>{count} of {len(table)} settings differ (highlighted, first).</p>"
            f"<table id=\"spec-diff-table\"><tr><th>setting</th>{head}</tr>{body}</table>")


def action_states(run: RunRecord | None) -> list:
    """Cancel, Resume and Delete enabled only where the run allows them, then the buttons any picked run
    allows (rename, notes, tags, job log)."""
    allowed = possible_actions(run) if run else frozenset()
    return ([gr.update(interactive=action in allowed) for action in (CANCEL, RESUME, DELETE)]
            + [gr.update(interactive=run is not None)] * len(RUN_BUTTONS))


#: Buttons that act on any picked run (the others depend on its status).
RUN_BUTTONS = ("rename", "save notes", "add tags", "remove tags", "job log")


def _traceback(run: RunRecord):
    return gr.update(value=run.traceback or "", visible=bool(run.traceback))


def runs_tab(ctx: WorkbenchContext, demo: gr.Blocks) -> None:
    """Create the Runs tab inside the current Blocks."""

    def timings(runs):
        """Expected finishes and seconds trained of `runs`, from one query of their run_seconds."""
        seconds = ctx.run_seconds([run.id for run in runs])
        return ctx.expected_finishes(runs, trained_seconds=seconds), seconds

    def list_runs(*view):
        """The runs table (filtered and with the chosen columns) and the run picker's choices."""
        runs = ctx.list_runs()
        finishes, seconds = timings(runs)
        columns, rows = table_view(runs, RunFilter(*view[:6]), *view[6:], finishes, seconds) if view else table_view(
            runs, RunFilter(), (), False, finishes, seconds)
        return pd.DataFrame(rows, columns=columns), gr.update(choices=run_choices(runs))

    def refresh(shown: list | None, run_id: int | None, *view):
        runs = ctx.list_runs()
        finishes, seconds = timings(runs)
        columns, rows = table_view(runs, RunFilter(*view[:6]), *view[6:], finishes, seconds)
        if [columns, rows] == shown:
            return (gr.skip(),) * (5 + len(buttons))
        picked = next((run for run in runs if run.id == run_id), None)
        details = (run_details(picked, trained_seconds=seconds.get(picked.id)), _traceback(picked),
                   *action_states(picked)) if picked else (
            (gr.skip(),) * (2 + len(buttons)))
        return (pd.DataFrame(rows, columns=columns), [columns, rows], gr.update(choices=run_choices(runs)),
                *details)

    def filter_choices():
        """Choices of the filter pickers and the column picker, from the stored runs."""
        runs = ctx.list_runs()
        values = {"datasets": {run.dataset for run in runs if run.dataset},
                  "groups": {run.group_name for run in runs if run.group_name},
                  "tags": {tag for run in runs for tag in run.tags},
                  "presets": {run.preset or "custom" for run in runs}}
        return (*(gr.update(choices=sorted(found)) for found in values.values()),
                gr.update(choices=[*RESULT_COLUMNS, *spec_columns(runs)]), gr.update(choices=run_choices(runs)))

    def diff(run_ids: list | None):
        wanted = [int(run_id) for run_id in run_ids or [] if str(run_id).isdigit()]
        return spec_diff_html([ctx.get_run(run_id) for run_id in wanted])

    def show_run(run_id: int | str | None):
        if run_id in (None, ""):
            return "", gr.update(value="", visible=False), "", "", "", *action_states(None)
        try:
            run = ctx.get_run(int(run_id))
        except (ValueError, WorkbenchError) as exc:
            return str(exc), gr.update(value="", visible=False), "", "", "", *action_states(None)
        latest = ctx.latest_values(run.id, ["lr", "images_per_s", *GRAD_NORM_NAMES, *SYSTEM_METRICS])
        details = run_details(run, latest, ctx.run_seconds([run.id]).get(run.id))
        return (details, _traceback(run), json.dumps(run.spec, indent=2), run.name, run.notes,
                *action_states(run))

    def show_actions(run_id: int | str | None) -> list:
        try:
            return action_states(ctx.get_run(int(run_id)))
        except (TypeError, ValueError, WorkbenchError):
            return action_states(None)

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

    with gr.Tab("Runs", id="runs") as tab:
        with gr.Row():
            search = gr.Textbox(label="Search", placeholder="name, preset, dataset, group, notes, tags",
                                elem_id="runs-search", scale=2)
            statuses = gr.Dropdown(list(ALL_STATUSES), value=[], multiselect=True, label="Status",
                                   elem_id="filter-status")
            datasets = gr.Dropdown([], value=[], multiselect=True, label="Dataset", elem_id="filter-dataset")
            groups = gr.Dropdown([], value=[], multiselect=True, label="Group", elem_id="filter-group")
            tags = gr.Dropdown([], value=[], multiselect=True, label="Tag", elem_id="filter-tag")
            presets = gr.Dropdown([], value=[], multiselect=True, label="Preset", elem_id="filter-preset")
        with gr.Row():
            columns = gr.Dropdown([], value=[], multiselect=True, label="More columns (spec settings and results)",
                                  elem_id="runs-columns", scale=4)
            hide_identical = gr.Checkbox(False, label="Hide identical columns", elem_id="hide-identical", scale=1)
        table = gr.Dataframe(headers=RUN_TABLE_COLUMNS, interactive=False, wrap=True, elem_id="runs-table",
                             label="Runs (click a row to pick it)", max_height=420, column_widths=RUN_TABLE_WIDTHS)
        with gr.Row():
            picker = gr.Dropdown([], value=None, label="Run", elem_id="run-picker", scale=3, allow_custom_value=True)
            cancel_button = gr.Button("Cancel", elem_id="cancel-run", variant="stop", scale=1, interactive=False)
            resume_button = gr.Button("Resume", elem_id="resume-run", scale=1, interactive=False)
            delete_button = gr.Button("Delete...", elem_id="delete-run", scale=1, interactive=False)
        with gr.Row(visible=False) as confirm_row:
            confirm_text = gr.Markdown()
            confirm_button = gr.Button("Delete for good", variant="stop", elem_id="confirm-delete")
            keep_button = gr.Button("Keep it", elem_id="keep-run")
        message = gr.Markdown(elem_id="runs-message")
        details = gr.Markdown(elem_id="run-details")
        trace = gr.Code(language="python", label="Traceback", visible=False, interactive=False)
        with gr.Row():
            new_name = gr.Textbox(label="Name", scale=3)
            rename_button = gr.Button("Rename", scale=1, interactive=False)
        with gr.Row():
            notes = gr.Textbox(label="Notes", lines=2, scale=3)
            notes_button = gr.Button("Save notes", scale=1, interactive=False)
        with gr.Row():
            tag_text = gr.Textbox(label="Tags (comma-separated)", elem_id="tag-text", scale=3)
            add_tag = gr.Button("Add tags", elem_id="add-tags", scale=1, interactive=False)
            remove_tag = gr.Button("Remove tags", elem_id="remove-tags", scale=1, interactive=False)
        with gr.Accordion("Full spec", open=False):
            spec = gr.Code(language="json", interactive=False)
        with gr.Accordion("Job log", open=False):
            log_button = gr.Button("Show the job log", elem_id="show-job-log", interactive=False)
            job_log = gr.Code(language=None, interactive=False, elem_id="job-log")
        with gr.Accordion("Compare specs", open=False):
            diff_runs = gr.Dropdown([], value=[], multiselect=True, label="Runs to compare", elem_id="diff-runs")
            diff_table = gr.HTML(elem_id="spec-diff")
        shown = gr.State(None)
        timer = gr.Timer(REFRESH_SECONDS)

    refreshed = [table, picker]
    buttons = [cancel_button, resume_button, delete_button, rename_button, notes_button, add_tag, remove_tag,
               log_button]
    view = [search, statuses, datasets, groups, tags, presets, columns, hide_identical]
    timer.tick(refresh, [shown, picker, *view], [table, shown, picker, details, trace, *buttons],
               concurrency_limit=None,
               api_visibility="private", show_progress="hidden")
    demo.load(list_runs, None, refreshed, api_name="list_runs")
    gr.on([edited(search), statuses.change, datasets.change, groups.change, tags.change, presets.change,
           columns.change, hide_identical.input], refresh, [gr.State(None), picker, *view],
          [table, shown, picker, details, trace, *buttons], trigger_mode="always_last", api_name="filter_runs",
          show_progress="hidden")
    gr.on([demo.load, tab.select], filter_choices, None, [datasets, groups, tags, presets, columns, diff_runs],
          api_visibility="private")
    diff_runs.change(diff, diff_runs, diff_table, api_name="spec_diff")
    add_tag.click(lambda run_id, text: act(ctx.tag, run_id, text), [picker, tag_text], [message, *refreshed],
                  api_name="add_tags")
    remove_tag.click(lambda run_id, text: act(ctx.tag, run_id, text, True), [picker, tag_text],
                     [message, *refreshed], api_name="remove_tags")
    table.select(pick_row, None, picker, api_visibility="private")
    picker.change(show_run, picker, [details, trace, spec, new_name, notes, *buttons], api_name="run_details")
    cancel_button.click(lambda run_id: act(cancel, run_id), picker, [message, *refreshed], api_name="cancel_run").then(
        show_actions, picker, buttons, api_visibility="private")
    resume_button.click(lambda run_id: act(resume, run_id), picker, [message, *refreshed], api_name="resume_run").then(
        show_actions, picker, buttons, api_visibility="private")
    log_button.click(show_log, picker, job_log, api_name="job_log")
    delete_button.click(ask_delete, picker, [confirm_row, confirm_text], api_visibility="private")
    keep_button.click(lambda: gr.update(visible=False), None, confirm_row, api_visibility="private")
    confirm_button.click(lambda run_id: act(delete, run_id), picker, [message, *refreshed],
                         api_name="delete_run").then(
        lambda: (gr.update(visible=False), None), None, [confirm_row, picker], api_visibility="private")
    def run_from_address(request: gr.Request):
        picked = recalled_ids(request, "run", (run.id for run in ctx.list_runs()))
        return gr.skip() if picked is None else picked[0]

    demo.load(run_from_address, None, picker, api_visibility="private")
    remember(picker.change, picker, "run")
    rename_button.click(lambda run_id, name: act(rename, run_id, name), [picker, new_name], [message, *refreshed],
                        api_name="rename_run")
    notes_button.click(lambda run_id, text: act(save_notes, run_id, text), [picker, notes], [message, *refreshed],
                       api_name="save_notes")
