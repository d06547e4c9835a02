"""Compare tab: live training curves of chosen runs or a group; for a depth ladder, the paper's Figure 6.

The curves of the followed runs live in a per-session `CurveCache`: each timer tick asks the store
only for rows newer than the cache's cursors and returns `gr.skip()` when none arrived, so the
chart (and the user's zoom) stays as it is. When the followed runs are one ladder group, the tab
also shows the degradation verdict, plain and residual nets side by side (He et al. 2015, Fig. 6)
and error against depth with the paper's numbers, all drawn from the same cache. For an architectures
group it shows error against parameters and multiply-adds, one point per run, the papers' as stars.
"""

from __future__ import annotations

import functools
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import plotly.graph_objects as go

from workbench.errors import WorkbenchError
from workbench.science.architectures import network_costs, paper_points
from workbench.science.degradation import (
    degradation_observed,
    net_depth_and_residual,
    paper_reference_errors,
    verdict_markdown,
)
from workbench.science.statistics import FINAL, SUMMARIES
from workbench.service import RunRecord
from workbench.service.curves import CHART_METRICS, CurveCache, curves_of, ladder_curve_runs, stored_names
from workbench.service.plans import ARCHITECTURES, LADDER, seed_group_key
from workbench.ui.address import recalled_ids, remember
from workbench.ui.context import WorkbenchContext
from workbench.ui.live_plot import apply_live_figures, live_channel, live_figures
from workbench.ui.run_table import LEGEND_CHOICES, label_extras, run_choices, run_label
from workbench.ui.sweep_section import sweep_view
from workbench.viz.charts import (
    BANDS,
    EMA,
    SMOOTHING_KINDS,
    STD,
    X_AXES,
    CurveStyle,
    training_curves_figure,
)
from workbench.viz.figures import error_vs_cost, error_vs_depth, figure6, final_errors
from workbench.viz.series import SeedGroup

REFRESH_SECONDS = 3.0
CURVES_ID, FIGURE6_ID, DEPTH_ID = "curves-plot", "compare-figure6", "depth-plot"
NO_GROUP = ""
NO_BAND = "off: each run"
SEED_SUFFIX = re.compile(r" seed \d+$")
DEFAULT_LEGEND = "name + dataset + group"


@dataclass(frozen=True)
class Options:
    """The chart options, in the order of the tab's option components."""

    metric: str = "error"
    x_axis: str = "iterations"
    smoothing: float = 0.0
    smoothing_kind: str = EMA
    log_y: bool = False
    band: str = STD
    show_runs: bool = False
    summary: str = FINAL
    summary_at: float | None = None
    legend: str = DEFAULT_LEGEND

    @property
    def frame(self) -> tuple:
        """What a new chart is drawn for (the zoom is kept while it stays the same)."""
        return self.metric, self.x_axis, bool(self.log_y)

    @property
    def ladder_frame(self) -> tuple:
        """The options the verdict, Figure 6 and error against depth follow."""
        return self.band, bool(self.show_runs), self.summary, self.summary_at

    def style(self) -> CurveStyle:
        at = int(self.summary_at) if self.summary_at else None
        return CurveStyle(metric=self.metric, x_axis=self.x_axis, smoothing=self.smoothing or 0.0,
                          smoothing_kind=self.smoothing_kind, band=self.band, show_runs=bool(self.show_runs),
                          summary=self.summary, summary_at=at)


@dataclass
class CompareView:
    """What one browser session follows: the runs, their seed groups, one curve cache per metric, labels, the ladder
    group, and the options last drawn."""

    run_ids: list[int] = field(default_factory=list)
    caches: dict[str, CurveCache] = field(default_factory=dict)
    runs: list[RunRecord] = field(default_factory=list)
    ladder_group: str | None = None
    ladder_members: dict[int, tuple[str, int, bool]] = field(default_factory=dict)
    references: dict[int, float] = field(default_factory=dict)
    revision: str | None = None
    options: Options = field(default_factory=Options)
    architectures_group: str | None = None
    costs: dict[int, dict[str, int]] = field(default_factory=dict)
    papers: list[dict] = field(default_factory=list)
    followed_group: str = NO_GROUP
    group_members: set[int] = field(default_factory=set)

    def follow_group(self, group: str, members: Sequence[int]) -> None:
        """Remember the group whose later runs join the picker, and the runs it had when picked."""
        self.followed_group, self.group_members = group, set(members)

    def cache(self, metric: str) -> CurveCache:
        """The curves of `metric` for the followed runs (only the metric on screen is fetched)."""
        cache = self.caches.setdefault(metric, CurveCache((metric,)))
        cache.select(self.run_ids)
        return cache


