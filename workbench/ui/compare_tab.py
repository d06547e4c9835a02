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
from dataclasses import dataclass, field

import gradio as gr

from workbench.science.architectures import network_costs, paper_points
from workbench.science.degradation import (
    degradation_observed,
    net_depth_and_residual,
    paper_reference_errors,
    verdict_markdown,
)
from workbench.service import RunRecord
from workbench.service.curves import CurveCache, curves_of, ladder_curve_runs
from workbench.service.plans import ARCHITECTURES, LADDER
from workbench.ui.context import WorkbenchContext
from workbench.ui.run_table import run_label
from workbench.viz.charts import training_curves_figure
from workbench.viz.figures import error_vs_cost, error_vs_depth, figure6, final_errors

REFRESH_SECONDS = 3.0
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
    architectures_group: str | None = None
    costs: dict[int, dict[str, int]] = field(default_factory=dict)
    papers: list[dict] = field(default_factory=list)
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


LADDER_HINT = ("Pick a ladder group (Launch: \"Launch depth ladder\") to see the degradation verdict, plain and "
               "residual nets side by side and error against depth.")


def _ladder_outputs(view: CompareView):
    """(verdict, Figure 6 layout, error against depth) of the followed ladder, hidden when it is not one."""
    if view.ladder_group is None:
        return gr.update(visible=False), gr.update(visible=False), gr.update(visible=False)
    curves = ladder_curve_runs(view.cache("error"), view.ladder_members)
    verdict = degradation_observed(curves)
    return (
        gr.update(value=verdict_markdown(verdict), visible=True),
        gr.update(value=figure6(curves, title=view.ladder_group), visible=True),
        gr.update(value=error_vs_depth([final_errors(curve) for curve in curves], view.references), visible=True),
    )


def _curves_figure(view: CompareView, metric: str, x_axis: str, smoothing: float, log_y: bool):
    return training_curves_figure(
        curves_of(view.cache(metric), view.labels, metric), metric=metric, x_axis=x_axis, smoothing=smoothing or 0.0,
        log_y=bool(log_y),
    )


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


SKIPPED = (gr.skip(),) * 6


def redraw(ctx: WorkbenchContext, run_ids: list[int] | None, metric: str, x_axis: str, smoothing: float, log_y: bool,
           view: CompareView):
    """Follow the picked runs and draw their curves (new runs' curves are read in full, once).

    Returns (curves, verdict, Figure 6, error against depth, error against cost, view). When the selection and options
    are what is already shown, this is a timer tick: only what new rows changed is redrawn.
    """
    wanted = [int(run_id) for run_id in run_ids or [] if str(run_id).isdigit()]
    drawn = (tuple(wanted), metric, x_axis, smoothing, bool(log_y))
    if drawn == view.drawn:
        return tick(ctx, metric, x_axis, smoothing, log_y, view)
    picked = [run for run in ctx.store.list_runs() if run.id in wanted]
    view.run_ids = wanted
    view.labels = {run.id: f"#{run.id} {run.name}" for run in picked}
    view.ladder_group = _group_of(picked, LADDER)
    view.architectures_group = _group_of(picked, ARCHITECTURES)
    view.ladder_members = {run.id: (run.preset or run.name, *net_depth_and_residual(run.spec))
                           for run in picked} if view.ladder_group or view.architectures_group else {}
    on_cifar10 = all(run.spec["data"]["name"] == "cifar10" for run in picked)
    view.references = paper_reference_errors(
        sorted({depth for _, depth, residual in view.ladder_members.values() if residual}), ctx.home
    ) if on_cifar10 else {}
    view.costs = {run.id: network_costs(run.spec["net"]) for run in picked} if view.architectures_group else {}
    view.papers = paper_points([run.preset for run in picked if run.preset], ctx.home) \
        if view.architectures_group and on_cifar10 else []
    _refresh(ctx, view, metric)
    view.drawn = drawn
    return (_curves_figure(view, metric, x_axis, smoothing, log_y), *_ladder_outputs(view),
            _architectures_output(view), view)


def _refresh(ctx: WorkbenchContext, view: CompareView, metric: str) -> tuple[bool, bool]:
    """Fetch new rows of the metric on screen and, for a ladder or an architectures group, of the error;
    (curves changed, group charts changed)."""
    shown = view.cache(metric).refresh(ctx.store)
    if view.ladder_group is None and view.architectures_group is None:
        return shown, False
    ladder = shown if metric == "error" else view.cache("error").refresh(ctx.store)
    return shown, ladder


def tick(ctx: WorkbenchContext, metric: str, x_axis: str, smoothing: float, log_y: bool, view: CompareView):
    """Fetch only rows newer than what is shown; redraw what they changed, leave the rest alone."""
    shown, ladder = _refresh(ctx, view, metric)
    if not (shown or ladder):
        return SKIPPED
    curves = _curves_figure(view, metric, x_axis, smoothing, log_y) if shown else gr.skip()
    ladder_outputs = _ladder_outputs(view) if ladder else (gr.skip(),) * 3
    costs = _architectures_output(view) if ladder else gr.skip()
    return (curves, *ladder_outputs, costs, view)


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
        gr.Markdown("Dashed: training error (averaged over the logging interval); bold: test error. " + LADDER_HINT)
        verdict = gr.Markdown(visible=False, elem_id="compare-verdict")
        figure_6 = gr.Plot(label="Plain (left) and residual (right), as in He et al. 2015 Fig. 6", visible=False,
                           elem_id="compare-figure6")
        depth = gr.Plot(label="Error against depth (stars, for CIFAR-10 ladders: the paper's ResNet test errors)",
                        visible=False, elem_id="depth-plot")
        costs = gr.Plot(label="Error against parameters and multiply-adds (stars, for CIFAR-10: the papers' errors)",
                        visible=False, elem_id="cost-plot")
        view = gr.State(CompareView())
        timer = gr.Timer(REFRESH_SECONDS)

    options = [metric, x_axis, smoothing, log_y]
    outputs = [curves, verdict, figure_6, depth, costs, view]
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
