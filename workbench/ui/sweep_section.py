"""Sweeps in the UI: the Launch tab's Sweep section (a search space typed over the form's run) and the Compare tab's
sweep view (parallel coordinates, parameter importance, the best trial and its export), both read from SweepSpec."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import gradio as gr

from workbench.errors import WorkbenchError
from workbench.service.forms import FORM_FIELDS, field_choices, field_default, field_help, net_spec_from_json
from workbench.service.plans import matching_preset
from workbench.service.sweeps import SweepReport
from workbench.spec import RunSpec
from workbench.sweep_spec import SWEEP_PARAMETERS, SweepSpec, build_sweep
from workbench.ui.context import WorkbenchContext
from workbench.ui.fields import number_field
from workbench.viz.sweeps import parallel_coordinates

REFRESH_SECONDS = 5.0
SPACE_EXAMPLE = "lr=0.01..0.3 log; depth=20,32; shortcut=A,B"


# -- Launch ---------------------------------------------------------------------------------------


@dataclass
class SweepControls:
    """The Sweep section's fields and button, in `launch_sweep`'s argument order."""

    space: gr.Textbox
    method: gr.Radio
    trials: gr.Number
    objective: gr.Radio
    pruning: gr.Checkbox
    button: gr.Button

    def inputs(self) -> list[gr.components.Component]:
        return [self.space, self.method, self.trials, self.objective, self.pruning]


def sweep_controls() -> SweepControls:
    """Create the Launch tab's Sweep section inside the current Blocks."""
    with gr.Accordion("Sweep: grid, random or TPE search over the run above", open=False, elem_id="sweep-launch"):
        space = gr.Textbox(label="Search space", placeholder=SPACE_EXAMPLE, elem_id="sweep-space",
                           info="NAME=values (a,b,c) or NAME=low..high [log], separated by ';'; parameters: "
                                + ", ".join(SWEEP_PARAMETERS))
        with gr.Row():
            method = gr.Radio(field_choices(SweepSpec, "method"), value=field_default(SweepSpec, "method"),
                              label="Method", info="grid: every combination; random: draws; tpe: Optuna's TPE "
                                                   "chooses each trial from the results so far",
                              elem_id="sweep-method")
            trials = number_field(8, label="Trials (random, TPE)", precision=0, elem_id="sweep-trials")
            objective = gr.Radio(field_choices(SweepSpec, "objective"), value=field_default(SweepSpec, "objective"),
                                 label="Objective", info=field_help(SweepSpec, "objective"))
            pruning = gr.Checkbox(False, label="Prune bad trials", info=field_help(SweepSpec, "pruning"),
                                  elem_id="sweep-pruning")
        button = gr.Button("Launch sweep", elem_id="launch-sweep")
    return SweepControls(space, method, trials, objective, pruning, button)


def launch_sweep(ctx: WorkbenchContext, spec_json: str, *values):
    """Queue a sweep of the Build tab's network with the form's data and recipe; returns (message, launched).

    `values` are the launch form's FORM_FIELDS in order, then the SweepControls inputs."""
    *form_values, space, method, trials, objective, pruning = values
    if not spec_json:
        return "**Nothing launched:** the network in the Build tab is invalid; fix it there first.", gr.skip()
    try:
        data, train = ctx.specs_from_form(dict(zip(FORM_FIELDS, form_values, strict=True)))
        net = net_spec_from_json(spec_json)
        preset = matching_preset(net, ctx.presets())
        sweep = build_sweep(RunSpec(net=net, data=data, train=train), space or "", method=method,
                            trials=None if method == "grid" else int(trials or 0), objective=objective,
                            pruning=bool(pruning), base_preset=preset.name if preset else None)
        group, run_ids = ctx.launch_sweep(sweep)
    except (WorkbenchError, ValueError) as exc:
        return f"**Nothing launched:** {exc}", gr.skip()
    later = " The workers ask TPE for the next trials as results come in." if method == "tpe" else ""
    message = (f"Queued {len(run_ids)} of {sweep.trial_count} trials as sweep *{group}*.{later} Follow them in the "
               "Compare tab.")
    return message, {"group": group, "run_ids": run_ids}


def wire_sweep_launch(ctx: WorkbenchContext, controls: SweepControls, form_inputs: list, message: gr.Markdown,
                      launched: gr.State) -> None:
    """`form_inputs`: the Build tab's network, then the launch form's fields."""
    controls.button.click(functools.partial(launch_sweep, ctx), [*form_inputs, *controls.inputs()],
                          [message, launched], api_name="launch_sweep")


