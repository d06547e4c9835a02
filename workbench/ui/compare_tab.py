"""Compare tab: live training curves of chosen runs or a group; for a depth ladder, the paper's Figure 6.

The curves of the followed runs live in a per-session `CurveCache`: each timer tick asks the store
only for rows newer than the cache's cursors and returns `gr.skip()` when none arrived, so the
chart (and the user's zoom) stays as it is. When the followed runs are one ladder group, the tab
also shows the degradation verdict, plain and residual nets side by side (He et al. 2015, Fig. 6)
and error against depth with the paper's numbers, all drawn from the same cache.
"""

from __future__ import annotations

import functools
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import plotly.graph_objects as go

from workbench.errors import WorkbenchError
from workbench.science.degradation import (
    degradation_observed,
    net_depth_and_residual,
    paper_reference_errors,
    verdict_markdown,
)
from workbench.service import RunRecord
from workbench.service.curves import CurveCache, curves_of, ladder_curve_runs
from workbench.service.plans import LADDER
from workbench.ui.context import WorkbenchContext
from workbench.ui.live_plot import apply_live_figures, live_channel, live_figures
from workbench.ui.run_table import run_label
from workbench.viz.charts import EMA, SMOOTHING_KINDS, X_AXES, training_curves_figure
from workbench.viz.figures import error_vs_depth, figure6, final_errors

REFRESH_SECONDS = 3.0
CURVES_ID, FIGURE6_ID, DEPTH_ID = "curves-plot", "compare-figure6", "depth-plot"
NO_GROUP = ""


@dataclass
class CompareView:
    """What one browser session follows: the runs, one curve cache per metric, labels, the ladder group."""

    run_ids: list[int] = field(default_factory=list)
    caches: dict[str, CurveCache] = field(default_factory=dict)
    labels: dict[int, str] = field(default_factory=dict)
    ladder_group: str | None = None
    ladder_members: dict[int, tuple[str, int, bool]] = field(default_factory=dict)
    references: dict[int, float] = field(default_factory=dict)
    revision: str | None = None
    smoothing: tuple[float, str] = (0.0, EMA)

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


LADDER_HINT = ("Pick a ladder group (Launch: \"Launch depth ladder\") to see the degradation verdict, plain and "
               "residual nets side by side and error against depth.")


def _ladder_figures(view: CompareView) -> tuple[str, go.Figure, go.Figure]:
    """(verdict, Figure 6 layout, error against depth) of the followed ladder."""
    curves = ladder_curve_runs(view.cache("error"), view.ladder_members)
    figure_6 = figure6(curves, title=view.ladder_group)
    depth = error_vs_depth([final_errors(curve) for curve in curves], view.references)
    for figure in (figure_6, depth):
        figure.update_layout(uirevision=view.revision)
    return verdict_markdown(degradation_observed(curves)), figure_6, depth


def _curves_figure(view: CompareView, metric: str, x_axis: str, smoothing: float, smoothing_kind: str,
                   log_y: bool):
    return training_curves_figure(
        curves_of(view.cache(metric), view.labels, metric), metric=metric, x_axis=x_axis, smoothing=smoothing or 0.0,
        smoothing_kind=smoothing_kind, log_y=bool(log_y), revision=view.revision,
    )


def _ladder_of(runs: list[RunRecord]) -> str | None:
    groups = {(run.group_name, run.group_kind) for run in runs}
    if len(groups) == 1:
        name, kind = groups.pop()
        return name if kind == LADDER else None
    return None


SKIPPED = (gr.skip(),) * 6


def redraw(ctx: WorkbenchContext, run_ids: list[int] | None, metric: str, x_axis: str, smoothing: float,
           smoothing_kind: str, log_y: bool, view: CompareView):
    """Follow the picked runs and draw their curves (new runs' curves are read in full, once).

    Returns (curves, verdict, Figure 6, error against depth, live figures, view). A new selection,
    metric or axis draws new charts; otherwise this is a tick (see `tick`).
    """
    wanted = [int(run_id) for run_id in run_ids or [] if str(run_id).isdigit()]
    revision = repr((wanted, metric, x_axis, bool(log_y)))
    if revision == view.revision:
        return tick(ctx, metric, x_axis, smoothing, smoothing_kind, log_y, view)
    picked = [run for run in ctx.store.list_runs() if run.id in wanted]
    view.run_ids = wanted
    view.labels = {run.id: f"#{run.id} {run.name}" for run in picked}
    view.ladder_group = _ladder_of(picked)
    view.ladder_members = {run.id: (run.preset or run.name, *net_depth_and_residual(run.spec))
                           for run in picked} if view.ladder_group else {}
    on_cifar10 = all(run.spec["data"]["name"] == "cifar10" for run in picked)
    view.references = paper_reference_errors(
        sorted({depth for _, depth, residual in view.ladder_members.values() if residual}), ctx.home
    ) if on_cifar10 else {}
    _refresh(ctx, view, metric)
    view.revision, view.smoothing = revision, (smoothing, smoothing_kind)
    curves = _curves_figure(view, metric, x_axis, smoothing, smoothing_kind, log_y)
    if view.ladder_group is None:
        hidden = gr.update(visible=False)
        return curves, hidden, hidden, hidden, "", view
    verdict, figure_6, depth = _ladder_figures(view)
    return (curves, gr.update(value=verdict, visible=True), gr.update(value=figure_6, visible=True),
            gr.update(value=depth, visible=True), "", view)


