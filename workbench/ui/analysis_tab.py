"""Analysis tab: lesion studies and gradient flow of stored runs (a ladder's degradation verdict is in Compare).

Lesion studies and gradient profiles are analysis jobs in the store, run by the same workers as
training; the tab queues them, polls their status on a timer and redraws only when one changes.
Everything shown is read from the store, so jobs and results survive the browser and the server.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import gradio as gr

from workbench.errors import WorkbenchError
from workbench.jobs.analyses import FRACTAL_COLUMNS, GRADIENT_PROFILE, LESION
from workbench.science.gradient_flow import UNIT_GRAD_PREFIX, unit_gradient_matrix
from workbench.science.lesion import DEFAULT_DRAWS, DEFAULT_MAX_K
from workbench.spec import parse_net
from workbench.ui.context import WorkbenchContext
from workbench.ui.run_table import run_label
from workbench.viz.figures import (
    gradient_heatmaps,
    gradient_profile_chart,
    lesion_by_k,
    lesion_by_unit,
)

REFRESH_SECONDS = 3.0
DEFAULT_LESION_IMAGES = 1000
SHOWN_JOBS = 8
PROFILE_BATCH = 128


def _is_residual(run: Any) -> bool:
    return parse_net(run.spec["net"]).residual


def job_lines(ctx: WorkbenchContext) -> str:
    """The newest analysis jobs with their status, progress and error, one line each."""
    lines = []
    for job in reversed(ctx.analyses()[-SHOWN_JOBS:]):
        state = job.status
        if state == "running":
            state = f"running, {100 * job.progress:.0f}%"
        error = f": {job.error_message}" if job.status == "failed" and job.error_message else ""
        lines.append(f"- analysis #{job.id}: {job.kind.replace('_', ' ')} of run #{job.run_id}, {state}{error}")
    return "\n".join(lines)


def job_states(ctx: WorkbenchContext) -> dict[int, tuple[str, float]]:
    return {job.id: (job.status, round(job.progress, 2)) for job in ctx.analyses(status=("queued", "running"))} | {
        job.id: (job.status, 1.0) for job in ctx.analyses()[-SHOWN_JOBS:]}


def start_lesion(ctx: WorkbenchContext, run_id: int, *, draws: int, max_k: int, limit_images: int | None) -> int:
    """Queue a lesion study of a completed run, unless one is already queued or running for it."""
    run = ctx.get_run(run_id)
    if run.status != "completed":
        raise WorkbenchError(f"run #{run_id} is {run.status}; a lesion study needs a completed run")
    if ctx.analyses(run_id, LESION, ("queued", "running")):
        raise WorkbenchError(f"a lesion study of run #{run_id} is already queued or running")
    return ctx.queue_analysis(run_id, LESION, {"draws": draws, "max_k": max_k, "limit_images": limit_images})


def start_columns(ctx: WorkbenchContext, run_id: int) -> int:
    """Queue the per-column evaluation of a completed FractalNet run (Larsson et al. 2016)."""
    run = ctx.get_run(run_id)
    if run.status != "completed":
        raise WorkbenchError(f"run #{run_id} is {run.status}; evaluating its columns needs a completed run")
    return ctx.queue_analysis(run_id, FRACTAL_COLUMNS, {})


def column_lines(ctx: WorkbenchContext, run_id: int | None) -> str:
    """The latest per-column evaluation of a FractalNet run as Markdown."""
    result = None if run_id is None else ctx.latest_result(int(run_id), FRACTAL_COLUMNS)
    if result is None:
        return "No per-column evaluation stored for this run yet." if run_id is not None else ""
    rows = [f"- column {row['column']} alone ({row['convs']} convs deep): {row['error']:.1f}%"
            for row in result["columns"]]
    return "\n".join([f"All columns joined: **{result['joined']:.1f}%** test error on {result['images']} images",
                      *rows])


def fractal_runs(ctx: WorkbenchContext) -> list[tuple[str, int]]:
    """(title, id) of every completed FractalNet run, newest first."""
    return [(run_label(run), run.id) for run in ctx.list_runs(status="completed")
            if parse_net(run.spec["net"]).kind == "fractalnet"]


def completed_runs(ctx: WorkbenchContext) -> list[tuple[str, int]]:
    """(title, id) of every completed run, newest first."""
    return [(run_label(run), run.id) for run in ctx.list_runs(status="completed")]


def all_runs(ctx: WorkbenchContext) -> list[tuple[str, int]]:
    """(title, id) of every run, newest first."""
    return [(run_label(run), run.id) for run in ctx.list_runs()]


def lesion_view(ctx: WorkbenchContext, run_ids: Sequence[int]) -> tuple[Any, Any, str]:
    """(error vs deleted unit, error vs k, a summary) from the latest stored lesion study of each run."""
    studies = []
    missing = []
    for run_id in run_ids:
        result = ctx.latest_result(int(run_id), LESION)
        if result is None:
            missing.append(f"#{run_id}")
            continue
        studies.append((run_label(ctx.get_run(int(run_id)), ()), result))
    lines = []
    for title, study in studies:
        single = [entry["error"] for entry in study["single"]]
        lines.append(f"- **{title}**: intact {study['baseline_error']:.1f}%, one unit deleted "
                     f"{sum(single) / len(single):.1f}% on average (worst {max(single):.1f}%), "
                     f"{study['images']} test images")
    if missing:
        lines.append(f"- no lesion study stored yet for {', '.join(missing)}: start one above")
    return lesion_by_unit(studies), lesion_by_k(studies), "\n".join(lines)


def gradient_view(ctx: WorkbenchContext, run_ids: Sequence[int]) -> Any:
    """Heatmaps of the recorded per-unit input gradient norms, plain runs first, then residual ones."""
    store = ctx.store
    runs = sorted((ctx.get_run(int(run_id)) for run_id in run_ids), key=lambda r: (_is_residual(r), r.id))
    if not runs:
        return gradient_heatmaps([])
    units = max(parse_net(run.spec["net"]).units for run in runs)
    names = [f"{UNIT_GRAD_PREFIX}{k}" for k in range(1, units + 1)]
    batches = store.fetch_metrics_since({run.id: 0 for run in runs}, names=names)
    return gradient_heatmaps([(run_label(run, ()), *unit_gradient_matrix(batches[run.id].rows)) for run in runs])


def queue_profiles(ctx: WorkbenchContext, run_ids: Sequence[int]) -> str:
    """Queue a gradient profile at initialization for each run that has none stored or on the way."""
    queued = []
    for run_id in map(int, run_ids):
        if ctx.latest_result(run_id, GRADIENT_PROFILE) is None and not ctx.analyses(run_id, GRADIENT_PROFILE,
                                                                                    ("queued", "running")):
            queued.append(ctx.queue_analysis(run_id, GRADIENT_PROFILE, {"batch_size": PROFILE_BATCH}))
    return f"Queued {len(queued)} gradient profile(s)." if queued else "Every picked run has a profile already."


def profile_view(ctx: WorkbenchContext, run_ids: Sequence[int]) -> Any:
    """Per-unit input gradient norms at initialization of the runs that have a stored profile."""
    profiles = [(run_label(ctx.get_run(int(run_id)), ()), result["profile"]) for run_id in run_ids
                if (result := ctx.latest_result(int(run_id), GRADIENT_PROFILE)) is not None]
    return gradient_profile_chart(profiles)


def build_analysis_tab(ctx: WorkbenchContext, demo: gr.Blocks | None = None) -> None:
    """Create the Analysis tab inside the current Blocks."""
    bound = functools.partial
    with gr.Tab("Analysis", id="analysis") as tab:
        gr.Markdown("### Lesion study\nDelete each unit of a trained net in turn (a residual unit keeps only its "
                    "shortcut; a plain unit becomes the identity), then k random units (Veit et al. 2016).")
        with gr.Row():
            lesion_run = gr.Dropdown([], label="Completed run", elem_id="lesion-run", scale=3)
            draws = gr.Number(DEFAULT_DRAWS, precision=0, minimum=1, label="Draws per k")
            max_k = gr.Number(DEFAULT_MAX_K, precision=0, minimum=1, label="Up to k units")
            limit = gr.Number(DEFAULT_LESION_IMAGES, precision=0, minimum=0, label="Test images (0: all)")
            start = gr.Button("Start lesion study", variant="primary", elem_id="lesion-start")
        job_status = gr.Markdown(elem_id="lesion-status")
        shown = gr.Dropdown([], value=[], multiselect=True, label="Show lesion results of", elem_id="lesion-shown")
        with gr.Row():
            by_unit = gr.Plot(lesion_by_unit([]), label="Error with one unit deleted", elem_id="lesion-by-unit")
            by_k = gr.Plot(lesion_by_k([]), label="Error with k random units deleted", elem_id="lesion-by-k")
        lesion_summary = gr.Markdown()

        gr.Markdown("### Gradient flow\nNorm of the loss gradient at each unit's input: recorded during training "
                    "(set `grad_norm_every` in the recipe), and at initialization on a batch of the run's data.")
        with gr.Row():
            gradient_runs = gr.Dropdown([], value=[], multiselect=True, label="Runs (plain and residual side by side)",
                                        elem_id="gradient-runs", scale=4)
            profile_button = gr.Button("Profile at initialization", elem_id="gradient-profile-button")
        heatmap = gr.Plot(gradient_heatmaps([]), label="During training", elem_id="gradient-heatmap")
        profile = gr.Plot(gradient_profile_chart([]), label="At initialization", elem_id="gradient-profile")

        gr.Markdown("### FractalNet columns\nTest error of a trained FractalNet with every column joined and with "
                    "each column alone: the columns are an ensemble of plain nets of depths 1, 2, 4, ... per block "
                    "(Larsson et al. 2016).")
        with gr.Row():
            columns_run = gr.Dropdown([], label="Completed FractalNet run", elem_id="columns-run", scale=4)
            columns_button = gr.Button("Evaluate each column", elem_id="columns-start")
        columns_result = gr.Markdown(elem_id="columns-result")

        gr.Markdown("The degradation verdict of a depth ladder, with its plain and residual curves side by side "
                    "(He et al. 2015, Fig. 6), is in the Compare tab: pick the ladder's group there.")
        seen_jobs = gr.State({})
        timer = gr.Timer(REFRESH_SECONDS)

    def refresh_choices():
        completed = completed_runs(ctx)
        return (gr.update(choices=completed), gr.update(choices=completed), gr.update(choices=all_runs(ctx)),
                gr.update(choices=fractal_runs(ctx)))

    def start_job(run_id, draws_value, max_k_value, limit_value, shown_ids):
        if run_id is None:
            return "Pick a completed run first.", gr.skip()
        try:
            start_lesion(ctx, int(run_id), draws=int(draws_value or DEFAULT_DRAWS),
                         max_k=int(max_k_value or DEFAULT_MAX_K),
                         limit_images=int(limit_value) if limit_value else None)
        except WorkbenchError as exc:
            return f"**Cannot start:** {exc}", gr.skip()
        return job_lines(ctx), gr.update(value=sorted({*map(int, shown_ids or []), int(run_id)}))

    def poll_jobs(shown_ids, profile_ids, columns_id, seen):
        states = job_states(ctx)
        if states == seen:
            return (gr.skip(),) * 7
        first, second, summary = lesion_view(ctx, shown_ids or [])
        return (job_lines(ctx), first, second, summary, profile_view(ctx, profile_ids or []),
                column_lines(ctx, columns_id), states)

    def start_column_job(run_id):
        if run_id is None:
            return "Pick a completed FractalNet run first."
        try:
            start_columns(ctx, int(run_id))
        except WorkbenchError as exc:
            return f"**Cannot start:** {exc}"
        return job_lines(ctx)

    def start_profiles(run_ids):
        return f"{queue_profiles(ctx, run_ids or [])}\n{job_lines(ctx)}"

    targets = [demo.load, tab.select] if demo is not None else [tab.select]
    gr.on(targets, refresh_choices, None, [lesion_run, shown, gradient_runs, columns_run], api_visibility="private")
    start.click(start_job, [lesion_run, draws, max_k, limit, shown], [job_status, shown], api_visibility="private")
    shown.change(bound(lesion_view, ctx), shown, [by_unit, by_k, lesion_summary], api_visibility="private")
    timer.tick(poll_jobs, [shown, gradient_runs, columns_run, seen_jobs],
               [job_status, by_unit, by_k, lesion_summary, profile, columns_result, seen_jobs],
               concurrency_limit=None, api_visibility="private", show_progress="hidden")
    gradient_runs.change(bound(gradient_view, ctx), gradient_runs, heatmap, api_visibility="private")
    profile_button.click(start_profiles, gradient_runs, job_status, api_visibility="private")
    columns_button.click(start_column_job, columns_run, job_status, api_visibility="private")
    columns_run.change(bound(column_lines, ctx), columns_run, columns_result, api_visibility="private")
