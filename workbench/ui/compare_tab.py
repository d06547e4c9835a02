"""Compare tab: live training curves of chosen runs or a group, and error against depth for a ladder.

The curves of the followed runs live in a per-session `CurveCache`: each timer tick asks the store
only for rows newer than the cache's cursors and returns `gr.skip()` when none arrived, so the
chart (and the user's zoom) stays as it is.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import gradio as gr

from storage import RunRecord
from workbench.charts import error_vs_depth_figure, training_curves_figure
from workbench.curves import CurveCache, curves_of, ladder_points, reference_errors
from workbench.run_table import run_label
from workbench.ui.context import WorkbenchContext

REFRESH_SECONDS = 3.0
NO_GROUP = ""


@dataclass
class CompareView:
    """What one browser session follows: the runs, one curve cache per metric, labels, the ladder group."""

    run_ids: list[int] = field(default_factory=list)
    caches: dict[str, CurveCache] = field(default_factory=dict)
    labels: dict[int, str] = field(default_factory=dict)
    ladder_group: str | None = None
    references: dict[str, float | None] = field(default_factory=dict)
    drawn: tuple | None = None

    def cache(self, metric: str) -> CurveCache:
        """The curves of `metric` for the followed runs (only the metric on screen is fetched)."""
        cache = self.caches.setdefault(metric, CurveCache((metric,)))
        cache.select(self.run_ids)
        return cache


def choices(ctx: WorkbenchContext):
    """Fresh choices for the group and run pickers."""
    groups = [("(none)", NO_GROUP)] + [(f"{name} [{kind}]", name) for name, kind in ctx.store.list_groups()]
    runs = [(run_label(run), run.id) for run in ctx.store.list_runs()]
    return gr.update(choices=groups), gr.update(choices=runs)


def pick_group(ctx: WorkbenchContext, group: str):
    """The runs of a group, oldest first, as the run picker's value."""
    if not group:
        return gr.skip()
    return sorted(run.id for run in ctx.store.list_runs(group_name=group))


def _ladder_figure(ctx: WorkbenchContext, view: CompareView):
    if view.ladder_group is None:
        return gr.update(visible=False)
    runs = ctx.store.list_runs(group_name=view.ladder_group)
    return gr.update(value=error_vs_depth_figure(ladder_points(runs, view.references)), visible=True)


def _curves_figure(view: CompareView, metric: str, x_axis: str, smoothing: float, log_y: bool):
    return training_curves_figure(
        curves_of(view.cache(metric), view.labels, metric), metric=metric, x_axis=x_axis, smoothing=smoothing or 0.0,
        log_y=bool(log_y),
    )


def _ladder_of(runs: list[RunRecord]) -> str | None:
    groups = {(run.group_name, run.group_kind) for run in runs}
    if len(groups) == 1:
        name, kind = groups.pop()
        return name if kind == "ladder" else None
    return None


def redraw(ctx: WorkbenchContext, run_ids: list[int] | None, metric: str, x_axis: str, smoothing: float, log_y: bool,
           view: CompareView):
    """Follow the picked runs and draw their curves (new runs' curves are read in full, once).

    Nothing is redrawn when the selection and options are what is already shown and no rows arrived.
    """
    wanted = [int(run_id) for run_id in run_ids or [] if str(run_id).isdigit()]
    drawn = (tuple(wanted), metric, x_axis, smoothing, bool(log_y))
    if drawn == view.drawn and not view.cache(metric).refresh(ctx.store):
        return gr.skip(), gr.skip(), gr.skip()
    picked = [run for run in ctx.store.list_runs() if run.id in wanted]
    view.run_ids = wanted
    view.labels = {run.id: f"#{run.id} {run.name}" for run in picked}
    view.ladder_group = _ladder_of(picked)
    view.references = reference_errors(ctx.presets()) if view.ladder_group else {}
    view.cache(metric).refresh(ctx.store)
    view.drawn = drawn
    return _curves_figure(view, metric, x_axis, smoothing, log_y), _ladder_figure(ctx, view), view


def tick(ctx: WorkbenchContext, metric: str, x_axis: str, smoothing: float, log_y: bool, view: CompareView):
    """Fetch only rows newer than what is shown; redraw if any arrived, else leave the charts alone."""
    if not view.cache(metric).refresh(ctx.store):
        return gr.skip(), gr.skip(), gr.skip()
    return _curves_figure(view, metric, x_axis, smoothing, log_y), _ladder_figure(ctx, view), view


def compare_tab(ctx: WorkbenchContext, demo: gr.Blocks, launched: gr.State) -> None:
    """Create the Compare tab; a new launch (`launched`) selects its group here."""
    bound = functools.partial
    with gr.Tab("Compare", id="compare") as tab:
        with gr.Row():
            group = gr.Dropdown([("(none)", NO_GROUP)], value=NO_GROUP, label="Group", elem_id="compare-group",
                                scale=2)
            runs = gr.Dropdown([], value=[], multiselect=True, label="Runs", elem_id="compare-runs", scale=3,
                               allow_custom_value=True)
        with gr.Row():
            metric = gr.Radio(["error", "loss"], value="error", label="Metric")
            x_axis = gr.Radio(["iterations", "epochs"], value="iterations", label="x axis")
            smoothing = gr.Slider(0, 0.99, value=0, step=0.01, label="Smoothing (training curves)")
            log_y = gr.Checkbox(False, label="Log scale")
        curves = gr.Plot(_curves_figure(CompareView(), "error", "iterations", 0, False), label="Training curves",
                         elem_id="curves-plot")
        depth = gr.Plot(label="Final test error against depth", visible=False, elem_id="depth-plot")
        gr.Markdown("Dashed: training error (averaged over the logging interval); bold: test error. "
                    "Paper markers are the errors published for the matching preset (see its source in the "
                    "Build tab's presets), so they compare only on the same dataset.")
        view = gr.State(CompareView())
        timer = gr.Timer(REFRESH_SECONDS)

    options = [metric, x_axis, smoothing, log_y]
    outputs = [curves, depth, view]
    gr.on([demo.load, tab.select], bound(choices, ctx), None, [group, runs], api_visibility="private")
    group.input(bound(pick_group, ctx), group, runs, api_visibility="private")
    gr.on([runs.change, metric.input, x_axis.input, smoothing.release, log_y.input], bound(redraw, ctx),
          [runs, *options, view], outputs, trigger_mode="always_last", api_name="compare",
          show_progress="minimal")
    timer.tick(bound(tick, ctx), [*options, view], outputs, concurrency_limit=None, api_visibility="private",
               show_progress="hidden")

    def follow_launch(latest: dict | None):
        group_choices, run_choices = choices(ctx)
        if not latest:
            return group_choices, run_choices
        value = latest["group"] or NO_GROUP
        return gr.update(choices=group_choices["choices"], value=value), gr.update(
            choices=run_choices["choices"], value=latest["run_ids"])

    launched.change(follow_launch, launched, [group, runs], api_visibility="private")