def seed_groups_of(runs: list[RunRecord], parts: Sequence[str] = ()) -> list[tuple[str, str, list[int]]]:
    """(key, label, run ids) of each set of runs that differ only by seed, in the order first picked; labels show
    the `parts` (dataset, group) of the first run."""
    groups: dict[str, list[RunRecord]] = {}
    for run in runs:
        groups.setdefault(seed_group_key(run.spec), []).append(run)
    return [(str(index), " · ".join([SEED_SUFFIX.sub("", members[0].name) + (
        f" [{len(members)} seeds]" if len(members) > 1 else ""), *label_extras(members[0], parts)]),
             [run.id for run in members])
            for index, members in enumerate(groups.values())]


def choices(ctx: WorkbenchContext):
    """Fresh choices for the group and run pickers."""
    groups = [("(none)", NO_GROUP)] + [(f"{name} [{kind}]", name) for name, kind in ctx.store.list_groups()]
    return gr.update(choices=groups), gr.update(choices=run_choices(ctx.store.list_runs()))


def pick_group(ctx: WorkbenchContext, group: str, view: CompareView):
    """The runs of a group, oldest first, as the run picker's value; the group's later runs will join them."""
    members = sorted(run.id for run in ctx.store.list_runs(group_name=group)) if group else []
    view.follow_group(group, members)
    return (members if group else gr.skip()), view


def follow_group(ctx: WorkbenchContext, group: str, picked: list[int] | None, view: CompareView):
    """Runs added to the picked group since (a sweep's next trials) join the picker; a run the user took out of
    the picker stays out."""
    if not group:
        return gr.skip()
    members = [run.id for run in ctx.store.list_runs(group_name=group)]
    if view.followed_group != group:  # not picked in this session: follow it from now on
        view.follow_group(group, members)
        return gr.skip()
    new = sorted(set(members) - view.group_members)
    if not new:
        return gr.skip()
    view.group_members.update(new)
    return gr.update(choices=run_choices(ctx.store.list_runs()), value=[*(picked or []), *new])


LADDER_HINT = ("Pick a ladder group (Launch: \"Launch depth ladder\") to see the degradation verdict, plain and "
               "residual nets side by side and error against depth.")


def _ladder_figures(view: CompareView, options: Options) -> tuple[str, go.Figure, go.Figure]:
    """(verdict, Figure 6 layout, error against depth) of the followed ladder, a network's seeds drawn as their mean
    with the chosen band (each run alone with the band off), the summary choice read by the verdict too."""
    curves = ladder_curve_runs(view.cache("error"), view.ladder_members)
    style = options.style()
    band = None if options.band == NO_BAND else options.band
    figure_6 = figure6(curves, title=view.ladder_group, style=style if band else None)
    depth = error_vs_depth([final_errors(curve) for curve in curves], view.references, band=band)
    for figure in (figure_6, depth):
        figure.update_layout(uirevision=view.revision)
    verdict = degradation_observed(curves, summary=style.summary, at=style.summary_at)
    return verdict_markdown(verdict), figure_6, depth


def _curves_figure(view: CompareView, options: Options):
    """Runs as they are, or (with a band chosen) each seed group of several runs as its mean and band."""
    parts = LEGEND_CHOICES[options.legend]
    labels = {run.id: run_label(run, parts) for run in view.runs}
    curves = {run.run_id: run for run in curves_of(view.cache(options.metric), labels, options.metric)}
    if options.band == NO_BAND:
        entries = list(curves.values())
    else:
        entries = [SeedGroup(key, label, tuple(curves[run_id] for run_id in run_ids))
                   for key, label, run_ids in seed_groups_of(view.runs, parts)]
    return training_curves_figure(entries, style=options.style(), log_y=bool(options.log_y), revision=view.revision)


def _group_of(runs: list[RunRecord], group_kind: str) -> str | None:
    """The group of `runs` when they are all one group of `group_kind`."""
    groups = {(run.group_name, run.group_kind) for run in runs}
    if len(groups) == 1:
        name, kind = groups.pop()
        return name if kind == group_kind else None
    return None


def _architectures_output(view: CompareView):
    """Error against parameters and multiply-adds of the followed architectures group, hidden when it is not one."""
    if view.architectures_group is None:
        return gr.update(visible=False)
    curves = ladder_curve_runs(view.cache("error"), view.ladder_members)
    finals = [{**final_errors(curve), **view.costs[run_id]}
              for run_id, curve in zip(view.ladder_members, curves, strict=True)]
    return gr.update(value=error_vs_cost(finals, view.papers), visible=True)


SKIPPED = (gr.skip(),) * 7


