"""Analysis tab: lesion studies and gradient flow of stored runs (a ladder's degradation verdict is in Compare).

Lesion studies run as detached background jobs (`python -m workbench lesion RUN`); the tab polls
them on a timer and redraws the lesion charts only when one finishes. Everything shown is read
from the store, so results survive the browser and the server.
"""

from __future__ import annotations

import functools
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import gradio as gr

from storage.status import COMPLETED
from workbench.errors import WorkbenchError
from workbench.science.figures import (
    gradient_heatmaps,
    gradient_profile_chart,
    lesion_by_k,
    lesion_by_unit,
)
from workbench.science.gradient_flow import UNIT_GRAD_PREFIX, initial_profiles_of_runs, unit_gradient_matrix
from workbench.science.jobs import start_lesion_job
from workbench.science.lesion import ANALYSIS_KIND, DEFAULT_DRAWS, DEFAULT_MAX_K
from workbench.spec import NetSpec

if TYPE_CHECKING:
    from workbench.ui.context import WorkbenchContext

REFRESH_SECONDS = 3.0
DEFAULT_LESION_IMAGES = 1000
LOG_TAIL_LINES = 6


def run_title(run: Any) -> str:
    """'#12 resnet56 on cifar10' as the pickers show a run."""
    return f"#{run.id} {run.name}"


def _is_residual(run: Any) -> bool:
    return NetSpec.model_validate(run.spec["net"]).shortcut != "none"


@dataclass
class LesionJob:
    """One background lesion study started from the UI."""

    run_id: int
    process: subprocess.Popen

    def state(self) -> str:
        code = self.process.poll()
        return "running" if code is None else ("finished" if code == 0 else "failed")

    def describe(self) -> str:
        state = self.state()
        if state == "running":
            return f"run #{self.run_id}: lesion study running (pid {self.process.pid})"
        if state == "finished":
            return f"run #{self.run_id}: lesion study finished and stored"
        lines = self.process.log_path.read_text(errors="replace").strip().splitlines()[-LOG_TAIL_LINES:]
        detail = next((line for line in reversed(lines) if line.startswith("error:")), lines[-1] if lines else "")
        return f"run #{self.run_id}: lesion study failed: {detail} (log: `{self.process.log_path}`)"


@dataclass
class LesionJobs:
    """Background lesion jobs started from this server, shared by every browser session."""

    jobs: dict[int, LesionJob] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(
        self, ctx: WorkbenchContext, run_id: int, *, draws: int, max_k: int, limit_images: int | None
    ) -> LesionJob:
        """Start a lesion study of a completed run, unless one is already running for it."""
        run = ctx.store.get_run(run_id)
        if run.status != COMPLETED:
            raise WorkbenchError(f"run #{run_id} is {run.status}; a lesion study needs a completed run")
        with self.lock:
            current = self.jobs.get(run_id)
            if current is not None and current.state() == "running":
                raise WorkbenchError(f"a lesion study of run #{run_id} is already running")
            process = start_lesion_job(
                ctx.home, ctx.store.engine.url.render_as_string(hide_password=False), run_id, draws=draws,
                max_k=max_k, limit_images=limit_images, data_roots=list(ctx.data_roots) or None,
            )
            job = LesionJob(run_id, process)
            self.jobs[run_id] = job
            return job

    def states(self) -> dict[int, str]:
        with self.lock:
            return {run_id: job.state() for run_id, job in self.jobs.items()}

    def describe(self) -> str:
        with self.lock:
            return "\n".join(f"- {job.describe()}" for job in self.jobs.values())


def completed_runs(store: Any) -> list[tuple[str, int]]:
    """(title, id) of every completed run, newest first."""
    return [(run_title(run), run.id) for run in store.list_runs(status=COMPLETED)]


def all_runs(store: Any) -> list[tuple[str, int]]:
    """(title, id) of every run, newest first."""
    return [(run_title(run), run.id) for run in store.list_runs()]