def _refresh(ctx: WorkbenchContext, view: CompareView, metric: str) -> tuple[bool, bool]:
    """Fetch new rows of the metric on screen and, for a ladder, of the error; (curves changed, ladder changed)."""
    shown = view.cache(metric).refresh(ctx.store)
    if view.ladder_group is None:
        return shown, False
    ladder = shown if metric == "error" else view.cache("error").refresh(ctx.store)
    return shown, ladder


def tick(ctx: WorkbenchContext, metric: str, x_axis: str, smoothing: float, smoothing_kind: str, log_y: bool,
         view: CompareView):
    """Fetch only rows newer than what is shown; send what they (or a new smoothing) changed to the charts in place.

    The charts themselves are skipped, so the browser keeps them (and the user's zoom) and applies
    the live figures with Plotly.react; nothing at all is sent when nothing changed.
    """
    shown, ladder = _refresh(ctx, view, metric)
    restyled = (smoothing, smoothing_kind) != view.smoothing
    view.smoothing = (smoothing, smoothing_kind)
    if not (shown or ladder or restyled):
        return SKIPPED
    live = {}
    if shown or restyled:
        live[CURVES_ID] = _curves_figure(view, metric, x_axis, smoothing, smoothing_kind, log_y)
    verdict = gr.skip()
    if ladder:
        verdict, live[FIGURE6_ID], live[DEPTH_ID] = _ladder_figures(view)
    return gr.skip(), verdict, gr.skip(), gr.skip(), live_figures(live), view


CURVE_EXPORTS = {"CSV (long format)": "csv", "TensorBoard event files (zip, a folder per run)": "tensorboard"}


def export_curves(ctx: WorkbenchContext, metric: str, fmt: str, view: CompareView):
    """The followed runs' curves of the metric on screen as a file to download; (message, download button)."""
    hidden = gr.update(visible=False)
    try:
        target = ctx.export_curves(view.run_ids, fmt, names=[metric])
    except WorkbenchError as exc:
        return f"**Not exported:** {exc}", hidden
    if target.is_dir():
        target = Path(shutil.make_archive(str(target), "zip", target))
    return f"Ready: `{target.name}`.", gr.DownloadButton(f"Download {target.name}", value=str(target), visible=True)


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
            x_axis = gr.Radio(list(X_AXES), value="iterations", label="x axis", elem_id="compare-x-axis")
            smoothing = gr.Slider(0, 0.99, value=0, step=0.01, label="Smoothing weight (training curves)",
                                  info="a running mean averages the last 1 / (1 - weight) points",
                                  elem_id="compare-smoothing")
            smoothing_kind = gr.Radio(list(SMOOTHING_KINDS), value=EMA, label="Smoothing")
            log_y = gr.Checkbox(False, label="Log scale")
        curves = gr.Plot(_curves_figure(CompareView(), "error", "iterations", 0, EMA, False), label="Training curves",
                         elem_id=CURVES_ID)
        gr.Markdown("Dashed: training error (averaged over the logging interval); bold: test error. " + LADDER_HINT)
        verdict = gr.Markdown(visible=False, elem_id="compare-verdict")
        figure_6 = gr.Plot(label="Plain (left) and residual (right), as in He et al. 2015 Fig. 6", visible=False,
                           elem_id=FIGURE6_ID)
        depth = gr.Plot(label="Error against depth (stars, for CIFAR-10 ladders: the paper's ResNet test errors)",
                        visible=False, elem_id=DEPTH_ID)
        with gr.Row():
            curve_format = gr.Radio(list(CURVE_EXPORTS.items()), value="csv", label="Export the curves on screen",
                                    elem_id="curve-format", scale=3)
            prepare = gr.Button("Prepare file", elem_id="prepare-curves", scale=1)
            download = gr.DownloadButton("Download", visible=False, elem_id="download-curves", scale=1)
        export_message = gr.Markdown(elem_id="curves-export-message")
        live = live_channel("compare-live")
        view = gr.State(CompareView())
        timer = gr.Timer(REFRESH_SECONDS)

    options = [metric, x_axis, smoothing, smoothing_kind, log_y]
    outputs = [curves, verdict, figure_6, depth, live, view]
    gr.on([demo.load, tab.select], bound(choices, ctx), None, [group, runs], api_visibility="private")
    group.input(bound(pick_group, ctx), group, runs, api_visibility="private")
    redrawn = gr.on([runs.change, metric.input, x_axis.input, smoothing.change, smoothing_kind.input,
                     log_y.input], bound(redraw, ctx),
                    [runs, *options, view], outputs, trigger_mode="always_last", api_name="compare",
                    show_progress="minimal")
    ticked = timer.tick(bound(tick, ctx), [*options, view], outputs, concurrency_limit=None,
                        api_visibility="private", show_progress="hidden")
    for event in (redrawn, ticked):
        apply_live_figures(event, live)
    prepare.click(bound(export_curves, ctx), [metric, curve_format, view], [export_message, download],
                  api_name="export_curves")
    gr.on([runs.change, metric.change, curve_format.change], lambda: gr.update(visible=False), None, download,
          api_visibility="private")

    def follow_launch(latest: dict | None):
        group_choices, run_choices = choices(ctx)
        if not latest:
            return group_choices, run_choices
        value = latest["group"] or NO_GROUP
        return gr.update(choices=group_choices["choices"], value=value), gr.update(
            choices=run_choices["choices"], value=latest["run_ids"])

    launched.change(follow_launch, launched, [group, runs], api_visibility="private")