def redraw(ctx: WorkbenchContext, run_ids: list[int] | None, view: CompareView, *option_values):
    """Follow the picked runs and draw their curves (new runs' curves are read in full, once).

    `option_values` are the Options fields in order. Returns (curves, verdict, Figure 6, error against depth,
    error against cost, live figures, view). A new selection, metric or axis draws new charts; otherwise this
    is a tick (see `tick`).
    """
    options = Options(*option_values)
    wanted = [int(run_id) for run_id in run_ids or [] if str(run_id).isdigit()]
    revision = repr((wanted, *options.frame))
    if revision == view.revision:
        return tick(ctx, view, *option_values)
    picked = sorted((run for run in ctx.store.list_runs() if run.id in wanted), key=lambda run: wanted.index(run.id))
    view.run_ids = wanted
    view.runs = picked
    view.ladder_group = _group_of(picked, LADDER)
    view.architectures_group = _group_of(picked, ARCHITECTURES)
    view.ladder_members = {run.id: (run.preset or SEED_SUFFIX.sub("", run.name), *net_depth_and_residual(run.spec))
                           for run in picked} if view.ladder_group or view.architectures_group else {}
    on_cifar10 = all(run.spec["data"]["name"] == "cifar10" for run in picked)
    view.references = paper_reference_errors(
        sorted({depth for _, depth, residual in view.ladder_members.values() if residual}), ctx.home
    ) if on_cifar10 else {}
    view.costs = {run.id: network_costs(run.spec["net"]) for run in picked} if view.architectures_group else {}
    view.papers = paper_points([run.preset for run in picked if run.preset], ctx.home) \
        if view.architectures_group and on_cifar10 else []
    _refresh(ctx, view, options.metric)
    view.revision, view.options = revision, options
    curves = _curves_figure(view, options)
    costs = _architectures_output(view)
    if view.ladder_group is None:
        hidden = gr.update(visible=False)
        return curves, hidden, hidden, hidden, costs, "", view
    verdict, figure_6, depth = _ladder_figures(view, options)
    return (curves, gr.update(value=verdict, visible=True), gr.update(value=figure_6, visible=True),
            gr.update(value=depth, visible=True), costs, "", view)


def _refresh(ctx: WorkbenchContext, view: CompareView, metric: str) -> tuple[bool, bool]:
    """Fetch new rows of the metric on screen and, for a ladder or an architectures group, of the error;
    (curves changed, group charts changed)."""
    shown = view.cache(metric).refresh(ctx.store)
    if view.ladder_group is None and view.architectures_group is None:
        return shown, False
    ladder = shown if metric == "error" else view.cache("error").refresh(ctx.store)
    return shown, ladder


def tick(ctx: WorkbenchContext, view: CompareView, *option_values):
    """Fetch only rows newer than what is shown; send what they (or new smoothing, band or summary options) changed
    to the charts in place.

    The charts themselves are skipped, so the browser keeps them (and the user's zoom) and applies
    the live figures with Plotly.react; nothing at all is sent when nothing changed.
    """
    options = Options(*option_values)
    shown, ladder = _refresh(ctx, view, options.metric)
    restyled = options != view.options
    ladder = ladder or options.ladder_frame != view.options.ladder_frame
    view.options = options
    if not (shown or ladder or restyled):
        return SKIPPED
    live = {}
    if shown or restyled:
        live[CURVES_ID] = _curves_figure(view, options)
    verdict = gr.skip()
    if ladder and view.ladder_group is not None:
        verdict, live[FIGURE6_ID], live[DEPTH_ID] = _ladder_figures(view, options)
    costs = _architectures_output(view) if ladder and view.architectures_group is not None else gr.skip()
    return gr.skip(), verdict, gr.skip(), gr.skip(), costs, live_figures(live), view


CURVE_EXPORTS = {"CSV (long format)": "csv", "TensorBoard event files (zip, a folder per run)": "tensorboard"}