# -- Compare --------------------------------------------------------------------------------------


def _summary(report: SweepReport) -> str:
    counts: dict[str, int] = {}
    for trial in report.trials:
        state = "pruned" if trial.pruned else trial.status
        counts[state] = counts.get(state, 0) + 1
    states = ", ".join(f"{count} {state}" for state, count in counts.items())
    state = "finished" if report.finished else "in progress"
    lines = [f"**{report.sweep.method} sweep**, {len(report.trials)} of {report.sweep.trial_count} trials "
             f"({states}), {state}; objective: {report.sweep.objective_label}."]
    if report.message:
        lines.append(report.message)
    lines.append(f"Parameter importance: {report.importance_note}.")
    return "\n\n".join(lines)


def _best(report: SweepReport) -> str:
    if report.best is None:
        return "No trial has completed yet."
    return (f"Best trial: **#{report.best.run_id} {report.best.name}**, {report.best.value:.2f}% "
            f"({report.sweep.objective_label}).")


def show_sweep(ctx: WorkbenchContext, group: str | None, shown: dict[str, Any] | None, *, force: bool = False):
    """The sweep view of the picked group, hidden when it is no sweep; unless `force`d, nothing is sent while its
    trials are as shown. Returns (section, summary, chart, importance, best, export button, shown)."""
    unchanged = (gr.skip(),) * 7
    try:
        report = ctx.sweep_report(group) if group else None
    except WorkbenchError:
        report = None
    if report is None:
        return unchanged if shown is None else (gr.update(visible=False), *(gr.skip(),) * 5, None)
    signature = repr((group, [(t.run_id, t.status, t.value) for t in report.trials], report.finished))
    if not force and shown is not None and shown["signature"] == signature:
        return unchanged
    completed = [{"params": trial.params, "value": trial.value} for trial in report.trials
                 if trial.status == "completed"]
    logs = {name for name, dimension in report.sweep.space.items() if dimension.log}
    chart = parallel_coordinates(completed, report.parameters, report.sweep.objective_label, log_scale=logs,
                                 title=f"{len(completed)} completed trials, darker is better")
    importance = [[name, round(share, 3)] for name, share in report.importance]
    best_id = report.best.run_id if report.best else None
    return (gr.update(visible=True), _summary(report), chart, importance, _best(report),
            gr.update(interactive=best_id is not None), {"signature": signature, "best": best_id})


def export_best(ctx: WorkbenchContext, shown: dict[str, Any] | None):
    """The best trial's best checkpoint as a bundle to download; (message, download button)."""
    hidden = gr.update(visible=False)
    if not shown or shown["best"] is None:
        return "No trial has completed yet.", hidden
    try:
        target = ctx.export(shown["best"], "bundle", "best")
    except WorkbenchError as exc:
        return f"**Not exported:** {exc}", hidden
    return f"Ready: `{target.name}`.", gr.DownloadButton(f"Download {target.name}", value=str(target), visible=True)


def sweep_view(ctx: WorkbenchContext, group: gr.Dropdown) -> None:
    """Create the Compare tab's sweep view inside the current Blocks; it follows the picked `group`."""
    with gr.Column(visible=False, elem_id="sweep-view") as section:
        gr.Markdown("#### Sweep")
        summary = gr.Markdown(elem_id="sweep-summary")
        chart = gr.Plot(label="Parallel coordinates: one line per completed trial", elem_id="sweep-parcoords")
        with gr.Row():
            importance = gr.Dataframe(headers=["parameter", "importance"], label="Parameter importance",
                                      interactive=False, elem_id="sweep-importance", scale=1)
            with gr.Column(scale=2):
                best = gr.Markdown(elem_id="sweep-best")
                export = gr.Button("Export the best trial (bundle, best checkpoint)", interactive=False,
                                   elem_id="sweep-export-best")
                download = gr.DownloadButton("Download", visible=False, elem_id="sweep-download-best")
                export_message = gr.Markdown(elem_id="sweep-export-message")
        shown = gr.State(None)
        timer = gr.Timer(REFRESH_SECONDS)

    outputs = [section, summary, chart, importance, best, export, shown]
    group.change(functools.partial(show_sweep, ctx, force=True), [group, shown], outputs, api_visibility="private")
    timer.tick(functools.partial(show_sweep, ctx), [group, shown], outputs, concurrency_limit=None,
               api_visibility="private", show_progress="hidden")
    export.click(functools.partial(export_best, ctx), shown, [export_message, download], api_name="export_best_trial")
    group.change(lambda: (gr.update(visible=False), ""), None, [download, export_message], api_visibility="private")