def lesion_view(store: Any, run_ids: Sequence[int]) -> tuple[Any, Any, str]:
    """(error vs deleted unit, error vs k, a summary) from the latest stored lesion study of each run."""
    studies = []
    missing = []
    for run_id in run_ids:
        analyses = store.list_analyses(int(run_id), ANALYSIS_KIND)
        if not analyses:
            missing.append(f"#{run_id}")
            continue
        latest = analyses[-1]
        studies.append((run_title(store.get_run(int(run_id))), latest.result))
    lines = []
    for title, study in studies:
        single = [entry["error"] for entry in study["single"]]
        lines.append(f"- **{title}**: intact {study['baseline_error']:.1f}%, one unit deleted "
                     f"{sum(single) / len(single):.1f}% on average (worst {max(single):.1f}%), "
                     f"{study['images']} test images")
    if missing:
        lines.append(f"- no lesion study stored yet for {', '.join(missing)}: start one above")
    return lesion_by_unit(studies), lesion_by_k(studies), "\n".join(lines)


def gradient_view(store: Any, run_ids: Sequence[int]) -> Any:
    """Heatmaps of the recorded per-unit input gradient norms, plain runs first, then residual ones."""
    runs = sorted((store.get_run(int(run_id)) for run_id in run_ids), key=lambda r: (_is_residual(r), r.id))
    if not runs:
        return gradient_heatmaps([])
    units = max(NetSpec.model_validate(run.spec["net"]).units for run in runs)
    names = [f"{UNIT_GRAD_PREFIX}{k}" for k in range(1, units + 1)]
    batches = store.fetch_metrics_since({run.id: 0 for run in runs}, names=names)
    return gradient_heatmaps([(run_title(run), *unit_gradient_matrix(batches[run.id].rows)) for run in runs])


def profile_view(ctx: WorkbenchContext, run_ids: Sequence[int]) -> Any:
    """Per-unit input gradient norms at initialization of the runs' nets, on a batch of their data."""
    ids = [int(run_id) for run_id in run_ids]
    if not ids:
        return gradient_profile_chart([])
    profiles = initial_profiles_of_runs(ctx.store, ids, allowed_roots=list(ctx.data_roots) or None)
    return gradient_profile_chart([(run_title(ctx.store.get_run(run_id)), norms) for run_id, norms in profiles])


def build_analysis_tab(
    ctx: WorkbenchContext, demo: gr.Blocks | None = None, jobs: LesionJobs | None = None
) -> LesionJobs:
    """Create the Analysis tab inside the current Blocks; returns the registry of its lesion jobs."""
    jobs = jobs or LesionJobs()
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

        gr.Markdown("The degradation verdict of a depth ladder, with its plain and residual curves side by side "
                    "(He et al. 2015, Fig. 6), is in the Compare tab: pick the ladder's group there.")
        job_states = gr.State({})
        timer = gr.Timer(REFRESH_SECONDS)

    def refresh_choices():
        completed = completed_runs(ctx.store)
        everything = all_runs(ctx.store)
        return gr.update(choices=completed), gr.update(choices=completed), gr.update(choices=everything)

    def start_job(run_id, draws_value, max_k_value, limit_value, shown_ids):
        if run_id is None:
            return "Pick a completed run first.", gr.skip(), jobs.states()
        try:
            jobs.start(ctx, int(run_id), draws=int(draws_value or DEFAULT_DRAWS),
                       max_k=int(max_k_value or DEFAULT_MAX_K), limit_images=int(limit_value) if limit_value else None)
        except WorkbenchError as exc:
            return f"**Cannot start:** {exc}", gr.skip(), jobs.states()
        wanted = sorted({*map(int, shown_ids or []), int(run_id)})
        return jobs.describe(), gr.update(value=wanted), jobs.states()

    def poll_jobs(shown_ids, seen_states):
        states = jobs.states()
        if states == seen_states:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        first, second, summary = lesion_view(ctx.store, shown_ids or [])
        return jobs.describe(), first, second, summary, states

    targets = [demo.load, tab.select] if demo is not None else [tab.select]
    gr.on(targets, refresh_choices, None, [lesion_run, shown, gradient_runs], api_visibility="private")
    start.click(start_job, [lesion_run, draws, max_k, limit, shown], [job_status, shown, job_states],
                api_visibility="private")
    shown.change(bound(lesion_view, ctx.store), shown, [by_unit, by_k, lesion_summary], api_visibility="private")
    timer.tick(poll_jobs, [shown, job_states], [job_status, by_unit, by_k, lesion_summary, job_states],
               concurrency_limit=None, api_visibility="private", show_progress="hidden")
    gradient_runs.change(bound(gradient_view, ctx.store), gradient_runs, heatmap, api_visibility="private")
    profile_button.click(bound(profile_view, ctx), gradient_runs, profile, api_visibility="private")
    return jobs