def export_curves(ctx: WorkbenchContext, metric: str, fmt: str, view: CompareView):
    """The followed runs' curves of the metric on screen as a file to download; (message, download button)."""
    hidden = gr.update(visible=False)
    try:
        target = ctx.export_curves(view.run_ids, fmt, names=stored_names(metric))
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
            metric = gr.Dropdown(list(CHART_METRICS), value="error", label="Metric", elem_id="compare-metric")
            x_axis = gr.Radio(list(X_AXES), value="iterations", label="x axis", elem_id="compare-x-axis")
            smoothing = gr.Slider(0, 0.99, value=0, step=0.01, label="Smoothing weight (training curves)",
                                  info="a running mean averages the last 1 / (1 - weight) points",
                                  elem_id="compare-smoothing")
            smoothing_kind = gr.Radio(list(SMOOTHING_KINDS), value=EMA, label="Smoothing")
            log_y = gr.Checkbox(False, label="Log scale")
        with gr.Row():
            band = gr.Radio([NO_BAND, *BANDS], value=STD, label="Seed groups (runs differing only by seed)",
                            info="drawn as their mean with this band, from every stored point", elem_id="seed-band")
            show_runs = gr.Checkbox(False, label="Show each seed thin", elem_id="show-seed-runs")
            summary = gr.Radio(list(SUMMARIES), value=FINAL, label="Summary (legend and verdict)",
                               elem_id="legend-summary")
            summary_at = gr.Number(None, label="at iteration", precision=0, elem_id="summary-at")
            legend = gr.Dropdown(list(LEGEND_CHOICES), value=DEFAULT_LEGEND, label="Legend shows",
                                 elem_id="legend-shows")
        curves = gr.Plot(_curves_figure(CompareView(), Options()), label="Training curves",
                         elem_id=CURVES_ID)
        gr.Markdown("Dashed: training error (averaged over the logging interval); bold: test error. " + LADDER_HINT)
        verdict = gr.Markdown(visible=False, elem_id="compare-verdict")
        figure_6 = gr.Plot(label="Plain (left) and residual (right), as in He et al. 2015 Fig. 6", visible=False,
                           elem_id=FIGURE6_ID)
        depth = gr.Plot(label="Error against depth (stars, for CIFAR-10 ladders: the paper's ResNet test errors)",
                        visible=False, elem_id=DEPTH_ID)
        costs = gr.Plot(label="Error against parameters and multiply-adds (stars, for CIFAR-10: the papers' errors)",
                        visible=False, elem_id="cost-plot")
        sweep_view(ctx, group)
        with gr.Row():
            curve_format = gr.Radio(list(CURVE_EXPORTS.items()), value="csv", label="Export the curves on screen",
                                    elem_id="curve-format", scale=3)
            prepare = gr.Button("Prepare file", elem_id="prepare-curves", scale=1)
            download = gr.DownloadButton("Download", visible=False, elem_id="download-curves", scale=1)
        export_message = gr.Markdown(elem_id="curves-export-message")
        live = live_channel("compare-live")
        view = gr.State(CompareView())
        timer = gr.Timer(REFRESH_SECONDS)

    options = [metric, x_axis, smoothing, smoothing_kind, log_y, band, show_runs, summary, summary_at, legend]
    outputs = [curves, verdict, figure_6, depth, costs, live, view]
    # Opening a picker lists the groups and runs started meanwhile (from the CLI or another browser).
    gr.on([demo.load, tab.select, group.focus, runs.focus], bound(choices, ctx), None, [group, runs],
          api_visibility="private")
    group.input(bound(pick_group, ctx), [group, view], [runs, view], api_visibility="private")
    redrawn = gr.on([runs.change, metric.input, x_axis.input, smoothing.change, smoothing_kind.input, log_y.input,
                     band.input, show_runs.input, summary.input, summary_at.change, legend.input], bound(redraw, ctx),
                    [runs, view, *options], outputs, trigger_mode="always_last", api_name="compare",
                    show_progress="minimal")
    ticked = timer.tick(bound(tick, ctx), [view, *options], outputs, concurrency_limit=None,
                        api_visibility="private", show_progress="hidden")
    for event in (redrawn, ticked):
        apply_live_figures(event, live)
    timer.tick(bound(follow_group, ctx), [group, runs, view], runs, api_visibility="private", show_progress="hidden")
    prepare.click(bound(export_curves, ctx), [metric, curve_format, view], [export_message, download],
                  api_name="export_curves")
    gr.on([runs.change, metric.change, curve_format.change], lambda: gr.update(visible=False), None, download,
          api_visibility="private")

    def follow_launch(latest: dict | None, view: CompareView):
        group_choices, runs_choices = choices(ctx)
        if not latest:
            return group_choices, runs_choices, view
        value = latest["group"] or NO_GROUP
        view.follow_group(value, latest["run_ids"])
        return gr.update(choices=group_choices["choices"], value=value), gr.update(
            choices=runs_choices["choices"], value=latest["run_ids"]), view

    launched.change(follow_launch, [launched, view], [group, runs, view], api_visibility="private")

    def runs_from_address(request: gr.Request):
        picked = recalled_ids(request, "runs", (run.id for run in ctx.store.list_runs()))
        return gr.skip() if picked is None else picked

    demo.load(runs_from_address, None, runs, api_visibility="private")
    remember(runs.change, runs, "runs")
